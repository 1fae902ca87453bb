//! Renamed directories of an upper directory, flattened to their merged contents.
//!
//! With `redirect_dir=on`, renaming a directory that comes from a lower layer leaves in the
//! upper only an (often empty) directory at the new name carrying a redirect xattr to the old
//! one, and a whiteout at the old name; the contents stay in the lower layers under the old
//! name (the kernel's Documentation/filesystems/overlayfs.rst, "Redirect dir"). A layer tar
//! cannot express that, so `commit` and `diff` treat such a directory as docker's and
//! containers/storage's "naive diff" does: an opaque directory holding its whole merged
//! contents, as the container saw them.
//!
//! Likewise a file with several lower links copied up through the index
//! (`work/unionfs-index/`, overlayfs's `index=on`) changes all its names in the mount, though
//! only the names written through are in the upper: [`indexed_aliases`] finds the others, which
//! a layer must carry as hard links to the copy.
//!
//! The merged contents are resolved by [`crate::layer_index::Layers`], the same code the
//! filesystem uses, so redirects nested inside, whiteouts and opaque directories in the upper
//! count exactly as they did in the mount. Nothing here writes anything.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer_index::{self, DirView, Layers};
use crate::whiteout;

use super::view;

/// Whether the upper directory at `path` was renamed from elsewhere: it carries a redirect
/// and is not opaque, so part of its contents is found in lower layers under another name.
pub fn is_redirected_dir(path: &Path, meta: &Metadata) -> bool {
    meta.is_dir() && whiteout::redirect_of(path).is_some() && !whiteout::is_opaque_dir(path)
}

/// Every entry below the merged directory `rel` of `upper` over `lowers` (top-most first),
/// depth first, sorted by name bytes. The callback gets the path relative to the upper root,
/// the path of the visible object on disk (in the upper or in a lower layer) and its `lstat`.
pub fn walk_merged_upper(
    upper: &Path,
    lowers: &[PathBuf],
    rel: &Path,
    f: &mut dyn FnMut(&Path, &Path, &Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let layers = Layers::open(Some(upper), lowers)?;
    let (_, mut dir) = layers.root_view()?;
    for c in view::components(rel) {
        let r = layers.resolve(&dir, c)?;
        if !r.is_dir() {
            return Err(io::Error::other(format!(
                "{}: not a directory in the merged view",
                rel.display()
            )));
        }
        dir = r.dir_view(dir.path.join(c));
    }
    walk(&layers, upper, &dir, f)
}

/// The lower-only names that show a copy made through the index: for each, an upper name of
/// the same copy (both relative to the upper root). In the mount such a name shows the upper
/// copy's data and attributes, since overlayfs with `index=on` keeps all names of a lower
/// inode together; a layer must record it as a link to that copy.
pub fn indexed_aliases(upper: &Path, lowers: &[PathBuf]) -> io::Result<HashMap<PathBuf, PathBuf>> {
    // Indexed copies are linked from the index, and their origin names the lower inode.
    let mut copies: HashMap<u64, PathBuf> = HashMap::new();
    view::walk_dir(upper, Path::new(""), &mut |rel, meta| {
        if meta.is_file() && meta.nlink() > 1 {
            if let Some(origin) = layer_index::origin_of(&upper.join(rel)) {
                copies.entry(origin).or_insert_with(|| rel.to_owned());
            }
        }
        Ok(())
    })?;
    let mut out = HashMap::new();
    if copies.is_empty() {
        return Ok(out);
    }
    let layers = Layers::open(Some(upper), lowers)?;
    let (_, root) = layers.root_view()?;
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for e in layers.list(&dir)? {
            let r = &e.resolved;
            if r.is_dir() {
                dirs.push(r.dir_view(dir.path.join(&e.name)));
                continue;
            }
            let linked_lower = r.lower.as_ref().is_some_and(|l| l.st.st_nlink > 1);
            if r.upper.is_some() || !linked_lower {
                continue;
            }
            if let Some(copy) = copies.get(&layers.ino_of(&dir, &e.name, r)) {
                out.insert(dir.path.join(&e.name), copy.clone());
            }
        }
    }
    Ok(out)
}

fn walk(
    layers: &Layers,
    upper: &Path,
    dir: &DirView,
    f: &mut dyn FnMut(&Path, &Path, &Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let mut entries = layers.list(dir)?;
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for e in entries {
        let rel = dir.path.join(&e.name);
        let disk = match (&e.resolved.upper, &e.resolved.lower) {
            (Some(_), _) => upper.join(&rel).into(),
            (None, Some(l)) => layers.lowers[l.layer].join(&l.path),
            (None, None) => continue,
        };
        let meta = std::fs::symlink_metadata(&disk)?;
        f(&rel, &disk, &meta)?;
        if meta.is_dir() {
            walk(layers, upper, &e.resolved.dir_view(rel), f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whiteout::XattrNs;

    /// `mv /a/dir /b/moved` and `mv /top /renamed` as overlayfs leaves them in the upper.
    #[test]
    fn renamed_directories_list_their_lower_contents() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        for d in ["a/dir/sub", "b", "top/x"] {
            std::fs::create_dir_all(lower.join(d)).unwrap();
        }
        std::fs::write(lower.join("a/dir/f"), b"f").unwrap();
        std::fs::write(lower.join("a/dir/gone"), b"g").unwrap();
        std::fs::write(lower.join("a/dir/sub/s"), b"s").unwrap();
        std::fs::write(lower.join("top/x/y"), b"y").unwrap();
        for d in ["a", "b/moved", "renamed"] {
            std::fs::create_dir_all(upper.join(d)).unwrap();
        }
        let ns = XattrNs::for_current_user();
        whiteout::set_redirect(&upper.join("b/moved"), ns, b"/a/dir").unwrap();
        whiteout::set_redirect(&upper.join("renamed"), ns, b"top").unwrap();
        whiteout::make_whiteout(&upper.join("a/dir")).unwrap();
        whiteout::make_whiteout(&upper.join("top")).unwrap();
        whiteout::make_whiteout(&upper.join("b/moved/gone")).unwrap();
        std::fs::write(upper.join("b/moved/new"), b"n").unwrap();

        let meta = std::fs::symlink_metadata(upper.join("b/moved")).unwrap();
        assert!(is_redirected_dir(&upper.join("b/moved"), &meta));
        assert!(!is_redirected_dir(&upper.join("a"), &meta));
        let list = |rel: &str| {
            let mut out = Vec::new();
            walk_merged_upper(
                &upper,
                std::slice::from_ref(&lower),
                Path::new(rel),
                &mut |r, disk, _| {
                    let from = if disk.starts_with(&upper) { "u" } else { "l" };
                    out.push(format!("{} {from}", r.display()));
                    Ok(())
                },
            )
            .unwrap();
            out
        };
        assert_eq!(
            list("b/moved"),
            [
                "b/moved/f l",
                "b/moved/new u",
                "b/moved/sub l",
                "b/moved/sub/s l"
            ]
        );
        assert_eq!(list("renamed"), ["renamed/x l", "renamed/x/y l"]);
    }
}
