//! The FUSE daemon that serves a container's union, in a forked process of its own, and the
//! guard that stops it.
//!
//! The union is mounted in the host's mount namespace *before* init unshares its own, so that
//! init's copy of the mount table holds it; the daemon runs outside every container namespace
//! and outside the caller's session (a ^C on the terminal does not reach it). It is stopped by
//! unmounting: once the container's processes are gone, [`Daemon::stop`] unmounts on the host,
//! the kernel ends the FUSE connection and the daemon's session returns. If the launcher dies
//! without that, the daemon gets SIGTERM (PR_SET_PDEATHSIG) and detaches the mount itself.
//! The guard's `Drop` stops it in every path, so no mount or daemon outlives `unionfs run`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::Validated;
use crate::sys::ns::{Linux, Syscalls};
use crate::sys::process::{self, Fork};

/// Why the daemon could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create a pipe")]
    Pipe(#[source] nix::errno::Errno),
    #[error("cannot start the filesystem daemon")]
    Fork(#[source] process::Error),
    #[error("cannot read the daemon's report")]
    Report(#[source] std::io::Error),
    #[error("cannot mount the union on {path}: {message}")]
    Mount { path: PathBuf, message: String },
    #[error("cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running daemon with its union mounted; stopped on drop.
#[derive(Debug)]
pub struct Daemon {
    pid: Option<Pid>,
    mountpoint: PathBuf,
}

impl Daemon {
    /// Forks the daemon, which mounts `v` on its mountpoint and logs to `log`; returns once the
    /// mount is live. Must be called while this process has one thread.
    pub fn start(v: &Validated, log: &Path) -> Result<Daemon, Error> {
        let mountpoint = v.mountpoint.as_path();
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
        let parent = nix::unistd::getpid();
        match process::fork().map_err(Error::Fork)? {
            Fork::Child => {
                drop(rd);
                let code = serve(v, log, parent, File::from(wr));
                process::exit_now(code)
            }
            Fork::Parent(pid) => {
                drop(wr);
                let mut report = Vec::new();
                File::from(rd)
                    .read_to_end(&mut report)
                    .map_err(Error::Report)?;
                let daemon = Daemon {
                    pid: Some(pid),
                    mountpoint: mountpoint.to_path_buf(),
                };
                match report.split_first() {
                    Some((b'+', _)) => Ok(daemon),
                    other => {
                        let message = match other {
                            Some((_, msg)) => String::from_utf8_lossy(msg).into_owned(),
                            None => format!("the daemon died (see {})", log.display()),
                        };
                        drop(daemon);
                        Err(Error::Mount {
                            path: mountpoint.to_path_buf(),
                            message,
                        })
                    }
                }
            }
        }
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// Unmounts (lazily if still busy after a few tries) and waits for the daemon to exit,
    /// killing it if it does not.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some(pid) = self.pid.take() else {
            return Ok(());
        };
        let result = unmount(&self.mountpoint);
        match process::wait_exit(pid, Duration::from_secs(5)) {
            Ok(true) => return result,
            Ok(false) => {}
            // Not our child any more (already reaped): nothing to wait for.
            Err(nix::errno::Errno::ECHILD | nix::errno::Errno::ESRCH) => return result,
            Err(e) => tracing::warn!(%pid, error = %e, "cannot wait for the filesystem daemon"),
        }
        tracing::warn!(%pid, "the filesystem daemon did not exit after the unmount; killing it");
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        result
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::error!(mountpoint = %self.mountpoint.display(), "{}", crate::run::init::error_chain(&err));
        }
    }
}

fn unmount(mnt: &Path) -> Result<(), Error> {
    let sys = Linux;
    let mut last = None;
    for _ in 0..25 {
        match sys.umount(mnt, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(source) => {
                return Err(Error::Unmount {
                    path: mnt.to_path_buf(),
                    source,
                })
            }
        }
    }
    tracing::warn!(mountpoint = %mnt.display(), ?last, "still busy; detaching it");
    sys.umount(mnt, MntFlags::MNT_DETACH)
        .map_err(|source| Error::Unmount {
            path: mnt.to_path_buf(),
            source,
        })
}

/// The daemon process: own session, log file as stdout/stderr, mount, report, serve.
fn serve(v: &Validated, log: &Path, parent: Pid, mut ready: File) -> i32 {
    let mnt = v.mountpoint.as_path();
    let fail = |ready: &mut File, msg: String| {
        let _ = write!(ready, "-{msg}");
        1
    };
    let _ = nix::unistd::setsid();
    if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() || nix::unistd::getppid() != parent
    {
        return fail(&mut ready, "the launcher is gone".into());
    }
    let log_file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(f) => f,
        Err(e) => return fail(&mut ready, format!("cannot open {}: {e}", log.display())),
    };
    if let Err(e) = process::detach_stdio(&log_file) {
        return fail(&mut ready, crate::run::init::error_chain(&e));
    }
    let signals = match process::block_signals(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]) {
        Ok(s) => s,
        Err(e) => return fail(&mut ready, crate::run::init::error_chain(&e)),
    };
    let mounted = match crate::fs::mount(v) {
        Ok(m) => m,
        Err(e) => return fail(&mut ready, crate::run::init::error_chain(&e)),
    };
    let _ = ready.write_all(b"+");
    drop(ready);
    let mnt_owned = mnt.to_path_buf();
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.wait().is_ok() {
                // The launcher died: nothing else will unmount.
                let _ = Linux.umount(&mnt_owned, MntFlags::MNT_DETACH);
            }
        });
    if watcher.is_err() {
        eprintln!("unionfs: cannot start the signal thread");
    }
    match mounted.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("unionfs: {}", crate::run::init::error_chain(&e));
            1
        }
    }
}
