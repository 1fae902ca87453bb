//! Reading a file straight into the unused capacity of a buffer, which std's `read_at` cannot:
//! it wants initialised memory.
//!
//! A FUSE READ is answered from a reply buffer that every request of a queue reuses. Reading
//! the file into it directly spares a zeroed allocation of the request's size and a copy of
//! the data, both per READ, and both as large as the read itself (up to 1 MiB).
//!
//! [`pread_full_append`] first reads without waiting for the disk (RWF_NOWAIT), so that its
//! caller learns when a read is about to sleep on I/O and can prepare for it (see
//! `fs::uring::before_blocking_io`); data in the page cache costs one system call as before.

use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// Appends to `out` what preadv2(2) with `flags` returns for up to `len` bytes of `file` at
/// `offset`, and returns how many were appended (0 at the end of the file). Reserves the
/// room first.
fn read_append(
    file: &impl AsRawFd,
    out: &mut Vec<u8>,
    len: usize,
    offset: u64,
    flags: libc::c_int,
) -> nix::Result<usize> {
    out.reserve(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `iov` names `spare`, writable memory of `len` bytes owned by `out` and not
    // aliased while the call runs; preadv2 writes at most `len` bytes there and returns how
    // many.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
    let n = usize::try_from(Errno::result(n)?).expect("preadv2 returned a count");
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity (n <= len).
    unsafe { out.set_len(out.len() + n) };
    Ok(n)
}

/// [`read_append`] until `len` bytes are appended or the file ends; returns how many were.
/// Calls `before_blocking` once, before the first read that will wait for the disk (where the
/// file system cannot tell, before the first read). On an error, `out` is left as it was.
pub fn pread_full_append(
    file: &impl AsRawFd,
    out: &mut Vec<u8>,
    len: usize,
    offset: u64,
    before_blocking: impl FnOnce(),
) -> nix::Result<usize> {
    let start = out.len();
    let mut flags = libc::RWF_NOWAIT;
    let mut before_blocking = Some(before_blocking);
    while out.len() - start < len {
        let done = out.len() - start;
        match read_append(file, out, len - done, offset + done as u64, flags) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN | Errno::EOPNOTSUPP) if flags != 0 => {
                flags = 0;
                if let Some(f) = before_blocking.take() {
                    f();
                }
            }
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(out.len() - start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn appends_what_the_file_holds_at_the_offset() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut out = b"head:".to_vec();
        assert_eq!(read_append(&f, &mut out, 4, 3, 0).unwrap(), 4);
        assert_eq!(out, b"head:3456");
        // Short at the end of the file, then nothing.
        assert_eq!(read_append(&f, &mut out, 100, 8, 0).unwrap(), 2);
        assert_eq!(out, b"head:345689");
        assert_eq!(read_append(&f, &mut out, 100, 10, 0).unwrap(), 0);
        assert_eq!(out, b"head:345689");
    }

    #[test]
    fn full_append_stops_at_the_length_or_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut out = Vec::new();
        let never = || panic!("cached data needs no wait");
        assert_eq!(pread_full_append(&f, &mut out, 4, 2, never).unwrap(), 4);
        assert_eq!(out, b"2345");
        assert_eq!(pread_full_append(&f, &mut out, 100, 7, never).unwrap(), 3);
        assert_eq!(out, b"2345789");
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(
            pread_full_append(&dir, &mut out, 10, 0, || {}),
            Err(Errno::EISDIR)
        );
        assert_eq!(out, b"2345789", "left as it was on an error");
    }

    /// Data that is not in the page cache: the caller hears of it once, before the read that
    /// waits, and gets the data.
    #[test]
    fn full_append_tells_before_waiting_for_the_disk() {
        // Beside the sources rather than in /tmp, which may be tmpfs, whose pages never leave.
        let mut f = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let mut probe = Vec::new();
        if read_append(&f, &mut probe, 4096, 0, libc::RWF_NOWAIT) != Err(Errno::EAGAIN) {
            eprintln!("this file system kept the pages: nothing to check");
            return;
        }
        let mut told = 0;
        let mut out = Vec::new();
        let n = pread_full_append(&f, &mut out, data.len(), 0, || told += 1).unwrap();
        assert_eq!(n, data.len());
        assert!(out == data, "the data read after waiting");
        assert_eq!(told, 1);
    }
}
