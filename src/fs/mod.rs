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
mod namespace;

use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, SessionACL};

use crate::config::MountConfig;
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
    session: fuser::Session<UnionFs>,
}

/// Unmounts a [`Mounted`] from another thread (e.g. on SIGTERM).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    /// Unmounts; `run` then returns.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

fn open_layers(cfg: &MountConfig) -> Result<Layers, Error> {
    for p in cfg.upper.iter().chain(cfg.lowers.iter()) {
        crate::layer_index::Layer::open(p).map_err(|source| Error::Layer {
            path: p.clone(),
            source,
        })?;
    }
    Layers::open(cfg.upper.as_deref(), &cfg.lowers).map_err(|source| Error::Layer {
        path: cfg.lowers.first().cloned().unwrap_or_default(),
        source,
    })
}

/// Builds the filesystem for `cfg` without mounting it.
pub fn build(cfg: &MountConfig) -> Result<UnionFs, Error> {
    let layers = open_layers(cfg)?;
    let upper = match (&cfg.upper, &cfg.work) {
        (Some(u), Some(w)) => {
            Some(Upper::new(u, w, XattrNs::for_current_user(), cfg.volatile).map_err(Error::Work)?)
        }
        _ => None,
    };
    UnionFs::new(layers, upper).map_err(|source| Error::Layer {
        path: cfg.lowers.first().cloned().unwrap_or_default(),
        source,
    })
}

/// Mounts the union described by `cfg` on `mountpoint`. Returns once the mount is live.
pub fn mount(cfg: &MountConfig, mountpoint: &Path) -> Result<Mounted, Error> {
    let fs = build(cfg)?;
    let notifier_slot = fs.notifier.clone();
    // Objects are created with exactly the mode the caller asked for (the kernel has applied
    // the caller's umask already).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let mut options = vec![
        MountOption::FSName("unionfs".into()),
        MountOption::Subtype("unionfs".into()),
        MountOption::DefaultPermissions,
        MountOption::Suid,
        MountOption::Dev,
    ];
    if cfg.upper.is_none() {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if nix::unistd::geteuid().is_root() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8),
    );
    config.clone_fd = true;
    let session = fuser::Session::new(fs, mountpoint, &config).map_err(|source| Error::Mount {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let _ = notifier_slot.set(session.notifier());
    Ok(Mounted { session })
}

impl Mounted {
    /// A handle that unmounts this mount from another thread.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the filesystem is unmounted (by [`Unmounter`], `umount` or
    /// `fusermount3 -u`). Returns `Ok` on a clean unmount.
    pub fn run(self) -> Result<(), Error> {
        self.session.run().map_err(Error::Session)
    }
}
