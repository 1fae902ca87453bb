//! `fuser::Filesystem` for [`UnionFs`]: decode each request, open a tracing span, call the
//! matching `do_*` operation and reply. Errors become errnos here and nowhere else.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno as FuseErrno, FileAttr, FileHandle,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;

use super::core::{entry_ttl, Res, UnionFs, TTL};
use super::data::SetAttr;
use super::handle::Plus;
use super::namespace::{Caller, NewObject};
use super::uring;
use crate::sys::fileattr::FileAttrOp;
use crate::sys::passthrough;
use std::sync::Arc;

const GEN: Generation = Generation(0);

fn cache_flags(keep_cache: bool) -> FopenFlags {
    if keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// The attributes sent with a negative entry (inode 0).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn err(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e as i32)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn entry(reply: ReplyEntry, r: Res<(FileAttr, Duration)>) {
    match r {
        Ok((attr, ttl)) => reply.entry(&ttl, &attr, GEN),
        Err(e) => reply.error(err(e)),
    }
}

fn empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, r: Res<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(err(Errno::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(err(e)),
    }
}

impl UnionFs {
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        what: NewObject<'_>,
        reply: ReplyEntry,
    ) {
        let r = self
            .do_create(caller(req), parent.0, name, what)
            .map(|(a, t, _)| (a, t));
        entry(reply, r)
    }
}

/// The filesystem as fuser serves it: a handle on the state the io_uring queues share.
pub struct Fuse(pub Arc<UnionFs>);

impl std::ops::Deref for Fuse {
    type Target = UnionFs;

    fn deref(&self) -> &UnionFs {
        &self.0
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Passthrough needs a stacking depth of 1: the layers sit on a plain filesystem, and
        // the mount itself may still be a layer of overlayfs.
        // Passthrough registrations are made on the connection's descriptor, which only a
        // mount made by this process (as root) has.
        let have_dev = self.dev.get().is_some();
        if have_dev
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Each is an optimisation; a kernel without one is served without it. With
        // FUSE_POSIX_ACL the kernel keeps each inode's ACLs (`ls -l` asks for them on every
        // file) and checks permissions against them, as overlayfs does; this daemon passes the
        // ACL xattrs through to the backing files like any other.
        // FUSE_HANDLE_KILLPRIV_V2 lets the kernel skip its `security.capability` question
        // after an inode's first write (one round trip per write before); the daemon clears
        // the set-id bits itself in return (`data::without_setid`).
        for cap in [
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks capability");
            }
        }
        // The io_uring queues' payload buffers are sized by the largest write.
        let _ = config.set_max_write(uring::MAX_PAYLOAD);
        // The queues start once the mount is ready (`Mounted::run`); until then requests come
        // over /dev/fuse.
        if have_dev
            && self.io_uring
            && uring::enabled()
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        {
            tracing::info!("io_uring accepted; its queues start once the mount is ready");
            self.uring_accepted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = tracing::trace_span!("lookup", parent = parent.0, ?name).entered();
        match self.do_lookup(parent.0, name) {
            // A negative entry: the kernel remembers that the name does not exist.
            Err(Errno::ENOENT) => reply.entry(&TTL, &negative_attr(), GEN),
            r => entry(reply, r),
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        uring::pace_forgets(&self.0, req.unique().0);
        self.do_forget(ino.0, nlookup)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = tracing::trace_span!("getattr", ino = ino.0).entered();
        match self.do_getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = tracing::debug_span!("setattr", ino = ino.0, ?mode, ?uid, ?gid, ?size).entered();
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
            // fuser does not pass FATTR_KILL_SUIDGID on. A setattr of nothing is the kernel's
            // "remove privileges" before a write (see `wire`); for a truncate, a caller other
            // than root is taken to lack CAP_FSETID. Only mounts served over /dev/fuse get
            // here (io_uring requests go through `wire`), and for a mount made by a user the
            // upper's own file system clears the bits anyway.
            kill_setid: (mode, uid, gid, size, atime, mtime, ctime)
                == (None, None, None, None, None, None, None)
                || (size.is_some() && req.uid() != 0),
        };
        match self.do_setattr(ino.0, a) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.do_readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _s = tracing::debug_span!("mknod", parent = parent.0, ?name, mode).entered();
        let what = NewObject::Node {
            mode: mode & !(umask & 0o777),
            rdev: rdev as u64,
        };
        self.make(req, parent, name, what, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _s = tracing::debug_span!("mkdir", parent = parent.0, ?name, mode).entered();
        let what = NewObject::Dir {
            mode: mode & !umask & 0o7777,
        };
        self.make(req, parent, name, what, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("unlink", parent = parent.0, ?name).entered();
        empty(reply, self.do_unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("rmdir", parent = parent.0, ?name).entered();
        empty(reply, self.do_rmdir(parent.0, name))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _s = tracing::debug_span!("symlink", parent = parent.0, ?link_name).entered();
        self.make(req, parent, link_name, NewObject::Symlink { target }, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = tracing::debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        empty(
            reply,
            self.do_rename(parent.0, name, newparent.0, newname, flags.bits()),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _s =
            tracing::debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        entry(reply, self.do_link(ino.0, newparent.0, newname))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = tracing::debug_span!("open", ino = ino.0, flags = flags.0).entered();
        match self.open_file(ino.0, flags.0) {
            Ok(o) => match o.backing {
                Some(b) => passthrough::reply_opened(reply, FileHandle(o.fh), &b),
                None => reply.opened(FileHandle(o.fh), cache_flags(o.keep_cache)),
            },
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.do_write(fh.0, offset, data, kill) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    /// Nothing is buffered here (writes reach the backing file at once, or go straight to it
    /// through passthrough), so there is nothing to flush: ENOSYS tells the kernel not to send
    /// FLUSH again, a round trip saved on every close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(FuseErrno::ENOSYS)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_fsync(fh.0, datasync))
    }

    /// Directories are never opened here: ENOSYS tells the kernel not to send OPENDIR or
    /// RELEASEDIR again (a round trip per directory of every walk). It then reads directories
    /// with handle 0 and keeps their listings in its page cache (its default for unopened
    /// directories is FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE), dropping them itself when an
    /// operation through this mount changes the directory.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(FuseErrno::ENOSYS)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (listing, start, _) = match self.do_readdir(ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(err(e)),
        };
        for e in &listing.entries[start..] {
            if reply.add(INodeNo(e.ino), e.cookie, e.kind, &e.name) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (listing, start, fresh) = match self.do_readdir(ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(err(e)),
        };
        let resolver = match self.plus_resolver(ino.0, &listing, fresh) {
            Ok(r) => r,
            Err(e) => return reply.error(err(e)),
        };
        let mut sent = Vec::new();
        for e in &listing.entries[start..] {
            let next = e.cookie;
            let full = if matches!(e.plus, Plus::Dot) {
                // `.` and `..`: the kernel does not instantiate them, but their inode number
                // (taken from the attributes) is the d_ino userspace sees.
                let attr = FileAttr {
                    ino: INodeNo(e.ino),
                    kind: e.kind,
                    ..negative_attr()
                };
                reply.add(INodeNo(e.ino), next, &e.name, &Duration::ZERO, &attr, GEN)
            } else {
                let (node, attr) = match resolver.plus(e) {
                    Ok(Some(found)) => found,
                    // A name gone since the listing was read is left out.
                    Ok(None) => continue,
                    Err(e) => return reply.error(err(e)),
                };
                let ttl = entry_ttl(&node, &attr);
                let full = reply.add(attr.ino, next, &e.name, &ttl, &attr, GEN);
                if !full {
                    sent.push(node);
                }
                full
            };
            if full {
                break;
            }
        }
        // Every entry the kernel receives counts as a lookup.
        for node in sent {
            self.count_lookup(node);
        }
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _s = tracing::debug_span!("setxattr", ino = ino.0, ?name).entered();
        empty(reply, self.do_setxattr(ino.0, name, value, flags))
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.do_getxattr(ino.0, name))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.do_listxattr(ino.0))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("removexattr", ino = ino.0, ?name).entered();
        empty(reply, self.do_removexattr(ino.0, name))
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Only the inode-attribute ioctls concern a filesystem; anything else (the terminal
        // query some runtimes make on every open, say) is not for a file, as on overlayfs.
        let Some(op) = FileAttrOp::from_cmd(cmd) else {
            return reply.error(err(Errno::ENOTTY));
        };
        let _s = tracing::debug_span!("ioctl", ino = ino.0, ?op).entered();
        if !op.is_set() && (out_size as usize) < op.arg_len() {
            return reply.error(err(Errno::EINVAL));
        }
        match self.do_fileattr(ino.0, op, in_data) {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (`default_permissions`).
        reply.ok()
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = tracing::debug_span!("create", parent = parent.0, ?name, mode).entered();
        let mode = mode & !umask & 0o7777;
        match self.create_file(caller(req), parent.0, name, mode, flags) {
            Ok((attr, ttl, o)) => {
                let fh = FileHandle(o.fh);
                match o.backing {
                    Some(b) => passthrough::reply_created(reply, &ttl, &attr, fh, &b),
                    None => reply.created(&ttl, &attr, GEN, fh, cache_flags(o.keep_cache)),
                }
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_fallocate(fh.0, offset, length, mode))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.do_lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.do_copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }
}
