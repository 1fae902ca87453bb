//! Extracts one layer tar into a fresh staging directory, refusing anything that could escape
//! the layer, and converts AUFS/OCI whiteouts into the store's single format (overlay: character
//! device 0/0 and the opaque xattr, written through [`crate::whiteout`]).
//!
//! While reading it hashes the uncompressed stream, so the caller gets the layer's diffID (OCI
//! image spec, "Layer DiffID") to verify or to key the layer by. It must never follow a symlink
//! inside the staging directory, never write outside it, and never accept device nodes, `..`,
//! absolute names, duplicates or links that leave the layer: every entry's parents are checked
//! against the entries it has created itself, not against the disk.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::error::{Error, Result};
use crate::whiteout::{self, XattrNs};

/// What a layer holds, recorded beside it in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
    /// Entries that are neither directories nor whiteouts.
    pub files: u64,
    pub dirs: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Bytes of regular-file content.
    pub content_size: u64,
}

/// A layer extracted into a staging directory.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    pub stats: LayerStats,
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left, then returns `sha256:<hex>` and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex_digest(self.hasher), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of a finished hasher.
pub fn hex_digest(h: Sha256) -> String {
    let d = h.finalize();
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `sha256:<hex>` of a byte string.
pub fn digest_of(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    hex_digest(h)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A directory; `explicit` once the archive itself had an entry for it.
    Dir {
        explicit: bool,
    },
    File,
    Other,
    Whiteout,
}

/// Extraction state: what this archive created, keyed by normalized path bytes.
struct Stage<'a> {
    dest: &'a Path,
    layer: &'a str,
    nodes: HashMap<Vec<u8>, Node>,
    markers: std::collections::HashSet<Vec<u8>>,
    dir_times: Vec<(PathBuf, u64)>,
    stats: LayerStats,
}

/// Extracts the uncompressed tar `reader` into the empty directory `dest`. `layer` names the
/// layer in error messages. `lowers` are the layers it goes on (top-most first): a directory
/// the archive only implies (umoci, for one, leaves out unchanged parents) takes its owner,
/// mode and time from them, as applying the changeset would leave it (OCI image spec,
/// "Applying Changesets").
pub fn unpack(reader: impl Read, dest: &Path, layer: &str, lowers: &[PathBuf]) -> Result<Unpacked> {
    let mut archive = tar::Archive::new(HashingReader::new(reader));
    let mut stage = Stage {
        dest,
        layer,
        nodes: HashMap::new(),
        markers: Default::default(),
        dir_times: Vec::new(),
        stats: LayerStats::default(),
    };
    let mut last = PathBuf::from("(start of archive)");
    let corrupt = |last: &Path, source| Error::Corrupt {
        layer: layer.to_owned(),
        last: last.to_owned(),
        source,
    };
    for entry in archive.entries().map_err(|e| corrupt(&last, e))? {
        let mut entry = entry.map_err(|e| corrupt(&last, e))?;
        let raw = entry.path_bytes().into_owned();
        last = PathBuf::from(OsStr::from_bytes(&raw));
        stage.add(&mut entry, &raw)?;
    }
    stage.inherit_implicit(lowers)?;
    stage.set_dir_times()?;
    let (diff_id, tar_size) = archive
        .into_inner()
        .finish()
        .map_err(|e| corrupt(&last, e))?;
    stage.stats.tar_size = tar_size;
    Ok(Unpacked {
        diff_id,
        stats: stage.stats,
    })
}

/// The components of an archive path, or why it is refused. The root itself has none.
pub fn normalize(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path leaves the layer (..)"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, resolved from the link's directory, climbs above the
/// layer root. Absolute targets are resolved against the image root when used, so they stay in.
pub fn symlink_escapes(link: &[&[u8]], target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = link.len().saturating_sub(1);
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if depth == 0 => return true,
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

impl Stage<'_> {
    fn bad(&self, raw: &[u8], why: impl Into<String>) -> Error {
        Error::BadEntry {
            layer: self.layer.to_owned(),
            entry: PathBuf::from(OsStr::from_bytes(raw)),
            why: why.into(),
        }
    }

    fn io(&self, raw: &[u8]) -> impl Fn(io::Error) -> Error + '_ {
        let entry = PathBuf::from(OsStr::from_bytes(raw));
        move |source| Error::Extract {
            layer: self.layer.to_owned(),
            entry: entry.clone(),
            source,
        }
    }

    fn path_of(&self, key: &[u8]) -> PathBuf {
        self.dest.join(OsStr::from_bytes(key))
    }

    fn add<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = normalize(raw).map_err(|why| self.bad(raw, why))?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself: only its metadata applies.
            return self.set_meta(entry, raw, self.dest.to_owned(), true);
        };
        let parent_key = self.ensure_parents(parents, raw)?;
        let mut key = parent_key.clone();
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(name);
        if whiteout::is_aufs_marker(OsStr::from_bytes(name)) {
            return self.add_marker(raw, &parent_key, name, &key);
        }
        match (self.nodes.get(&key).copied(), kind) {
            (Some(Node::Dir { explicit: false }), EntryType::Directory) => {}
            (Some(Node::Whiteout), _) => self.replace_whiteout(&key, kind, raw)?,
            (Some(_), _) => return Err(self.bad(raw, "duplicate entry")),
            (None, _) => {}
        }
        self.create(entry, raw, &comps, key)
    }

    /// Checks (and creates where missing) the parent directories, never through a symlink.
    fn ensure_parents(&mut self, parents: &[&[u8]], raw: &[u8]) -> Result<Vec<u8>> {
        let mut key = Vec::new();
        for p in parents {
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(p);
            match self.nodes.get(&key).copied() {
                Some(Node::Dir { .. }) => {}
                Some(Node::Whiteout) => {
                    // Deleted and recreated as a directory in the same layer: an opaque dir.
                    self.replace_whiteout(&key, EntryType::Directory, raw)?;
                    self.mkdir_implicit(&key, raw)?;
                }
                Some(_) => return Err(self.bad(raw, "a parent is not a directory")),
                None => self.mkdir_implicit(&key, raw)?,
            }
        }
        Ok(key)
    }

    fn mkdir_implicit(&mut self, key: &[u8], raw: &[u8]) -> Result<()> {
        let path = self.path_of(key);
        std::fs::create_dir(&path).map_err(self.io(raw))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(self.io(raw))?;
        self.nodes
            .insert(key.to_vec(), Node::Dir { explicit: false });
        self.stats.dirs += 1;
        Ok(())
    }

    /// A whiteout and an entry of the same name in one layer: the entry wins (OCI image spec,
    /// whiteouts apply only to lower layers); a directory becomes opaque so the lower one stays
    /// hidden, as overlayfs records a deleted and recreated directory.
    fn replace_whiteout(&mut self, key: &[u8], kind: EntryType, raw: &[u8]) -> Result<()> {
        let path = self.path_of(key);
        std::fs::remove_file(&path).map_err(self.io(raw))?;
        self.nodes.remove(key);
        self.stats.whiteouts -= 1;
        if kind == EntryType::Directory {
            self.markers.insert(key.to_vec());
        }
        Ok(())
    }

    fn add_marker(&mut self, raw: &[u8], parent: &[u8], name: &[u8], key: &[u8]) -> Result<()> {
        if !self.markers.insert(key.to_vec()) {
            return Err(self.bad(raw, "duplicate entry"));
        }
        if name == whiteout::AUFS_OPAQUE {
            let dir = self.path_of(parent);
            whiteout::set_opaque(&dir, XattrNs::Trusted)
                .map_err(|e| self.io(raw)(io::Error::from(e)))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        let hidden = whiteout::aufs_hidden_name(OsStr::from_bytes(name))
            .ok_or_else(|| self.bad(raw, "whiteout without a name"))?;
        let mut target = parent.to_vec();
        if !target.is_empty() {
            target.push(b'/');
        }
        target.extend_from_slice(hidden.as_bytes());
        if normalize(&target).map(|c| c.len()) != Ok(target.split(|b| *b == b'/').count()) {
            return Err(self.bad(raw, "whiteout of an invalid name"));
        }
        match self.nodes.get(&target) {
            // An entry of this layer shadows the lower one already.
            Some(Node::Whiteout) => Err(self.bad(raw, "duplicate whiteout")),
            Some(_) => Ok(()),
            None => {
                whiteout::make_whiteout(&self.path_of(&target))
                    .map_err(|e| self.io(raw)(io::Error::from(e)))?;
                self.nodes.insert(target, Node::Whiteout);
                self.stats.whiteouts += 1;
                Ok(())
            }
        }
    }

    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        comps: &[&[u8]],
        key: Vec<u8>,
    ) -> Result<()> {
        let path = self.path_of(&key);
        let kind = entry.header().entry_type();
        let node = match kind {
            EntryType::Directory => {
                if !self.nodes.contains_key(&key) {
                    std::fs::create_dir(&path).map_err(self.io(raw))?;
                    self.stats.dirs += 1;
                }
                if self.markers.contains(&key) {
                    whiteout::set_opaque(&path, XattrNs::Trusted)
                        .map_err(|e| self.io(raw)(io::Error::from(e)))?;
                }
                Node::Dir { explicit: true }
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(self.io(raw))?;
                let n = io::copy(entry, &mut f).map_err(|source| Error::Corrupt {
                    layer: self.layer.to_owned(),
                    last: PathBuf::from(OsStr::from_bytes(raw)),
                    source,
                })?;
                self.stats.content_size += n;
                Node::File
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad(raw, "symlink without a target"))?
                    .into_owned();
                if symlink_escapes(comps, &target) {
                    return Err(self.bad(raw, "symlink points outside the layer"));
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(self.io(raw))?;
                Node::Other
            }
            EntryType::Link => return self.hard_link(entry, raw, key),
            EntryType::Fifo => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| self.io(raw)(io::Error::from(e)))?;
                Node::Other
            }
            EntryType::Char | EntryType::Block => {
                return Err(self.bad(raw, "device nodes are not allowed in a layer"))
            }
            other => return Err(self.bad(raw, format!("unsupported entry type {other:?}"))),
        };
        if node != (Node::Dir { explicit: true }) {
            self.stats.files += 1;
        }
        self.nodes.insert(key, node);
        self.set_meta(
            entry,
            raw,
            path,
            node != Node::Other || kind == EntryType::Fifo,
        )
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        key: Vec<u8>,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.bad(raw, "hard link without a target"))?
            .into_owned();
        let comps =
            normalize(&target).map_err(|_| self.bad(raw, "hard link points outside the layer"))?;
        let tkey = comps.join(&b'/');
        match self.nodes.get(&tkey) {
            Some(Node::File | Node::Other) => {}
            _ => return Err(self.bad(raw, "hard link target is not a file of this layer")),
        }
        std::fs::hard_link(self.path_of(&tkey), self.path_of(&key)).map_err(self.io(raw))?;
        self.stats.files += 1;
        self.nodes.insert(key, Node::File);
        Ok(())
    }

    /// Owner, mode, xattrs and (except for directories, done last) the modification time.
    fn set_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        path: PathBuf,
        chmod: bool,
    ) -> Result<()> {
        let h = entry.header();
        let uid = h.uid().map_err(self.io(raw))?;
        let gid = h.gid().map_err(self.io(raw))?;
        let mode = h.mode().map_err(self.io(raw))? & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let is_dir = h.entry_type() == EntryType::Directory || path == self.dest;
        let ids = |v: u64| u32::try_from(v).map_err(|_| self.bad(raw, "owner id out of range"));
        std::os::unix::fs::lchown(&path, Some(ids(uid)?), Some(ids(gid)?)).map_err(self.io(raw))?;
        if chmod {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(self.io(raw))?;
        }
        self.set_xattrs(entry, raw, &path)?;
        if is_dir {
            self.dir_times.push((path, mtime));
            return Ok(());
        }
        set_mtime(&path, mtime).map_err(self.io(raw))
    }

    fn set_xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        path: &Path,
    ) -> Result<()> {
        let Some(exts) = entry.pax_extensions().map_err(self.io(raw))? else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.map_err(self.io(raw))?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            let name = OsStr::from_bytes(name);
            if whiteout::is_private_xattr(name) {
                tracing::warn!(entry = %Path::new(OsStr::from_bytes(raw)).display(),
                    ?name, "dropping a union-filesystem xattr from a layer archive");
                continue;
            }
            crate::sys::xattr::set(path, name, ext.value_bytes(), 0)
                .map_err(|e| self.io(raw)(io::Error::from(e)))?;
        }
        Ok(())
    }

    /// Gives directories the archive did not list the attributes they have below.
    fn inherit_implicit(&mut self, lowers: &[PathBuf]) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let implicit: Vec<Vec<u8>> = self
            .nodes
            .iter()
            .filter(|(_, n)| **n == Node::Dir { explicit: false })
            .map(|(k, _)| k.clone())
            .collect();
        for key in implicit {
            let rel = Path::new(OsStr::from_bytes(&key));
            let found = super::view::visible(lowers, rel).map_err(self.io(&key))?;
            let Some((_, m)) = found.filter(|(_, m)| m.is_dir()) else {
                continue;
            };
            let path = self.path_of(&key);
            std::os::unix::fs::lchown(&path, Some(m.uid()), Some(m.gid()))
                .map_err(self.io(&key))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(self.io(&key))?;
            self.dir_times
                .push((path, u64::try_from(m.mtime()).unwrap_or(0)));
        }
        Ok(())
    }

    /// Directory times are set last, once nothing more is created inside them.
    fn set_dir_times(&mut self) -> Result<()> {
        for (path, mtime) in self.dir_times.iter().rev() {
            set_mtime(path, *mtime).map_err(|source| Error::Extract {
                layer: self.layer.to_owned(),
                entry: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let ok: &[(&[u8], &[&[u8]])] = &[
            (b"a/b", &[b"a", b"b"]),
            (b"./a//b/", &[b"a", b"b"]),
            (b"./", &[]),
            (b"a/./b", &[b"a", b"b"]),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize(raw).unwrap(), want.to_vec());
        }
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"..").is_err());
    }

    #[test]
    fn symlink_escape_table() {
        type Case<'a> = (&'a [&'a [u8]], &'a [u8], bool);
        let cases: &[Case] = &[
            (&[b"a", b"l"], b"../b", false),
            (&[b"a", b"l"], b"../../b", true),
            (&[b"l"], b"..", true),
            (&[b"l"], b"/etc/passwd", false),
            (&[b"a", b"l"], b"x/../../y", false),
            (&[b"a", b"l"], b"./x", false),
        ];
        for (link, target, escapes) in cases {
            assert_eq!(symlink_escapes(link, target), *escapes, "{target:?}");
        }
    }
}
