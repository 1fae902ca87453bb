//! Bringing a merged object into the upper before it is changed: its parent directories first,
//! each with its own metadata, then the object (see `cow` for how one object is copied).

use std::fs::File;
use std::path::{Component, Path};

use nix::errno::Errno;

use super::core::{Backing, Res, UnionFs};
use super::inode::Node;
use super::nslock::NsWrite;
use crate::cow::Upper;
use crate::layer_index::{is_dir, DirView, LowerObj};

impl UnionFs {
    /// The writable upper, or EROFS for a mount without one.
    pub(super) fn upper(&self) -> Res<&Upper> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    /// The directory of `view` in the upper: itself when it is there already, else copied up.
    pub(super) fn upper_dir(&self, view: DirView) -> Res<DirView> {
        if view.in_upper {
            self.upper()?;
            return Ok(view);
        }
        // The view may be older than a copy-up made since by the same operation.
        if self.upper_stat(&view.path)?.is_some_and(|st| is_dir(&st)) {
            return Ok(DirView {
                in_upper: true,
                ..view
            });
        }
        // The common case: the parent is in the upper already (whatever changes a tree works
        // from the top down), so only this directory is copied, from its top lower directory,
        // without resolving every ancestor again.
        if let (Some(parent), Some(top)) = (view.path.parent(), view.lowers.first()) {
            if self.upper_stat(parent)?.is_some_and(|st| is_dir(&st)) {
                let up = self.upper()?;
                let l = self.lower_obj_at(top.layer, &top.path)?;
                let ino = self.layers.inos.map(l.st.st_dev, l.st.st_ino);
                self.copy_up_one_dir(up, &view.path, &l, ino)?;
                return Ok(DirView {
                    in_upper: true,
                    ..view
                });
            }
        }
        self.copy_up_dir_path(&view.path)
    }

    /// Makes sure the merged directory at `rel` exists in the upper, copying up every missing
    /// ancestor from the lower. Returns its view.
    pub(super) fn copy_up_dir_path(&self, rel: &Path) -> Res<DirView> {
        let up = self.upper()?;
        // The root's lower directories never change; the node made at mount has them.
        let mut view = self.dir_view(super::inode::ROOT)?;
        view.in_upper = true;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            let r = self.layers.resolve(&view, name)?;
            let path = view.path.join(name);
            match (&r.upper, &r.lower) {
                (Some(st), _) if is_dir(st) => {}
                (None, Some(l)) if is_dir(&l.st) => {
                    let ino = self.layers.ino_of(&view, name, &r);
                    self.copy_up_one_dir(up, &path, l, ino)?;
                }
                (None, None) => return Err(Errno::ENOENT),
                _ => return Err(Errno::ENOTDIR),
            }
            view = DirView {
                path,
                in_upper: true,
                lowers: r.lower_dirs,
            };
        }
        Ok(view)
    }

    fn copy_up_one_dir(&self, up: &Upper, rel: &Path, l: &LowerObj, ino: u64) -> Res<()> {
        let src = self.layers.lowers[l.layer].join(&l.path);
        up.copy_up_dir(rel, &src, &l.st, ino).map_err(|e| {
            tracing::warn!(error = %e, path = %rel.display(), "directory copy-up failed");
            e.errno()
        })?;
        self.invalidate_attr(ino);
        Ok(())
    }

    /// Copies `node` (at its current path) up. With `truncate` a regular file's data is not
    /// copied. Open read-only handles on the lower file move to the copy.
    pub(super) fn copy_up(&self, node: &Node, truncate: bool) -> Res<()> {
        let up = self.upper()?;
        let rel = node.path().to_path_buf();
        if self.upper_stat(&rel)?.is_some() {
            return Ok(());
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        self.copy_up_dir_path(parent)?;
        let l = self.lower_obj(node)?;
        if node.is_dir {
            return self.copy_up_one_dir(up, &rel, &l, node.ino);
        }
        let src = self.layers.lowers[l.layer].join(&l.path);
        up.copy_up_file(&rel, &l, &src, node.ino, truncate)
            .map_err(|e| {
                tracing::warn!(error = %e, path = %rel.display(), "copy-up failed");
                e.errno()
            })?;
        self.invalidate_attr(node.ino);
        self.move_lower_handles(node)
    }

    /// Copies `ino`'s data up ahead of a change that needs it in the upper (an open for
    /// writing, an attribute or xattr change, a link, a rename), while no namespace lock is
    /// held: copying a large file under that lock would hold up every other operation on the
    /// mount until it ends (a 256 MiB copy stalled all lookups for 190 ms). The change's own
    /// [`UnionFs::copy_up`] under the lock then finds the copy in place. Only a lower file with
    /// one link is copied this way; the rest (a directory, a file copied up through the index,
    /// an object in the upper already) is left to that `copy_up`. Copy-ups of one inode wait
    /// for each other, so one copy is made; the staged copy is renamed into place under the
    /// namespace lock, after checking that it is still needed.
    pub(super) fn copy_up_data_first(&self, ino: u64) -> Res<()> {
        let needed = || -> Res<Option<std::sync::Arc<Node>>> {
            let _ns = self.ns.read();
            // A node the kernel has just forgotten: the change fails, or copies under the lock.
            let Ok(node) = self.node(ino) else {
                return Ok(None);
            };
            Ok(self.copies_data_first(&node)?.then_some(node))
        };
        if needed()?.is_none() {
            return Ok(());
        }
        let _one_copy = self.copyups.lock(ino);
        // Another copy-up of the inode may have ended while this one waited.
        let Some(node) = needed()? else {
            return Ok(());
        };
        let l = self.lower_obj(&node)?;
        let src = self.layers.lowers[l.layer].join(&l.path);
        let up = self.upper()?;
        let tmp = up.stage_copy(&src, &l.st, ino, false).map_err(|e| {
            tracing::warn!(error = %e, "copy-up failed");
            e.errno()
        })?;
        let installed = self.install_copy(ino, &l, &tmp);
        if !matches!(installed, Ok(true)) {
            up.discard_staged(&tmp);
        }
        installed.map(drop)
    }

    /// Holds the namespace lock alone for a change that copies `ino` up. When that means
    /// copying a lower file's data, the data is copied first with the lock released
    /// ([`UnionFs::copy_up_data_first`]) and the lock taken again; a change to an object in the
    /// upper already takes the lock once, as any change does.
    pub(super) fn ns_write_for_copy_up(&self, ino: u64) -> Res<NsWrite<'_>> {
        let ns = self.ns.write();
        let copies = match self.node(ino) {
            Ok(node) => self.copies_data_first(&node)?,
            Err(_) => false,
        };
        if !copies {
            return Ok(ns);
        }
        drop(ns);
        self.copy_up_data_first(ino)?;
        Ok(self.ns.write())
    }

    /// Whether [`UnionFs::copy_up_data_first`] copies `node`'s data: a lower file with one
    /// link that the upper does not hold. Called with `ns` held.
    pub(super) fn copies_data_first(&self, node: &Node) -> Res<bool> {
        let single = node.lower.as_ref().is_some_and(|l| l.nlink == 1);
        if node.is_dir || !single || node.aliases.is_empty() || self.upper.is_none() {
            return Ok(false);
        }
        Ok(self.node_upper_stat(node)?.is_none())
    }

    /// Puts the copy of `ino`'s lower object `l` staged at `tmp` in place, unless the object
    /// was copied up, moved or removed meanwhile (then `false`).
    fn install_copy(&self, ino: u64, l: &LowerObj, tmp: &Path) -> Res<bool> {
        let _ns = self.ns.write();
        let node = self.node(ino)?;
        let same = node
            .lower
            .as_ref()
            .is_some_and(|n| n.layer == l.layer && *n.path == *l.path);
        if !same || node.aliases.is_empty() || self.upper_stat(node.path())?.is_some() {
            return Ok(false);
        }
        let rel = node.path().to_path_buf();
        self.copy_up_dir_path(rel.parent().unwrap_or(Path::new("")))?;
        self.upper()?
            .install_staged(tmp, &rel)
            .map_err(|e| e.errno())?;
        self.invalidate_attr(node.ino);
        self.move_lower_handles(&node)?;
        Ok(true)
    }

    /// The lower object of `node` with its attributes, read now (nodes keep only where it is).
    fn lower_obj(&self, node: &Node) -> Res<LowerObj> {
        let l = node.lower.as_ref().ok_or(Errno::ENOENT)?;
        self.lower_obj_at(l.layer, &l.path)
    }

    /// The object at `path` in lower `layer`, with its attributes read now.
    fn lower_obj_at(&self, layer: usize, path: &Path) -> Res<LowerObj> {
        let st = self.layers.lowers[layer].join(path).lstat()?;
        Ok(LowerObj {
            layer,
            path: path.to_path_buf(),
            st,
        })
    }

    /// Reopens read-only handles of `node` that still read the lower file on its upper copy.
    fn move_lower_handles(&self, node: &Node) -> Res<()> {
        let handles = self.handles.lower_handles_of(node.ino);
        if handles.is_empty() {
            return Ok(());
        }
        let (b, _) = self.locate(node)?;
        if let Backing::Lower(_) = b {
            return Ok(());
        }
        for h in handles {
            h.move_to_upper(File::open(b.path()).map_err(super::core::errno_of)?);
        }
        Ok(())
    }
}
