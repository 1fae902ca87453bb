//! Operations on an object's contents and attributes: open, read, write, sync, setattr,
//! xattrs, allocation and seeking. Anything that writes copies the object up first.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{FileAttr, TimeOrNow};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{utimensat, FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::core::{errno_of, Res, UnionFs};
use super::handle::{Descriptor, FileHandle};
use super::inode::RemovedDir;
use super::namespace::{Caller, NewObject};
use crate::layer_index::LayerPath;
use crate::sys::fileattr::{self, FileAttrOp};
use crate::sys::passthrough::BackingFile;
use crate::sys::xattr;
use crate::whiteout;

/// The xattr holding an SELinux label. Where an object has none, reading it answers "not
/// supported" rather than overlayfs's "no such attribute". `ls -l` asks for it for every file,
/// and the kernel caches no xattr of a FUSE file, so each ask is a round trip; told "not
/// supported", `ls` takes the whole filesystem to be unlabelled and stops asking (a warm `ls
/// -lR` went from about twice overlayfs's time to less than it). Labels that exist are read,
/// listed and set as usual. With SELinux enabled, the kernel answers for the label itself and
/// this is never asked.
const SELINUX_LABEL: &str = "security.selinux";

/// Lower files up to this size are preloaded (see [`UnionFs::preload`]).
const PRELOAD_MAX: u64 = 128 * 1024;

/// The size of `f` if it is a regular file worth preloading.
fn preload_size(f: &File) -> Option<u64> {
    let st = nix::sys::stat::fstat(f).ok()?;
    let size = st.st_size as u64;
    (st.st_mode & libc::S_IFMT == libc::S_IFREG && size > 0 && size <= PRELOAD_MAX).then_some(size)
}

/// The attribute changes of one setattr call.
#[derive(Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
    /// Clear the set-user-ID bit, and the set-group-ID bit of a group-executable file, after
    /// the other changes (see [`without_setid`]).
    pub kill_setid: bool,
}

/// The mode a regular file keeps once written or truncated by a caller without CAP_FSETID:
/// without its set-user-ID bit, and without its set-group-ID bit if it is group-executable
/// (the rule of FUSE_HANDLE_KILLPRIV_V2, and of the kernel's own FUSE code before it). `None`
/// when nothing changes.
///
/// With that protocol flag the kernel leaves this to the daemon, in return for asking for
/// `security.capability` only on an inode's first write instead of on every write (SB_NOSEC).
/// The daemon changes the upper file as root, and root keeps these bits on write and
/// truncate, so they are cleared here.
pub fn without_setid(mode: u32) -> Option<u32> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        kept &= !libc::S_ISGID;
    }
    (kept != mode).then_some(kept & 0o7777)
}

fn timespec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::new(0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => TimeSpec::new(0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
        }
    }
}

/// Applies [`without_setid`] to the open file `f`.
fn kill_setid_of(f: &File) -> Res<()> {
    let st = nix::sys::stat::fstat(f.as_fd())?;
    if let Some(mode) = without_setid(st.st_mode) {
        nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(mode))?;
    }
    Ok(())
}

/// Makes the changes of `a` on the (upper) file `h` holds open.
fn change_through(h: &FileHandle, a: &SetAttr) -> Res<()> {
    let f = h.file()?;
    if a.uid.is_some() || a.gid.is_some() {
        nix::unistd::fchown(
            f.as_fd(),
            a.uid.map(Uid::from_raw),
            a.gid.map(Gid::from_raw),
        )?;
    }
    if let Some(mode) = a.mode {
        nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(mode & 0o7777))?;
    }
    if let Some(size) = a.size {
        f.set_len(size).map_err(errno_of)?;
    }
    if a.kill_setid {
        kill_setid_of(&f)?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        nix::sys::stat::futimens(f.as_fd(), &timespec(a.atime), &timespec(a.mtime))?;
    }
    Ok(())
}

const WRITE_FLAGS: i32 = libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT;

/// Clears `O_DIRECT` on a file the daemon itself will read and write for the kernel. Direct
/// I/O needs buffers aligned to the device's blocks, and the daemon's are not; the kernel
/// still bypasses its own page cache for the caller's `O_DIRECT` descriptor. Passthrough
/// files keep the flag: the kernel does their I/O with the caller's buffers.
fn buffered(f: &File) -> Res<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(f, FcntlArg::F_GETFL)?);
    if flags.contains(OFlag::O_DIRECT) {
        fcntl(f, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
    }
    Ok(())
}

/// Opens the object named by `p` with `flags` (access mode and status flags), through its
/// directory descriptor, never following a final symlink.
pub(super) fn open_at(p: &LayerPath, flags: i32) -> Res<File> {
    let (dir, rel) = p.at();
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(File::from(nix::fcntl::openat(
        dir,
        rel,
        flags,
        Mode::empty(),
    )?))
}

/// How an opened file is to be served.
pub enum OpenAs {
    /// By the daemon's read/write; with `keep_cache` the kernel keeps the page cache across
    /// opens (the data is an immutable lower file).
    Served { keep_cache: bool },
    /// By the kernel (FUSE passthrough) on the inode's existing registration.
    Passthrough(Arc<BackingFile>),
    /// By the kernel on this file, to be registered first.
    PassthroughNew(Arc<File>),
}

/// A file opened by `do_open` or `do_create`, registered as handle `fh`.
pub struct Opened {
    pub fh: u64,
    pub how: OpenAs,
    /// To be carried out (by [`UnionFs::preload`]) before the open is answered.
    pub preload: Option<Preload>,
}

/// A first open's preload, not yet carried out (see [`UnionFs::preload`]).
pub struct Preload {
    ino: u64,
    file: Arc<File>,
    size: u64,
}

/// An open as the kernel is told of it.
pub struct OpenReply {
    pub fh: u64,
    /// The passthrough registration the kernel is to use; `None` when the daemon serves it.
    pub backing: Option<Arc<BackingFile>>,
    /// Whether the kernel keeps the file's page cache across opens (a served lower file).
    pub keep_cache: bool,
}

impl UnionFs {
    /// Opens `ino` for the kernel. Opened for writing, the file is copied up first, with no
    /// lock held but the inode's copy-up lock ([`UnionFs::copy_up_data_first`]); the open
    /// then decides how the file is served, registers it and carries out its preload, if any,
    /// holding the inode's `opening` lock.
    pub fn open_file(&self, ino: u64, flags: i32) -> Res<OpenReply> {
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY && flags & libc::O_TRUNC == 0 {
            self.copy_up_data_first(ino)?;
        }
        let _one_at_a_time = self.handles.opening.lock(ino);
        let mut opened = self.do_open(ino, flags)?;
        let reply = self.reply_for(&opened);
        if let Some(p) = opened.preload.take() {
            self.preload(p);
        }
        Ok(reply)
    }

    /// Creates the regular file `name` in `parent` and opens it for the kernel with `flags`.
    pub fn create_file(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Res<(FileAttr, std::time::Duration, OpenReply)> {
        let what = NewObject::File { mode, flags };
        let (attr, ttl, file) = self.do_create(who, parent, name, what)?;
        let file = file.ok_or(Errno::EIO)?;
        // The name is visible from here: an open of it by another caller may come first.
        let _one_at_a_time = self.handles.opening.lock(attr.ino.0);
        let direct = flags & libc::O_DIRECT != 0;
        let o = self.register_open(attr.ino.0, Descriptor::Open(Arc::new(file)), false, direct)?;
        Ok((attr, ttl, self.reply_for(&o)))
    }

    fn reply_for(&self, o: &Opened) -> OpenReply {
        OpenReply {
            fh: o.fh,
            backing: self.backing_for(o),
            keep_cache: matches!(o.how, OpenAs::Served { keep_cache: true }),
        }
    }

    /// Registers an open file of `ino` and picks how it is served. Passthrough is used where
    /// the kernel offers it and the backing file cannot change under the handle: upper files,
    /// and lower files of a read-only mount. A lower file of a writable mount is served by the
    /// daemon (with the page cache kept), so that a copy-up can move its open handles to the
    /// copy, as overlayfs does. Callers hold the inode's `handles.opening` lock.
    /// `direct`: `file` was opened with `O_DIRECT` (see [`buffered`]).
    fn register_open(
        &self,
        ino: u64,
        file: Descriptor,
        on_lower: bool,
        direct: bool,
    ) -> Res<Opened> {
        let state = self.handles.io_state(ino);
        let served = OpenAs::Served {
            keep_cache: on_lower,
        };
        let (file, how) = if !self.passthrough.load(Ordering::Relaxed) {
            (file, served)
        } else if let Some(b) = state.backing {
            (file, OpenAs::Passthrough(b))
        } else if state.served > 0 || (on_lower && self.upper.is_some()) {
            (file, served)
        } else {
            let f = file.open()?;
            (Descriptor::Open(f.clone()), OpenAs::PassthroughNew(f))
        };
        if let (true, OpenAs::Served { .. }, Descriptor::Open(f)) = (direct, &how, &file) {
            buffered(f)?;
        }
        let fh = self.handles.add_file(ino, file, on_lower);
        if let OpenAs::Passthrough(b) = &how {
            self.set_backing(fh, b.clone());
        }
        Ok(Opened {
            fh,
            how,
            preload: None,
        })
    }

    /// Records the passthrough registration of handle `fh`.
    fn set_backing(&self, fh: u64, backing: Arc<BackingFile>) {
        if let Some(h) = self.handles.file(fh) {
            *h.backing.lock() = Some(backing);
        }
    }

    /// The passthrough registration an opened file is to be replied with: the inode's existing
    /// one, or a new one; `None` when the daemon serves the file (by choice, or because the
    /// kernel refused the registration).
    fn backing_for(&self, o: &Opened) -> Option<Arc<BackingFile>> {
        match &o.how {
            OpenAs::Served { .. } => None,
            OpenAs::Passthrough(b) => Some(b.clone()),
            OpenAs::PassthroughNew(file) => {
                let made = match self.dev.get() {
                    Some(dev) => BackingFile::open(dev, file),
                    None => Err(std::io::ErrorKind::Unsupported.into()),
                };
                match made {
                    Ok(b) => {
                        let b = Arc::new(b);
                        self.set_backing(o.fh, b.clone());
                        Some(b)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "passthrough refused; serving the file");
                        None
                    }
                }
            }
        }
    }

    /// Opens `ino`; opening for writing (or truncating) copies it up first. Callers hold the
    /// inode's `handles.opening` lock, and carry out its `preload` before releasing it.
    fn do_open(&self, ino: u64, flags: i32) -> Res<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let writes = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let mut preload = None;
        // A read-only open registers its handle before a copy-up can start (which needs the
        // namespace lock alone), so that the copy-up finds it and moves it to the copy.
        let mut _ns_read = None;
        let (file, on_lower) = if writes {
            let truncate = flags & libc::O_TRUNC != 0;
            let _ns = self.ns.write();
            let node = self.node(ino)?;
            self.copy_up(&node, truncate)?;
            let (b, _) = self.locate(&node)?;
            let f = open_at(b.path(), acc | (flags & (libc::O_TRUNC | WRITE_FLAGS)))?;
            (Descriptor::Open(Arc::new(f)), false)
        } else {
            _ns_read = Some(self.ns.read());
            let node = self.node(ino)?;
            let (b, _) = self.locate(&node)?;
            if b.is_lower() && self.upper.is_some() {
                if flags & libc::O_DIRECT == 0 && self.first_open(&node) {
                    let f = Arc::new(open_at(b.path(), libc::O_RDONLY)?);
                    preload = preload_size(&f).map(|size| (f.clone(), size));
                    (Descriptor::Open(f), true)
                } else {
                    // Served by the daemon, mostly from the kept page cache: see `handle`.
                    (Descriptor::Deferred(b.path().clone()), true)
                }
            } else {
                let f = open_at(b.path(), libc::O_RDONLY | (flags & libc::O_DIRECT))?;
                (Descriptor::Open(Arc::new(f)), b.is_lower())
            }
        };
        let mut opened = self.register_open(ino, file, on_lower, flags & libc::O_DIRECT != 0)?;
        opened.preload = preload.map(|(file, size)| Preload { ino, file, size });
        Ok(opened)
    }

    /// Whether this is the first open of lower file `node` since the kernel looked it up, with
    /// no other open of it under way (callers hold its `handles.opening` lock). Claims it: later
    /// opens are not first.
    fn first_open(&self, node: &super::inode::Node) -> bool {
        !node.first_open.is_past()
            && self.handles.io_state(node.ino).is_idle()
            && node.first_open.claim()
    }

    /// Preloading: a small lower file's data is put into the kernel's page cache (a
    /// FUSE_NOTIFY_STORE) before its first open is answered, so that reading it costs no READ
    /// round trip, nor the GETATTR that the atime invalidation after a READ brings to the next
    /// `stat`. Programs mostly open a file to read it whole, and a READ of a file this small
    /// would have fetched all of it anyway (the kernel's first read-ahead is 128 KiB).
    ///
    /// Only where nothing else fills or changes that cache meanwhile: the inode has no other
    /// open file (so no read-ahead or mmap is filling it), and until the preload ends, other
    /// opens of the inode and truncations by path wait for it (they take the inode's
    /// `handles.opening` lock, which its open holds); anything else that changes data needs an
    /// open file. Opens of other files go on meanwhile. The kernel keeps what was
    /// stored, as it keeps pages read before, since the open is answered with
    /// FOPEN_KEEP_CACHE. Failing to preload loses nothing: reads then ask for the data.
    pub fn preload(&self, p: Preload) {
        let Some(n) = self.notifier.get() else {
            return;
        };
        let mut buf = Vec::new();
        if crate::sys::io::pread_full_append(
            &*p.file,
            &mut buf,
            p.size as usize,
            0,
            super::uring::before_blocking_io,
        )
        .is_err()
        {
            return;
        }
        if let Err(e) = n.store(fuser::INodeNo(p.ino), 0, &buf) {
            tracing::debug!(ino = p.ino, error = %e, "preload not delivered");
        }
    }

    fn handle_file(&self, fh: u64) -> Res<std::sync::Arc<File>> {
        self.handles.file(fh).ok_or(Errno::EBADF)?.file()
    }

    pub fn do_read(&self, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let mut buf = Vec::new();
        self.do_read_into(fh, offset, size, &mut buf)?;
        Ok(buf)
    }

    /// [`UnionFs::do_read`], appending the data to `out` (a reply buffer) instead.
    pub fn do_read_into(&self, fh: u64, offset: u64, size: u32, out: &mut Vec<u8>) -> Res<()> {
        let f = self.handle_file(fh)?;
        crate::sys::io::pread_full_append(
            &*f,
            out,
            size as usize,
            offset,
            super::uring::before_blocking_io,
        )?;
        Ok(())
    }

    /// Writes `data` at `offset` of open file `fh`; `kill_setid` as for `SetAttr`, for a
    /// caller without CAP_FSETID.
    pub fn do_write(&self, fh: u64, offset: u64, data: &[u8], kill_setid: bool) -> Res<u32> {
        let f = self.handle_file(fh)?;
        if kill_setid {
            kill_setid_of(&f)?;
        }
        f.write_all_at(data, offset).map_err(errno_of)?;
        Ok(data.len() as u32)
    }

    pub fn do_fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        if self.upper.as_ref().is_some_and(|u| u.volatile()) {
            return Ok(());
        }
        let f = self.handle_file(fh)?;
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
        .map_err(errno_of)
    }

    pub fn do_release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    pub fn do_fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        let f = self.handle_file(fh)?;
        nix::fcntl::fallocate(
            f.as_fd(),
            nix::fcntl::FallocateFlags::from_bits_truncate(mode),
            offset as i64,
            length as i64,
        )
    }

    pub fn do_lseek(&self, fh: u64, offset: i64, whence: i32) -> Res<i64> {
        let f = self.handle_file(fh)?;
        let whence = match whence {
            libc::SEEK_SET => nix::unistd::Whence::SeekSet,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return Err(Errno::EINVAL),
        };
        nix::unistd::lseek(f.as_fd(), offset, whence)
    }

    pub fn do_copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Res<u32> {
        let (fi, fo) = (self.handle_file(fh_in)?, self.handle_file(fh_out)?);
        let (mut oi, mut oo) = (off_in as i64, off_out as i64);
        let n = nix::fcntl::copy_file_range(
            fi.as_fd(),
            Some(&mut oi),
            fo.as_fd(),
            Some(&mut oo),
            len.min(u32::MAX as u64 / 2) as usize,
        )?;
        Ok(n as u32)
    }

    /// Changes attributes; the object is copied up first (without data when truncated to 0).
    pub fn do_setattr(&self, ino: u64, a: SetAttr) -> Res<FileAttr> {
        // A truncation must not race a preload of the same file (see `preload`).
        let _no_preload = a.size.is_some().then(|| self.handles.opening.lock(ino));
        let _ns = match a.size {
            Some(0) => self.ns.write(),
            _ => self.ns_write_for_copy_up(ino)?,
        };
        let node = self.node(ino)?;
        if node.aliases.is_empty() {
            return self.setattr_unlinked(&node, a);
        }
        // A change sent with a descriptor (ftruncate) is made on the descriptor's file when
        // that is in the upper: the name it was opened by may not be the node's last alias,
        // and kernel overlayfs copies no other name up for it.
        let through = a.fh.and_then(|fh| self.handles.file(fh));
        if let Some(h) = through.filter(|h| h.ino == ino && !*h.on_lower.read()) {
            change_through(&h, &a)?;
            return self.node_attr(&node);
        }
        self.copy_up(&node, a.size == Some(0))?;
        let (b, st) = self.backing(&node)?;
        let path = b.path();
        let (dir, rel) = path.at();
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if a.uid.is_some() || a.gid.is_some() {
            nix::unistd::fchownat(
                dir,
                rel,
                a.uid.map(Uid::from_raw),
                a.gid.map(Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = a.mode {
            if is_link {
                return Err(Errno::EOPNOTSUPP);
            }
            nix::sys::stat::fchmodat(
                dir,
                rel,
                Mode::from_bits_truncate(mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )?;
        }
        if let Some(size) = a.size {
            nix::unistd::truncate(&**path, size as i64)?;
        }
        if a.kill_setid {
            let now = nix::sys::stat::fstatat(dir, rel, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if let Some(mode) = without_setid(now.st_mode) {
                nix::sys::stat::fchmodat(
                    dir,
                    rel,
                    Mode::from_bits_truncate(mode),
                    FchmodatFlags::FollowSymlink,
                )?;
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            utimensat(
                dir,
                rel,
                &timespec(a.atime),
                &timespec(a.mtime),
                UtimensatFlags::NoFollowSymlink,
            )?;
        }
        self.node_attr(&node)
    }

    /// setattr on an object the kernel holds by no name: a file through its (upper) handle, a
    /// removed directory on the attributes kept for it.
    fn setattr_unlinked(&self, node: &super::inode::Node, a: SetAttr) -> Res<FileAttr> {
        if node.is_dir {
            if a.size.is_some() {
                return Err(Errno::EISDIR);
            }
            let now = SystemTime::now();
            let at = |t: TimeOrNow| match t {
                TimeOrNow::Now => now,
                TimeOrNow::SpecificTime(t) => t,
            };
            let changed = self.on_removed_dir(node, |d| {
                d.change_attr(|attr| {
                    if let Some(mode) = a.mode {
                        attr.perm = (mode & 0o7777) as u16;
                    }
                    attr.uid = a.uid.unwrap_or(attr.uid);
                    attr.gid = a.gid.unwrap_or(attr.gid);
                    attr.atime = a.atime.map_or(attr.atime, at);
                    attr.mtime = a.mtime.map_or(attr.mtime, at);
                    attr.ctime = now;
                })
            });
            return changed.unwrap_or(Err(Errno::ENOENT));
        }
        let h = self.handles.file_of(node.ino, a.fh).ok_or(Errno::ENOENT)?;
        if *h.on_lower.read() {
            return Err(Errno::EROFS);
        }
        change_through(&h, &a)?;
        self.handle_attr(node, a.fh)
    }

    pub fn do_getxattr(&self, ino: u64, name: &OsStr) -> Res<Vec<u8>> {
        if whiteout::is_private_xattr(name) {
            return Err(Errno::ENODATA);
        }
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        let value = if let Some(kept) = self.on_removed_dir(&node, |d| Ok(d.xattr(name))) {
            kept?
        } else if let Some(f) = self.unlinked_file(&node, false) {
            xattr::open::get(f?.as_fd(), name)?
        } else {
            xattr::get(self.locate(&node)?.0.path(), name)?
        };
        match value {
            Some(v) => Ok(v),
            None if name == SELINUX_LABEL => Err(Errno::EOPNOTSUPP),
            None => Err(Errno::ENODATA),
        }
    }

    pub fn do_listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        let kept = |d: &mut RemovedDir| Ok(d.xattrs.iter().map(|(n, _)| n.clone()).collect());
        let names = if let Some(names) = self.on_removed_dir(&node, kept) {
            names?
        } else if let Some(f) = self.unlinked_file(&node, false) {
            xattr::open::list(f?.as_fd())?
        } else {
            xattr::list(self.locate(&node)?.0.path())?
        };
        let mut out = Vec::new();
        for n in names {
            if !whiteout::is_private_xattr(&n) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn do_setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        if whiteout::is_private_xattr(name) {
            return Err(Errno::EOPNOTSUPP);
        }
        let _ns = self.ns_write_for_copy_up(ino)?;
        let node = self.node(ino)?;
        if let Some(r) = self.on_removed_dir(&node, |d| d.set_xattr(name, value, flags)) {
            return r;
        }
        if let Some(f) = self.unlinked_file(&node, true) {
            return xattr::open::set(f?.as_fd(), name, value, flags);
        }
        let b = self.xattr_target(&node)?;
        xattr::set(b.path(), name, value, flags)
    }

    /// Runs `f` on what is kept of `node` when it is a removed directory (see [`RemovedDir`]);
    /// `None` for any other node.
    fn on_removed_dir<R>(
        &self,
        node: &super::inode::Node,
        f: impl FnOnce(&mut RemovedDir) -> Res<R>,
    ) -> Option<Res<R>> {
        if !node.is_dir || !node.aliases.is_empty() {
            return None;
        }
        let mut table = self.table.lock();
        Some(table.removed_dir(node.ino).ok_or(Errno::ENOENT).and_then(f))
    }

    /// The open file of `node` when no name is left of it (unlinked while open), for the
    /// xattr calls to work on, as they do on any unlinked open file; with `change`, only one
    /// the daemon may change (not a lower file: there is no name left to copy it up to).
    fn unlinked_file(&self, node: &super::inode::Node, change: bool) -> Option<Res<Arc<File>>> {
        if node.is_dir || !node.aliases.is_empty() {
            return None;
        }
        let Some(h) = self.handles.file_of(node.ino, None) else {
            return Some(Err(Errno::ENOENT));
        };
        if change && *h.on_lower.read() {
            return Some(Err(Errno::EROFS));
        }
        Some(h.file())
    }

    /// An inode-attribute ioctl (lsattr, chattr) on `ino`, run on the object behind it: a get
    /// reads the object where it is, a set copies it up first and changes the upper copy, as
    /// overlayfs does. Only directories and regular files have such attributes here; opening
    /// anything else could have effects of its own.
    pub fn do_fileattr(&self, ino: u64, op: FileAttrOp, input: &[u8]) -> Res<Vec<u8>> {
        if op.is_set() {
            let _ns = self.ns_write_for_copy_up(ino)?;
            let node = self.node(ino)?;
            let b = self.xattr_target(&node)?;
            fileattr_at(&b, node.is_dir, op, input)
        } else {
            let _ns = self.ns.read();
            let node = self.node(ino)?;
            let (b, _) = self.locate(&node)?;
            fileattr_at(&b, node.is_dir, op, input)
        }
    }

    /// Where an xattr change goes: the upper copy, made now if needed. An indexed hard link
    /// takes it on its index copy without its name being copied up (overlayfs's
    /// ovl_xattr_set writes to the inode's upper, unlike setattr).
    fn xattr_target(&self, node: &super::inode::Node) -> Res<super::core::Backing> {
        let (b, _) = self.locate(node)?;
        if !b.is_lower() {
            return Ok(b);
        }
        self.copy_up(node, false)?;
        Ok(self.locate(node)?.0)
    }

    pub fn do_removexattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        if whiteout::is_private_xattr(name) {
            return Err(Errno::EOPNOTSUPP);
        }
        // Only removing an xattr that is there copies the object up.
        let present = {
            let _ns = self.ns.read();
            let node = self.node(ino)?;
            if let Some(r) = self.on_removed_dir(&node, |d| d.remove_xattr(name)) {
                return r;
            }
            if let Some(f) = self.unlinked_file(&node, true) {
                return xattr::open::remove(f?.as_fd(), name);
            }
            xattr::get(self.locate(&node)?.0.path(), name)?.is_some()
        };
        let _ns = if present {
            self.ns_write_for_copy_up(ino)?
        } else {
            self.ns.write()
        };
        let node = self.node(ino)?;
        if xattr::get(self.locate(&node)?.0.path(), name)?.is_none() {
            return Err(Errno::ENODATA);
        }
        let b = self.xattr_target(&node)?;
        xattr::remove(b.path(), name)
    }
}

/// Runs an inode-attribute ioctl on the object at `b`.
fn fileattr_at(
    b: &super::core::Backing,
    is_dir: bool,
    op: FileAttrOp,
    input: &[u8],
) -> Res<Vec<u8>> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    if is_dir {
        flags |= OFlag::O_DIRECTORY;
    } else {
        let st = b.lstat()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::ENOTTY);
        }
        flags |= OFlag::O_NONBLOCK;
    }
    let (dir, rel) = b.path().at();
    let fd = nix::fcntl::openat(dir, rel, flags, Mode::empty())?;
    fileattr::fileattr(&fd, op, input)
}

#[cfg(test)]
mod tests {
    use super::without_setid;

    #[test]
    fn setid_bits_cleared_as_killpriv_v2_says() {
        let reg = libc::S_IFREG;
        assert_eq!(without_setid(reg | 0o4755), Some(0o755));
        assert_eq!(without_setid(reg | 0o6775), Some(0o775));
        // Set-group-ID without group execute (a mandatory-locking mark) is kept, although
        // the VFS clears it too when the writer is outside the file's group.
        assert_eq!(without_setid(reg | 0o2664), None);
        assert_eq!(without_setid(reg | 0o4644), Some(0o644));
        assert_eq!(without_setid(reg | 0o0777), None);
        // Only regular files.
        assert_eq!(without_setid(libc::S_IFDIR | 0o2775), None);
    }
}
