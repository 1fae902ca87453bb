//! Read-only questions about a stack of layer directories (top-most first), answered from the
//! directories themselves with kernel-overlayfs rules: which layer provides a path, which
//! layers it shadows or which one whites it out, and what a merged directory lists.
//!
//! It serves `which`, `diff`, `inspect` and the flat export, none of which mount anything. It
//! must never modify a layer, and never follow a symlink inside one: every component is looked
//! up with `lstat`. Whiteouts are recognised only through [`crate::whiteout`].

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::whiteout;

/// What one layer says about a path.
#[derive(Debug)]
enum Probe {
    /// Nothing here; `mask` when an opaque or non-directory ancestor hides the layers below.
    Absent { mask: bool },
    /// Deleted here (a whiteout on the path or on an ancestor).
    Whiteout,
    /// Present; `mask` when the layers below are hidden (non-directory or opaque).
    Present { meta: Metadata, mask: bool },
}

/// The part a layer plays for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The visible entry comes from this layer.
    Provides,
    /// A directory merged into the visible one.
    Merges,
    /// An entry hidden by a layer above.
    Shadowed,
    /// A whiteout (or opaque directory above it) deleting the path for the layers below.
    WhitesOut,
}

/// Whether a `lstat` result is a whiteout in the overlay format.
pub fn is_whiteout_meta(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// The normal components of a path inside a layer (`/a/b`, `a/b` and `./a/b` alike).
pub fn components(rel: &Path) -> Vec<&OsStr> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

fn probe(layer: &Path, comps: &[&OsStr]) -> io::Result<Probe> {
    let mut cur = layer.to_path_buf();
    let mut opaque_above = false;
    for (k, c) in comps.iter().enumerate() {
        if whiteout::is_aufs_marker(c) {
            return Ok(Probe::Absent { mask: false });
        }
        if lstat(&cur.join(whiteout::aufs_whiteout_name(c)))?.is_some() {
            return Ok(Probe::Whiteout);
        }
        cur.push(c);
        let Some(meta) = lstat(&cur)? else {
            return Ok(Probe::Absent { mask: opaque_above });
        };
        if is_whiteout_meta(&meta) {
            return Ok(Probe::Whiteout);
        }
        let opaque = meta.is_dir() && whiteout::is_opaque_dir(&cur);
        if k + 1 == comps.len() {
            let mask = opaque_above || !meta.is_dir() || opaque;
            return Ok(Probe::Present { meta, mask });
        }
        if !meta.is_dir() {
            return Ok(Probe::Absent { mask: true });
        }
        opaque_above |= opaque;
    }
    // The root: always a directory.
    let meta = std::fs::symlink_metadata(layer)?;
    let mask = whiteout::is_opaque_root(layer);
    Ok(Probe::Present { meta, mask })
}

/// The roles of each layer (by position in `layers`, top-most first) for `rel`; layers not
/// listed have nothing there.
pub fn resolve(layers: &[PathBuf], rel: &Path) -> io::Result<Vec<(usize, Role, Metadata)>> {
    Ok(resolve_full(layers, rel)?
        .into_iter()
        .filter_map(|(i, r, m)| m.map(|m| (i, r, m)))
        .collect())
}

/// Like [`resolve`], but also lists whiteouts (without metadata).
pub fn resolve_full(
    layers: &[PathBuf],
    rel: &Path,
) -> io::Result<Vec<(usize, Role, Option<Metadata>)>> {
    let comps = components(rel);
    let mut out = Vec::new();
    let mut masked = false;
    let mut top_is_dir: Option<bool> = None;
    for (i, layer) in layers.iter().enumerate() {
        match probe(layer, &comps)? {
            Probe::Present { meta, .. } if masked => out.push((i, Role::Shadowed, Some(meta))),
            Probe::Present { meta, mask } => {
                let role = match top_is_dir {
                    None => {
                        top_is_dir = Some(meta.is_dir());
                        Role::Provides
                    }
                    Some(true) if meta.is_dir() => Role::Merges,
                    Some(_) => Role::Shadowed,
                };
                masked |= mask || role == Role::Shadowed;
                out.push((i, role, Some(meta)));
            }
            Probe::Whiteout if masked => {}
            Probe::Whiteout => {
                out.push((i, Role::WhitesOut, None));
                masked = true;
            }
            Probe::Absent { mask } => masked |= mask,
        }
    }
    Ok(out)
}

/// The visible entry for `rel`: the layer that provides it and its metadata.
pub fn visible(layers: &[PathBuf], rel: &Path) -> io::Result<Option<(usize, Metadata)>> {
    let roles = resolve_full(layers, rel)?;
    Ok(match roles.into_iter().next() {
        Some((i, Role::Provides, Some(m))) => Some((i, m)),
        _ => None,
    })
}

/// One entry of a merged directory.
#[derive(Debug)]
pub struct MergedChild {
    pub name: OsString,
    /// The layer that provides it (position in `layers`).
    pub layer: usize,
    /// Its path on disk in that layer.
    pub path: PathBuf,
    pub meta: Metadata,
}

/// The merged listing of directory `rel`, sorted by name bytes.
pub fn merged_children(layers: &[PathBuf], rel: &Path) -> io::Result<Vec<MergedChild>> {
    let contributing: Vec<usize> = resolve(layers, rel)?
        .into_iter()
        .filter(|(_, role, m)| matches!(role, Role::Provides | Role::Merges) && m.is_dir())
        .map(|(i, _, _)| i)
        .collect();
    let mut seen: BTreeMap<Vec<u8>, MergedChild> = BTreeMap::new();
    let mut deleted: HashSet<Vec<u8>> = HashSet::new();
    for i in contributing {
        let dir = layers[i].join(rel);
        let mut hidden_here = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let key = name.as_bytes().to_vec();
            if let Some(h) = whiteout::aufs_hidden_name(&name) {
                hidden_here.push(h.as_bytes().to_vec());
                continue;
            }
            if whiteout::is_aufs_marker(&name) || seen.contains_key(&key) || deleted.contains(&key)
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(e.path())?;
            if is_whiteout_meta(&meta) {
                hidden_here.push(key);
                continue;
            }
            seen.insert(
                key,
                MergedChild {
                    name,
                    layer: i,
                    path: e.path(),
                    meta,
                },
            );
        }
        deleted.extend(hidden_here);
    }
    Ok(seen.into_values().collect())
}

/// Every path of a merged tree under `rel` (depth first, sorted), with the visible entry.
pub fn walk_merged(
    layers: &[PathBuf],
    rel: &Path,
    f: &mut dyn FnMut(&Path, &MergedChild) -> io::Result<()>,
) -> io::Result<()> {
    for child in merged_children(layers, rel)? {
        let sub = rel.join(&child.name);
        f(&sub, &child)?;
        if child.meta.is_dir() {
            walk_merged(layers, &sub, f)?;
        }
    }
    Ok(())
}

/// Every entry of one directory tree (not merged), depth first, sorted by name bytes; the
/// callback gets the path relative to `root` and the `lstat` result.
pub fn walk_dir(
    root: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let mut names: Vec<OsString> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let sub = rel.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&sub))?;
        f(&sub, &meta)?;
        if meta.is_dir() {
            walk_dir(root, &sub, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(t: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = t.join(format!("l{i}"));
                std::fs::create_dir_all(&p).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn roles_across_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let l = layers(t.path(), 3);
        std::fs::write(l[2].join("f"), b"base").unwrap();
        std::fs::write(l[1].join("f"), b"mid").unwrap();
        std::fs::create_dir_all(l[2].join("d/sub")).unwrap();
        std::fs::write(l[2].join("d/x"), b"x").unwrap();
        std::fs::create_dir_all(l[0].join("d")).unwrap();
        std::fs::write(l[0].join("d/.wh.x"), b"").unwrap();
        std::fs::write(l[0].join(".wh.gone"), b"").unwrap();
        std::fs::write(l[1].join("gone"), b"g").unwrap();

        let roles = |p: &str| -> Vec<(usize, Role)> {
            resolve_full(&l, Path::new(p))
                .unwrap()
                .into_iter()
                .map(|(i, r, _)| (i, r))
                .collect()
        };
        assert_eq!(roles("f"), vec![(1, Role::Provides), (2, Role::Shadowed)]);
        assert_eq!(roles("d"), vec![(0, Role::Provides), (2, Role::Merges)]);
        assert_eq!(
            roles("d/x"),
            vec![(0, Role::WhitesOut), (2, Role::Shadowed)]
        );
        assert_eq!(
            roles("gone"),
            vec![(0, Role::WhitesOut), (1, Role::Shadowed)]
        );
        let names: Vec<OsString> = merged_children(&l, Path::new("d"))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, vec![OsString::from("sub")]);

        std::fs::write(l[0].join("d/.wh..wh..opq"), b"").unwrap();
        assert_eq!(roles("d"), vec![(0, Role::Provides), (2, Role::Shadowed)]);
        assert_eq!(roles("d/sub"), vec![(2, Role::Shadowed)]);
        assert!(merged_children(&l, Path::new("d")).unwrap().is_empty());
    }
}
