//! Inode attributes of an open file — the flags chattr(1) sets and the extended `fsxattr` —
//! through the FS_IOC_GETFLAGS/SETFLAGS and FS_IOC_FSGETXATTR/FSSETXATTR ioctls
//! (ioctl_iflags(2)), which nix and std do not wrap.
//!
//! These are the only ioctls the kernel forwards to a FUSE filesystem on behalf of the
//! filesystem itself (lsattr, chattr, `xfs_io -c lsattr`); the union answers them from the
//! object behind a file, as overlayfs does. The kernel has already checked the caller's
//! permission (owner, CAP_LINUX_IMMUTABLE) before the request arrives.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// One of the inode-attribute ioctls, by its command number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAttrOp {
    GetFlags,
    SetFlags,
    GetFsxattr,
    SetFsxattr,
}

/// `struct fsxattr` is 28 bytes; the flags are an `int`, though the command encodes a `long`.
const FSXATTR_LEN: usize = 28;
const FLAGS_LEN: usize = 4;

impl FileAttrOp {
    /// Each operation with its command number (linux/fs.h).
    fn table() -> [(libc::c_ulong, FileAttrOp); 4] {
        let long = std::mem::size_of::<libc::c_long>();
        [
            (nix::request_code_read!(b'f', 1, long), FileAttrOp::GetFlags),
            (
                nix::request_code_write!(b'f', 2, long),
                FileAttrOp::SetFlags,
            ),
            (
                nix::request_code_read!(b'X', 31, FSXATTR_LEN),
                FileAttrOp::GetFsxattr,
            ),
            (
                nix::request_code_write!(b'X', 32, FSXATTR_LEN),
                FileAttrOp::SetFsxattr,
            ),
        ]
    }

    /// The operation with ioctl command `cmd`, or `None` for any other command.
    pub fn from_cmd(cmd: u32) -> Option<FileAttrOp> {
        Self::table()
            .into_iter()
            .find(|&(code, _)| code == libc::c_ulong::from(cmd))
            .map(|(_, op)| op)
    }

    fn code(self) -> libc::c_ulong {
        let (code, _) = Self::table()
            .into_iter()
            .find(|&(_, op)| op == self)
            .expect("every operation is in the table");
        code
    }

    /// The size of the argument the command reads or writes.
    pub fn arg_len(self) -> usize {
        match self {
            FileAttrOp::GetFlags | FileAttrOp::SetFlags => FLAGS_LEN,
            FileAttrOp::GetFsxattr | FileAttrOp::SetFsxattr => FSXATTR_LEN,
        }
    }

    /// Whether the command changes the file.
    pub fn is_set(self) -> bool {
        matches!(self, FileAttrOp::SetFlags | FileAttrOp::SetFsxattr)
    }
}

/// The argument of any of the commands, aligned for the kernel's `int` and `fsxattr`.
#[repr(C, align(8))]
struct Arg([u8; FSXATTR_LEN]);

/// Runs `op` on the file open on `fd`. A set takes its argument from `input` (exactly
/// [`FileAttrOp::arg_len`] bytes, else EINVAL) and returns nothing; a get returns the bytes
/// the kernel wrote.
pub fn fileattr(fd: impl AsFd, op: FileAttrOp, input: &[u8]) -> nix::Result<Vec<u8>> {
    let len = op.arg_len();
    let mut arg = Arg([0; FSXATTR_LEN]);
    if op.is_set() {
        if input.len() != len {
            return Err(Errno::EINVAL);
        }
        arg.0[..len].copy_from_slice(input);
    }
    // SAFETY: every command of `FileAttrOp` reads or writes at most `len` bytes at its
    // argument, and `arg` holds FSXATTR_LEN >= len bytes, suitably aligned, for the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), op.code(), arg.0.as_mut_ptr()) };
    Errno::result(rc)?;
    if op.is_set() {
        return Ok(Vec::new());
    }
    Ok(arg.0[..len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_match_the_kernel_headers() {
        // linux/fs.h on a 64-bit machine.
        assert_eq!(
            FileAttrOp::from_cmd(0x8008_6601),
            Some(FileAttrOp::GetFlags)
        );
        assert_eq!(
            FileAttrOp::from_cmd(0x4008_6602),
            Some(FileAttrOp::SetFlags)
        );
        assert_eq!(
            FileAttrOp::from_cmd(0x801c_581f),
            Some(FileAttrOp::GetFsxattr)
        );
        assert_eq!(
            FileAttrOp::from_cmd(0x401c_5820),
            Some(FileAttrOp::SetFsxattr)
        );
        // TCGETS, as `isatty` sends it on every open by some runtimes.
        assert_eq!(FileAttrOp::from_cmd(0x5401), None);
    }

    #[test]
    fn flags_of_a_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let before = fileattr(&f, FileAttrOp::GetFlags, &[]).unwrap();
        assert_eq!(before.len(), 4);
        // Setting the flags a file already has succeeds on any filesystem that has them.
        assert_eq!(fileattr(&f, FileAttrOp::SetFlags, &before).unwrap(), b"");
        assert_eq!(fileattr(&f, FileAttrOp::GetFlags, &[]).unwrap(), before);
        assert_eq!(
            fileattr(&f, FileAttrOp::SetFlags, &[0; 3]),
            Err(Errno::EINVAL)
        );
    }
}
