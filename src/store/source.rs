//! Reads what `unionfs import` is given: an OCI image layout (a directory or a tar of one, the
//! image chosen by its `org.opencontainers.image.ref.name` tag as umoci and skopeo write it), a
//! `docker save` archive, or a plain layer tar. It yields the image configuration and, for each
//! layer, where its blob is, how it is compressed and which digests it must have.
//!
//! It must never trust a path or digest from a manifest: blob names are checked like archive
//! entries (no `..`, no absolute paths), digests must be `sha256:` plus 64 hex digits, and
//! media types outside the OCI and Docker layer types are refused before anything is read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::error::{Error, IoContext, Result};
use super::unpack::normalize;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Decided from the first bytes (docker save archives do not say).
    Sniff,
}

/// One layer to import.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// Where the blob is inside the source.
    pub blob: String,
    pub compression: Compression,
    /// Digest of the blob as stored, when the source names it.
    pub blob_digest: Option<String>,
    /// Compressed size, for progress.
    pub size: Option<u64>,
}

/// An image found in a source, ready to be imported.
#[derive(Debug)]
pub struct Found {
    /// `None` for a plain layer tar: the config is made once its diffID is known.
    pub config: Option<ImageConfiguration>,
    pub layers: Vec<LayerBlob>,
    /// A name the source gives the image (`name:tag` or just a tag), if any.
    pub name: Option<String>,
}

/// Files of an image source: a directory, or a tar read in place through an index.
pub enum Source {
    Dir(PathBuf),
    /// A plain layer tar: every name opens the file itself.
    File(PathBuf),
    Tar {
        path: PathBuf,
        /// Normalized member name to (data offset, size).
        members: HashMap<Vec<u8>, (u64, u64)>,
    },
}

/// Maximum size of a JSON document read from a source.
const JSON_LIMIT: u64 = 16 << 20;

impl Source {
    /// Indexes an uncompressed tar's members; symlinks and hard links between members are
    /// followed (docker save links repeated layers).
    pub fn tar(path: &Path) -> Result<Source> {
        let f = File::open(path).read_ctx(path)?;
        let mut ar = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut last = PathBuf::from("(start of archive)");
        let corrupt = |last: &Path, source| Error::Corrupt {
            layer: path.display().to_string(),
            last: last.to_owned(),
            source,
        };
        for e in ar.entries().map_err(|e| corrupt(&last, e))? {
            let e = e.map_err(|e| corrupt(&last, e))?;
            let raw = e.path_bytes().into_owned();
            last = PathBuf::from(OsStr::from_bytes(&raw));
            let Ok(comps) = normalize(&raw) else { continue };
            let key = comps.join(&b'/');
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(key, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let base: Vec<u8> = if e.header().entry_type() == tar::EntryType::Symlink {
                        let mut p = key.clone();
                        while p.last().is_some_and(|b| *b != b'/') {
                            p.pop();
                        }
                        p
                    } else {
                        Vec::new()
                    };
                    links.push((key, [base, target].concat()));
                }
                _ => {}
            }
        }
        for (key, target) in links {
            if let Some(t) = resolve_name(&target).and_then(|t| members.get(&t).copied()) {
                members.insert(key, t);
            }
        }
        Ok(Source::Tar {
            path: path.to_owned(),
            members,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).exists(),
            Source::File(_) => false,
            Source::Tar { members, .. } => members.contains_key(name.as_bytes()),
        }
    }

    /// Opens a member, refusing names that leave the source.
    pub fn open(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let comps = normalize(name.as_bytes()).map_err(|why| Error::BadImage {
            source_path: self.describe(),
            why: format!("blob name {name:?}: {why}"),
        })?;
        let key = comps.join(&b'/');
        match self {
            Source::File(p) => {
                let f = File::open(p).read_ctx(p)?;
                let len = f.metadata().read_ctx(p)?.len();
                Ok((Box::new(f), len))
            }
            Source::Dir(d) => {
                let p = d.join(OsStr::from_bytes(&key));
                let f = File::open(&p).read_ctx(&p)?;
                let len = f.metadata().read_ctx(&p)?.len();
                Ok((Box::new(f), len))
            }
            Source::Tar { path, members } => {
                let (off, size) = members.get(&key).copied().ok_or_else(|| Error::BadImage {
                    source_path: path.display().to_string(),
                    why: format!("{name} is missing"),
                })?;
                let mut f = File::open(path).read_ctx(path)?;
                f.seek(SeekFrom::Start(off)).read_ctx(path)?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &'static str,
    ) -> Result<(T, Vec<u8>)> {
        let (r, _) = self.open(name)?;
        let mut bytes = Vec::new();
        r.take(JSON_LIMIT)
            .read_to_end(&mut bytes)
            .read_ctx(Path::new(name))?;
        let v = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what,
            path: format!("{}:{name}", self.describe()),
            source,
        })?;
        Ok((v, bytes))
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(d) | Source::File(d) => d.display().to_string(),
            Source::Tar { path, .. } => path.display().to_string(),
        }
    }
}

/// Normalizes `a/b/../c` style link targets inside an archive; `None` if they leave it.
fn resolve_name(name: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join(&b'/'))
}

/// The hex part of a `sha256:<64 hex>` digest.
pub fn sha256_hex<'a>(digest: &'a str, what: &str) -> Result<&'a str> {
    match digest.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(h)
        }
        _ => Err(Error::BadDigest {
            what: what.to_owned(),
            digest: digest.to_owned(),
        }),
    }
}

/// What kind of thing `path` is, and the image in it.
pub fn find(path: &Path, tag: Option<&str>, scratch: &Path) -> Result<(Source, Found)> {
    let meta = std::fs::metadata(path).read_ctx(path)?;
    if meta.is_dir() {
        let src = Source::Dir(path.to_owned());
        if !src.has("oci-layout") {
            return Err(Error::UnknownFormat { path: path.into() });
        }
        let found = oci_layout(&src, path, tag)?;
        return Ok((src, found));
    }
    let tarfile = decompress_outer(path, scratch)?;
    let src = Source::tar(&tarfile)?;
    if src.has("oci-layout") && src.has("index.json") {
        let found = oci_layout(&src, path, tag)?;
        Ok((src, found))
    } else if src.has("manifest.json") {
        let found = docker_archive(&src, path, tag)?;
        Ok((src, found))
    } else {
        let found = Found {
            config: None,
            layers: vec![LayerBlob {
                blob: String::new(),
                compression: Compression::Sniff,
                blob_digest: None,
                size: Some(meta.len()),
            }],
            name: None,
        };
        Ok((Source::File(path.to_owned()), found))
    }
}

/// A compressed archive is decompressed into `scratch` first, so that it can be indexed.
fn decompress_outer(path: &Path, scratch: &Path) -> Result<PathBuf> {
    let f = File::open(path).read_ctx(path)?;
    let mut r = BufReader::new(f);
    let magic = r.fill_buf().read_ctx(path)?.to_vec();
    if sniff(&magic) == Compression::None {
        return Ok(path.to_owned());
    }
    let out = scratch.join("archive.tar");
    let mut w = File::create(&out).write_ctx(&out)?;
    let mut dec = decompressor(Compression::Sniff, Box::new(r)).read_ctx(path)?;
    io::copy(&mut dec, &mut w).map_err(|source| Error::Corrupt {
        layer: path.display().to_string(),
        last: PathBuf::from("(decompressing)"),
        source,
    })?;
    Ok(out)
}

pub fn sniff(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps a blob reader in the decompressor it needs.
pub fn decompressor<'a>(c: Compression, r: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::new(r);
    let c = match c {
        Compression::Sniff => sniff(r.fill_buf()?),
        c => c,
    };
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        _ => Box::new(r),
    })
}

fn layer_compression(mt: &MediaType, what: &str) -> Result<Compression> {
    let s = mt.to_string();
    Ok(match s.as_str() {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => {
            return Err(Error::MediaType {
                what: what.to_owned(),
                media_type: s,
            })
        }
    })
}

fn blob_name(d: &Descriptor, what: &str) -> Result<String> {
    let hex = sha256_hex(d.digest().as_ref(), what)?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Reads a blob named by a descriptor and checks its digest.
fn read_verified<T: serde::de::DeserializeOwned>(
    src: &Source,
    d: &Descriptor,
    what: &'static str,
) -> Result<T> {
    let name = blob_name(d, what)?;
    let (v, bytes) = src.read_json::<T>(&name, what)?;
    let actual = super::unpack::digest_of(&bytes);
    let expected: &str = d.digest().as_ref();
    if actual != expected {
        return Err(Error::DigestMismatch {
            what: format!("{what} {name}"),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(v)
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn oci_layout(src: &Source, path: &Path, tag: Option<&str>) -> Result<Found> {
    let (index, _) = src.read_json::<ImageIndex>("index.json", "image index")?;
    let manifests: Vec<&Descriptor> = index.manifests().iter().collect();
    let ref_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
    };
    let tags: Vec<String> = manifests.iter().filter_map(|d| ref_of(d)).collect();
    let chosen = match tag {
        Some(t) => manifests
            .iter()
            .find(|d| ref_of(d).as_deref() == Some(t))
            .ok_or_else(|| Error::NoSuchTag {
                path: path.into(),
                tag: t.to_owned(),
                tags: tags.join(", "),
            })?,
        None if manifests.len() == 1 => &manifests[0],
        None => {
            return Err(Error::Ambiguous {
                path: path.into(),
                tags: tags.join(", "),
            })
        }
    };
    let desc: &Descriptor = chosen;
    match desc.media_type() {
        MediaType::ImageManifest => {}
        other => {
            return Err(Error::MediaType {
                what: "manifest".into(),
                media_type: other.to_string(),
            })
        }
    }
    let manifest: ImageManifest = read_verified(src, desc, "image manifest")?;
    if let Some(mt) = manifest.media_type() {
        if *mt != MediaType::ImageManifest {
            return Err(Error::MediaType {
                what: "manifest".into(),
                media_type: mt.to_string(),
            });
        }
    }
    match manifest.config().media_type() {
        MediaType::ImageConfig => {}
        other => {
            return Err(Error::MediaType {
                what: "image config".into(),
                media_type: other.to_string(),
            })
        }
    }
    let config: ImageConfiguration = read_verified(src, manifest.config(), "image config")?;
    let mut layers = Vec::new();
    for (i, d) in manifest.layers().iter().enumerate() {
        let what = format!("layer {} ({})", i + 1, d.digest());
        layers.push(LayerBlob {
            compression: layer_compression(d.media_type(), &what)?,
            blob: blob_name(d, &what)?,
            blob_digest: Some(d.digest().to_string()),
            size: Some(d.size()),
        });
    }
    Ok(Found {
        config: Some(config),
        layers,
        name: ref_of(desc),
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_archive(src: &Source, path: &Path, tag: Option<&str>) -> Result<Found> {
    let (list, _) = src.read_json::<Vec<DockerManifest>>("manifest.json", "docker manifest")?;
    let all_tags: Vec<String> = list
        .iter()
        .flat_map(|m| m.repo_tags.clone().unwrap_or_default())
        .collect();
    let matches = |m: &DockerManifest, t: &str| {
        m.repo_tags
            .iter()
            .flatten()
            .any(|rt| rt == t || rt.rsplit_once(':').is_some_and(|(_, tg)| tg == t))
    };
    let m = match tag {
        Some(t) => list
            .iter()
            .find(|m| matches(m, t))
            .ok_or_else(|| Error::NoSuchTag {
                path: path.into(),
                tag: t.to_owned(),
                tags: all_tags.join(", "),
            })?,
        None if list.len() == 1 => &list[0],
        None => {
            return Err(Error::Ambiguous {
                path: path.into(),
                tags: all_tags.join(", "),
            })
        }
    };
    let (config, bytes) = src.read_json::<ImageConfiguration>(&m.config, "image config")?;
    // The config's name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let stem = m
        .config
        .rsplit('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".json");
    if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        let actual = super::unpack::digest_of(&bytes);
        if actual != format!("sha256:{stem}") {
            return Err(Error::DigestMismatch {
                what: format!("image config {}", m.config),
                expected: format!("sha256:{stem}"),
                actual,
            });
        }
    }
    let layers = m
        .layers
        .iter()
        .map(|l| LayerBlob {
            blob: l.clone(),
            compression: Compression::Sniff,
            blob_digest: None,
            size: None,
        })
        .collect();
    // Docker shows Docker Hub names short (`app:v1` for `docker.io/library/app:v1`).
    let short = |n: String| match n.strip_prefix("docker.io/library/") {
        Some(s) => s.to_owned(),
        None => n,
    };
    let name = match tag {
        Some(t) => m
            .repo_tags
            .iter()
            .flatten()
            .find(|rt| rt.as_str() == t || rt.ends_with(&format!(":{t}")))
            .cloned(),
        None => m.repo_tags.as_ref().and_then(|t| t.first().cloned()),
    }
    .map(short);
    Ok(Found {
        config: Some(config),
        layers,
        name,
    })
}
