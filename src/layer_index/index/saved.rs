//! Saving and loading indexes, and keeping their directory from growing without bound.
//!
//! Indexes are saved with bincode under a sha256 of the layer's identity (format version,
//! path, and the root directory's device, inode and times), loaded when the identity matches,
//! and rebuilt when the file is missing, stale or corrupt. A saved index ends with a sha256 of
//! everything before it, so corruption that still decodes is caught too.
//!
//! A deep stack (see `loader.rs`) also saves all its layers' indexes in one file, under a
//! sha256 of their identities in order ([`stack_identity`]). After the caches are dropped,
//! opening 100 small files in the index directory took 15 to 26 ms, most of it reading
//! directory and inode blocks one after another; the stack's file is one open. Each layer's
//! own file is still saved, for other stacks that share the layer.
//!
//! Every layer ever mounted leaves an index behind, and a layer's identity changes whenever its
//! root does, so the directory would grow without bound. A load brings the file's mtime
//! forward (at most once a day), and the first index a process builds is saved only after
//! removing those no mount has used for [`UNUSED_FOR`]: rebuilding one costs a walk of its
//! layer, once.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::FileStat;
use sha2::{Digest, Sha256};

use super::LayerIndex;

/// Bumped whenever the saved format or the meaning of the bits changes.
const FORMAT: u32 = 3;

/// Length of the sha256 that ends a saved index and covers everything before it.
const CHECKSUM_LEN: usize = 32;

/// The largest saved file read or written. The file is not trusted: lengths inside it must
/// not make the decoder allocate more than the file could hold (each entry takes at least two
/// bytes).
const MAX_SAVED: usize = 64 << 20;

/// How long an index that no mount has loaded is kept.
pub const UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How stale a used index's mtime may get before a load brings it forward: most loads then
/// write nothing.
const TOUCH_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How old a file being written aside must be to count as left by a save that died (a save
/// takes well under a second).
const ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);

/// Why an index could not be loaded or saved (building never fails: unreadable parts of a
/// layer are simply not indexed as absent, see [`LayerIndex::build`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read index {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: bincode::error::DecodeError,
    },
    #[error("index {path} does not match its checksum")]
    Checksum { path: PathBuf },
    #[error("index {path} belongs to another layer or format")]
    Stale { path: PathBuf },
    #[error("index {path} would be larger than {MAX_SAVED} bytes")]
    TooLarge { path: PathBuf },
    #[error("cannot write index {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A saved file: one layer's index under the layer's identity, or the indexes of every layer
/// of a deep stack under the stack's.
#[derive(bincode::Encode, bincode::Decode)]
struct Saved {
    format: u32,
    identity: [u8; 32],
    layers: Vec<SavedLayer>,
}

#[derive(bincode::Encode, bincode::Decode)]
struct SavedLayer {
    identity: [u8; 32],
    marks: Vec<(u64, u8)>,
}

impl LayerIndex {
    /// The identity an index of the layer at `root` is saved under.
    pub fn identity(root: &Path) -> std::io::Result<[u8; 32]> {
        let canon = root.canonicalize()?;
        let st = crate::layer_index::lstat(&canon)?;
        Ok(Self::identity_of(&canon, &st))
    }

    /// [`LayerIndex::identity`] of the root whose canonical path is `canon` and whose
    /// attributes are `st`.
    pub fn identity_of(canon: &Path, st: &FileStat) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(FORMAT.to_le_bytes());
        h.update(canon.as_os_str().as_bytes());
        for v in [st.st_dev, st.st_ino] {
            h.update(v.to_le_bytes());
        }
        for v in [st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec] {
            h.update(v.to_le_bytes());
        }
        h.finalize().into()
    }

    /// Loads the saved index of identity `id` from `dir`.
    pub fn load(dir: &Path, id: &[u8; 32]) -> Result<LayerIndex, Error> {
        Self::open_saved(dir, id)?.load(id)
    }

    /// Loads from `dir` the indexes [`save_stack`] saved for the layers whose identities are
    /// `layers`, in that order. Also says whether this load marked the file used, which it
    /// does at most once a day (see [`remove_unused`]).
    pub fn load_stack(dir: &Path, layers: &[[u8; 32]]) -> Result<(Vec<LayerIndex>, bool), Error> {
        let id = stack_identity(layers);
        Self::open_saved(dir, &id)?.load_layers(&id, layers)
    }

    /// Opens the index saved under identity `id` in `dir` and has the kernel start reading it
    /// in without waiting (`POSIX_FADV_WILLNEED`). A caller that opens the next indexes before
    /// loading this one lets a cold disk serve all their reads together: 100 saved indexes then
    /// load in one wait for the disk rather than one after another.
    pub fn open_saved(dir: &Path, id: &[u8; 32]) -> Result<SavedIndex, Error> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let path = saved_path(dir, id);
        match std::fs::File::open(&path) {
            Ok(file) => {
                // Only advice: a file system without readahead reads it when loaded.
                let _ = posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
                Ok(SavedIndex { path, file })
            }
            Err(source) => Err(Error::Read { path, source }),
        }
    }

    /// Saves the index under identity `id` in `dir` (written aside, then renamed into place).
    pub fn save(&self, dir: &Path, id: &[u8; 32]) -> Result<(), Error> {
        write_saved(dir, id, &[(*id, self)])
    }

    /// The index of the layer at `root` whose identity is `id`: loaded from `dir` when a
    /// valid one is saved there, else built (and saved, when `dir` is writable).
    pub fn load_or_build(
        root: &Path,
        id: Option<[u8; 32]>,
        dir: Option<&Path>,
    ) -> Option<LayerIndex> {
        if let (Some(dir), Some(id)) = (dir, &id) {
            match Self::load(dir, id) {
                Ok(idx) => return Some(idx),
                Err(Error::Read { .. }) => {}
                Err(e) => tracing::info!(error = %e, layer = %root.display(), "rebuilding index"),
            }
        }
        Self::build_and_save(root, id, dir)
    }

    /// [`LayerIndex::load_or_build`] when no valid index is saved: builds it, and saves it
    /// under `id` in `dir` when both are known.
    pub fn build_and_save(
        root: &Path,
        id: Option<[u8; 32]>,
        dir: Option<&Path>,
    ) -> Option<LayerIndex> {
        let idx = Self::build(root)?;
        if let (Some(dir), Some(id)) = (dir, &id) {
            // Once per process: a mount that builds a hundred indexes sweeps once.
            static SWEPT: std::sync::Once = std::sync::Once::new();
            SWEPT.call_once(|| {
                let removed = remove_unused(dir, SystemTime::now());
                tracing::debug!(removed, dir = %dir.display(), "removed unused indexes");
            });
            if let Err(e) = idx.save(dir, id) {
                tracing::debug!(error = %e, "index not saved");
            }
        }
        Some(idx)
    }
}

/// Saves in `dir` the indexes of a whole stack, each with its layer's identity, top-most
/// first, in one file under the stack's identity ([`stack_identity`]).
pub fn save_stack(dir: &Path, layers: &[([u8; 32], &LayerIndex)]) -> Result<(), Error> {
    let ids: Vec<[u8; 32]> = layers.iter().map(|(id, _)| *id).collect();
    write_saved(dir, &stack_identity(&ids), layers)
}

/// The identity a stack's indexes are saved under: that of its layers' identities, in order.
pub fn stack_identity(layers: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    h.update(b"stack");
    for id in layers {
        h.update(id);
    }
    h.finalize().into()
}

/// Writes `layers` to the file for identity `id` in `dir`: written aside, then renamed into
/// place.
fn write_saved(dir: &Path, id: &[u8; 32], layers: &[([u8; 32], &LayerIndex)]) -> Result<(), Error> {
    let path = saved_path(dir, id);
    let write = |source| Error::Write {
        path: path.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write)?;
    let saved = Saved {
        format: FORMAT,
        identity: *id,
        layers: layers
            .iter()
            .map(|(identity, idx)| SavedLayer {
                identity: *identity,
                marks: idx.marks.iter().map(|(k, v)| (*k, *v)).collect(),
            })
            .collect(),
    };
    let mut bytes = bincode::encode_to_vec(&saved, bincode::config::standard())
        .expect("encoding plain integers into memory cannot fail");
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    if bytes.len() > MAX_SAVED {
        return Err(Error::TooLarge { path });
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(write)?;
    std::fs::rename(&tmp, &path).map_err(write)
}

/// Marks the saved indexes of `layers` in `dir` used, as loading each would. A stack whose
/// own file was just marked used does so for its layers' files, which it does not read:
/// another stack sharing a layer still finds that layer's index.
pub fn mark_layers_used(dir: &Path, layers: &[[u8; 32]]) {
    let now = SystemTime::now();
    for id in layers {
        let touched = std::fs::File::open(saved_path(dir, id)).and_then(|f| f.set_modified(now));
        if let Err(e) = touched {
            tracing::debug!(error = %e, "layer index not marked used");
        }
    }
}

/// Removes from `dir` the indexes whose mtime is more than [`UNUSED_FOR`] before `now`, and
/// files written aside by saves that died; returns how many went. Best effort: anything that
/// cannot be read or removed stays, and other files are never touched.
pub fn remove_unused(dir: &Path, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_bytes();
        let keep_for = if name.ends_with(b".idx") {
            UNUSED_FOR
        } else if is_written_aside(name) {
            ABANDONED_AFTER
        } else {
            continue;
        };
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        let old = now.duration_since(modified).is_ok_and(|age| age > keep_for);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether `name` is that of a file [`LayerIndex::save`] writes before renaming it into place
/// (`<hex>.tmp<pid>`).
fn is_written_aside(name: &[u8]) -> bool {
    name.iter().position(|&b| b == b'.').is_some_and(|dot| {
        let rest = &name[dot + 1..];
        rest.strip_prefix(b"tmp")
            .is_some_and(|pid| !pid.is_empty() && pid.iter().all(u8::is_ascii_digit))
    })
}

/// A saved index, open and being read in (see [`LayerIndex::open_saved`]).
#[derive(Debug)]
pub struct SavedIndex {
    path: PathBuf,
    file: std::fs::File,
}

impl SavedIndex {
    /// Reads and checks the index, which must be saved under identity `id`.
    pub fn load(self, id: &[u8; 32]) -> Result<LayerIndex, Error> {
        let (mut one, _) = self.load_layers(id, std::slice::from_ref(id))?;
        Ok(one
            .pop()
            .expect("a file holding exactly one layer was checked for"))
    }

    /// Reads and checks a file saved under identity `id` that must hold the indexes of the
    /// layers whose identities are `layers`, in that order. Also says whether this load marked
    /// the file used ([`mark_used`]).
    fn load_layers(
        mut self,
        id: &[u8; 32],
        layers: &[[u8; 32]],
    ) -> Result<(Vec<LayerIndex>, bool), Error> {
        use std::io::Read;
        let path = self.path;
        let read_err = |source| Error::Read {
            path: path.clone(),
            source,
        };
        // Read at its size, in one call; a file that changes meanwhile fails the checksum.
        let meta = self.file.metadata().map_err(read_err)?;
        let len = meta.len();
        if len > MAX_SAVED as u64 {
            return Err(Error::Stale { path });
        }
        let mut bytes = vec![0; len as usize];
        self.file.read_exact(&mut bytes).map_err(read_err)?;
        let limit = bincode::config::standard().with_limit::<MAX_SAVED>();
        // A file that decodes is not yet a sound one (a flipped bit in a mark decodes fine):
        // only a file whose checksum matches and which decodes to its last byte is used.
        let body = match bytes.len().checked_sub(CHECKSUM_LEN) {
            Some(n) if Sha256::digest(&bytes[..n])[..] == bytes[n..] => &bytes[..n],
            _ => return Err(Error::Checksum { path }),
        };
        let (saved, used): (Saved, usize) =
            bincode::decode_from_slice(body, limit).map_err(|source| Error::Corrupt {
                path: path.clone(),
                source,
            })?;
        let same_layers = saved.layers.len() == layers.len()
            && saved
                .layers
                .iter()
                .zip(layers)
                .all(|(s, l)| s.identity == *l);
        if used != body.len() || saved.format != FORMAT || saved.identity != *id || !same_layers {
            return Err(Error::Stale { path });
        }
        let marked = mark_used(&self.file, &meta);
        let indexes = saved
            .layers
            .into_iter()
            .map(|l| LayerIndex {
                marks: l.marks.into_iter().collect(),
            })
            .collect();
        Ok((indexes, marked))
    }
}

/// Brings a loaded index's mtime forward when it is older than [`TOUCH_AFTER`], so that
/// [`remove_unused`] keeps it; true when it did. Best effort: an index that cannot be touched
/// is rebuilt once it has gone.
fn mark_used(file: &std::fs::File, meta: &std::fs::Metadata) -> bool {
    let now = SystemTime::now();
    let stale = meta
        .modified()
        .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > TOUCH_AFTER));
    if !stale {
        return false;
    }
    match file.set_modified(now) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "index mtime not brought forward");
            false
        }
    }
}

/// Where the index (or stack's indexes) of identity `id` is saved in `dir`.
pub fn saved_path(dir: &Path, id: &[u8; 32]) -> PathBuf {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.idx"))
}

/// Where indexes are kept unless told otherwise: `$UNIONFS_INDEX_DIR`, else the system cache
/// for root (`/var/cache/unionfs/index`) or the user's (`$XDG_CACHE_HOME` or `~/.cache`).
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("UNIONFS_INDEX_DIR") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/unionfs/index"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("unionfs").join("index"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer_index::index::tests::layer;

    /// One layer, indexed and saved in a fresh cache.
    struct SavedLayer {
        dir: tempfile::TempDir,
        cache: tempfile::TempDir,
        id: [u8; 32],
        idx: LayerIndex,
    }

    fn saved_layer() -> SavedLayer {
        let dir = layer();
        let cache = tempfile::tempdir().expect("cache");
        let id = LayerIndex::identity(dir.path()).expect("identity");
        let idx = LayerIndex::build(dir.path()).expect("build");
        idx.save(cache.path(), &id).expect("save");
        SavedLayer {
            dir,
            cache,
            id,
            idx,
        }
    }

    #[test]
    fn saved_index_round_trips_and_bad_ones_are_refused() {
        let SavedLayer {
            dir: d,
            cache,
            id,
            idx,
        } = saved_layer();
        let back = LayerIndex::load(cache.path(), &id).expect("load");
        assert_eq!(back.marks, idx.marks);

        let other = [7u8; 32];
        std::fs::copy(
            saved_path(cache.path(), &id),
            saved_path(cache.path(), &other),
        )
        .expect("copy");
        assert!(matches!(
            LayerIndex::load(cache.path(), &other),
            Err(Error::Stale { .. })
        ));
        let good = std::fs::read(saved_path(cache.path(), &id)).expect("read");
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        for bad in [
            b"\x01\x02garbage".to_vec(),
            flipped,
            good[..good.len() - 1].to_vec(),
        ] {
            std::fs::write(saved_path(cache.path(), &id), bad).expect("corrupt");
            assert!(matches!(
                LayerIndex::load(cache.path(), &id),
                Err(Error::Checksum { .. })
            ));
        }
        let rebuilt =
            LayerIndex::load_or_build(d.path(), Some(id), Some(cache.path())).expect("rebuild");
        assert_eq!(rebuilt.marks, idx.marks);
        assert!(
            LayerIndex::load(cache.path(), &id).is_ok(),
            "rebuilt index was saved"
        );
    }

    fn set_mtime(p: &Path, t: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
    }

    fn mtime(p: &Path) -> SystemTime {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
    }

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    #[test]
    fn unused_indexes_and_abandoned_saves_are_removed() {
        let cache = tempfile::tempdir().expect("cache");
        let now = SystemTime::now();
        let files = [
            ("old.idx", now - UNUSED_FOR - DAY, false),
            ("recent.idx", now - UNUSED_FOR + DAY, true),
            ("abc.tmp123", now - 2 * ABANDONED_AFTER, false),
            ("abd.tmp124", now, true),
            ("abe.tmpx", now - UNUSED_FOR - DAY, true),
            ("notes.txt", now - UNUSED_FOR - DAY, true),
        ];
        for (name, t, _) in files {
            let p = cache.path().join(name);
            std::fs::write(&p, b"x").expect("write");
            set_mtime(&p, t);
        }
        assert_eq!(remove_unused(cache.path(), now), 2);
        for (name, _, kept) in files {
            assert_eq!(cache.path().join(name).exists(), kept, "{name}");
        }
        assert_eq!(remove_unused(&cache.path().join("none"), now), 0);
    }

    #[test]
    fn loading_an_index_marks_it_used() {
        let SavedLayer { cache, id, .. } = saved_layer();
        let saved = saved_path(cache.path(), &id);
        // Touched at most once a day: a load within the day writes nothing.
        let recent = SystemTime::now() - TOUCH_AFTER / 2;
        set_mtime(&saved, recent);
        LayerIndex::load(cache.path(), &id).expect("load");
        assert_eq!(mtime(&saved), recent);
        let old = SystemTime::now() - UNUSED_FOR + DAY;
        set_mtime(&saved, old);
        LayerIndex::load(cache.path(), &id).expect("load");
        assert!(
            mtime(&saved) > SystemTime::now() - TOUCH_AFTER,
            "brought forward"
        );
        assert_eq!(remove_unused(cache.path(), SystemTime::now() + DAY), 0);
    }

    #[test]
    fn a_stack_file_holds_its_layers_in_order() {
        let dirs = [layer(), layer()];
        std::fs::write(dirs[1].path().join("only-here"), "x").expect("file");
        let cache = tempfile::tempdir().expect("cache");
        let ids: Vec<_> = dirs
            .iter()
            .map(|d| LayerIndex::identity(d.path()).expect("identity"))
            .collect();
        let built: Vec<_> = dirs
            .iter()
            .map(|d| LayerIndex::build(d.path()).expect("build"))
            .collect();
        let pairs: Vec<_> = ids.iter().copied().zip(&built).collect();
        save_stack(cache.path(), &pairs).expect("save");
        let (back, _) = LayerIndex::load_stack(cache.path(), &ids).expect("load");
        assert_eq!(back.len(), 2);
        for (b, i) in back.iter().zip(&built) {
            assert_eq!(b.marks, i.marks);
        }
        assert_ne!(back[0].marks, back[1].marks, "layers kept apart");
        // Another order or another set of layers is another stack, whose file this is not.
        let swapped = [ids[1], ids[0]];
        assert!(matches!(
            LayerIndex::load_stack(cache.path(), &swapped),
            Err(Error::Read { .. })
        ));
        let stack = stack_identity(&ids);
        std::fs::copy(
            saved_path(cache.path(), &stack),
            saved_path(cache.path(), &stack_identity(&swapped)),
        )
        .expect("copy");
        assert!(matches!(
            LayerIndex::load_stack(cache.path(), &swapped),
            Err(Error::Stale { .. })
        ));
        // A file under the stack's identity must list the stack's layers, in order.
        let reordered = [(ids[1], &built[1]), (ids[0], &built[0])];
        write_saved(cache.path(), &stack, &reordered).expect("save");
        assert!(matches!(
            LayerIndex::load_stack(cache.path(), &ids),
            Err(Error::Stale { .. })
        ));
        // As a layer's file, it holds the wrong number of layers.
        std::fs::copy(
            saved_path(cache.path(), &stack),
            saved_path(cache.path(), &ids[0]),
        )
        .expect("copy");
        assert!(matches!(
            LayerIndex::load(cache.path(), &ids[0]),
            Err(Error::Stale { .. })
        ));
    }

    #[test]
    fn loading_an_old_stack_file_marks_its_layers_used() {
        let SavedLayer { cache, id, idx, .. } = saved_layer();
        save_stack(cache.path(), &[(id, &idx)]).expect("save");
        let (layer_file, stack_file) = (
            saved_path(cache.path(), &id),
            saved_path(cache.path(), &stack_identity(&[id])),
        );
        let old = SystemTime::now() - UNUSED_FOR + DAY;
        set_mtime(&stack_file, old);
        set_mtime(&layer_file, old);
        let (_, marked) = LayerIndex::load_stack(cache.path(), &[id]).expect("load");
        assert!(marked, "an old stack file is marked used");
        assert!(mtime(&stack_file) > SystemTime::now() - TOUCH_AFTER);
        mark_layers_used(cache.path(), &[id]);
        assert!(mtime(&layer_file) > SystemTime::now() - TOUCH_AFTER);
        let (_, marked) = LayerIndex::load_stack(cache.path(), &[id]).expect("load");
        assert!(!marked, "marked at most once a day");
    }

    #[test]
    fn identity_changes_with_the_layer_root() {
        let d = layer();
        let before = LayerIndex::identity(d.path()).expect("identity");
        std::fs::write(d.path().join("new"), "x").expect("change");
        assert_ne!(before, LayerIndex::identity(d.path()).expect("identity"));
    }

    #[test]
    fn identity_from_the_held_root_matches_the_path() {
        // The mount computes identities from the layer root it holds open; an index saved
        // under the path's identity must be found that way too.
        let d = layer();
        let link = tempfile::tempdir().expect("tempdir");
        let through = link.path().join("layer");
        std::os::unix::fs::symlink(d.path(), &through).expect("symlink");
        let held = crate::layer_index::LayerRoot::open(d.path()).expect("open");
        let canon = held.canonical().expect("canonical");
        let by_fd = LayerIndex::identity_of(&canon, &held.stat().expect("stat"));
        assert_eq!(by_fd, LayerIndex::identity(d.path()).expect("identity"));
        assert_eq!(by_fd, LayerIndex::identity(&through).expect("identity"));
    }
}
