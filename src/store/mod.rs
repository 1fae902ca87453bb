//! The image store: immutable, content-addressed layers and named images made of them, under
//! one root directory (default `/var/lib/unionfs`, or `UNIONFS_ROOT`, or `--root`).
//!
//! ```text
//! ROOT/lock                       flock(2): one writer at a time
//! ROOT/images.json                name:tag -> image config (OCI), replaced atomically
//! ROOT/layers/<hex>/root/         the layer tree, whiteouts in the overlay format
//! ROOT/layers/<hex>/layer.json    its diffID (sha256:<hex> of its uncompressed tar) and sizes
//! ROOT/containers/<id>/           upper/, work/ and container.json of an image mount
//! ROOT/tmp/                       staging; emptied whenever the lock is taken
//! ```
//!
//! A layer is staged in `tmp/`, synced and renamed into `layers/` only once its digests are
//! verified, so an interrupted import leaves nothing half-made. Layers shared by several
//! images are stored once; removing the last image that uses a layer removes it. This module
//! must never modify a layer once it is in `layers/`, never write outside its root, and never
//! know a whiteout encoding itself (it goes through [`crate::whiteout`]).

mod containers;
mod error;
mod export;
pub mod flatten;
mod import;
pub mod pack;
mod report;
pub mod source;
pub mod unpack;
pub mod view;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

pub use containers::{is_mounted, Container, Target};
pub use error::{Error, Result};
pub use import::Progress;
pub use report::{DiffLine, InspectEntry, InspectLayer, LayerRow, WhichRow};
pub use unpack::LayerStats;

use error::IoContext;

/// Where the store lives when neither `--root` nor `UNIONFS_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/unionfs";

/// An image as recorded in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the config as stored.
    pub id: String,
    pub config: ImageConfiguration,
    /// Where it came from (`import PATH`, `commit UPPER`).
    pub source: String,
    /// When it was added (RFC 3339).
    pub added: String,
}

impl ImageRecord {
    /// Layer diffIDs, base first.
    pub fn diff_ids(&self) -> &[String] {
        self.config.rootfs().diff_ids()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// A layer as recorded beside its tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: String,
    pub stats: LayerStats,
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Held while the store is written.
struct Lock {
    _flock: Flock<File>,
}

impl Store {
    /// The root chosen by `--root`, else `UNIONFS_ROOT`, else [`DEFAULT_ROOT`].
    pub fn root_from(flag: Option<&Path>) -> PathBuf {
        if let Some(r) = flag {
            return r.to_owned();
        }
        match std::env::var_os("UNIONFS_ROOT") {
            Some(r) if !r.is_empty() => PathBuf::from(r),
            _ => PathBuf::from(DEFAULT_ROOT),
        }
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["layers", "containers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|source| Error::Create { path: p, source })?;
        }
        let root = std::fs::canonicalize(root).read_ctx(root)?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        let hex = source::sha256_hex(diff_id, "layer")?;
        Ok(self.root.join("layers").join(hex))
    }

    /// The tree of a stored layer.
    pub fn layer_root(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.layer_dir(diff_id)?.join("root"))
    }

    /// Takes the writer lock; whatever a dead writer left in `tmp/` is removed.
    fn lock(&self) -> Result<Lock> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .write_ctx(&p)?;
        let flock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, source)| Error::Lock {
            path: p.clone(),
            source,
        })?;
        let tmp = self.root.join("tmp");
        for e in std::fs::read_dir(&tmp).read_ctx(&tmp)? {
            let e = e.read_ctx(&tmp)?;
            remove_tree(&e.path())?;
        }
        Ok(Lock { _flock: flock })
    }

    /// Removes everything staged (only while the lock is held), after a failed import.
    fn clear_tmp(&self) {
        let tmp = self.root.join("tmp");
        let Ok(rd) = std::fs::read_dir(&tmp) else {
            return;
        };
        for e in rd.flatten() {
            if let Err(err) = remove_tree(&e.path()) {
                tracing::warn!(path = %e.path().display(), %err, "cannot remove staging");
            }
        }
    }

    /// A fresh staging directory under `tmp/` (only while the lock is held).
    fn staging(&self, what: &str) -> Result<PathBuf> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{what}-{}", unique_id()));
        std::fs::create_dir(&p).map_err(|source| Error::Create {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }

    fn load(&self) -> Result<Index> {
        let p = self.index_path();
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: "image index",
                path: p.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(Error::Read { path: p, source: e }),
        }
    }

    fn save(&self, index: &Index, _lock: &Lock) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).expect("the index always serializes");
        write_atomic(&self.root.join("tmp"), &self.index_path(), &bytes)
    }

    /// All images, by name.
    pub fn images(&self) -> Result<Vec<(String, ImageRecord)>> {
        Ok(self.load()?.images.into_iter().collect())
    }

    /// One image by `NAME[:TAG]`.
    pub fn image(&self, name: &str) -> Result<ImageRecord> {
        let key = full_name(name)?;
        self.load()?
            .images
            .remove(&key)
            .ok_or(Error::NoSuchImage(key))
    }

    /// The layer directories of an image, top-most first, as `mount --lower` wants them.
    pub fn lowers_of(&self, name: &str) -> Result<Vec<PathBuf>> {
        let img = self.image(name)?;
        img.diff_ids()
            .iter()
            .rev()
            .map(|d| self.layer_root(d))
            .collect()
    }

    /// What is recorded about a stored layer.
    pub fn layer_meta(&self, diff_id: &str) -> Result<LayerMeta> {
        let p = self.layer_dir(diff_id)?.join("layer.json");
        let bytes = std::fs::read(&p).read_ctx(&p)?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: "layer record",
            path: p.display().to_string(),
            source,
        })
    }

    /// Removes an image (refused while a container uses it) and every layer no image uses
    /// any more; returns the removed layers' diffIDs.
    pub fn remove_image(&self, name: &str) -> Result<Vec<String>> {
        let key = full_name(name)?;
        let lock = self.lock()?;
        let mut index = self.load()?;
        if !index.images.contains_key(&key) {
            return Err(Error::NoSuchImage(key));
        }
        if let Some(c) = self.containers()?.into_iter().find(|c| c.image == key) {
            return Err(Error::InUse {
                image: key,
                container: c.id,
            });
        }
        index.images.remove(&key);
        self.save(&index, &lock)?;
        self.collect_garbage(&index, &lock)
    }

    fn collect_garbage(&self, index: &Index, lock: &Lock) -> Result<Vec<String>> {
        let used: std::collections::HashSet<&str> = index
            .images
            .values()
            .flat_map(|i| i.diff_ids().iter().map(String::as_str))
            .collect();
        let layers = self.root.join("layers");
        let mut freed = Vec::new();
        for e in std::fs::read_dir(&layers).read_ctx(&layers)? {
            let e = e.read_ctx(&layers)?;
            let id = format!("sha256:{}", e.file_name().to_string_lossy());
            if used.contains(id.as_str()) {
                continue;
            }
            // Renamed out of `layers/` first, so no half-removed layer is ever visible.
            let doomed = self.staging("gc")?;
            std::fs::rename(e.path(), doomed.join("layer")).map_err(|source| Error::Remove {
                path: e.path(),
                source,
            })?;
            remove_tree(&doomed)?;
            tracing::info!(layer = %id, "removed unused layer");
            freed.push(id);
        }
        let _ = lock;
        Ok(freed)
    }
}

/// `NAME[:TAG]` with the tag defaulting to `latest`; a `:` followed by a `/` belongs to a
/// registry host (`host:5000/app`).
pub fn full_name(name: &str) -> Result<String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::BadName(name.to_owned()));
    }
    match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => {
            if n.is_empty() || t.is_empty() {
                return Err(Error::BadName(name.to_owned()));
            }
            Ok(name.to_owned())
        }
        _ => Ok(format!("{name}:latest")),
    }
}

/// Writes `bytes` to `dest` through a synced temporary file in `tmp` and a rename.
fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let t = tmp.join(format!("write-{}", unique_id()));
    let mut f = File::create(&t).write_ctx(&t)?;
    f.write_all(bytes).write_ctx(&t)?;
    f.sync_all().write_ctx(&t)?;
    std::fs::rename(&t, dest).write_ctx(dest)?;
    sync_dir(dest.parent().expect("store files have a parent"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).write_ctx(dir)
}

fn remove_tree(p: &Path) -> Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|source| Error::Remove {
        path: p.to_owned(),
        source,
    })
}

/// A short random-enough identifier: pid, time and a counter, hashed.
fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!(
        "{}-{}-{}",
        std::process::id(),
        now.as_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    unpack::digest_of(seed.as_bytes())[7..19].to_owned()
}

/// The current time in RFC 3339 (UTC), as OCI `created` fields want it.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm, public domain description).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(full_name("app").unwrap(), "app:latest");
        assert_eq!(full_name("app:v1").unwrap(), "app:v1");
        assert_eq!(full_name("host:5000/app").unwrap(), "host:5000/app:latest");
        assert!(full_name("").is_err());
        assert!(full_name("a b").is_err());
        assert!(full_name("app:").is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
