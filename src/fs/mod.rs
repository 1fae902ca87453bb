//! The FUSE glue: the only module that knows `fuser`.
//!
//! (Being written: the contract below is what the command line builds on.)

use std::path::Path;

use crate::config::MountConfig;

/// Why a mount could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot mount on {path}")]
    Mount {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fuse session failed")]
    Session(#[source] std::io::Error),
}

/// A live mount; [`Mounted::run`] serves it until it is unmounted.
pub struct Mounted {
    _private: (),
}

/// Unmounts a [`Mounted`] from another thread (e.g. on SIGTERM).
pub struct Unmounter {
    _private: (),
}

impl Unmounter {
    /// Unmounts; `run` then returns.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Mounts the union described by `cfg` on `mountpoint`. Returns once the mount is live.
pub fn mount(cfg: &MountConfig, mountpoint: &Path) -> Result<Mounted, Error> {
    let _ = (cfg, mountpoint);
    Err(Error::Session(std::io::Error::other("not yet")))
}

impl Mounted {
    /// A handle that unmounts this mount from another thread.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter { _private: () }
    }

    /// Serves requests until the filesystem is unmounted (by [`Unmounter`], `umount` or
    /// `fusermount3 -u`). Returns `Ok` on a clean unmount.
    pub fn run(self) -> Result<(), Error> {
        Ok(())
    }
}
