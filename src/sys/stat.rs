//! Whether a path is the root of a mount, from statx(2)'s `STATX_ATTR_MOUNT_ROOT`, which
//! neither nix nor std exposes.
//!
//! One system call answers what reading and parsing `/proc/self/mountinfo` otherwise answers,
//! and mount validation asks it of every mountpoint before anything is mounted.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// `Some(true)` if `path` (not followed if it is a symbolic link) is the root of a mount,
/// `Some(false)` if it is not, `None` if the kernel does not say (before Linux 5.8).
pub fn is_mount_root(path: &Path) -> nix::Result<Option<bool>> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `name` is a NUL-terminated string that outlives the call, and `stx` points at
    // writable memory the size of `struct statx`, which the kernel fills on success.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            0,
            stx.as_mut_ptr(),
        )
    };
    Errno::result(rc)?;
    // SAFETY: statx returned 0, so the kernel has written the structure (and it was zeroed
    // before, so every field is initialised either way).
    let stx = unsafe { stx.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok((stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_mount_roots_from_other_directories() {
        // `/` and `/proc` are mount roots on every Linux this runs on; `/proc/self` is not.
        assert_eq!(is_mount_root(Path::new("/")), Ok(Some(true)));
        assert_eq!(is_mount_root(Path::new("/proc")), Ok(Some(true)));
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(is_mount_root(tmp.path()), Ok(Some(false)));
        assert_eq!(is_mount_root(&tmp.path().join("nope")), Err(Errno::ENOENT));
    }
}
