//! Operations that change names: create, mkdir, mknod, symlink, link, unlink, rmdir, rename.
//!
//! Each follows what kernel overlayfs (fs/overlayfs/dir.c) writes into the upper, so that the
//! upper of a unionfs mount and of a kernel mount come out the same:
//! - a name is created over a whiteout by staging it and renaming it over the whiteout; a
//!   directory created there, or in a directory merged with lower ones, is marked opaque;
//! - a removed name gets a whiteout only where a lower layer still shows an object there;
//! - a renamed directory with lower contents records where it came from (a redirect: the old
//!   name within the same parent, else the absolute old path), and a pure upper directory
//!   moved into a merged directory is marked opaque.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use fuser::FileAttr;
use nix::errno::Errno;
use nix::fcntl::{renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::core::{errno_of, Res, UnionFs};
use super::inode::RemovedDir;
use crate::layer_index::{self, DirView, LayerPath, LowerDirs, Resolved};
use crate::sys::xattr;
use crate::whiteout;

/// Inode numbers handed out by [`UnionFs::keep_ino_unique`]: a tag no layer's device index
/// reaches (see `layer_index::InoMapper`), over 48 hashed bits.
const FRESH_INO_TAG: u64 = 0x7ffe << 48;
const FRESH_INO_MASK: u64 = (1 << 48) - 1;

/// Who asks, for the owner of what they create.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What to create.
pub enum NewObject<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a Path },
}

/// Whether the directory `r` may hold enough entries that listing it takes a while: one of
/// its layer directories that resolution read is over 16 KiB (800 entries on tmpfs, about 350
/// on ext4). The others are not read for this; missing one only means a wait.
fn may_be_large(r: &Resolved) -> bool {
    const LARGE: i64 = 16 << 10;
    r.upper
        .iter()
        .chain(r.lower.as_ref().map(|l| &l.st))
        .any(|st| st.st_size > LARGE)
}

/// How far [`UnionFs::rename_locked`] went.
enum Renamed {
    Done,
    /// Stopped before copying up these lower files.
    CopyFirst(Vec<u64>),
}

fn rename(from: &LayerPath, to: &LayerPath, flags: RenameFlags) -> Res<()> {
    let ((d1, r1), (d2, r2)) = (from.at(), to.at());
    renameat2(d1, r1, d2, r2, flags)
}

impl UnionFs {
    /// Creates `name` in `parent`. A created file is opened (with `flags`) and returned.
    pub fn do_create(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        what: NewObject<'_>,
    ) -> Res<(FileAttr, std::time::Duration, Option<File>)> {
        let _ns = self.ns.write();
        let up = self.upper()?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let (pview, upper_dir_st) = self.dir_view_stat(parent)?;
        let r = self.layers.resolve(&pview, name)?;
        if r.exists() {
            return Err(Errno::EEXIST);
        }
        let view = self.upper_dir(pview)?;
        let dir_st = match upper_dir_st {
            Some(st) => st,
            None => up.path(&view.path).lstat()?,
        };
        let sgid = dir_st.st_mode & libc::S_ISGID != 0;
        let gid = if sgid { dir_st.st_gid } else { who.gid };
        let rel = view.path.join(name);
        let dst = up.path(&rel);
        // Over a whiteout the object is built in the work directory and renamed into place.
        let at = if r.upper_whiteout {
            up.temp().into()
        } else {
            dst.clone()
        };
        let mut opened = None;
        let is_new_dir = matches!(what, NewObject::Dir { .. });
        let mode = match what {
            NewObject::File { mode, flags } => {
                // Always writable, even for open(O_CREAT|O_RDONLY) (runc creates bind-mount
                // targets that way): the caller's own descriptor keeps the mode it asked for,
                // and exclusive creation needs write access.
                let access = if flags & libc::O_ACCMODE == libc::O_WRONLY {
                    OFlag::O_WRONLY
                } else {
                    OFlag::O_RDWR
                };
                let kept = OFlag::from_bits_truncate(
                    flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT),
                );
                let (dir, rel) = at.at();
                let fd = nix::fcntl::openat(
                    dir,
                    rel,
                    access | kept | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(mode & 0o777),
                )?;
                opened = Some(File::from(fd));
                mode
            }
            NewObject::Dir { mode } => {
                let (dir, rel) = at.at();
                nix::sys::stat::mkdirat(dir, rel, Mode::from_bits_truncate(mode & 0o777))?;
                mode | if sgid { libc::S_ISGID } else { 0 }
            }
            NewObject::Node { mode, rdev } => {
                let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
                if kind == SFlag::S_IFCHR && rdev == 0 {
                    // 0/0 is a whiteout; overlayfs refuses to create one too.
                    return Err(Errno::EPERM);
                }
                let (dir, rel) = at.at();
                nix::sys::stat::mknodat(
                    dir,
                    rel,
                    kind,
                    Mode::from_bits_truncate(mode & 0o777),
                    rdev,
                )?;
                mode
            }
            NewObject::Symlink { target } => {
                let (dir, rel) = at.at();
                nix::unistd::symlinkat(target, dir, rel)?;
                0o777
            }
        };
        // Returns the object's inode number, and its attributes when nothing changed them
        // after they were read.
        let finish = || -> Res<(u64, Option<FileStat>)> {
            let made = match &opened {
                Some(f) => nix::sys::stat::fstat(f)?,
                None => at.lstat()?,
            };
            let (ino, renumbered) = self.keep_ino_unique(&at, &made)?;
            let mut unchanged = !renumbered;
            let (dir, rel) = at.at();
            // The daemon creates as root: a root caller's object (or one in a set-group-ID
            // directory, whose group the file system gave it) already has its owner.
            if made.st_uid != who.uid || made.st_gid != gid {
                nix::unistd::fchownat(
                    dir,
                    rel,
                    Some(Uid::from_raw(who.uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                unchanged = false;
            }
            // Objects are created with their permission bits already (the daemon's umask is 0,
            // see `fs::mount`); set-id and sticky bits are set after chown, which clears them.
            if !matches!(what, NewObject::Symlink { .. }) && mode & 0o7000 != 0 {
                nix::sys::stat::fchmodat(
                    dir,
                    rel,
                    Mode::from_bits_truncate(mode & 0o7777),
                    FchmodatFlags::FollowSymlink,
                )?;
                unchanged = false;
            }
            if is_new_dir && (r.upper_whiteout || !view.lowers.is_empty()) {
                whiteout::set_opaque(&at, up.ns())?;
                unchanged = false;
            }
            if r.upper_whiteout {
                if is_new_dir {
                    rename(&at, &dst, RenameFlags::RENAME_EXCHANGE)?;
                    std::fs::remove_file(&*at).map_err(errno_of)?;
                } else {
                    rename(&at, &dst, RenameFlags::empty())?;
                }
                unchanged = false;
            }
            Ok((ino, unchanged.then_some(made)))
        };
        let (ino, made) = match finish() {
            Ok(done) => done,
            Err(e) => {
                let _ = if is_new_dir {
                    std::fs::remove_dir(&*at)
                } else {
                    std::fs::remove_file(&*at)
                };
                return Err(e);
            }
        };
        // The entry is what was just made: an upper object with nothing below it (a new
        // directory where lower ones could show is opaque), so no resolution is needed.
        let upper = match made {
            Some(st) => st,
            None => dst.lstat()?,
        };
        let r = Resolved {
            upper: Some(upper),
            upper_whiteout: false,
            lower: None,
            lower_dirs: LowerDirs::default(),
        };
        let node = Self::node_at(ino, parent, &view, name, &r);
        let attr = self.resolved_attr(&node, &r)?;
        let ttl = super::core::entry_ttl(&node, &attr);
        self.table.lock().upsert(node);
        Ok((attr, ttl, opened))
    }

    /// Gives the new upper object at `path` an inode number of its own when the upper
    /// filesystem reused the number of an object the kernel still holds (ext4 hands a freed
    /// number to the next create at once). The FUSE node id is the inode number, so reusing it
    /// would bind the new object to the kernel's dead inode: a directory made right after an
    /// rmdir would refuse entries (ENOENT). The fresh number is recorded as the object's origin,
    /// so it stays the same across lookups and remounts.
    /// Takes the object's attributes `st`; returns its inode number, and whether that is a
    /// fresh one (recorded in an xattr, which changed the object's ctime).
    fn keep_ino_unique(&self, path: &LayerPath, st: &FileStat) -> Res<(u64, bool)> {
        let natural = self.layers.inos.map(st.st_dev, st.st_ino);
        if self.table.lock().get(natural).is_none() {
            return Ok((natural, false));
        }
        let up = self.upper()?;
        let fresh = loop {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let candidate = FRESH_INO_TAG
                | (xxhash_rust::xxh3::xxh3_64(&(natural ^ seed).to_le_bytes()) & FRESH_INO_MASK);
            if self.table.lock().get(candidate).is_none() {
                break candidate;
            }
        };
        tracing::debug!(natural, fresh, "inode number still in use by the kernel");
        layer_index::set_origin(path, up.ns(), fresh)?;
        Ok((fresh, true))
    }

    /// Hard-links `ino` as `name` in `parent`.
    pub fn do_link(
        &self,
        ino: u64,
        parent: u64,
        name: &OsStr,
    ) -> Res<(FileAttr, std::time::Duration)> {
        let up = self.upper()?;
        let mut ns = self.ns.write();
        let mut copied = false;
        let (node, pview, r) = loop {
            let node = self.node(ino)?;
            if node.is_dir {
                return Err(Errno::EPERM);
            }
            let pview = self.dir_view(parent)?;
            let r = self.layers.resolve(&pview, name)?;
            if r.exists() {
                return Err(Errno::EEXIST);
            }
            // A lower file's data is copied with the namespace lock released (see
            // `copy_up_data_first`); the link then starts again.
            if !copied && self.copies_data_first(&node)? {
                drop(ns);
                self.copy_up_data_first(ino)?;
                copied = true;
                ns = self.ns.write();
                continue;
            }
            break (node, pview, r);
        };
        self.copy_up(&node, false)?;
        let view = self.upper_dir(pview)?;
        let src = up.path(node.path());
        let dst = up.path(&view.path.join(name));
        let link = |to: &LayerPath| {
            let ((d1, r1), (d2, r2)) = (src.at(), to.at());
            nix::unistd::linkat(d1, r1, d2, r2, AtFlags::empty())
        };
        if r.upper_whiteout {
            let tmp: LayerPath = up.temp().into();
            link(&tmp)?;
            if let Err(e) = rename(&tmp, &dst, RenameFlags::empty()) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        } else {
            link(&dst)?;
        }
        up.adjust_nlink(&src, 1)?;
        self.lookup_locked(parent, name)
    }

    /// Removes the non-directory `name` from `parent`.
    pub fn do_unlink(&self, parent: u64, name: &OsStr) -> Res<()> {
        let _ns = self.ns.write();
        let up = self.upper()?;
        let (pview, r, ino) = self.resolve_existing(parent, name)?;
        if r.is_dir() {
            return Err(Errno::EISDIR);
        }
        let positive = self.lower_positive(&pview, name, &r)?;
        let view = self.upper_dir(pview.clone())?;
        let rel = view.path.join(name);
        let node = Self::node_at(ino, parent, &pview, name, &r);
        self.drop_link(&node, &r)?;
        if positive {
            up.whiteout(&rel).map_err(|e| e.errno())?;
        } else {
            let path = up.path(&rel);
            let (dir, name) = path.at();
            nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
        }
        self.table.lock().remove_alias(ino, &rel);
        Ok(())
    }

    /// Removes the directory `name` from `parent`; it must look empty in the merged view.
    pub fn do_rmdir(&self, parent: u64, name: &OsStr) -> Res<()> {
        // Whether it looks empty is a listing, every name resolved, which for a large directory
        // takes long (100,000 whiteouts: 270 ms during which every other operation on the
        // mount waited). A directory that may be large is listed first with the lock
        // released, and what was seen is kept if nothing changed the upper meanwhile;
        // otherwise it is listed again under the lock.
        let mut early: Option<Option<(u64, bool)>> = None;
        let (ns, pview, r, ino) = loop {
            let ns = self.ns.write();
            let (pview, r, ino) = self.resolve_existing(parent, name)?;
            if !r.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if early.is_none() && may_be_large(&r) {
                drop(ns);
                early = Some(self.emptiness_unlocked(parent, name));
                continue;
            }
            break (ns, pview, r, ino);
        };
        let up = self.upper()?;
        let rel = pview.path.join(name);
        let last = self.removed_dir(ino, parent, &pview, name, &r)?;
        let positive = self.lower_positive(&pview, name, &r)?;
        if r.upper.is_some() && r.lower_dirs.is_empty() && !positive {
            // Nothing below it and nothing to hide: it looks empty when the upper directory
            // holds nothing but markers, so the upper's own rmdir answers without a listing
            // (a directory holding markers only is rare, and goes the long way below).
            ns.dir_moved();
            let path = up.path(&rel);
            let (dir, at) = path.at();
            match nix::unistd::unlinkat(dir, at, UnlinkatFlags::RemoveDir) {
                Ok(()) => {
                    self.table.lock().remove_dir_alias(ino, &rel, last);
                    return Ok(());
                }
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        let empty = match early.flatten() {
            Some((generation, empty)) if generation == ns.started_at() => empty,
            _ => self.layers.list(&r.dir_view(rel.clone()))?.is_empty(),
        };
        if !empty {
            return Err(Errno::ENOTEMPTY);
        }
        self.upper_dir(pview.clone())?;
        ns.dir_moved();
        if positive {
            up.whiteout(&rel).map_err(|e| e.errno())?;
        } else {
            let path = up.path(&rel);
            let (dir, name) = path.at();
            match nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) => {}
                // Only markers can be left inside: move it away in one step, then delete.
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    let tmp = up.temp();
                    rename(&path, &tmp.clone().into(), RenameFlags::empty())?;
                    up.discard_dir(tmp);
                }
                Err(e) => return Err(e),
            }
        }
        self.table.lock().remove_dir_alias(ino, &rel, last);
        Ok(())
    }

    /// Whether directory `name` in `parent` looks empty, listed without holding the namespace
    /// lock, with the upper generation it was listed at; `None` when that could not be read
    /// (the caller then lists it under the lock). Lower layers never change, and a change to
    /// the upper during the listing advances the generation.
    fn emptiness_unlocked(&self, parent: u64, name: &OsStr) -> Option<(u64, bool)> {
        let (generation, view) = {
            let _ns = self.ns.read();
            let generation = self.ns.generation()?;
            let (pview, r, _) = self.resolve_existing(parent, name).ok()?;
            if !r.is_dir() {
                return None;
            }
            (generation, r.dir_view(pview.path.join(name)))
        };
        let empty = self.layers.list(&view).ok()?.is_empty();
        Some((generation, empty))
    }

    /// Counts one name less for a non-directory about to be removed or replaced. A lower file
    /// with several links is copied up first (into the index, as overlayfs's
    /// `ovl_nlink_start` does), so that the count of its remaining names is kept there.
    fn drop_link(&self, node: &super::inode::Node, r: &Resolved) -> Res<()> {
        let up = self.upper()?;
        // Only an object with several links can be (or become) an indexed copy.
        if r.stat().is_none_or(|st| st.st_nlink <= 1) {
            return Ok(());
        }
        if node.lower.as_ref().is_some_and(|l| l.nlink > 1) {
            self.copy_up(node, false)?;
        }
        let (b, _) = self.locate(node)?;
        if !b.is_lower() {
            up.adjust_nlink(b.path(), -1)?;
        }
        Ok(())
    }

    /// Whether a lower layer shows an object at `name` (so removing or renaming it away must
    /// leave a whiteout). With nothing in the upper, resolution has answered it already: it
    /// walked the same lower directories from the top.
    fn lower_positive(&self, dir: &DirView, name: &OsStr, r: &Resolved) -> Res<bool> {
        if r.upper.is_none() && !r.upper_whiteout {
            return Ok(r.lower.is_some());
        }
        self.layers.lower_positive(dir, name)
    }

    fn resolve_existing(&self, parent: u64, name: &OsStr) -> Res<(DirView, Resolved, u64)> {
        let pview = self.dir_view(parent)?;
        let r = self.layers.resolve(&pview, name)?;
        if !r.exists() {
            return Err(Errno::ENOENT);
        }
        let ino = self.layers.ino_of(&pview, name, &r);
        Ok((pview, r, ino))
    }

    /// Renames `p1/n1` to `p2/n2`; `flags` may hold RENAME_NOREPLACE or RENAME_EXCHANGE.
    pub fn do_rename(&self, p1: u64, n1: &OsStr, p2: u64, n2: &OsStr, flags: u32) -> Res<()> {
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        // A lower file the rename copies up has its data copied first, with the namespace lock
        // released (see `copy_up_data_first`); the rename then starts again.
        match self.rename_locked(p1, n1, p2, n2, flags, true)? {
            Renamed::Done => Ok(()),
            Renamed::CopyFirst(inos) => {
                for ino in inos {
                    self.copy_up_data_first(ino)?;
                }
                self.rename_locked(p1, n1, p2, n2, flags, false).map(drop)
            }
        }
    }

    /// [`UnionFs::do_rename`] under the namespace lock; with `copy_first`, it stops before
    /// copying up a lower file and names what to copy.
    fn rename_locked(
        &self,
        p1: u64,
        n1: &OsStr,
        p2: u64,
        n2: &OsStr,
        flags: u32,
        copy_first: bool,
    ) -> Res<Renamed> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let ns = self.ns.write();
        let up = self.upper()?;
        let (v1, r1, ino1) = self.resolve_existing(p1, n1)?;
        if n2.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let v2 = self.dir_view(p2)?;
        let r2 = self.layers.resolve(&v2, n2)?;
        let (old_dir, new_dir) = (r1.is_dir(), r2.is_dir());
        if r2.exists() && flags & libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EEXIST);
        }
        if exchange && !r2.exists() {
            return Err(Errno::ENOENT);
        }
        let ino2 = r2.exists().then(|| self.layers.ino_of(&v2, n2, &r2));
        if !exchange && r2.exists() {
            if old_dir && !new_dir {
                return Err(Errno::ENOTDIR);
            }
            if !old_dir && new_dir {
                return Err(Errno::EISDIR);
            }
            if ino2 == Some(ino1) {
                return Ok(Renamed::Done);
            }
            if new_dir && !self.layers.list(&r2.dir_view(v2.path.join(n2)))?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let old_rel = v1.path.join(n1);
        let new_rel = v2.path.join(n2);
        let samedir = p1 == p2;
        let old_positive = self.lower_positive(&v1, n1, &r1)?;

        // What `copies_data_first` would copy: a lower file with one link.
        let lower_file = |r: &Resolved| {
            r.upper.is_none() && !r.is_dir() && r.lower.as_ref().is_some_and(|l| l.st.st_nlink == 1)
        };
        if copy_first {
            let mut to_copy = Vec::new();
            if lower_file(&r1) {
                to_copy.push(ino1);
            }
            if let (true, Some(ino2)) = (exchange && lower_file(&r2), ino2) {
                to_copy.push(ino2);
            }
            if !to_copy.is_empty() {
                return Ok(Renamed::CopyFirst(to_copy));
            }
        }
        self.copy_up(&Self::node_at(ino1, p1, &v1, n1, &r1), false)?;
        let v2 = self.upper_dir(v2)?;
        if let (true, Some(ino2)) = (exchange, ino2) {
            self.copy_up(&Self::node_at(ino2, p2, &v2, n2, &r2), false)?;
        }
        let (old_up, new_up) = (up.path(&old_rel), up.path(&new_rel));
        // Read before the directory is replaced (its xattrs go with it).
        let replaced_dir = match (exchange, ino2) {
            (false, Some(ino2)) if new_dir => {
                Some((ino2, self.removed_dir(ino2, p2, &v2, n2, &r2)?))
            }
            _ => None,
        };
        if !exchange && new_dir && r2.upper.is_some() && has_entries(&new_up)? {
            up.clear_dir(&new_rel).map_err(|e| e.errno())?;
        }
        if old_dir {
            self.mark_moved_dir(&old_rel, n1, samedir, !r1.lower_dirs.is_empty(), &v2)?;
        }
        if exchange && new_dir {
            self.mark_moved_dir(&new_rel, n2, samedir, !r2.lower_dirs.is_empty(), &v1)?;
        }
        if let (false, Some(ino2), false) = (exchange, ino2, new_dir) {
            self.drop_link(&Self::node_at(ino2, p2, &v2, n2, &r2), &r2)?;
        }

        if old_dir || new_dir {
            ns.dir_moved();
        }
        if exchange {
            rename(&old_up, &new_up, RenameFlags::RENAME_EXCHANGE)?;
        } else if old_positive {
            let how = if r2.upper_whiteout {
                RenameFlags::RENAME_EXCHANGE
            } else {
                RenameFlags::RENAME_WHITEOUT
            };
            rename(&old_up, &new_up, how)?;
        } else if old_dir && r2.upper_whiteout {
            rename(&old_up, &new_up, RenameFlags::RENAME_EXCHANGE)?;
            std::fs::remove_file(&old_up).map_err(errno_of)?;
        } else {
            rename(&old_up, &new_up, RenameFlags::empty())?;
        }

        let mut table = self.table.lock();
        if exchange {
            let ino2 = ino2.expect("exchange needs a target");
            let tmp = PathBuf::from("\0exchange");
            table.rename(ino1, p2, &old_rel, &tmp);
            table.rename(ino2, p1, &new_rel, &old_rel);
            table.rename(ino1, p2, &tmp, &new_rel);
        } else {
            match (replaced_dir, ino2) {
                (Some((ino2, last)), _) => table.remove_dir_alias(ino2, &new_rel, last),
                (None, Some(ino2)) => table.remove_alias(ino2, &new_rel),
                (None, None) => {}
            }
            table.rename(ino1, p2, &old_rel, &new_rel);
        }
        Ok(Renamed::Done)
    }

    /// What is kept of directory `name` in `view`, resolved as `r`, once removed, for those
    /// still holding it. One only the upper held is deleted (no links left); a merged one
    /// keeps reporting 1, and a lower one stays as it was, hidden (as on overlayfs). Its
    /// xattrs are read from where it is now, its upper directory, else its top lower one;
    /// one that cannot be read is left out (what is kept only answers for a directory already
    /// gone; its removal goes on).
    fn removed_dir(
        &self,
        ino: u64,
        parent: u64,
        view: &DirView,
        name: &OsStr,
        r: &Resolved,
    ) -> Res<RemovedDir> {
        let mut attr = self.resolved_attr(&Self::node_at(ino, parent, view, name, r), r)?;
        if r.upper.is_some() && r.lower_dirs.is_empty() {
            attr.nlink = 0;
        }
        let rel = view.path.join(name);
        let at = match (&r.upper, &r.lower, &self.upper) {
            (Some(_), _, Some(up)) => up.path(&rel),
            (None, Some(l), _) => self.layers.lowers[l.layer].join(&l.path),
            _ => return Err(Errno::ENOENT),
        };
        let mut xattrs = Vec::new();
        let names = xattr::list(&at).unwrap_or_else(|e| {
            tracing::warn!(error = %e, path = %rel.display(), "listing xattrs of a removed directory");
            Vec::new()
        });
        for n in names {
            if whiteout::is_private_xattr(&n) {
                continue;
            }
            match xattr::get(&at, &n) {
                Ok(Some(v)) => xattrs.push((n, v)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %rel.display(), name = ?n, "reading an xattr of a removed directory")
                }
            }
        }
        Ok(RemovedDir {
            attr,
            xattrs,
            in_upper: r.upper.is_some(),
        })
    }

    /// Before a directory at `rel` (upper) moves to a parent whose view is `dest`: a directory
    /// with lower contents records a redirect; a pure upper one moving into a merged parent
    /// becomes opaque (overlayfs's ovl_rename).
    fn mark_moved_dir(
        &self,
        rel: &Path,
        name: &OsStr,
        samedir: bool,
        has_lower: bool,
        dest: &DirView,
    ) -> Res<()> {
        let up = self.upper()?;
        let path = up.path(rel);
        if has_lower {
            let existing = whiteout::redirect_of(&path);
            let absolute = !samedir;
            if let Some(v) = &existing {
                if !absolute || v.first() == Some(&b'/') {
                    return Ok(());
                }
            }
            let value = if absolute {
                self.absolute_redirect(rel)
            } else {
                name.as_bytes().to_vec()
            };
            whiteout::set_redirect(&path, up.ns(), &value).map_err(|_| Errno::EXDEV)
        } else if !whiteout::is_opaque_dir(&path) && !dest.lowers.is_empty() {
            whiteout::set_opaque(&path, up.ns()).map_err(|_| Errno::EXDEV)
        } else {
            Ok(())
        }
    }

    /// The absolute lower path of the upper directory at `rel`: its components from the root,
    /// each replaced by that directory's own redirect where it has one.
    fn absolute_redirect(&self, rel: &Path) -> Vec<u8> {
        let up = self.upper.as_ref().expect("called with an upper");
        let comps: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut absolute = false;
        for i in (0..comps.len()).rev() {
            let prefix: PathBuf = comps[..=i].iter().collect();
            match whiteout::redirect_of(&up.path(&prefix)) {
                Some(v) if v.first() == Some(&b'/') => {
                    parts.push(v);
                    absolute = true;
                    break;
                }
                Some(v) => parts.push(v),
                None => parts.push(comps[i].as_bytes().to_vec()),
            }
        }
        parts.reverse();
        let mut out = if absolute { Vec::new() } else { b"/".to_vec() };
        out.extend(parts.join(&b'/'));
        out
    }
}

fn has_entries(dir: &Path) -> Res<bool> {
    let mut rd = std::fs::read_dir(dir).map_err(errno_of)?;
    Ok(rd.next().is_some())
}
