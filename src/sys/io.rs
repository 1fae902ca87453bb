//! Reading a file straight into the unused capacity of a buffer, which std's `read_at` cannot:
//! it wants initialised memory.
//!
//! A FUSE READ is answered from a reply buffer that every request of a queue reuses. Reading
//! the file into it directly spares a zeroed allocation of the request's size and a copy of
//! the data, both per READ, and both as large as the read itself (up to 1 MiB).

use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// Appends to `out` what pread(2) returns for up to `len` bytes of `file` at `offset`, and
/// returns how many were appended (0 at the end of the file). Reserves the room first.
pub fn pread_append(
    file: &impl AsRawFd,
    out: &mut Vec<u8>,
    len: usize,
    offset: u64,
) -> nix::Result<usize> {
    out.reserve(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `spare` is writable memory of `len` bytes owned by `out`, not aliased while
    // the call runs; pread writes at most `len` bytes there and returns how many.
    let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), len, offset) };
    let n = usize::try_from(Errno::result(n)?).expect("pread returned a count");
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity (n <= len).
    unsafe { out.set_len(out.len() + n) };
    Ok(n)
}

/// [`pread_append`] until `len` bytes are appended or the file ends; returns how many were.
/// On an error, `out` is left as it was.
pub fn pread_full_append(
    file: &impl AsRawFd,
    out: &mut Vec<u8>,
    len: usize,
    offset: u64,
) -> nix::Result<usize> {
    let start = out.len();
    while out.len() - start < len {
        let done = out.len() - start;
        match pread_append(file, out, len - done, offset + done as u64) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
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
        assert_eq!(pread_append(&f, &mut out, 4, 3).unwrap(), 4);
        assert_eq!(out, b"head:3456");
        // Short at the end of the file, then nothing.
        assert_eq!(pread_append(&f, &mut out, 100, 8).unwrap(), 2);
        assert_eq!(out, b"head:345689");
        assert_eq!(pread_append(&f, &mut out, 100, 10).unwrap(), 0);
        assert_eq!(out, b"head:345689");
    }

    #[test]
    fn full_append_stops_at_the_length_or_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut out = Vec::new();
        assert_eq!(pread_full_append(&f, &mut out, 4, 2).unwrap(), 4);
        assert_eq!(out, b"2345");
        assert_eq!(pread_full_append(&f, &mut out, 100, 7).unwrap(), 3);
        assert_eq!(out, b"2345789");
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(pread_full_append(&dir, &mut out, 10, 0), Err(Errno::EISDIR));
        assert_eq!(out, b"2345789", "left as it was on an error");
    }
}
