//! FUSE passthrough registrations: a backing file the kernel reads and writes directly.
//!
//! A registration is made with the FUSE_DEV_IOC_BACKING_OPEN ioctl on the connection's
//! `/dev/fuse` descriptor and lives until FUSE_DEV_IOC_BACKING_CLOSE. [`BackingFile`] owns one
//! and closes it on drop. It is ours rather than `fuser::BackingId` because both transports
//! reply with it: fuser's replies over `/dev/fuse`, and the io_uring queues, which have no
//! fuser reply to make one from.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

// FUSE_DEV_IOC_BACKING_CLOSE, _IOW(229, 2, uint32_t), from <linux/fuse.h>.
nix::ioctl_write_ptr!(backing_close, 229, 2, u32);

/// A passthrough registration of an open file on a FUSE connection.
#[derive(Debug)]
pub struct BackingFile {
    id: u32,
    dev: Arc<OwnedFd>,
}

impl BackingFile {
    /// Registers `file` on the connection `dev`. Fails when the kernel refuses (no
    /// passthrough, a backing file on a stacked filesystem too deep, no CAP_SYS_ADMIN).
    pub fn open(dev: &Arc<OwnedFd>, file: &File) -> std::io::Result<BackingFile> {
        let id = fuser::BackingId::create_raw(dev.as_ref(), file)?;
        Ok(BackingFile {
            id,
            dev: dev.clone(),
        })
    }

    /// The `backing_id` an open reply carries.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        // SAFETY: the ioctl reads one u32 through the pointer, which outlives the call; the
        // descriptor is the FUSE connection this id was registered on.
        if let Err(e) = unsafe { backing_close(self.dev.as_raw_fd(), &self.id) } {
            // ENOTCONN after the connection ended: the kernel dropped it already.
            tracing::debug!(id = self.id, error = %e, "closing a passthrough registration");
        }
    }
}

// fuser sends a registration only as its own `BackingId`, which closes the registration when
// dropped. Ours stays in the file handle, so the wrapper is taken apart after the reply with
// `into_raw`, which leaves the registration open.

/// Replies to OPEN (over `/dev/fuse`) with handle `fh` served by passthrough on `b`.
pub fn reply_opened(reply: fuser::ReplyOpen, fh: fuser::FileHandle, b: &BackingFile) {
    // SAFETY: `b` is a live registration on this connection, and `into_raw` below keeps the
    // wrapper from closing it.
    let id = unsafe { reply.wrap_backing(b.id()) };
    reply.opened_passthrough(fh, fuser::FopenFlags::empty(), &id);
    let _ = id.into_raw();
}

/// Replies to CREATE (over `/dev/fuse`) with the new entry and handle `fh` on `b`.
pub fn reply_created(
    reply: fuser::ReplyCreate,
    ttl: &std::time::Duration,
    attr: &fuser::FileAttr,
    fh: fuser::FileHandle,
    b: &BackingFile,
) {
    // SAFETY: as in `reply_opened`.
    let id = unsafe { reply.wrap_backing(b.id()) };
    let none = fuser::FopenFlags::empty();
    reply.created_passthrough(ttl, attr, fuser::Generation(0), fh, none, &id);
    let _ = id.into_raw();
}
