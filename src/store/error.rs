//! The one error type of the store: a variant per step that can fail, naming the path, archive
//! entry or image it concerns, so that `unionfs import` can say exactly what it refused.
//!
//! It must never hide the cause: every wrapped error is kept as the `#[source]`.

use std::io;
use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock the store at {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {what} {path}")]
    Json {
        what: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {layer}: entry {entry}: {why}")]
    BadEntry {
        layer: String,
        entry: PathBuf,
        why: String,
    },
    #[error("layer {layer}: truncated or corrupt archive (after entry {last})")]
    Corrupt {
        layer: String,
        last: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: cannot extract entry {entry}")]
    Extract {
        layer: String,
        entry: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: unsupported media type {media_type}")]
    MediaType { what: String, media_type: String },
    #[error("{what}: invalid digest {digest:?} (only sha256 is supported)")]
    BadDigest { what: String, digest: String },
    #[error("invalid image {source_path}: {why}")]
    BadImage { source_path: String, why: String },
    #[error("{path} is not an OCI image layout, a docker save archive or a layer tar")]
    UnknownFormat { path: PathBuf },
    #[error("no image tagged {tag:?} in {path} (tags: {tags})")]
    NoSuchTag {
        path: PathBuf,
        tag: String,
        tags: String,
    },
    #[error("{path} holds several images; choose one as {path}:TAG (tags: {tags})")]
    Ambiguous { path: PathBuf, tags: String },
    #[error("invalid image name {0:?}")]
    BadName(String),
    #[error("no image named {0}")]
    NoSuchImage(String),
    #[error("image {image} is used by container {container}; remove it first (unionfs rm)")]
    InUse { image: String, container: String },
    #[error("no container, mountpoint or upper directory {0}")]
    NoSuchContainer(PathBuf),
    #[error("container {id} is mounted at {mountpoint}; unmount it first")]
    Mounted { id: String, mountpoint: PathBuf },
    #[error("{path} was not mounted from an image; name the image with --from")]
    UnknownBase { path: PathBuf },
    #[error("cannot pack {path} into a layer")]
    Pack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} not found in image {image}")]
    NotInImage { image: String, path: PathBuf },
    #[error("image {image} has no layer {index} (it has {count})")]
    NoSuchLayer {
        image: String,
        index: usize,
        count: usize,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path an I/O step worked on.
pub(crate) trait IoContext<T> {
    fn read_ctx(self, path: impl Into<PathBuf>) -> Result<T>;
    fn write_ctx(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn read_ctx(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Read {
            path: path.into(),
            source,
        })
    }
    fn write_ctx(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Write {
            path: path.into(),
            source,
        })
    }
}
