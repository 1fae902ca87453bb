//! Writes a directory tree as a layer tar: a store layer or an upper directory with its
//! whiteouts and opaque directories converted to the OCI form (`.wh.<name>`, `.wh..wh..opq`),
//! or a merged tree of several layers without any marker (the flat export). A renamed
//! directory of an upper (a redirect) is written as an opaque directory holding its merged
//! contents (see [`super::flatten`]), since a tar cannot say "my contents are elsewhere".
//!
//! The output is deterministic for a given tree (names sorted by bytes, no access times, owner
//! names left empty), so packing the same layer twice gives the same diffID. It must never
//! write union-filesystem xattrs (`trusted.overlay.*`, ...) into an archive, and never modify
//! what it reads.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::flatten;
use super::view::{self, is_whiteout_meta};
use crate::whiteout;

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, `sha256:<hex>` and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            super::unpack::hex_digest(self.hasher),
            self.bytes,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs one layer or upper directory, converting markers to the OCI form.
pub fn pack_layer<W: Write>(root: &Path, out: W) -> io::Result<W> {
    let mut p = Packer::new(out);
    p.layer_dir(root, Path::new(""))?;
    p.builder.into_inner()
}

/// Packs the upper directory `upper` of a container over `lowers` (top-most first), converting
/// markers to the OCI form and flattening renamed directories.
pub fn pack_upper<W: Write>(upper: &Path, lowers: &[PathBuf], out: W) -> io::Result<W> {
    let mut p = Packer::new(out);
    p.lowers = Some(lowers.to_vec());
    p.aliases = flatten::indexed_aliases(upper, lowers)?;
    p.layer_dir(upper, Path::new(""))?;
    // Names still only in the lowers that show an indexed copy: links to it.
    let mut rest: Vec<(PathBuf, PathBuf)> = p.aliases.drain().collect();
    rest.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    for (rel, copy) in rest {
        let path = upper.join(copy);
        let meta = std::fs::symlink_metadata(&path)?;
        p.entry(&rel, &path, &meta)?;
    }
    p.builder.into_inner()
}

/// Packs the merged tree of `layers` (top-most first), without markers.
pub fn pack_merged<W: Write>(layers: &[PathBuf], out: W) -> io::Result<W> {
    let mut p = Packer::new(out);
    view::walk_merged(layers, Path::new(""), &mut |rel, child| {
        p.entry(rel, &child.path, &child.meta)
    })?;
    p.builder.into_inner()
}

struct Packer<W: Write> {
    builder: tar::Builder<W>,
    /// First archive path of each multiply-linked inode, for hard-link entries.
    links: HashMap<(u64, u64), PathBuf>,
    /// The layers below, when packing an upper directory: renamed directories are flattened.
    lowers: Option<Vec<PathBuf>>,
    /// Lower-only names of files copied up through the index, and an upper name of the copy
    /// (see [`flatten::indexed_aliases`]); removed once written.
    aliases: HashMap<PathBuf, PathBuf>,
}

impl<W: Write> Packer<W> {
    fn new(out: W) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        Packer {
            builder,
            links: HashMap::new(),
            lowers: None,
            aliases: HashMap::new(),
        }
    }

    fn layer_dir(&mut self, root: &Path, rel: &Path) -> io::Result<()> {
        let mut names: Vec<OsString> = std::fs::read_dir(root.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let dir = root.join(rel);
        let has_aufs_opaque = names.iter().any(|n| n.as_bytes() == whiteout::AUFS_OPAQUE);
        if !rel.as_os_str().is_empty() && !has_aufs_opaque && whiteout::is_opaque_dir(&dir) {
            self.marker(&rel.join(OsStr::from_bytes(whiteout::AUFS_OPAQUE)))?;
        }
        for name in names {
            let sub = rel.join(&name);
            let path = root.join(&sub);
            let meta = std::fs::symlink_metadata(&path)?;
            if is_whiteout_meta(&meta) {
                self.marker(&rel.join(whiteout::aufs_whiteout_name(&name)))?;
                continue;
            }
            if whiteout::is_aufs_marker(&name) {
                self.marker(&sub)?;
                continue;
            }
            self.entry(&sub, &path, &meta)?;
            if !meta.is_dir() {
                continue;
            }
            match self.lowers.clone() {
                Some(lowers) if flatten::is_redirected_dir(&path, &meta) => {
                    self.flattened_dir(root, &lowers, &sub)?;
                }
                _ => self.layer_dir(root, &sub)?,
            }
        }
        Ok(())
    }

    /// The contents of the renamed directory `rel` of the upper `root`: an opaque marker, then
    /// every merged entry below it, wherever it lives.
    fn flattened_dir(&mut self, root: &Path, lowers: &[PathBuf], rel: &Path) -> io::Result<()> {
        self.marker(&rel.join(OsStr::from_bytes(whiteout::AUFS_OPAQUE)))?;
        flatten::walk_merged_upper(root, lowers, rel, &mut |sub, path, meta| match self
            .aliases
            .remove(sub)
        {
            Some(copy) => {
                let path = root.join(copy);
                let meta = std::fs::symlink_metadata(&path)?;
                self.entry(sub, &path, &meta)
            }
            None => self.entry(sub, path, meta),
        })
    }

    /// An empty regular file standing for a whiteout or the opaque marker.
    fn marker(&mut self, rel: &Path) -> io::Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        self.builder.append_data(&mut h, rel, io::empty())
    }

    fn entry(&mut self, rel: &Path, path: &Path, meta: &Metadata) -> io::Result<()> {
        self.xattrs(path)?;
        let mut h = Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        h.set_size(0);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            let mut name = rel.as_os_str().to_owned();
            name.push("/");
            return self.builder.append_data(&mut h, name, io::empty());
        }
        if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = std::fs::read_link(path)?;
            return self.builder.append_link(&mut h, rel, target);
        }
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(EntryType::Link);
                let first = first.clone();
                return self.builder.append_link(&mut h, rel, first);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        if ft.is_file() {
            h.set_entry_type(EntryType::Regular);
            h.set_size(meta.len());
            let f = std::fs::File::open(path)?;
            return self.builder.append_data(&mut h, rel, f);
        }
        let kind = if ft.is_fifo() {
            EntryType::Fifo
        } else if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            return Err(io::Error::other(format!(
                "{}: sockets cannot be archived",
                path.display()
            )));
        };
        h.set_entry_type(kind);
        let rdev = meta.rdev();
        h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
        h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
        self.builder.append_data(&mut h, rel, io::empty())
    }

    /// The entry's own xattrs as a PAX header (`SCHILY.xattr.*`, as GNU tar writes them),
    /// leaving out the union filesystem's markers.
    fn xattrs(&mut self, path: &Path) -> io::Result<()> {
        let names = match crate::sys::xattr::list(path) {
            Ok(n) => n,
            Err(nix::errno::Errno::ENOTSUP) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            if whiteout::is_private_xattr(&name) {
                continue;
            }
            let Some(value) = crate::sys::xattr::get(path, &name)? else {
                continue;
            };
            // PAX keys are UTF-8 (POSIX pax format); xattr names in practice are too.
            let Some(n) = name.to_str() else { continue };
            pairs.push((format!("SCHILY.xattr.{n}"), value));
        }
        if pairs.is_empty() {
            return Ok(());
        }
        pairs.sort();
        self.builder
            .append_pax_extensions(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }
}
