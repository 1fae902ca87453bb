//! The lower layers' indexes as they become ready: loaded or built in a background thread
//! after mount, while lookups go on.
//!
//! Saved indexes are loaded first and read ahead ([`LayerIndex::open_saved`]): a cold disk then
//! serves their reads together, which took the first 100 lookups on a 100-layer stack from
//! 31 to 23 ms after dropping the caches. Building the indexes that are not saved, a walk of
//! the whole layer, comes after all of them.
//!
//! A lookup that meets a layer not indexed yet probes it with system calls instead, one per
//! layer. On a deep stack whose directories are not cached that costs more than waiting: with
//! nothing cached, the first 100 lookups on the 100-layer stack took 39 ms probing and 31 ms
//! waiting for the saved indexes. So lookups wait for the saved indexes, but never for a
//! build, and never past [`WAIT_FOR_SAVED`] after loading started. With the caches warm, 100
//! saved indexes load in about 4 ms and waiting makes no difference.
//!
//! Once every layer is indexed, a deep stack also gets a [`Presence`] map: which layers hold
//! anything at each path. Asking each layer's index costs a cache miss per layer on every
//! lookup (about 11 µs per first lookup at 100 layers); the map answers for all of them in one.
//!
//! Holding the layers ahead open grows the daemon's descriptor table, which is why
//! `fs::mount` reserves the table's size before any thread starts: growing it in the running
//! daemon stalled these same lookups by 13 ms.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::stat::FileStat;
use parking_lot::{Condvar, Mutex};

use super::index::LayerIndex;
use super::LayerRoot;

/// The longest lookups wait for the saved indexes after loading starts: about twice what 100
/// saved indexes take to load from a cold disk here. Past it, lookups probe the layers.
pub(super) const WAIT_FOR_SAVED: Duration = Duration::from_millis(50);

/// How many layers ahead of the one loading the loader opens saved indexes, so that their reads
/// are under way together; also the most files it holds open at once.
const READ_AHEAD: usize = 32;

/// From how many lower layers a stack gets a [`Presence`] map. Below it, asking each layer's
/// index costs about as much, and the map would only take memory: about as much again as the
/// indexes themselves (a key per path, and two bytes per layer holding it).
const PRESENCE_FROM: usize = 16;

/// Which lower layers hold anything at each path, over all their indexes.
#[derive(Debug)]
pub(super) struct Presence {
    /// Path key → where in `layers` the layers holding it are listed.
    spans: HashMap<u64, (u32, u32), nohash_hasher::BuildNoHashHasher<u64>>,
    layers: Vec<u16>,
}

impl Presence {
    /// The map over `indexes`, one per lower layer in order; `None` for a stack too deep to
    /// number its layers in 16 bits.
    fn build(indexes: &[&LayerIndex]) -> Option<Presence> {
        let mut pairs = Vec::with_capacity(indexes.iter().map(|i| i.len()).sum());
        for (layer, idx) in indexes.iter().enumerate() {
            let layer = u16::try_from(layer).ok()?;
            pairs.extend(idx.keys().map(|k| (k, layer)));
        }
        pairs.sort_unstable();
        let mut spans = HashMap::default();
        let mut layers = Vec::with_capacity(pairs.len());
        for same in pairs.chunk_by(|a, b| a.0 == b.0) {
            let start = u32::try_from(layers.len()).ok()?;
            spans.insert(same[0].0, (start, same.len() as u32));
            layers.extend(same.iter().map(|&(_, l)| l));
        }
        Some(Presence { spans, layers })
    }

    /// The lower layers holding anything at the path whose key is `key`, in ascending order.
    pub(super) fn layers_holding(&self, key: u64) -> Holding<'_> {
        let held = self.spans.get(&key).map_or(&[][..], |&(start, len)| {
            &self.layers[start as usize..(start + len) as usize]
        });
        Holding(held)
    }

    /// Whether lower layer `layer` holds anything at the path whose key is `key`.
    pub(super) fn holds(&self, layer: usize, key: u64) -> bool {
        self.layers_holding(key).contains(layer)
    }
}

/// The layers [`Presence`] lists at one path.
#[derive(Clone, Copy)]
pub(super) struct Holding<'a>(&'a [u16]);

impl Holding<'_> {
    pub(super) fn contains(self, layer: usize) -> bool {
        u16::try_from(layer).is_ok_and(|l| self.0.binary_search(&l).is_ok())
    }
}

/// One slot per lower layer, each set once its index is loaded or built (`None` inside: the
/// layer could not be indexed), and what lookups wait on meanwhile.
#[derive(Debug)]
pub(super) struct Indexes {
    slots: Vec<OnceLock<Option<LayerIndex>>>,
    /// Set once every layer is indexed, on a stack of at least [`PRESENCE_FROM`] layers.
    presence: OnceLock<Presence>,
    /// Set once waiting is over: the saved indexes are in, or the wait ran out.
    waited: AtomicBool,
    /// Until when lookups wait; `None` before a loader starts (nothing to wait for).
    wait_until: Mutex<Option<Instant>>,
    saved_loaded: Condvar,
}

/// A lower layer to index: its root as named at mount, held open, and its attributes then.
pub(super) type ToIndex = (PathBuf, LayerRoot, FileStat);

impl Indexes {
    pub(super) fn new(layers: usize) -> Indexes {
        Indexes {
            slots: (0..layers).map(|_| OnceLock::new()).collect(),
            presence: OnceLock::new(),
            waited: AtomicBool::new(false),
            wait_until: Mutex::new(None),
            saved_loaded: Condvar::new(),
        }
    }

    /// The index of lower layer `layer`, once the saved indexes are loaded (see the module
    /// comment); `None` when the layer is not indexed (yet).
    pub(super) fn get(&self, layer: usize) -> Option<&LayerIndex> {
        let slot = self.slots.get(layer)?;
        if slot.get().is_none() && !self.waited.load(Ordering::Acquire) {
            self.wait_for_saved();
        }
        slot.get()?.as_ref()
    }

    fn wait_for_saved(&self) {
        let mut until = self.wait_until.lock();
        while !self.waited.load(Ordering::Acquire) {
            match *until {
                None => return,
                Some(deadline) if Instant::now() < deadline => {
                    self.saved_loaded.wait_until(&mut until, deadline);
                }
                // Loading takes too long: nobody waits from now on.
                Some(_) => self.waited.store(true, Ordering::Release),
            }
        }
    }

    fn end_wait(&self) {
        let _until = self.wait_until.lock();
        self.waited.store(true, Ordering::Release);
        self.saved_loaded.notify_all();
    }

    /// Sets lower layer `layer`'s index, unless it has one.
    pub(super) fn set(&self, layer: usize, idx: Option<LayerIndex>) {
        if let Some(slot) = self.slots.get(layer) {
            let _ = slot.set(idx);
        }
    }

    /// The presence map, once there is one.
    pub(super) fn presence(&self) -> Option<&Presence> {
        self.presence.get()
    }

    /// Builds the presence map of a deep stack whose layers are all indexed. Not built when a
    /// layer could not be indexed: the map would say it holds nothing.
    pub(super) fn build_presence(&self) {
        if self.slots.len() < PRESENCE_FROM || self.presence.get().is_some() {
            return;
        }
        let all: Option<Vec<&LayerIndex>> = self
            .slots
            .iter()
            .map(|s| s.get().and_then(Option::as_ref))
            .collect();
        if let Some(p) = all.as_deref().and_then(Presence::build) {
            let _ = self.presence.set(p);
        }
    }

    /// Loads the saved indexes of `layers` (top-most first), then builds the others, in a
    /// background thread; indexes are looked for in and saved to `dir`. Lookups from now on
    /// wait for the saved indexes, up to `wait` ([`WAIT_FOR_SAVED`]).
    pub(super) fn start(
        self: &std::sync::Arc<Self>,
        layers: Vec<ToIndex>,
        dir: Option<PathBuf>,
        wait: Duration,
    ) {
        *self.wait_until.lock() = Some(Instant::now() + wait);
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("unionfs-index".into())
            .spawn(move || this.load_all(layers, dir.as_deref()));
        if let Err(e) = spawned {
            self.end_wait();
            tracing::warn!(error = %e, "layers not indexed: no thread");
        }
    }

    fn load_all(&self, layers: Vec<ToIndex>, dir: Option<&Path>) {
        let started = Instant::now();
        let count = layers.len();
        let open = |(i, (root, held, st)): (usize, ToIndex)| {
            // Named as the held root is named now, with the attributes it had when opened: one
            // system call, where resolving `root` again takes one per component.
            let id = held
                .canonical()
                .ok()
                .map(|c| LayerIndex::identity_of(&c, &st));
            let saved = dir
                .zip(id.as_ref())
                .map(|(d, id)| LayerIndex::open_saved(d, id));
            (i, root, id, saved)
        };
        let mut opened = layers.into_iter().enumerate().map(open);
        let mut ahead: VecDeque<_> = opened.by_ref().take(READ_AHEAD).collect();
        let mut unsaved = Vec::new();
        while let Some((i, root, id, saved)) = ahead.pop_front() {
            ahead.extend(opened.next());
            // Not saved yet (or nowhere to save), or not sound: built below.
            if let (Some(Ok(saved)), Some(id)) = (saved, &id) {
                match saved.load(id) {
                    Ok(idx) => {
                        self.set(i, Some(idx));
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, layer = %root.display(), "rebuilding index")
                    }
                }
            }
            unsaved.push((i, root, id));
        }
        self.end_wait();
        tracing::debug!(
            loaded = count - unsaved.len(),
            elapsed = ?started.elapsed(),
            "saved layer indexes loaded"
        );
        for (i, root, id) in unsaved {
            let idx = LayerIndex::build_and_save(&root, id, dir);
            if idx.is_none() {
                tracing::warn!(layer = %root.display(), "layer not indexed: unreadable");
            }
            self.set(i, idx);
        }
        self.build_presence();
        tracing::debug!(layers = count, elapsed = ?started.elapsed(), "layer indexes ready");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::super::index::LayerIndex;
    use super::super::Layers;

    /// A layer holding `name`, so that each layer's index tells it apart.
    fn layer_with(name: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join(name), "x").expect("file");
        d
    }

    #[test]
    fn loads_saved_indexes_and_builds_the_others() {
        // Layer 0 has a sound saved index, layer 1 a corrupt one, layer 2 none.
        let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| layer_with(n)).collect();
        let paths: Vec<_> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
        let cache = tempfile::tempdir().expect("cache");
        let ids: Vec<_> = paths
            .iter()
            .map(|p| LayerIndex::identity(p).expect("identity"))
            .collect();
        for (p, id) in paths.iter().zip(&ids).take(2) {
            LayerIndex::build(p)
                .expect("build")
                .save(cache.path(), id)
                .expect("save");
        }
        let hex: String = ids[1].iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(cache.path().join(format!("{hex}.idx")), b"garbage").expect("corrupt");

        let layers = Layers::open(None, &paths).expect("open");
        let to_index = layers
            .lowers
            .iter()
            .map(|l| (l.root.clone(), l.base.clone(), l.st))
            .collect();
        layers.indexes.start(
            to_index,
            Some(cache.path().to_path_buf()),
            Duration::from_secs(10),
        );
        // Lookups wait for the saved index, not for the builds.
        assert!(
            layers.indexes.get(0).is_some(),
            "saved index not waited for"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while (0..3).any(|i| layers.indexes.get(i).is_none()) {
            assert!(Instant::now() < deadline, "indexes not ready after 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let idx = layers.indexes.get(i).expect("indexed");
            assert_ne!(idx.marks(Path::new(name)), 0, "layer {i} lacks {name}");
            for other in ["a", "b", "c"].iter().filter(|o| *o != name) {
                assert_eq!(idx.marks(Path::new(other)), 0, "layer {i} has {other}");
            }
        }
        // What was built was saved, the corrupt index replaced.
        for id in &ids {
            assert!(LayerIndex::load(cache.path(), id).is_ok());
        }
    }
}
