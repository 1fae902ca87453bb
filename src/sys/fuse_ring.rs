//! One entry of a FUSE-over-io_uring queue (the kernel's Documentation/filesystems/fuse-io-uring.rst).
//!
//! With io_uring the kernel has one request queue per CPU and serves a request on the queue
//! of the CPU that made it. The daemon gives each queue entries: a header buffer and a payload
//! buffer, handed over with a REGISTER command on its own ring. When a request arrives the
//! kernel copies it into an entry's buffers and completes the command; the daemon writes the
//! reply into the same buffers and hands the entry back with COMMIT_AND_FETCH, which sends the
//! reply and waits for the next request in one system call.
//!
//! [`RingEntry`] is one such entry on a ring of its own, with exactly one command in flight.
//! Its buffers are leaked on purpose: the kernel keeps their addresses from REGISTER until the
//! connection ends, which can be after the thread serving them has gone, so they must never be
//! freed while the process lives.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::errno::Errno;

/// `struct fuse_uring_req_header`: the request's `fuse_in_header` (or the reply's
/// `fuse_out_header`), the opcode's fixed argument, then `struct fuse_uring_ent_in_out`.
const IN_OUT: usize = 0;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const HEADER_LEN: usize = ENT_IN_OUT + 32;
/// Offsets inside `fuse_uring_ent_in_out`: flags, commit_id, payload_sz.
const COMMIT_ID: usize = ENT_IN_OUT + 8;
const PAYLOAD_SZ: usize = ENT_IN_OUT + 16;

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Byte offset of `len` in `struct io_uring_sqe`, which the io-uring crate does not set for
/// URING_CMD.
const SQE_LEN: usize = 24;

/// One queue entry with its own ring. See the module comment.
pub struct RingEntry {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: Arc<OwnedFd>,
    qid: u16,
    header: &'static mut [u8; HEADER_LEN],
    payload: &'static mut [u8],
    iov: &'static [libc::iovec; 2],
    registered: bool,
}

impl RingEntry {
    /// An entry for queue `qid` of connection `dev` with a payload buffer of `payload_len`
    /// bytes (at least the connection's largest request or reply). Not yet registered. The
    /// thread that calls this must be the one that serves the entry.
    pub fn new(dev: Arc<OwnedFd>, qid: u16, payload_len: usize) -> std::io::Result<RingEntry> {
        // Only the thread that creates the entry ever submits to or waits on its ring, so
        // the kernel may keep the completion work for the moment that thread waits
        // (DEFER_TASKRUN) instead of signalling it: each round trip is about a tenth cheaper
        // (see ARCHITECTURE.md, "Transports"). A kernel without the flags gets a plain ring.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(2)
            .or_else(|_| IoUring::builder().build(2))?;
        let header: &'static mut [u8; HEADER_LEN] = Box::leak(Box::new([0; HEADER_LEN]));
        let payload: &'static mut [u8] = Box::leak(vec![0u8; payload_len].into_boxed_slice());
        let iov = Box::leak(Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload_len,
            },
        ]));
        Ok(RingEntry {
            ring,
            dev,
            qid,
            header,
            payload,
            iov,
            registered: false,
        })
    }

    /// Hands the entry to the kernel (REGISTER the first time, then COMMIT_AND_FETCH, which
    /// sends the reply written by [`RingEntry::reply`]) and waits until a request is in it.
    /// An error is the kernel's answer to the command: EAGAIN for a REGISTER before the
    /// connection finished INIT, ENOTCONN once it has ended.
    pub fn serve_next(&mut self) -> Result<(), Errno> {
        self.cycle(None::<fn()>)
    }

    /// [`RingEntry::serve_next`], calling `between` once the reply is delivered (the caller
    /// woken) and before waiting for the next request. It costs a second system call.
    pub fn serve_next_then(&mut self, between: impl FnOnce()) -> Result<(), Errno> {
        self.cycle(Some(between))
    }

    fn cycle(&mut self, between: Option<impl FnOnce()>) -> Result<(), Errno> {
        let (cmd_op, commit_id) = if self.registered {
            (CMD_COMMIT_AND_FETCH, self.commit_id())
        } else {
            (CMD_REGISTER, 0)
        };
        // `struct fuse_uring_cmd_req`: flags, commit_id, qid.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut op = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), cmd_op).cmd(cmd);
        if !self.registered {
            op = op.addr(Some(self.iov.as_ptr() as u64));
        }
        let mut sqe = op.build();
        if !self.registered {
            sqe = with_len(sqe, 2);
        }
        // SAFETY: the command points the kernel at `iov` and the two buffers it names, all
        // leaked and so valid for the rest of the process; the ring has room for the one
        // command this entry ever has in flight.
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| Errno::EBUSY)?;
        if let Some(between) = between {
            // The command runs as it is submitted: the reply is delivered before this returns.
            let submitted = loop {
                match self.ring.submit() {
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    r => break r,
                }
            };
            submitted.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            between();
        }
        // A signal, or a debugger attaching, ends the wait early, with or without EINTR and
        // before the completion: wait again until it is there.
        let cqe = loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            }
            if let Some(cqe) = self.ring.completion().next() {
                break cqe;
            }
        };
        if cqe.result() < 0 {
            return Err(Errno::from_raw(-cqe.result()));
        }
        self.registered = true;
        Ok(())
    }

    /// Whether the kernel has taken the entry.
    pub fn registered(&self) -> bool {
        self.registered
    }

    fn commit_id(&self) -> u64 {
        u64::from_ne_bytes(self.header[COMMIT_ID..COMMIT_ID + 8].try_into().unwrap())
    }

    /// The request now in the entry: its `fuse_in_header`, its opcode's fixed argument, and
    /// the rest of its arguments (names, data).
    pub fn request(&self) -> (&[u8], &[u8], &[u8]) {
        let len = u32::from_ne_bytes(self.header[PAYLOAD_SZ..PAYLOAD_SZ + 4].try_into().unwrap());
        let payload = &self.payload[..(len as usize).min(self.payload.len())];
        (
            &self.header[IN_OUT..OP_IN],
            &self.header[OP_IN..ENT_IN_OUT],
            payload,
        )
    }

    /// Writes the reply to request `unique`: `error` (a negative errno, or 0) and, on success,
    /// `body`. A body larger than the payload buffer is answered EIO.
    pub fn reply(&mut self, unique: u64, error: i32, body: &[u8]) {
        let (error, body) = if body.len() > self.payload.len() {
            (-libc::EIO, &[][..])
        } else {
            (error, body)
        };
        self.payload[..body.len()].copy_from_slice(body);
        // `struct fuse_out_header`: len, error, unique.
        let len = (16 + body.len()) as u32;
        self.header[0..4].copy_from_slice(&len.to_ne_bytes());
        self.header[4..8].copy_from_slice(&error.to_ne_bytes());
        self.header[8..16].copy_from_slice(&unique.to_ne_bytes());
        let sz = body.len() as u32;
        self.header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&sz.to_ne_bytes());
    }
}

/// Sets the `len` field of a built SQE (the number of iovecs of a REGISTER).
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: `Entry128` is `#[repr(C)]` around the kernel's 128-byte `struct io_uring_sqe`
    // (size checked above), whose every bit pattern is valid; `len` is the u32 at byte 24.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[SQE_LEN..SQE_LEN + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}
