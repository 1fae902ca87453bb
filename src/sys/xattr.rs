//! Extended attributes on paths, never following a final symlink (the `l*xattr` family).
//!
//! Layers hold symlinks whose own xattrs must be read and copied, and a link inside a layer must
//! never lead the daemon out of it, so only the non-following calls are offered.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;

fn cstr(bytes: &[u8]) -> nix::Result<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Reads attribute `name` of `path`; `Ok(None)` when it is not set.
pub fn get(path: &Path, name: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let n = cstr(name.as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: `p` and `n` are NUL-terminated; with a zero size the kernel writes nothing and
        // returns the value's length, otherwise it writes at most `buf.capacity()` bytes.
        let len = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.capacity(),
            )
        };
        if len < 0 {
            return match Errno::last() {
                Errno::ENODATA => Ok(None),
                Errno::ERANGE => {
                    buf.reserve(buf.capacity().max(256));
                    continue;
                }
                e => Err(e),
            };
        }
        let len = len as usize;
        if buf.capacity() == 0 && len > 0 {
            buf.reserve(len);
            continue;
        }
        // SAFETY: the kernel initialised exactly `len` bytes, and `len <= capacity`.
        unsafe { buf.set_len(len) };
        return Ok(Some(buf));
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

/// Lists the attribute names of `path`.
pub fn list(path: &Path) -> nix::Result<Vec<OsString>> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: as in `get`: the kernel writes at most `buf.capacity()` bytes.
        let len = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.capacity()) };
        if len < 0 {
            match Errno::last() {
                Errno::ERANGE => {
                    buf.reserve(buf.capacity().max(256));
                    continue;
                }
                Errno::ENOTSUP => return Ok(Vec::new()),
                e => return Err(e),
            }
        }
        let len = len as usize;
        if buf.capacity() == 0 && len > 0 {
            buf.reserve(len);
            continue;
        }
        // SAFETY: the kernel initialised exactly `len` bytes, and `len <= capacity`.
        unsafe { buf.set_len(len) };
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect());
    }
}
