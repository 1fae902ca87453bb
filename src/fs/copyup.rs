//! Bringing a merged object into the upper before it is changed: its parent directories first,
//! each with its own metadata, then the object (see `cow` for how one object is copied).

use std::fs::File;
use std::path::{Component, Path};
use std::sync::Arc;

use nix::errno::Errno;

use super::core::{Backing, Res, UnionFs};
use super::inode::Node;
use crate::cow::Upper;
use crate::layer_index::{is_dir, DirView, LowerObj};

impl UnionFs {
    /// The writable upper, or EROFS for a mount without one.
    pub(super) fn upper(&self) -> Res<&Upper> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    /// Makes sure the merged directory at `rel` exists in the upper, copying up every missing
    /// ancestor from the lower. Returns its view.
    pub(super) fn copy_up_dir_path(&self, rel: &Path) -> Res<DirView> {
        let up = self.upper()?;
        let (_, mut view) = self.layers.root_view()?;
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
        let l = node.lower.as_ref().ok_or(Errno::ENOENT)?;
        if node.is_dir {
            return self.copy_up_one_dir(up, &rel, l, node.ino);
        }
        let src = self.layers.lowers[l.layer].join(&l.path);
        up.copy_up_file(&rel, l, &src, node.ino, truncate)
            .map_err(|e| {
                tracing::warn!(error = %e, path = %rel.display(), "copy-up failed");
                e.errno()
            })?;
        self.invalidate_attr(node.ino);
        self.move_lower_handles(node)
    }

    /// Reopens read-only handles of `node` that still read the lower file on its upper copy.
    fn move_lower_handles(&self, node: &Node) -> Res<()> {
        let handles = self.handles.lower_handles_of(node.ino);
        if handles.is_empty() {
            return Ok(());
        }
        let (b, _) = self.backing(node)?;
        if let Backing::Lower(_) = b {
            return Ok(());
        }
        for h in handles {
            let f = File::open(b.path()).map_err(super::core::errno_of)?;
            *h.file.write() = Arc::new(f);
            *h.on_lower.write() = false;
        }
        Ok(())
    }
}
