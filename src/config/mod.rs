//! What a mount is made of: lower layers, an optional upper and work directory, and options.
//!
//! Both command-line forms (`--lower A:B --upper U --work W` and the mount(8) style
//! `-o lowerdir=A:B,upperdir=U,workdir=W`) end up as one [`MountConfig`], which is validated
//! here before anything is mounted, so that a bad path never leaves a half-made mount behind.
//!
//! Everything here is pure logic over strings and `stat` results: the option parser follows the
//! overlayfs option syntax (Documentation/filesystems/overlayfs.rst: `lowerdir` is `:`-separated,
//! top-most first, and a backslash escapes `:` and `,`), and [`MountConfig::validate`] reads the
//! machine's state only through the small [`Host`] trait, so tests can fake `/dev/fuse` and the
//! mount table. Paths stay `OsStr` bytes end to end; this module never mounts, forks or logs
//! anywhere but through `tracing`.
//!
//! The pieces live in submodules and are re-exported here, so users only ever name
//! `unionfs::config::*`: `options` parses mount(8)-style options into a [`MountConfig`],
//! `validate` checks a configuration against the machine, `mountinfo` reads the mount table,
//! and `logpath` says where a detached daemon logs.

use std::path::PathBuf;

mod logpath;
mod mountinfo;
mod options;
mod validate;

pub use logpath::{default_log_dir, log_file_name};
pub use mountinfo::{find_mount, MountEntry};
pub use options::{parse_lowerdir, MountOptions, OptionError};
pub use validate::{ConfigError, Host, RealHost, Role, Validated};

/// A fully described union mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountConfig {
    /// Read-only layers, top-most first (as overlayfs's `lowerdir`).
    pub lowers: Vec<PathBuf>,
    /// Writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Scratch directory on the same filesystem as `upper`, used to stage copy-ups.
    pub work: Option<PathBuf>,
    /// Skip the fsyncs of copy-up and of fsync(2), like overlayfs's `volatile`.
    pub volatile: bool,
    /// Take requests only over `/dev/fuse`, even where the kernel offers io_uring.
    pub no_io_uring: bool,
}
