//! The read-only reports over stored images and upper directories: `layers` (like
//! `docker history`), `which` (which layer provides, shadows or whites out a path), `diff`
//! (`A`/`C`/`D` like `docker diff`) and `inspect` (per-layer trees with added, modified and
//! deleted marks and the space hidden by upper layers, like dive).
//!
//! Each returns plain serializable rows; printing them is the command line's job. Nothing here
//! may modify a layer or an upper directory.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{Error, Result};
use super::flatten;
use super::view::{self, Role};
use super::Store;
use crate::whiteout;

/// One layer of an image, top-most first (`unionfs layers`).
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    /// 0 is the base layer.
    pub index: usize,
    pub diff_id: String,
    /// Bytes of the uncompressed layer tar.
    pub size: u64,
    pub files: u64,
    pub whiteouts: u64,
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
}

/// What one layer does to a path (`unionfs which`).
#[derive(Debug, Clone, Serialize)]
pub struct WhichRow {
    pub index: usize,
    pub diff_id: String,
    pub role: Role,
    pub kind: Option<&'static str>,
    pub size: Option<u64>,
}

/// A `docker diff` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    pub kind: char,
    pub path: PathBuf,
}

/// One entry of a layer's tree (`unionfs inspect`).
#[derive(Debug, Clone, Serialize)]
pub struct InspectEntry {
    /// `A` added, `M` modified (shadows a lower entry), `D` deleted (whiteout).
    pub mark: char,
    pub path: PathBuf,
    pub kind: &'static str,
    pub size: u64,
    pub opaque: bool,
    /// Hidden in the merged image by a layer above.
    pub hidden: bool,
}

/// One layer's listing.
#[derive(Debug, Clone, Serialize)]
pub struct InspectLayer {
    pub index: usize,
    pub diff_id: String,
    pub created_by: Option<String>,
    /// Bytes of regular files hidden by upper layers.
    pub wasted: u64,
    pub entries: Vec<InspectEntry>,
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    let ft = m.file_type();
    if view::is_whiteout_meta(m) {
        "whiteout"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// The history entries that made layers (entries marked `empty_layer` made none), in layer
/// order: entry `i` describes the image's layer `i`.
fn layer_history(img: &super::ImageRecord) -> Vec<&oci_spec::image::History> {
    img.config
        .history()
        .iter()
        .flatten()
        .filter(|h| h.empty_layer() != Some(true))
        .collect()
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// The layers of an image, top-most first, with their history entries.
    pub fn layer_rows(&self, name: &str) -> Result<Vec<LayerRow>> {
        let img = self.image(name)?;
        let history = layer_history(&img);
        let mut rows = Vec::new();
        for (i, d) in img.diff_ids().iter().enumerate() {
            let meta = self.layer_meta(d)?;
            let h = history.get(i);
            rows.push(LayerRow {
                index: i,
                diff_id: d.clone(),
                size: meta.stats.tar_size,
                files: meta.stats.files,
                whiteouts: meta.stats.whiteouts,
                created: h.and_then(|h| h.created().clone()),
                created_by: h.and_then(|h| h.created_by().clone()),
                comment: h.and_then(|h| h.comment().clone()),
            });
        }
        rows.reverse();
        Ok(rows)
    }

    /// What each layer of `name` does to `path`, top-most first.
    pub fn which(&self, name: &str, path: &Path) -> Result<Vec<WhichRow>> {
        let img = self.image(name)?;
        let lowers = self.lowers_of(name)?;
        let n = lowers.len();
        let roles = view::resolve_full(&lowers, path).map_err(io_err(path))?;
        if roles.is_empty() {
            return Err(Error::NotInImage {
                image: name.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok(roles
            .into_iter()
            .map(|(i, role, m)| WhichRow {
                index: n - 1 - i,
                diff_id: img.diff_ids()[n - 1 - i].clone(),
                role,
                kind: m.as_ref().map(kind_of),
                size: m.as_ref().filter(|m| m.is_file()).map(|m| m.len()),
            })
            .collect())
    }

    /// `docker diff` of an upper directory against the layers of its image (top-most first).
    /// A renamed directory is listed with its whole merged contents, as commit packs it.
    pub fn diff_upper(&self, upper: &Path, lowers: &[PathBuf]) -> Result<Vec<DiffLine>> {
        let mut out = Vec::new();
        view::walk_dir(upper, Path::new(""), &mut |rel, meta| {
            let name = rel.file_name().unwrap_or_default();
            let (target, deleted) = if view::is_whiteout_meta(meta) {
                (rel.to_path_buf(), true)
            } else if let Some(h) = whiteout::aufs_hidden_name(name) {
                (rel.with_file_name(h), true)
            } else if whiteout::is_aufs_marker(name) {
                return Ok(());
            } else {
                (rel.to_path_buf(), false)
            };
            let in_lower = view::visible(lowers, &target)?.is_some();
            let abs = Path::new("/").join(&target);
            if deleted {
                if in_lower {
                    out.push(DiffLine {
                        kind: 'D',
                        path: abs,
                    });
                }
                return Ok(());
            }
            out.push(DiffLine {
                kind: if in_lower { 'C' } else { 'A' },
                path: abs,
            });
            if flatten::is_redirected_dir(&upper.join(rel), meta) {
                // A renamed directory: everything it shows is new at this path (a rename can
                // only replace an empty directory, so nothing below it is deleted).
                flatten::walk_merged_upper(upper, lowers, rel, &mut |p, _, _| {
                    let kind = if view::visible(lowers, p)?.is_some() {
                        'C'
                    } else {
                        'A'
                    };
                    out.push(DiffLine {
                        kind,
                        path: Path::new("/").join(p),
                    });
                    Ok(())
                })?;
            } else if meta.is_dir() && in_lower && whiteout::is_opaque_dir(&upper.join(rel)) {
                for child in view::merged_children(lowers, rel)? {
                    let p = rel.join(&child.name);
                    if std::fs::symlink_metadata(upper.join(&p)).is_err() {
                        out.push(DiffLine {
                            kind: 'D',
                            path: Path::new("/").join(p),
                        });
                    }
                }
            }
            Ok(())
        })
        .map_err(io_err(upper))?;
        // Other names of files copied up through the index changed with them. One below a
        // renamed directory is not in the lowers at that path and was listed as added above.
        for rel in flatten::indexed_aliases(upper, lowers)
            .map_err(io_err(upper))?
            .into_keys()
        {
            if view::visible(lowers, &rel)
                .map_err(io_err(upper))?
                .is_none()
            {
                continue;
            }
            out.push(DiffLine {
                kind: 'C',
                path: Path::new("/").join(rel),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out.dedup();
        Ok(out)
    }

    /// Per-layer listings of image `name` (base first), optionally one layer and one subtree.
    pub fn inspect(
        &self,
        name: &str,
        only: Option<usize>,
        under: Option<&Path>,
    ) -> Result<Vec<InspectLayer>> {
        let img = self.image(name)?;
        let lowers = self.lowers_of(name)?;
        let n = lowers.len();
        if let Some(k) = only.filter(|k| *k >= n) {
            return Err(Error::NoSuchLayer {
                image: name.to_owned(),
                index: k,
                count: n,
            });
        }
        let history = layer_history(&img);
        let mut out = Vec::new();
        for idx in 0..n {
            if only.is_some_and(|k| k != idx) {
                continue;
            }
            let pos = n - 1 - idx;
            let mut layer = InspectLayer {
                index: idx,
                diff_id: img.diff_ids()[idx].clone(),
                created_by: history.get(idx).and_then(|h| h.created_by().clone()),
                wasted: 0,
                entries: Vec::new(),
            };
            self.inspect_layer(&lowers, pos, under, &mut layer)?;
            out.push(layer);
        }
        Ok(out)
    }

    fn inspect_layer(
        &self,
        lowers: &[PathBuf],
        pos: usize,
        under: Option<&Path>,
        layer: &mut InspectLayer,
    ) -> Result<()> {
        let root = &lowers[pos];
        let below = &lowers[pos + 1..];
        let mut seen_inodes = HashSet::new();
        let start = under
            .map(|u| view::components(u).iter().collect::<PathBuf>())
            .unwrap_or_default();
        if !root.join(&start).is_dir() {
            return Ok(());
        }
        view::walk_dir(root, &start, &mut |rel, meta| {
            let name = rel.file_name().unwrap_or_default();
            if whiteout::is_aufs_marker(name) {
                return Ok(());
            }
            let in_below = view::visible(below, rel)?.is_some();
            let deleted = view::is_whiteout_meta(meta);
            let mark = match (deleted, in_below) {
                (true, _) => 'D',
                (false, true) => 'M',
                (false, false) => 'A',
            };
            let hidden = !deleted
                && view::visible(lowers, rel)?.map(|(i, _)| i) != Some(pos)
                && !(meta.is_dir()
                    && view::resolve(lowers, rel)?
                        .iter()
                        .any(|(i, r, _)| *i == pos && *r == Role::Merges));
            if hidden && meta.is_file() && seen_inodes.insert((meta.dev(), meta.ino())) {
                layer.wasted += meta.len();
            }
            layer.entries.push(InspectEntry {
                mark,
                path: Path::new("/").join(rel),
                kind: kind_of(meta),
                size: if meta.is_file() { meta.len() } else { 0 },
                opaque: meta.is_dir() && whiteout::is_opaque_dir(&root.join(rel)),
                hidden,
            });
            Ok(())
        })
        .map_err(io_err(root))
    }
}
