//! The union filesystem's state and its read-side operations: resolving nodes, attributes,
//! listings. Operations return `Result<_, Errno>`; the adapter turns errors into replies.
//!
//! Locking: `ns` orders namespace changes. Lookups, getattr and readdir take it shared;
//! every operation that changes the upper (create, remove, rename, copy-up, setattr, xattr
//! writes) takes it exclusively, so a resolution never sees a half-done change of the upper.
//! The node table has its own short-held mutex and is never held across a system call.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};
use nix::errno::Errno;
use nix::sys::stat::FileStat;
use parking_lot::Mutex;

use super::handle::{DirEntry, Handles, Listing, Plus};
use super::inode::{Node, NodeLower, Table, UpperAbsence, ROOT};
use super::nslock::NsLock;
use crate::cow::Upper;
use crate::layer_index::{self, is_dir, DirView, LayerPath, Layers, Resolved, Shown};

pub type Res<T> = Result<T, Errno>;

/// How long the kernel may cache entries (also negative ones) and attributes. Lower layers
/// are immutable and the upper changes only through this daemon: the kernel updates its caches
/// from the replies to the operations that change names and attributes, and the daemon
/// invalidates what those operations change as a side effect (a copied-up directory's link
/// count, for one). The timeout only bounds how long an outside change to a layer, which is not
/// supported, could stay unseen.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// Where the data of a node lives now.
#[derive(Debug, Clone)]
pub enum Backing {
    Upper(LayerPath),
    /// The index copy of a hard-linked lower file, shared by all its names.
    Index(LayerPath),
    Lower(LayerPath),
}

impl Backing {
    pub fn path(&self) -> &LayerPath {
        match self {
            Backing::Upper(p) | Backing::Lower(p) | Backing::Index(p) => p,
        }
    }

    /// The attributes of the object there.
    pub fn lstat(&self) -> nix::Result<FileStat> {
        self.path().lstat()
    }

    pub fn is_lower(&self) -> bool {
        matches!(self, Backing::Lower(_))
    }
}

pub struct UnionFs {
    pub(super) layers: Layers,
    pub(super) upper: Option<Upper>,
    pub(super) ns: NsLock,
    pub(super) table: Mutex<Table>,
    pub(super) handles: Handles,
    /// Per-inode locks serialising copy-ups made outside the namespace lock.
    pub(super) copyups: super::inolock::InodeLocks,
    /// Whether the kernel agreed to FUSE passthrough at init.
    pub(super) passthrough: std::sync::atomic::AtomicBool,
    /// Set once the session exists (the filesystem is built before it).
    pub(crate) notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// The connection's `/dev/fuse` descriptor, when this process mounted it: what passthrough
    /// registrations and the io_uring queues are made on.
    pub(super) dev: std::sync::OnceLock<Arc<std::os::fd::OwnedFd>>,
    /// Whether to ask the kernel for io_uring at init (the mount's `noio_uring` unset).
    pub(super) io_uring: bool,
    /// Whether the kernel agreed at init to send requests over io_uring.
    pub(super) uring_accepted: std::sync::atomic::AtomicBool,
    /// Whether requests arrive over io_uring: set when a queue serves its first one, which
    /// the kernel sends only once every queue is registered.
    pub(super) uring_serving: std::sync::atomic::AtomicBool,
    /// The io_uring queue threads, once started.
    pub(super) queues: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

pub fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs as u32)
    }
}

pub fn kind_of(st: &FileStat) -> FileType {
    kind_of_mode(st.st_mode)
}

fn kind_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// How long the kernel may cache the name of `node` with attributes `attr`. The kernel does
/// not say through which name an operation on a hard-linked file comes; never caching such
/// names makes every operation look its name up first, so that copy-up materialises the name
/// that was used, as overlayfs does.
pub fn entry_ttl(node: &Node, attr: &FileAttr) -> Duration {
    let linked_lower = node.lower.as_ref().is_some_and(|l| l.nlink > 1);
    if !node.is_dir && (attr.nlink > 1 || linked_lower) {
        Duration::ZERO
    } else {
        TTL
    }
}

/// The readdir offset cookie of a name: a hash of it, above the cookies of `.` and `..` (1, 2)
/// and below 2^63 (the kernel passes offsets as signed). Two names hashing alike would make a
/// reader that stops between them skip the second, the same risk ext4's hashed directories take.
fn name_cookie(name: &OsStr) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) >> 1).max(3)
}

impl UnionFs {
    pub fn new(layers: Layers, upper: Option<Upper>) -> Res<UnionFs> {
        let (root, _) = layers.root_view()?;
        let root_path: Arc<Path> = Arc::from(Path::new(""));
        let mut table = Table::default();
        table.insert_root(Node {
            ino: ROOT,
            is_dir: true,
            lookups: 0,
            aliases: vec![root_path.clone()],
            parent: ROOT,
            lower: root.lower.as_ref().map(|l| NodeLower::new(l, &root_path)),
            lower_dirs: root.lower_dirs.clone(),
            upper_absence: UpperAbsence::default(),
            first_open: Default::default(),
        });
        Ok(UnionFs {
            layers,
            upper,
            ns: NsLock::default(),
            table: Mutex::new(table),
            handles: Handles::default(),
            notifier: Arc::default(),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            copyups: Default::default(),
            dev: std::sync::OnceLock::new(),
            io_uring: false,
            uring_accepted: std::sync::atomic::AtomicBool::new(false),
            uring_serving: std::sync::atomic::AtomicBool::new(false),
            queues: Mutex::default(),
        })
    }

    /// Drops the kernel's cached attributes of `ino`, whose merged attributes changed as a
    /// side effect (a directory copied up reports another link count).
    pub(super) fn invalidate_attr(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // ENOENT: the kernel does not know the inode, so it caches nothing of it.
            if let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0) {
                tracing::trace!(ino, error = %e, "attribute invalidation not delivered");
            }
        }
    }

    pub(super) fn node(&self, ino: u64) -> Res<Arc<Node>> {
        self.table.lock().get(ino).cloned().ok_or(Errno::ESTALE)
    }

    /// The upper object at merged path `rel`, if there is one (whiteouts are not objects).
    pub(super) fn upper_stat(&self, rel: &Path) -> Res<Option<FileStat>> {
        let Some(up) = &self.upper else {
            return Ok(None);
        };
        match up.path(rel).lstat() {
            Ok(st) if crate::whiteout::is_overlay_whiteout(&st) => Ok(None),
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The upper object of `node`, if there is one. That the upper has none is remembered
    /// on the node until the upper next changes (see `nslock`): walks and reads of lower-only
    /// trees then make no system call in the upper. Called with `ns` held.
    pub(super) fn node_upper_stat(&self, node: &Node) -> Res<Option<FileStat>> {
        if self.upper.is_none() {
            return Ok(None);
        }
        let generation = self.ns.generation();
        if generation.is_some_and(|g| node.upper_absence.known_at(g)) {
            return Ok(None);
        }
        let st = self.upper_stat(node.path())?;
        if let (None, Some(g)) = (&st, generation) {
            node.upper_absence.record(g);
        }
        Ok(st)
    }

    /// The view of directory `ino` for resolving its children.
    pub(super) fn dir_view(&self, ino: u64) -> Res<DirView> {
        Ok(self.dir_view_stat(ino)?.0)
    }

    /// [`UnionFs::dir_view`], with the attributes of the directory's upper copy when it has
    /// one.
    pub(super) fn dir_view_stat(&self, ino: u64) -> Res<(DirView, Option<FileStat>)> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(Errno::ENOTDIR);
        }
        let upper = self.node_upper_stat(&node)?.filter(is_dir);
        Ok((node.view(upper.is_some()), upper))
    }

    /// Where `node`'s object lives now, and its attributes there.
    pub(super) fn backing(&self, node: &Node) -> Res<(Backing, FileStat)> {
        match self.locate(node)? {
            (b, Some(st)) => Ok((b, st)),
            (b, None) => {
                let st = b.lstat()?;
                Ok((b, st))
            }
        }
    }

    /// Where `node`'s object lives now, with its attributes when finding it read them (a
    /// lower object is found without a system call: lower layers do not change).
    pub(super) fn locate(&self, node: &Node) -> Res<(Backing, Option<FileStat>)> {
        if node.aliases.is_empty() {
            // Unlinked while open: only its file handles reach it now.
            return Err(Errno::ENOENT);
        }
        if let (None, Some(up)) = (&node.lower, &self.upper) {
            // Nothing below it: the upper holds it at its path, which changes only under the
            // namespace lock. A caller that needs its attributes reads them there.
            return Ok((Backing::Upper(up.path(node.path())), None));
        }
        if let Some(st) = self.node_upper_stat(node)? {
            if let Some(up) = &self.upper {
                return Ok((Backing::Upper(up.path(node.path())), Some(st)));
            }
        }
        let lower = node.lower.as_ref().ok_or(Errno::ENOENT)?;
        if !node.is_dir && lower.nlink > 1 {
            if let Some(up) = &self.upper {
                let idx = up.index_path(node.ino);
                if let Ok(st) = layer_index::lstat(&idx) {
                    return Ok((Backing::Index(idx.into()), Some(st)));
                }
            }
        }
        let path = self.layers.lowers[lower.layer].join(&lower.path);
        Ok((Backing::Lower(path), None))
    }

    /// The merged attributes of `node` whose object is at `backing` with `st`.
    pub(super) fn attr(&self, node: &Node, backing: &Backing, st: &FileStat) -> FileAttr {
        let mut nlink = st.st_nlink as u32;
        if node.is_dir {
            // Like overlayfs: a merged directory reports 1, which `find` and others accept
            // as "unknown number of subdirectories".
            let merged = match backing {
                Backing::Upper(_) => !node.lower_dirs.is_empty(),
                _ => node.lower_dirs.len() > 1,
            };
            if merged {
                nlink = 1;
            }
        } else if matches!(backing, Backing::Index(_)) || (!backing.is_lower() && nlink > 1) {
            // An indexed copy counts the merged names itself (an upper name of it has at least
            // two real links: itself and the index entry).
            if let Some(n) = self
                .upper
                .as_ref()
                .and_then(|u| u.indexed_nlink(backing.path()))
            {
                nlink = n;
            }
        }
        FileAttr {
            ino: fuser::INodeNo(node.ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind_of(st),
            perm: (st.st_mode & 0o7777) as u16,
            nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    pub(super) fn node_attr(&self, node: &Node) -> Res<FileAttr> {
        let (b, st) = self.backing(node)?;
        Ok(self.attr(node, &b, &st))
    }

    /// Resolves `name` in directory `parent` into a node (not yet counted in the table).
    pub(super) fn resolve_node(&self, parent: u64, name: &OsStr) -> Res<(Node, Resolved)> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let view = self.dir_view(parent)?;
        let r = self.layers.resolve(&view, name)?;
        if !r.exists() {
            return Err(Errno::ENOENT);
        }
        let node = self.node_from(parent, &view, name, &r);
        Ok((node, r))
    }

    pub(super) fn node_from(
        &self,
        parent: u64,
        view: &DirView,
        name: &OsStr,
        r: &Resolved,
    ) -> Node {
        let ino = self.layers.ino_of(view, name, r);
        Self::node_at(ino, parent, view, name, r)
    }

    /// The node of `name` in `view`, resolved as `r`, whose inode number is already known.
    pub(super) fn node_at(
        ino: u64,
        parent: u64,
        view: &DirView,
        name: &OsStr,
        r: &Resolved,
    ) -> Node {
        let alias: Arc<Path> = Arc::from(view.path.join(name));
        Node {
            ino,
            is_dir: r.is_dir(),
            lookups: 0,
            aliases: vec![alias.clone()],
            parent,
            lower: r.lower.as_ref().map(|l| NodeLower::new(l, &alias)),
            lower_dirs: r.lower_dirs.clone(),
            upper_absence: UpperAbsence::default(),
            first_open: Default::default(),
        }
    }

    /// Looks up `name` in `parent` and counts a kernel reference on the result.
    pub fn do_lookup(&self, parent: u64, name: &OsStr) -> Res<(FileAttr, Duration)> {
        let _ns = self.ns.read();
        self.lookup_locked(parent, name)
    }

    /// `do_lookup` for callers that already hold `ns`.
    pub(super) fn lookup_locked(&self, parent: u64, name: &OsStr) -> Res<(FileAttr, Duration)> {
        let (node, r) = self.resolve_node(parent, name)?;
        let attr = self.resolved_attr(&node, &r)?;
        let ttl = entry_ttl(&node, &attr);
        self.table.lock().upsert(node);
        Ok((attr, ttl))
    }

    /// The attributes of a freshly resolved node, from the stat resolution made (only a
    /// multiply-linked file needs another look, at its index copy and link count).
    pub(super) fn resolved_attr(&self, node: &Node, r: &Resolved) -> Res<FileAttr> {
        let shown = r.stat().ok_or(Errno::ENOENT)?;
        if !node.is_dir && shown.st_nlink > 1 {
            return self.node_attr(node);
        }
        let backing = match (&r.upper, self.upper.as_ref()) {
            (Some(_), Some(up)) => Backing::Upper(up.path(node.path())),
            _ => Backing::Lower(PathBuf::new().into()),
        };
        Ok(self.attr(node, &backing, shown))
    }

    /// Counts one more kernel reference on `node` (an entry returned by readdirplus).
    pub(super) fn count_lookup(&self, node: Node) {
        self.table.lock().upsert(node);
    }

    pub fn do_forget(&self, ino: u64, n: u64) {
        self.table.lock().forget(ino, n);
    }

    pub fn do_getattr(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        if node.aliases.is_empty() {
            if node.is_dir {
                return self
                    .table
                    .lock()
                    .removed_dir(ino)
                    .map(|d| d.attr)
                    .ok_or(Errno::ENOENT);
            }
            return self.handle_attr(&node, fh);
        }
        self.node_attr(&node)
    }

    /// Attributes of an unlinked node, read through one of its open handles (the kernel does
    /// not always say which: fstat(2) arrives without one).
    pub(super) fn handle_attr(&self, node: &Node, fh: Option<u64>) -> Res<FileAttr> {
        let h = self.handles.file_of(node.ino, fh).ok_or(Errno::ENOENT)?;
        let st = nix::sys::stat::fstat(h.file()?.as_ref())?;
        let mut attr = self.attr(node, &Backing::Lower(PathBuf::new().into()), &st);
        // An open indexed copy: its own link count holds the index entry and its upper names,
        // while the names it has in the merged view are counted on the index entry (names
        // left only in the lower layers included). Only unlinked objects come here, so the
        // index is looked at each time rather than only for nodes known to be linked.
        if let (false, Some(up)) = (node.is_dir, &self.upper) {
            let idx = up.index_path(node.ino);
            let same = layer_index::lstat(&idx)
                .is_ok_and(|i| (i.st_dev, i.st_ino) == (st.st_dev, st.st_ino));
            if let (true, Some(n)) = (same, up.indexed_nlink(&idx)) {
                attr.nlink = n;
            }
        }
        Ok(attr)
    }

    pub fn do_readlink(&self, ino: u64) -> Res<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let _ns = self.ns.read();
        let (b, _) = self.locate(&*self.node(ino)?)?;
        let (dir, rel) = b.path().at();
        Ok(nix::fcntl::readlinkat(dir, rel)?.into_vec())
    }

    /// Takes the merged listing of directory `ino` for a new directory handle.
    ///
    /// The listing is taken only when the kernel reads the directory: with its readdir cache
    /// still valid it opens and closes the directory without reading it.
    /// The entries of directory `ino` from `offset` on. Reading from offset 0 takes a new
    /// listing, so a rewound directory shows its current entries.
    ///
    /// Offsets are cookies that mean the same place in every listing of the directory (the
    /// kernel's readdir cache is per directory, and directories have no handles, so a read may
    /// continue from any earlier listing): each entry's cookie is a hash of its name, listings
    /// are sorted by it, and reading resumes after the given cookie. The returned index is
    /// where that is.
    /// The listing also says whether this call read it (`fresh`), rather than took it parked.
    pub fn do_readdir(&self, ino: u64, offset: u64) -> Res<(Arc<Listing>, usize, bool)> {
        let listings = &self.handles.listings;
        let (listing, fresh) = match listings.get(ino) {
            Some(l) if offset != 0 => (l, false),
            _ => {
                let l = Arc::new(self.listing(ino)?);
                listings.park(ino, l.clone());
                (l, true)
            }
        };
        let start = listing.entries.partition_point(|e| e.cookie <= offset);
        if start == listing.entries.len() {
            listings.drop_listing(ino);
        }
        Ok((listing, start, fresh))
    }

    /// The merged listing of directory `ino`, read with no namespace lock held: listing a
    /// large directory takes long, and under the lock every change on the mount waited for it
    /// (100,000 lower names: a create in another directory waited 94 ms). While the kernel
    /// reads a directory it keeps the changes of names in it out (they hold the directory's
    /// lock), and the daemon's other changes to the upper appear whole (a copy-up is renamed
    /// into place), so the directory is read as it was, or as it changes, which POSIX lets a
    /// listing show. It is read again under the lock if reading failed, or if a directory was
    /// renamed or removed meanwhile (its path may then have led elsewhere for a while), or
    /// the directory was copied up. Its entries resolved with attributes are sent as they are
    /// only by the read that made it, and only if the upper generation stayed the same (see
    /// `plus_resolver`).
    fn listing(&self, ino: u64) -> Res<Listing> {
        let (before, moves, node, view) = {
            let _ns = self.ns.read();
            let (before, moves) = (self.ns.generation(), self.ns.moves());
            (before, moves, self.node(ino)?, self.dir_view(ino)?)
        };
        let unlocked = self.read_listing(&node, &view);
        let _ns = self.ns.read();
        let now = self.dir_view(ino)?;
        let same_place = self.ns.moves() == moves
            && now.path == view.path
            && now.in_upper == view.in_upper
            && (Arc::ptr_eq(&now.lowers, &view.lowers) || now.lowers == view.lowers);
        let (entries, generation) = match unlocked {
            Ok(entries) if same_place => {
                let generation = before.filter(|g| self.ns.generation() == Some(*g));
                (entries, generation)
            }
            _ => (
                self.read_listing(&*self.node(ino)?, &now)?,
                self.ns.generation(),
            ),
        };
        Ok(Listing {
            entries,
            generation,
        })
    }

    /// The entries of directory `node` seen through `view`, sorted by cookie. A name with
    /// several links is left for readdirplus to resolve (under the lock: its attributes are
    /// its node's).
    fn read_listing(&self, node: &Node, view: &DirView) -> Res<Vec<DirEntry>> {
        let list = self.layers.list_shallow(view)?;
        let mut entries = Vec::with_capacity(list.len() + 2);
        entries.push(DirEntry {
            ino: node.ino,
            kind: FileType::Directory,
            name: ".".into(),
            plus: Plus::Dot,
            cookie: 1,
        });
        entries.push(DirEntry {
            ino: node.parent,
            kind: FileType::Directory,
            name: "..".into(),
            plus: Plus::Dot,
            cookie: 2,
        });
        for e in list {
            let (ino, plus) = match e.shown {
                Shown::Lower { ino } => (ino, Plus::Later),
                Shown::Resolved(r) => {
                    let child = self.node_from(node.ino, view, &e.name, &r);
                    let linked = r.stat().is_some_and(|st| !is_dir(st) && st.st_nlink > 1);
                    if linked {
                        (child.ino, Plus::Later)
                    } else {
                        let attr = self.resolved_attr(&child, &r)?;
                        (child.ino, Plus::Ready(Box::new((child, attr))))
                    }
                }
            };
            entries.push(DirEntry {
                ino,
                kind: kind_of_mode(e.kind.bits()),
                cookie: name_cookie(&e.name),
                name: e.name,
                plus,
            });
        }
        entries.sort_by_key(|e| e.cookie);
        Ok(entries)
    }

    /// Resolves, for readdirplus, the entries of `listing` (of directory `ino`) that were
    /// listed without their attributes (see `Plus::Later`), and those listed with them unless
    /// the listing was read by this same request (`fresh`) with the upper unchanged since. The
    /// kernel keeps what a reply says for a day: a name removed since, or attributes changed
    /// before the request (a write clearing a set-id bit, a passthrough write's new size), would
    /// otherwise be put back in its cache.
    pub fn plus_resolver(&self, ino: u64, listing: &Listing, fresh: bool) -> Res<PlusResolver<'_>> {
        let ns = self.ns.read();
        let view = self.dir_view(ino)?;
        let current =
            fresh && listing.generation.is_some() && listing.generation == self.ns.generation();
        Ok(PlusResolver {
            fs: self,
            dir: ino,
            view,
            current,
            _ns: ns,
        })
    }

    pub fn do_statfs(&self) -> Res<nix::sys::statvfs::Statvfs> {
        let root = match &self.upper {
            Some(u) => u.path(Path::new("")),
            None => self.layers.lowers[0].root.clone().into(),
        };
        nix::sys::statvfs::statvfs(&*root)
    }
}

/// Looks up the attributes of listed entries as readdirplus sends them, under one shared hold
/// of the namespace lock and one view of the directory.
pub struct PlusResolver<'a> {
    fs: &'a UnionFs,
    dir: u64,
    view: DirView,
    /// Whether the listing's resolved entries are still what the upper shows.
    current: bool,
    _ns: parking_lot::RwLockReadGuard<'a, ()>,
}

impl PlusResolver<'_> {
    /// The node and attributes of `e`, as a lookup would give them; none for `.` and `..`,
    /// and for a name gone since the listing was read (POSIX lets a listing show it or not).
    pub fn plus(&self, e: &DirEntry) -> Res<Option<(Node, FileAttr)>> {
        match &e.plus {
            Plus::Dot => Ok(None),
            Plus::Ready(ready) if self.current => Ok(Some((**ready).clone())),
            Plus::Ready(_) | Plus::Later => {
                let r = self.fs.layers.resolve(&self.view, &e.name)?;
                if !r.exists() {
                    return Ok(None);
                }
                let node = self.fs.node_from(self.dir, &self.view, &e.name, &r);
                let attr = self.fs.resolved_attr(&node, &r)?;
                Ok(Some((node, attr)))
            }
        }
    }
}
