//! Open files, by the file handle number given to the kernel, and directory listings being
//! read.
//!
//! A file handle owns the backing file descriptor. A read-only open of a lower file keeps
//! working after the file is copied up: copy-up swaps the descriptor of every handle on that
//! inode to the upper copy, so reads see what overlayfs would show (the new data).
//!
//! A read-only handle on a lower file of a writable mount opens its file only when first
//! used. The kernel keeps the page cache of such files across opens, so a warm `tar` or
//! `cat` opens, reads from that cache and closes without the daemon ever reading: opening
//! the lower file there would be a path walk and a close spent on every open for nothing.
//! Lower files never change, so opening later opens the same data. The first open of a lower
//! file opens it at once, to preload it (see `UnionFs::preload`).
//!
//! Directories have no handles: the kernel is told it need not open them (a round trip per
//! directory saved on every walk), so a listing being read is kept by directory inode in
//! [`Listings`] instead.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::core::Res;
use super::inolock::InodeLocks;
use crate::layer_index::LayerPath;
use crate::sys::passthrough::BackingFile;

/// What a handle reads and writes through.
#[derive(Debug)]
pub enum Descriptor {
    Open(Arc<File>),
    /// A lower file, opened read-only at the handle's first use (see the module comment).
    Deferred(LayerPath),
}

impl Descriptor {
    /// The file, opened now if its opening was deferred.
    pub fn open(&self) -> Res<Arc<File>> {
        match self {
            Descriptor::Open(f) => Ok(f.clone()),
            Descriptor::Deferred(p) => Ok(Arc::new(super::data::open_at(p, libc::O_RDONLY)?)),
        }
    }
}

#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    /// The backing file; replaced when a lower file is copied up under an open handle.
    descriptor: RwLock<Descriptor>,
    /// Whether `descriptor` is a lower (read-only) file.
    pub on_lower: RwLock<bool>,
    /// The kernel's passthrough registration of the inode's backing file, shared by every
    /// passthrough handle of the inode; `None` for a handle the daemon serves itself.
    pub backing: Mutex<Option<Arc<BackingFile>>>,
}

/// How the open files of one inode are served now. The kernel requires one mode per inode
/// (fs/fuse/iomode.c): passthrough opens share one backing and exclude cached opens.
#[derive(Debug, Default)]
pub struct IoState {
    pub served: usize,
    pub backing: Option<Arc<BackingFile>>,
}

impl IoState {
    /// Whether the inode has no open handle.
    pub fn is_idle(&self) -> bool {
        self.served == 0 && self.backing.is_none()
    }
}

impl FileHandle {
    /// The backing file, opened now if its opening was deferred.
    pub fn file(&self) -> Res<Arc<File>> {
        if let Descriptor::Open(f) = &*self.descriptor.read() {
            return Ok(f.clone());
        }
        let mut d = self.descriptor.write();
        let f = d.open()?;
        *d = Descriptor::Open(f.clone());
        Ok(f)
    }

    /// Moves the handle from its lower file to `upper`, the file's copy.
    pub fn move_to_upper(&self, upper: File) {
        *self.descriptor.write() = Descriptor::Open(Arc::new(upper));
        *self.on_lower.write() = false;
    }
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: fuser::FileType,
    pub name: OsString,
    /// The entry's node and attributes, for readdirplus.
    pub plus: Plus,
    /// The offset of the entry after this one (see `UnionFs::do_readdir`).
    pub cookie: u64,
}

/// What readdirplus sends of a listed entry besides its name.
#[derive(Debug, Clone)]
pub enum Plus {
    /// `.` and `..`: the kernel does not instantiate them, so only their inode number.
    Dot,
    /// The node and attributes, resolved with the listing.
    Ready(Box<(super::inode::Node, fuser::FileAttr)>),
    /// Listed from directory entries alone: resolved when sent with its attributes, which the
    /// kernel asks for with the first buffer of a listing and seldom with the others (see
    /// `core::PlusResolver`).
    Later,
}

/// A directory's merged listing, sorted by cookie.
#[derive(Debug)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
    /// The upper generation it was read at (see `nslock`), if it stayed the same while it was
    /// read: its entries resolved with their attributes (`Plus::Ready`) are sent as they are
    /// only by the request that read it, and only if the generation is still the same.
    pub generation: Option<u64>,
}

/// How many listings in the middle of being read are kept at once.
const LISTINGS_KEPT: usize = 16;

/// Listings in the middle of being read, by directory inode.
///
/// A read from offset 0 takes a fresh listing and parks it here, so that the reads continuing
/// it (the kernel asks for one buffer at a time) do not list the directory again; the read that
/// finds nothing left drops it. At most [`LISTINGS_KEPT`] are parked and the least recently
/// used goes first, so memory stays bounded however many readers stop half way. A continued
/// read whose listing is gone lists again and resumes by cookie (see `UnionFs::do_readdir`);
/// POSIX allows entries changed during a read to show either way.
#[derive(Debug)]
pub struct Listings {
    parked: Mutex<lru::LruCache<u64, Arc<Listing>>>,
}

impl Default for Listings {
    fn default() -> Listings {
        let cap = std::num::NonZeroUsize::new(LISTINGS_KEPT).expect("non-zero");
        Listings {
            parked: Mutex::new(lru::LruCache::new(cap)),
        }
    }
}

impl Listings {
    /// The parked listing of directory `ino`.
    pub fn get(&self, ino: u64) -> Option<Arc<Listing>> {
        self.parked.lock().get(&ino).cloned()
    }

    pub fn park(&self, ino: u64, listing: Arc<Listing>) {
        self.parked.lock().put(ino, listing);
    }

    pub fn drop_listing(&self, ino: u64) {
        self.parked.lock().pop(&ino);
    }
}

#[derive(Debug, Default)]
pub struct Handles {
    /// Held for an inode while an open of it decides its mode, registers and preloads, so that
    /// two opens of one inode cannot pick different modes or backings, and nothing fills or
    /// changes the inode's page cache while a preload stores into it (see
    /// `UnionFs::preload`).
    pub opening: InodeLocks,
    next: AtomicU64,
    files: Mutex<Files>,
    pub listings: Listings,
}

/// The open files, by handle and by inode: what an open asks of an inode's other handles
/// costs the same however many files are open elsewhere (a scan of all handles cost an open
/// 52 µs with 15,000 files held open, against 10 µs with none).
#[derive(Debug, Default)]
struct Files {
    by_fh: HashMap<u64, Arc<FileHandle>>,
    by_ino: HashMap<u64, Vec<Arc<FileHandle>>>,
}

impl Files {
    fn of(&self, ino: u64) -> &[Arc<FileHandle>] {
        self.by_ino.get(&ino).map_or(&[], |v| v)
    }
}

impl Handles {
    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_file(&self, ino: u64, descriptor: Descriptor, on_lower: bool) -> u64 {
        let fh = self.next();
        let h = Arc::new(FileHandle {
            ino,
            descriptor: RwLock::new(descriptor),
            on_lower: RwLock::new(on_lower),
            backing: Mutex::new(None),
        });
        let mut files = self.files.lock();
        files.by_ino.entry(ino).or_default().push(h.clone());
        files.by_fh.insert(fh, h);
        fh
    }

    /// How the handles of `ino` are served now.
    pub fn io_state(&self, ino: u64) -> IoState {
        let mut st = IoState::default();
        for h in self.files.lock().of(ino) {
            match &*h.backing.lock() {
                Some(b) => st.backing = Some(b.clone()),
                None => st.served += 1,
            }
        }
        st
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.lock().by_fh.get(&fh).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        let mut files = self.files.lock();
        let h = files.by_fh.remove(&fh)?;
        if let Some(same) = files.by_ino.get_mut(&h.ino) {
            same.retain(|o| !Arc::ptr_eq(o, &h));
            if same.is_empty() {
                files.by_ino.remove(&h.ino);
            }
        }
        Some(h)
    }

    /// Some open handle of `ino`, preferring `fh`.
    pub fn file_of(&self, ino: u64, fh: Option<u64>) -> Option<Arc<FileHandle>> {
        let files = self.files.lock();
        fh.and_then(|fh| files.by_fh.get(&fh))
            .filter(|h| h.ino == ino)
            .or_else(|| files.of(ino).first())
            .cloned()
    }

    /// Handles of `ino` still reading from the lower layer.
    pub fn lower_handles_of(&self, ino: u64) -> Vec<Arc<FileHandle>> {
        let files = self.files.lock();
        files
            .of(ino)
            .iter()
            .filter(|h| *h.on_lower.read())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred() -> Descriptor {
        Descriptor::Deferred(std::path::PathBuf::from("/nonexistent").into())
    }

    #[test]
    fn handles_are_found_by_inode_and_forgotten_on_release() {
        let h = Handles::default();
        let a1 = h.add_file(7, deferred(), true);
        let a2 = h.add_file(7, deferred(), false);
        let b = h.add_file(8, deferred(), true);
        assert_eq!(h.io_state(7).served, 2);
        assert_eq!(h.io_state(8).served, 1);
        assert_eq!(h.lower_handles_of(7).len(), 1);
        assert_eq!(
            h.file_of(7, Some(b)).map(|f| f.ino),
            Some(7),
            "fh of another inode"
        );
        assert!(h.remove_file(a1).is_some());
        assert!(h.remove_file(a1).is_none(), "released twice");
        assert_eq!(h.io_state(7).served, 1);
        assert!(h.lower_handles_of(7).is_empty());
        h.remove_file(a2);
        assert!(h.io_state(7).is_idle());
        assert!(h.file_of(7, None).is_none());
        assert_eq!(
            h.files.lock().by_ino.len(),
            1,
            "an inode without handles is kept"
        );
        h.remove_file(b);
        assert!(h.files.lock().by_fh.is_empty());
    }
}
