//! The FUSE glue: the only module that knows `fuser`.
//!
//! [`mount`] opens the layers, prepares the work directory and mounts; [`Mounted::run`] serves
//! requests on several threads until the filesystem is unmounted. Requests enter in `adapter`
//! (decode, trace, reply), and are carried out by the `do_*` operations of [`core::UnionFs`],
//! split by what they touch: `core` (resolution, attributes, listings), `namespace` (names),
//! `data` (contents and attributes), `copyup` (bringing objects into the upper).

mod adapter;
mod copyup;
mod core;
mod data;
mod handle;
mod inode;
mod inolock;
mod namespace;
mod nslock;
mod uring;
mod wire;

use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, SessionACL};

use crate::config::Validated;
use crate::cow::{self, Upper};
use crate::layer_index::Layers;
use crate::whiteout::XattrNs;

pub use self::core::UnionFs;

/// Why a mount could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open layer {path}")]
    Layer {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot prepare the work directory")]
    Work(#[source] cow::Error),
    #[error("cannot mount on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fuse session failed")]
    Session(#[source] std::io::Error),
}

/// A live mount; [`Mounted::run`] serves it until it is unmounted.
pub struct Mounted {
    session: fuser::Session<adapter::Fuse>,
    unmount: UnmountBy,
    fs: std::sync::Arc<UnionFs>,
    /// Keeps the descriptor table at its reserved size until [`Mounted::run`], across the
    /// fork that detaches the daemon.
    fd_reserve: Option<std::os::fd::OwnedFd>,
}

#[derive(Clone)]
enum UnmountBy {
    /// We mounted with mount(2) and unmount the same way, only when asked to: the daemon never
    /// unmounts a path on its own, so it cannot take down a newer mount on the same path after
    /// an external umount.
    Path(PathBuf),
    /// Unprivileged: fuser mounted through fusermount3 and unmounts through it.
    Fuser(std::sync::Arc<parking_lot::Mutex<fuser::SessionUnmounter>>),
}

/// Unmounts a [`Mounted`] from another thread (e.g. on SIGTERM).
pub struct Unmounter(UnmountBy);

impl Unmounter {
    /// Unmounts; `run` then returns.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        match &self.0 {
            UnmountBy::Path(p) => {
                nix::mount::umount2(p, nix::mount::MntFlags::empty()).map_err(std::io::Error::from)
            }
            UnmountBy::Fuser(u) => u.lock().unmount(),
        }
    }
}

/// Opens the layers of `v`, through the roots validation holds open where it does.
fn open_layers(v: &Validated) -> Result<Layers, Error> {
    let cfg = &v.config;
    let upper = cfg.upper.as_deref().map(|u| (u, v.upper_dir.as_ref()));
    let lowers = cfg.lowers.iter().enumerate().map(|(i, l)| {
        let held = v.lower_dirs.get(i).and_then(Option::as_ref);
        (l.as_path(), held)
    });
    Layers::open_each(upper, lowers).map_err(|(path, source)| Error::Layer { path, source })
}

/// Builds the filesystem for `v` without mounting it.
pub fn build(v: &Validated) -> Result<UnionFs, Error> {
    let layers = open_layers(v)?;
    let cfg = &v.config;
    let upper = match (&cfg.upper, &cfg.work) {
        (Some(u), Some(w)) => {
            Some(Upper::new(u, w, XattrNs::for_current_user(), cfg.volatile).map_err(Error::Work)?)
        }
        _ => None,
    };
    let mut fs = UnionFs::new(layers, upper).map_err(|source| Error::Layer {
        path: cfg.lowers.first().cloned().unwrap_or_default(),
        source,
    })?;
    fs.io_uring = !cfg.no_io_uring;
    Ok(fs)
}

/// How many descriptors the daemon's table holds from the start (see
/// [`crate::sys::process::reserve_fds`]): the usual soft RLIMIT_NOFILE, so that the table does
/// not grow while requests are served.
const FDS_RESERVED: u64 = 1024;

/// Mounts the union `v` describes on its mountpoint. Returns once the mount is live.
pub fn mount(v: &Validated) -> Result<Mounted, Error> {
    let (cfg, mountpoint) = (&v.config, v.mountpoint.as_path());
    crate::sys::process::tune_malloc();
    // The daemon holds a descriptor per layer, and one per open file served by passthrough.
    let fd_reserve = crate::sys::process::reserve_fds(FDS_RESERVED);
    let fs = std::sync::Arc::new(build(v)?);
    let notifier_slot = fs.notifier.clone();
    // Objects are created with exactly the mode the caller asked for (the kernel has applied
    // the caller's umask already).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let mut config = Config::default();
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8),
    );
    config.clone_fd = true;
    let mount_err = |source| Error::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let read_only = cfg.upper.is_none();
    if nix::unistd::geteuid().is_root() {
        let dev = kernel_mount(mountpoint, read_only).map_err(mount_err)?;
        match dev.try_clone() {
            Ok(d) => {
                let _ = fs.dev.set(std::sync::Arc::new(d));
            }
            Err(e) => {
                tracing::warn!(error = %e, "no passthrough or io_uring: cannot keep /dev/fuse")
            }
        }
        let fuse = adapter::Fuse(fs.clone());
        let session = fuser::Session::from_fd(fuse, dev, SessionACL::All, config);
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
                return Err(mount_err(e));
            }
        };
        let _ = notifier_slot.set(session.notifier());
        let unmount = UnmountBy::Path(mountpoint.to_path_buf());
        return Ok(Mounted {
            session,
            unmount,
            fs,
            fd_reserve,
        });
    }
    let mut options = vec![
        MountOption::FSName("unionfs".into()),
        MountOption::Subtype("unionfs".into()),
        MountOption::DefaultPermissions,
    ];
    if read_only {
        options.push(MountOption::RO);
    }
    config.mount_options = options;
    config.acl = SessionACL::Owner;
    let fuse = adapter::Fuse(fs.clone());
    let mut session = fuser::Session::new(fuse, mountpoint, &config).map_err(mount_err)?;
    let _ = notifier_slot.set(session.notifier());
    let unmounter = session.unmount_callable();
    let unmount = UnmountBy::Fuser(std::sync::Arc::new(parking_lot::Mutex::new(unmounter)));
    Ok(Mounted {
        session,
        unmount,
        fs,
        fd_reserve,
    })
}

/// Mounts a FUSE filesystem on `mountpoint` with mount(2) and returns the /dev/fuse
/// connection (see the kernel's Documentation/filesystems/fuse.rst, "Mount options").
/// Set-id files and device nodes work, as container images need them; access is checked by
/// the kernel against the attributes we report (`default_permissions`), for every user.
fn kernel_mount(mountpoint: &Path, read_only: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let st = crate::layer_index::lstat(mountpoint)?;
    let opts = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions,allow_other",
        dev.as_raw_fd(),
        st.st_mode & libc::S_IFMT,
        nix::unistd::getuid(),
        nix::unistd::getgid(),
    );
    let mut flags = nix::mount::MsFlags::empty();
    if read_only {
        flags |= nix::mount::MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some("unionfs"),
        mountpoint,
        Some("fuse.unionfs"),
        flags,
        Some(opts.as_str()),
    )?;
    Ok(dev.into())
}

impl Mounted {
    /// A handle that unmounts this mount from another thread.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.unmount.clone())
    }

    /// Serves requests until the filesystem is unmounted (by [`Unmounter`], `umount` or
    /// `fusermount3 -u`). Returns `Ok` on a clean unmount.
    pub fn run(mut self) -> Result<(), Error> {
        drop(self.fd_reserve.take());
        // What can wait until the mount is ready, and would otherwise compete for the CPUs
        // with the caller being told it is: the io_uring queues (requests come over /dev/fuse
        // meanwhile) and loading the layers' indexes (lookups use plain system calls until a
        // layer's index is there).
        if self
            .fs
            .uring_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            if let Some(dev) = self.fs.dev.get() {
                *self.fs.queues.lock() = uring::start(self.fs.clone(), dev.clone());
            }
        }
        self.fs
            .layers
            .start_indexing(crate::layer_index::index::default_dir());
        let served = self.session.run().map_err(Error::Session);
        uring::join(std::mem::take(&mut *self.fs.queues.lock()));
        if let Some(up) = &self.fs.upper {
            up.finish_discards();
        }
        served
    }
}
