//! The table of merged objects the kernel currently knows, keyed by inode number.
//!
//! A node caches what resolution found: the merged paths it is known by (several for hard
//! links; the last looked-up one first in line), and its lower side, which never changes since
//! lower layers are immutable. Whether it is in the upper is not cached but read from the upper
//! when needed, so that there is one source of truth for the upper's state: the upper itself.
//! A node lives while the kernel holds lookups on it; FORGET releases it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use nix::errno::Errno;

use crate::layer_index::{DirView, LowerDirs, LowerObj};

/// What a node keeps of its top-most lower object: where it is and its link count. The rest of
/// its attributes are read again when needed (a copy-up), since a node of every walked name
/// stays in memory while the kernel holds it, and lower objects never change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLower {
    pub layer: usize,
    /// Shared with the node's merged path when they are the same (without redirects, always).
    pub path: Arc<Path>,
    pub nlink: u64,
}

impl NodeLower {
    /// What a node at merged path `merged` keeps of `l`.
    pub fn new(l: &LowerObj, merged: &Arc<Path>) -> NodeLower {
        let path = if l.path == **merged {
            merged.clone()
        } else {
            Arc::from(l.path.as_path())
        };
        NodeLower {
            layer: l.layer,
            path,
            nlink: l.st.st_nlink,
        }
    }
}

/// The FUSE root's inode number.
pub const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub is_dir: bool,
    /// Kernel references (lookup count).
    pub lookups: u64,
    /// Merged paths; the last is the one operations use.
    pub aliases: Vec<Arc<Path>>,
    /// Inode number of the directory holding the last alias.
    pub parent: u64,
    /// The top-most lower object (copy-up source), if any.
    pub lower: Option<NodeLower>,
    /// For directories: the lower directories merged into it.
    pub lower_dirs: LowerDirs,
    /// Whether the upper is known to hold nothing at the node's path.
    pub upper_absence: UpperAbsence,
    /// Whether the node's first open was served (it may preload the file: see
    /// `UnionFs::preload`).
    pub first_open: FirstOpen,
}

/// Set by the first open of a node. Kept by new versions of the node: the kernel inode, and
/// the page cache the first open may have filled, stay the same.
#[derive(Debug, Default)]
pub struct FirstOpen(AtomicBool);

impl Clone for FirstOpen {
    fn clone(&self) -> FirstOpen {
        FirstOpen(AtomicBool::new(self.0.load(Ordering::Relaxed)))
    }
}

impl FirstOpen {
    pub fn is_past(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Marks the first open as served; whether it was not before.
    pub fn claim(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// "The upper has no object at this node's path", remembered with the upper generation it was
/// seen at (see `nslock`). A new version of the node starts with what the old one knew.
#[derive(Debug, Default)]
pub struct UpperAbsence(AtomicU64);

impl Clone for UpperAbsence {
    fn clone(&self) -> UpperAbsence {
        UpperAbsence(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl UpperAbsence {
    /// Whether absence was seen at generation `generation`.
    pub fn known_at(&self, generation: u64) -> bool {
        self.0.load(Ordering::Relaxed) == generation
    }

    pub fn record(&self, generation: u64) {
        self.0.store(generation, Ordering::Relaxed);
    }

    /// Forgets what was seen (the node's path changed).
    pub fn forget(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl Node {
    /// The merged path operations on this node use.
    pub fn path(&self) -> &Path {
        self.aliases.last().map_or(Path::new(""), |p| p)
    }

    /// The view its children resolve against (`in_upper` as given by the caller).
    pub fn view(&self, in_upper: bool) -> DirView {
        DirView {
            path: self.path().to_path_buf(),
            in_upper,
            lowers: self.lower_dirs.clone(),
        }
    }
}

/// All known nodes. Each is shared with the requests using it (a request takes a reference,
/// not a copy); a change makes a new version of the node when one is in use.
#[derive(Debug, Default)]
pub struct Table {
    nodes: HashMap<u64, Arc<Node>>,
    /// What is kept of removed directories the kernel still holds.
    removed_dirs: HashMap<u64, RemovedDir>,
}

/// How many bytes of xattrs (names and values) a removed directory may hold: the most one
/// listxattr(2) can return of names (XATTR_LIST_MAX), and as much as one value can be.
pub const KEPT_XATTRS: usize = 64 * 1024;

/// What is kept of a removed directory the kernel still holds (an open descriptor, a process's
/// working directory): `fstat`, `stat(".")` and the xattr calls still answer for it, as on any
/// file system, but nothing is left on disk to read them from.
#[derive(Debug)]
pub struct RemovedDir {
    pub attr: fuser::FileAttr,
    /// Its xattrs when it was removed (the private ones of overlayfs and unionfs left out).
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// Whether it was in the upper. Changes to one that was are made on what is kept here, as
    /// overlayfs makes them on the removed directory's upper inode; one only the lower layers
    /// held cannot change: no name is left to copy it up to (overlayfs fails them as well).
    pub in_upper: bool,
}

impl RemovedDir {
    fn writable(&self) -> Result<(), Errno> {
        if self.in_upper {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    /// Changes the attributes (a chmod, chown or utimes through a descriptor of it).
    pub fn change_attr(
        &mut self,
        change: impl FnOnce(&mut fuser::FileAttr),
    ) -> Result<fuser::FileAttr, Errno> {
        self.writable()?;
        change(&mut self.attr);
        Ok(self.attr)
    }

    pub fn xattr(&self, name: &OsStr) -> Option<Vec<u8>> {
        let found = self.xattrs.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.clone())
    }

    /// Sets xattr `name`, with setxattr(2)'s `XATTR_CREATE` and `XATTR_REPLACE` flags. Only
    /// the namespaces an upper file system stores are taken, and no more than [`KEPT_XATTRS`]
    /// bytes in all (ENOSPC beyond): what is kept lives in the daemon's memory.
    pub fn set_xattr(&mut self, name: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
        self.writable()?;
        let stored = ["user.", "trusted.", "security."];
        if !stored
            .iter()
            .any(|p| name.as_bytes().starts_with(p.as_bytes()))
        {
            return Err(Errno::EOPNOTSUPP);
        }
        let existing = self.xattrs.iter().position(|(n, _)| n == name);
        match existing {
            Some(_) if flags & libc::XATTR_CREATE != 0 => return Err(Errno::EEXIST),
            None if flags & libc::XATTR_REPLACE != 0 => return Err(Errno::ENODATA),
            _ => {}
        }
        let others: usize = self
            .xattrs
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(n, v)| n.len() + 1 + v.len())
            .sum();
        if others + name.len() + 1 + value.len() > KEPT_XATTRS {
            return Err(Errno::ENOSPC);
        }
        match existing {
            Some(i) => self.xattrs[i].1 = value.to_vec(),
            None => self.xattrs.push((name.to_owned(), value.to_vec())),
        }
        self.attr.ctime = SystemTime::now();
        Ok(())
    }

    /// Removes xattr `name` (only one that is there needs a change).
    pub fn remove_xattr(&mut self, name: &OsStr) -> Result<(), Errno> {
        if self.xattr(name).is_none() {
            return Err(Errno::ENODATA);
        }
        self.writable()?;
        self.xattrs.retain(|(n, _)| n != name);
        self.attr.ctime = SystemTime::now();
        Ok(())
    }
}

impl Table {
    pub fn get(&self, ino: u64) -> Option<&Arc<Node>> {
        self.nodes.get(&ino)
    }

    /// Inserts the root, which is never forgotten.
    pub fn insert_root(&mut self, mut node: Node) {
        node.lookups = u64::MAX / 2;
        self.nodes.insert(ROOT, Arc::new(node));
    }

    /// Records a lookup of `node` (a new node, or fresh facts about a known one) and counts
    /// one kernel reference.
    pub fn upsert(&mut self, node: Node) {
        let alias: Arc<Path> = match node.aliases.last() {
            Some(a) => a.clone(),
            None => Arc::from(Path::new("")),
        };
        match self.nodes.get_mut(&node.ino) {
            Some(n) => {
                let n = Arc::make_mut(n);
                n.lookups += 1;
                n.is_dir = node.is_dir;
                n.parent = node.parent;
                // The lower object never changes. A lookup through a name the upper holds finds
                // none (a hard link copied up through another name, say) and must not make the
                // node forget it: its other names may still reach it only there.
                if node.lower.is_some() {
                    n.lower = node.lower;
                }
                n.lower_dirs = node.lower_dirs;
                if n.path() != &*alias {
                    n.upper_absence.forget();
                }
                n.aliases.retain(|a| **a != *alias);
                n.aliases.push(alias);
            }
            None => {
                let mut node = node;
                node.lookups = 1;
                self.nodes.insert(node.ino, Arc::new(node));
            }
        }
    }

    /// Drops `n` kernel references; the node goes when none are left.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            if node.lookups <= n {
                self.nodes.remove(&ino);
                self.removed_dirs.remove(&ino);
            } else {
                Arc::make_mut(node).lookups -= n;
            }
        }
    }

    /// Forgets the merged path `path` of `ino` (after unlink, rmdir, or being renamed over).
    pub fn remove_alias(&mut self, ino: u64, path: &Path) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            Arc::make_mut(n).aliases.retain(|a| &**a != path);
        }
    }

    /// Forgets the path `path` of directory `ino`, just removed; `removed` is what it was,
    /// kept for as long as the kernel holds the node by no other name.
    pub fn remove_dir_alias(&mut self, ino: u64, path: &Path, removed: RemovedDir) {
        self.remove_alias(ino, path);
        if self.nodes.get(&ino).is_some_and(|n| n.aliases.is_empty()) {
            self.removed_dirs.insert(ino, removed);
        }
    }

    /// What is kept of removed directory `ino` (see [`Table::remove_dir_alias`]).
    pub fn removed_dir(&mut self, ino: u64) -> Option<&mut RemovedDir> {
        self.removed_dirs.get_mut(&ino)
    }

    /// Moves `from` to `to`: the alias itself on `ino`, and for a directory every path below it.
    pub fn rename(&mut self, ino: u64, new_parent: u64, from: &Path, to: &Path) {
        let mut is_dir = true;
        if let Some(n) = self.nodes.get_mut(&ino) {
            let n = Arc::make_mut(n);
            for a in n.aliases.iter_mut() {
                if &**a == from {
                    *a = Arc::from(to);
                }
            }
            n.parent = new_parent;
            is_dir = n.is_dir;
        }
        // Only a directory has paths below it. Finding them is a pass over every node (about
        // 5 ms once a walk has made 54,000), which a file's rename has no need of. Without a
        // node for `ino`, nodes below it may still await their FORGET: they move too.
        if !is_dir || from.as_os_str().is_empty() {
            return;
        }
        let from = from.as_os_str().as_bytes();
        for n in self.nodes.values_mut() {
            if !n.aliases.iter().any(|a| below(a, from).is_some()) {
                continue;
            }
            for a in Arc::make_mut(n).aliases.iter_mut() {
                if let Some(rest) = below(a, from) {
                    *a = Arc::from(to.join(rest));
                }
            }
        }
    }
}

/// What follows `dir/` in `path`, if `path` is below the directory `dir` (compared as bytes:
/// a `Path` comparison goes component by component, several times slower over every node).
fn below<'a>(path: &'a Path, dir: &[u8]) -> Option<&'a OsStr> {
    match path.as_os_str().as_bytes().strip_prefix(dir) {
        Some([b'/', rest @ ..]) if !rest.is_empty() => Some(OsStr::from_bytes(rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64, is_dir: bool, path: &str) -> Node {
        Node {
            ino,
            is_dir,
            lookups: 0,
            aliases: vec![Arc::from(Path::new(path))],
            parent: ROOT,
            lower: None,
            lower_dirs: LowerDirs::default(),
            upper_absence: UpperAbsence::default(),
            first_open: FirstOpen::default(),
        }
    }

    fn path_of(t: &Table, ino: u64) -> &Path {
        t.get(ino).expect("node").path()
    }

    #[test]
    fn renaming_moves_the_paths_below_a_directory_only() {
        let mut t = Table::default();
        for n in [
            node(2, true, "a"),
            node(3, false, "a/f"),
            node(4, true, "a/d"),
            node(5, false, "a/d/g"),
            node(6, false, "ab"),
            node(7, false, "ab/x"),
        ] {
            t.upsert(n);
        }
        t.rename(3, 2, Path::new("a/f"), Path::new("a/f2"));
        assert_eq!(path_of(&t, 3), Path::new("a/f2"));
        t.rename(2, ROOT, Path::new("a"), Path::new("z/b"));
        assert_eq!(path_of(&t, 2), Path::new("z/b"));
        assert_eq!(path_of(&t, 3), Path::new("z/b/f2"));
        assert_eq!(path_of(&t, 4), Path::new("z/b/d"));
        assert_eq!(path_of(&t, 5), Path::new("z/b/d/g"));
        // A name that only begins like the directory's is not below it.
        assert_eq!(path_of(&t, 6), Path::new("ab"));
        assert_eq!(path_of(&t, 7), Path::new("ab/x"));
        // A file's rename leaves names that begin like it alone.
        t.rename(6, ROOT, Path::new("ab"), Path::new("c"));
        assert_eq!(path_of(&t, 6), Path::new("c"));
        assert_eq!(path_of(&t, 7), Path::new("ab/x"));
    }
}
