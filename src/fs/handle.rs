//! Open files and directories, by the file handle number given to the kernel.
//!
//! A file handle owns the backing file descriptor. A read-only open of a lower file keeps
//! working after the file is copied up: copy-up swaps the descriptor of every handle on that
//! inode to the upper copy, so reads see what overlayfs would show (the new data).
//! A directory handle holds the listing taken at opendir, so that offsets stay valid while
//! entries change (POSIX allows either view of concurrently changed entries).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    /// The backing file; replaced when a lower file is copied up under an open handle.
    pub file: RwLock<Arc<File>>,
    /// Whether `file` is a lower (read-only) file.
    pub on_lower: RwLock<bool>,
    /// The kernel's passthrough registration of the inode's backing file, shared by every
    /// passthrough handle of the inode; `None` for a handle the daemon serves itself.
    pub backing: Mutex<Option<Arc<fuser::BackingId>>>,
}

/// How the open files of one inode are served now. The kernel requires one mode per inode
/// (fs/fuse/iomode.c): passthrough opens share one backing and exclude cached opens.
#[derive(Debug, Default)]
pub struct IoState {
    pub served: usize,
    pub backing: Option<Arc<fuser::BackingId>>,
}

impl FileHandle {
    pub fn file(&self) -> Arc<File> {
        self.file.read().clone()
    }
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: fuser::FileType,
    pub name: OsString,
    /// The entry's node and attributes, for readdirplus (none for `.` and `..`).
    pub plus: Option<(super::inode::Node, fuser::FileAttr)>,
    /// The offset of the entry after this one (see `UnionFs::do_readdir`).
    pub cookie: u64,
}

#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    /// The listing, taken at the first read and again whenever the directory is read from the
    /// start (rewinddir).
    pub entries: RwLock<Option<Arc<Vec<DirEntry>>>>,
}

#[derive(Debug, Default)]
pub struct Handles {
    /// Held while an open decides its mode and registers, so that two opens of one inode
    /// cannot pick different modes or backings.
    pub open_lock: Mutex<()>,
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
}

impl Handles {
    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_file(&self, ino: u64, file: Arc<File>, on_lower: bool) -> u64 {
        let fh = self.next();
        let h = FileHandle {
            ino,
            file: RwLock::new(file),
            on_lower: RwLock::new(on_lower),
            backing: Mutex::new(None),
        };
        self.files.lock().insert(fh, Arc::new(h));
        fh
    }

    /// How the handles of `ino` are served now.
    pub fn io_state(&self, ino: u64) -> IoState {
        let mut st = IoState::default();
        for h in self.files.lock().values().filter(|h| h.ino == ino) {
            match &*h.backing.lock() {
                Some(b) => st.backing = Some(b.clone()),
                None => st.served += 1,
            }
        }
        st
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.lock().get(&fh).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.lock().remove(&fh)
    }

    /// Some open handle of `ino`, preferring `fh`.
    pub fn file_of(&self, ino: u64, fh: Option<u64>) -> Option<Arc<FileHandle>> {
        let files = self.files.lock();
        fh.and_then(|fh| files.get(&fh))
            .filter(|h| h.ino == ino)
            .or_else(|| files.values().find(|h| h.ino == ino))
            .cloned()
    }

    /// Handles of `ino` still reading from the lower layer.
    pub fn lower_handles_of(&self, ino: u64) -> Vec<Arc<FileHandle>> {
        self.files
            .lock()
            .values()
            .filter(|h| h.ino == ino && *h.on_lower.read())
            .cloned()
            .collect()
    }

    pub fn add_dir(&self, ino: u64) -> u64 {
        let fh = self.next();
        let h = DirHandle {
            ino,
            entries: RwLock::new(None),
        };
        self.dirs.lock().insert(fh, Arc::new(h));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.lock().get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
