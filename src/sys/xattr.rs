//! Extended attributes, never following a final symlink.
//!
//! Layers hold symlinks whose own xattrs must be read and copied, and a link inside a layer must
//! never lead the daemon out of it, so only the non-following calls are offered.
//!
//! Reads name their object as a [`Target`]: a directory descriptor and a name relative to it,
//! passed to `getxattrat`/`listxattrat` (Linux 6.13), plus the same object as one path for
//! older kernels' `lgetxattr`/`llistxattr`. The daemon reads xattrs on every lookup of an upper
//! directory (opaque, redirect) and on every `getxattr` request (`ls -l` asks one per file); its
//! layer names are `/proc/self/fd/N/...`, which costs the kernel a walk through procfs per
//! call (6.5 µs against 1 µs from the descriptor, measured here). Writes are rare and take the
//! whole name. An object with no name left (unlinked while open) is reached through its open
//! file ([`open`]).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;

/// An object whose xattrs are read: a directory and a name relative to it, and the whole name.
pub trait Target {
    /// The directory to start from and the name relative to it.
    fn at(&self) -> (BorrowedFd<'_>, &Path);
    /// The same object as a single path.
    fn whole(&self) -> &Path;
}

impl Target for Path {
    fn at(&self) -> (BorrowedFd<'_>, &Path) {
        (nix::fcntl::AT_FDCWD, self)
    }

    fn whole(&self) -> &Path {
        self
    }
}

impl Target for PathBuf {
    fn at(&self) -> (BorrowedFd<'_>, &Path) {
        self.as_path().at()
    }

    fn whole(&self) -> &Path {
        self
    }
}

/// `getxattrat` and `listxattrat` (Linux 6.13). System calls this new have one number on every
/// architecture but alpha; `libc` names them for only a few targets so far.
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// `struct xattr_args` of `getxattrat`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Whether this kernel offers the `*xattrat` calls, probed once on `/`. A sandbox's seccomp
/// filter may refuse an unknown call with EPERM rather than ENOSYS; either means "use paths".
fn have_xattrat() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        let name = c"user.unionfs.probe";
        let mut args = XattrArgs {
            value: 0,
            size: 0,
            flags: 0,
        };
        // SAFETY: the strings are NUL-terminated and `args` names no buffer (size 0).
        let r = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        r >= 0 || !matches!(Errno::last(), Errno::ENOSYS | Errno::EPERM)
    })
}

fn cstr(bytes: &[u8]) -> nix::Result<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// One `getxattrat(dir, rel, AT_SYMLINK_NOFOLLOW, name)` into `buf` (`lgetxattr(whole)` where
/// the kernel lacks it): the value's length.
fn raw_get<T: Target + ?Sized>(t: &T, name: &CStr, buf: &mut [u8]) -> nix::Result<usize> {
    if have_xattrat() {
        let (dir, rel) = t.at();
        let rel = cstr(rel.as_os_str().as_bytes())?;
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
            flags: 0,
        };
        // SAFETY: `rel` and `name` are NUL-terminated, `args` is a valid `struct xattr_args`
        // of the size passed, and its buffer is valid for `args.size <= buf.len()` bytes.
        let r = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                rel.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        return Errno::result(r).map(|n| n as usize);
    }
    let p = cstr(t.whole().as_os_str().as_bytes())?;
    // SAFETY: `p` and `name` are NUL-terminated; the kernel writes at most `buf.len()` bytes.
    let r = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    Errno::result(r).map(|n| n as usize)
}

/// One `listxattrat(dir, rel, AT_SYMLINK_NOFOLLOW)` into `buf` (`llistxattr(whole)` where the
/// kernel lacks it).
fn raw_list<T: Target + ?Sized>(t: &T, buf: &mut [u8]) -> nix::Result<usize> {
    if have_xattrat() {
        let (dir, rel) = t.at();
        let rel = cstr(rel.as_os_str().as_bytes())?;
        // SAFETY: `rel` is NUL-terminated; the kernel writes at most `buf.len()` bytes.
        let r = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                rel.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        return Errno::result(r).map(|n| n as usize);
    }
    let p = cstr(t.whole().as_os_str().as_bytes())?;
    // SAFETY: as above.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(r).map(|n| n as usize)
}

/// Reads attribute `name` of `t`; `Ok(None)` when it is not set.
pub fn get<T: Target + ?Sized>(t: &T, name: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    let n = cstr(name.as_bytes())?;
    value_of(fill(|buf| raw_get(t, &n, buf)))
}

/// Runs `call`, which fills the buffer it is given and returns the length it used, again with
/// a larger buffer each time the kernel answers ERANGE. The first buffer is on the stack and
/// holds what the daemon reads itself (markers, origins, capabilities) and most lists: the
/// usual answer on the request path, "not set", allocates nothing.
fn fill(mut call: impl FnMut(&mut [u8]) -> nix::Result<usize>) -> nix::Result<Vec<u8>> {
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    loop {
        let buf: &mut [u8] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        match call(buf) {
            Ok(len) => return Ok(buf[..len].to_vec()),
            Err(Errno::ERANGE) => large.resize(large.len().max(small.len()) * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// An attribute's value as read by [`fill`]: `None` when it is not set.
fn value_of(read: nix::Result<Vec<u8>>) -> nix::Result<Option<Vec<u8>>> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets attribute `name` of `path` to `value`; `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
pub fn set(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> nix::Result<()> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for `value.len()` bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(r).map(drop)
}

/// Removes attribute `name` of `path`.
pub fn remove(path: &Path, name: &OsStr) -> nix::Result<()> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated.
    Errno::result(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// Lists the attribute names of `t`.
pub fn list<T: Target + ?Sized>(t: &T) -> nix::Result<Vec<OsString>> {
    names_of(fill(|buf| raw_list(t, buf)))
}

/// The names of a list read by [`fill`] (each ends with a NUL); none where the file system
/// has no xattrs.
fn names_of(read: nix::Result<Vec<u8>>) -> nix::Result<Vec<OsString>> {
    match read {
        Ok(list) => Ok(list
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect()),
        Err(Errno::ENOTSUP) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The calls on an open file, for an object that has no name left (unlinked while open).
pub mod open {
    use super::*;

    /// Reads attribute `name` of open file `f`; `Ok(None)` when it is not set.
    pub fn get(f: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<Vec<u8>>> {
        let n = cstr(name.as_bytes())?;
        value_of(fill(|buf| {
            // SAFETY: `n` is NUL-terminated; the kernel writes at most `buf.len()` bytes.
            let r = unsafe {
                libc::fgetxattr(
                    f.as_raw_fd(),
                    n.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            Errno::result(r).map(|len| len as usize)
        }))
    }

    /// Sets attribute `name` of open file `f` (see [`super::set`]).
    pub fn set(f: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> nix::Result<()> {
        let n = cstr(name.as_bytes())?;
        // SAFETY: `n` is NUL-terminated and `value` is valid for `value.len()` bytes.
        let r = unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        Errno::result(r).map(drop)
    }

    /// Removes attribute `name` of open file `f`.
    pub fn remove(f: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
        let n = cstr(name.as_bytes())?;
        // SAFETY: `n` is NUL-terminated.
        Errno::result(unsafe { libc::fremovexattr(f.as_raw_fd(), n.as_ptr()) }).map(drop)
    }

    /// Lists the attribute names of open file `f`.
    pub fn list(f: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
        names_of(fill(|buf| {
            // SAFETY: the kernel writes at most `buf.len()` bytes.
            let r = unsafe { libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            Errno::result(r).map(|len| len as usize)
        }))
    }
}
