//! The operations a differential case applies to a mountpoint, how each one is carried out
//! (plain std/nix/libc calls, as an application would), and the proptest strategy that draws
//! sequences of them.
//!
//! Paths come from a small universe (names from the fixture plus a few new ones) so that
//! generated operations collide often: renames over existing names, links of already linked
//! files, mkdir over a whiteout, rmdir of merged directories...

use std::ffi::CString;
use std::fmt;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{fchownat, mkfifo, Gid, Uid};
use proptest::prelude::*;

use crate::fixture::content;

/// One operation on the merged tree. Paths are relative to the mountpoint. `Debug` prints
/// valid Rust (after an `Op::` prefix), so a failing generated sequence can be pasted into a
/// hand-written test.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// open(O_WRONLY|O_CREAT, 0644) and write `len` bytes at offset 0 (no truncation).
    Write {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// open(O_WRONLY|O_APPEND) (no O_CREAT) and write `len` bytes.
    Append {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// open(O_WRONLY|O_CREAT|O_TRUNC, 0644) and write `len` bytes.
    Overwrite {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// truncate(2).
    Truncate {
        path: &'static str,
        size: u64,
    },
    Mkdir {
        path: &'static str,
        mode: u32,
    },
    Rmdir(&'static str),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    /// renameat2(RENAME_NOREPLACE).
    RenameNoReplace(&'static str, &'static str),
    /// renameat2(RENAME_EXCHANGE).
    Exchange(&'static str, &'static str),
    /// link(old, new).
    Link(&'static str, &'static str),
    /// symlink(target, path).
    Symlink {
        target: &'static str,
        path: &'static str,
    },
    /// chmod(2) (follows symlinks).
    Chmod {
        path: &'static str,
        mode: u32,
    },
    /// lchown(2).
    Chown {
        path: &'static str,
        uid: u32,
        gid: u32,
    },
    /// lsetxattr(2).
    SetXattr {
        path: &'static str,
        name: &'static str,
        value: &'static str,
    },
    /// lremovexattr(2).
    RemoveXattr {
        path: &'static str,
        name: &'static str,
    },
    /// mkfifo(path, 0644).
    Mkfifo(&'static str),
    /// Unmount and mount again on the same upper and work directories.
    Remount,
}

/// What an operation returned: success or the errno.
pub type OpResult = Result<(), Errno>;

/// Formats an `OpResult` as `ok` or the errno's name.
pub fn show_result(r: &OpResult) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Op::{self:?}")
    }
}

impl fmt::Debug for Op {
    // By hand only so that modes print in octal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write { path, len, seed } => {
                write!(f, "Write {{ path: {path:?}, len: {len}, seed: {seed} }}")
            }
            Op::Append { path, len, seed } => {
                write!(f, "Append {{ path: {path:?}, len: {len}, seed: {seed} }}")
            }
            Op::Overwrite { path, len, seed } => {
                write!(
                    f,
                    "Overwrite {{ path: {path:?}, len: {len}, seed: {seed} }}"
                )
            }
            Op::Truncate { path, size } => write!(f, "Truncate {{ path: {path:?}, size: {size} }}"),
            Op::Mkdir { path, mode } => write!(f, "Mkdir {{ path: {path:?}, mode: {mode:#o} }}"),
            Op::Rmdir(p) => write!(f, "Rmdir({p:?})"),
            Op::Unlink(p) => write!(f, "Unlink({p:?})"),
            Op::Rename(a, b) => write!(f, "Rename({a:?}, {b:?})"),
            Op::RenameNoReplace(a, b) => write!(f, "RenameNoReplace({a:?}, {b:?})"),
            Op::Exchange(a, b) => write!(f, "Exchange({a:?}, {b:?})"),
            Op::Link(a, b) => write!(f, "Link({a:?}, {b:?})"),
            Op::Symlink { target, path } => {
                write!(f, "Symlink {{ target: {target:?}, path: {path:?} }}")
            }
            Op::Chmod { path, mode } => write!(f, "Chmod {{ path: {path:?}, mode: {mode:#o} }}"),
            Op::Chown { path, uid, gid } => {
                write!(f, "Chown {{ path: {path:?}, uid: {uid}, gid: {gid} }}")
            }
            Op::SetXattr { path, name, value } => write!(
                f,
                "SetXattr {{ path: {path:?}, name: {name:?}, value: {value:?} }}"
            ),
            Op::RemoveXattr { path, name } => {
                write!(f, "RemoveXattr {{ path: {path:?}, name: {name:?} }}")
            }
            Op::Mkfifo(p) => write!(f, "Mkfifo({p:?})"),
            Op::Remount => write!(f, "Remount"),
        }
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("test paths have no NUL")
}

fn write_with(path: &Path, opts: &mut std::fs::OpenOptions, len: usize, seed: u64) -> OpResult {
    // O_NONBLOCK so that opening a fifo for writing fails with ENXIO instead of blocking.
    let mut f = opts
        .custom_flags(libc::O_NONBLOCK)
        .mode(0o644)
        .open(path)
        .map_err(errno)?;
    f.write_all(&content(seed, len)).map_err(errno)
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> OpResult {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both strings are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

impl Op {
    /// Carries out the operation under `root` (a mountpoint). `Remount` is the caller's job.
    pub fn apply(&self, root: &Path) -> OpResult {
        let p = |rel: &str| root.join(rel);
        match *self {
            Op::Write { path, len, seed } => write_with(
                &p(path),
                std::fs::OpenOptions::new().write(true).create(true),
                len,
                seed,
            ),
            Op::Append { path, len, seed } => write_with(
                &p(path),
                std::fs::OpenOptions::new().append(true),
                len,
                seed,
            ),
            Op::Overwrite { path, len, seed } => write_with(
                &p(path),
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                len,
                seed,
            ),
            Op::Truncate { path, size } => nix::unistd::truncate(&p(path), size as libc::off_t),
            Op::Mkdir { path, mode } => std::fs::DirBuilder::new()
                .mode(mode)
                .create(p(path))
                .map_err(errno),
            Op::Rmdir(path) => std::fs::remove_dir(p(path)).map_err(errno),
            Op::Unlink(path) => std::fs::remove_file(p(path)).map_err(errno),
            Op::Rename(a, b) => std::fs::rename(p(a), p(b)).map_err(errno),
            Op::RenameNoReplace(a, b) => renameat2(&p(a), &p(b), libc::RENAME_NOREPLACE),
            Op::Exchange(a, b) => renameat2(&p(a), &p(b), libc::RENAME_EXCHANGE),
            Op::Link(a, b) => std::fs::hard_link(p(a), p(b)).map_err(errno),
            Op::Symlink { target, path } => symlink(target, p(path)).map_err(errno),
            Op::Chmod { path, mode } => {
                std::fs::set_permissions(p(path), std::fs::Permissions::from_mode(mode))
                    .map_err(errno)
            }
            Op::Chown { path, uid, gid } => fchownat(
                nix::fcntl::AT_FDCWD,
                &p(path),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
            Op::SetXattr { path, name, value } => {
                xattr::set(p(path), name, value.as_bytes()).map_err(errno)
            }
            Op::RemoveXattr { path, name } => xattr::remove(p(path), name).map_err(errno),
            Op::Mkfifo(path) => mkfifo(&p(path), nix::sys::stat::Mode::from_bits_truncate(0o644)),
            Op::Remount => unreachable!("the runner handles Remount"),
        }
    }
}

/// The path universe of generated operations: fixture names (files, directories from one or
/// several layers, whiteouts, the opaque dir, hard links, special files) and new names.
pub const PATHS: &[&str] = &[
    "a", "b", "c", "new", "big", "hl1", "hl2", "h3a", "h3b", "d1", "d1/x", "d1/y1", "d1/h3c",
    "d1/sub", "d1/new", "d2", "d2/sub", "d2/sub/y", "d2/l0", "m", "m/both", "m/l1file", "m/msub",
    "m/wo", "m/new", "opq", "opq/new", "opq/old", "gone", "gonedir", "suid", "priv", "xa", "fifo",
    "ln", "dang", "e", "e2", "nd", "nd/f", "e/f",
];

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(PATHS)
}

fn data() -> impl Strategy<Value = (usize, u64)> {
    (
        prop::sample::select(&[1usize, 100, 5000, 70_000][..]),
        0u64..4,
    )
}

/// One generated operation (weights favour the namespace operations, which are where union
/// filesystems go wrong).
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (path(), data()).prop_map(|(path, (len, seed))| Op::Write { path, len, seed }),
        1 => (path(), data()).prop_map(|(path, (len, seed))| Op::Append { path, len, seed }),
        1 => (path(), data()).prop_map(|(path, (len, seed))| Op::Overwrite { path, len, seed }),
        1 => (path(), prop::sample::select(&[0u64, 7, 5000, (2 << 20) + 1][..]))
            .prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => (path(), prop::sample::select(&[0o755u32, 0o700][..]))
            .prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        2 => path().prop_map(Op::Rmdir),
        2 => path().prop_map(Op::Unlink),
        4 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::RenameNoReplace(a, b)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Exchange(a, b)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (prop::sample::select(&["a", "d1", "../a", "nowhere"][..]), path())
            .prop_map(|(target, path)| Op::Symlink { target, path }),
        1 => (path(), prop::sample::select(&[0o600u32, 0o755, 0o4755, 0o1777, 0o000][..]))
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), prop::sample::select(&[(0u32, 0u32), (1000, 1000), (1001, 0)][..]))
            .prop_map(|(path, (uid, gid))| Op::Chown { path, uid, gid }),
        1 => (path(), prop::sample::select(&["user.one", "user.new"][..]),
              prop::sample::select(&["v", "", "longer value"][..]))
            .prop_map(|(path, name, value)| Op::SetXattr { path, name, value }),
        1 => (path(), prop::sample::select(&["user.one", "user.new"][..]))
            .prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => path().prop_map(Op::Mkfifo),
        1 => Just(Op::Remount),
    ]
}

/// A sequence of 1–24 operations.
pub fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=24)
}
