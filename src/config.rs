//! What a mount is made of: lower layers, an optional upper and work directory, and options.
//!
//! Both command-line forms (`--lower A:B --upper U --work W` and the mount(8) style
//! `-o lowerdir=A:B,upperdir=U,workdir=W`) end up as one [`MountConfig`], which is validated
//! here before anything is mounted, so that a bad path never leaves a half-made mount behind.

use std::path::PathBuf;

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
}
