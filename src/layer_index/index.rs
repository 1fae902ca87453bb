//! A per-layer index of names, so that a lookup asks only the layers that hold the name.
//!
//! Resolving a name walks the layers top-down, and without an index each layer costs a stat
//! (and one more for an AUFS whiteout), so lookups grow with the depth of the stack. A lower
//! layer never changes, so it can be indexed once: every relative path in it is hashed
//! (xxh3-64) into a set, with flag bits saying what is there (a directory, a whiteout in
//! either format, an opaque directory, a redirect).
//!
//! The index only ever *rules a layer out*. A hit is confirmed by the same system calls as
//! without an index, so a hash collision costs one syscall and never changes what the merged
//! view shows; only a layer changed after it was indexed could be misread, and layers must not
//! change while mounted (as overlayfs also requires).
//!
//! Indexes are saved, loaded and swept by `index/saved.rs`; loading and building run in the
//! background after mount (see `loader.rs`).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::whiteout;

mod saved;

pub use saved::{
    default_dir, mark_layers_used, remove_unused, save_stack, saved_path, stack_identity, Error,
    SavedIndex, UNUSED_FOR,
};

pub const DIR: u8 = 1;
pub const WHITEOUT: u8 = 2;
pub const OPAQUE: u8 = 4;
pub const REDIRECT: u8 = 8;
pub const OBJECT: u8 = 16;

/// The hash of a path relative to a layer root, as the index keys it.
pub fn key(rel: &Path) -> u64 {
    xxhash_rust::xxh3::xxh3_64(rel.as_os_str().as_bytes())
}

/// The names of one lower layer. Keys are already xxh3 hashes, so the map does not hash them
/// again.
#[derive(Debug, Default)]
pub struct LayerIndex {
    marks: HashMap<u64, u8, nohash_hasher::BuildNoHashHasher<u64>>,
}

impl LayerIndex {
    /// What the layer holds at `rel` (0: nothing, neither an object nor a whiteout).
    pub fn marks(&self, rel: &Path) -> u8 {
        self.marks_of(key(rel))
    }

    /// [`LayerIndex::marks`] by the path's [`key`].
    pub fn marks_of(&self, key: u64) -> u8 {
        self.marks.get(&key).copied().unwrap_or(0)
    }

    /// The keys of every path the layer holds anything at.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.marks.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    fn mark(&mut self, rel: &Path, bits: u8) {
        *self.marks.entry(key(rel)).or_insert(0) |= bits;
    }

    /// Walks the layer at `root` and indexes every entry. A directory that cannot be read is
    /// left out of the index *as a whole layer*: the index is then not used at all, since it
    /// could not tell absence from unreadability.
    pub fn build(root: &Path) -> Option<LayerIndex> {
        let root = super::LayerRoot::open(root).ok()?;
        let mut idx = LayerIndex::default();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            idx.mark_dir_attrs(&rel, &dir);
            for entry in std::fs::read_dir(&dir).ok()? {
                let entry = entry.ok()?;
                let name = entry.file_name();
                let path = rel.join(&name);
                if name.as_bytes() == whiteout::AUFS_OPAQUE {
                    idx.mark(&rel, OPAQUE);
                    continue;
                }
                if let Some(hidden) = whiteout::aufs_hidden_name(&name) {
                    idx.mark(&rel.join(hidden), WHITEOUT);
                    continue;
                }
                let ft = entry.file_type().ok()?;
                if ft.is_dir() {
                    idx.mark(&path, OBJECT | DIR);
                    stack.push(path);
                } else if ft.is_char_device() && entry.metadata().ok()?.rdev() == 0 {
                    idx.mark(&path, WHITEOUT);
                } else {
                    idx.mark(&path, OBJECT);
                }
            }
        }
        Some(idx)
    }

    fn mark_dir_attrs(&mut self, rel: &Path, dir: &Path) {
        if whiteout::is_opaque_dir(dir) {
            self.mark(rel, OPAQUE);
        }
        if whiteout::redirect_of(dir).is_some() {
            self.mark(rel, REDIRECT);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::ffi::OsStr;

    pub(super) fn layer() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path();
        std::fs::create_dir_all(p.join("usr/lib")).expect("dirs");
        std::fs::write(p.join("usr/lib/a"), "a").expect("file");
        std::fs::write(p.join("usr/.wh.gone"), "").expect("whiteout");
        std::fs::create_dir(p.join("opq")).expect("dir");
        std::fs::write(p.join("opq/.wh..wh..opq"), "").expect("marker");
        d
    }

    #[test]
    fn marks_objects_whiteouts_and_opaque_dirs() {
        let d = layer();
        let idx = LayerIndex::build(d.path()).expect("build");
        let m = |p: &str| idx.marks(Path::new(p));
        assert_eq!(m("usr"), OBJECT | DIR);
        assert_eq!(m("usr/lib/a"), OBJECT);
        assert_eq!(m("usr/gone"), WHITEOUT);
        assert_eq!(m("opq"), OBJECT | DIR | OPAQUE);
        assert_eq!(m("usr/missing"), 0);
        assert_eq!(m("usr/.wh.gone"), 0, "markers are not names");
    }

    #[test]
    fn name_keys_are_whole_paths() {
        assert_ne!(key(Path::new("a/bc")), key(Path::new("ab/c")));
        assert_eq!(
            key(Path::new(OsStr::from_bytes(b"\xff"))),
            key(Path::new(OsStr::from_bytes(b"\xff")))
        );
    }
}
