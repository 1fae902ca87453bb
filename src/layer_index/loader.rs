//! The lower layers' indexes as they become ready: loaded or built in a background thread
//! after mount, while lookups go on.
//!
//! Saved indexes are loaded first and read ahead ([`LayerIndex::open_saved`]): a cold disk then
//! serves their reads together, which took the first 100 lookups on a 100-layer stack from
//! 31 to 23 ms after dropping the caches. Building the indexes that are not saved, a walk of
//! the whole layer, comes after all of them.
//!
//! Opening them still cost one directory and one inode read each from a cold disk: 100 saved
//! indexes took 31 to 37 ms to load after dropping the caches, against 5 ms warm. So a deep
//! stack's indexes are also saved together, in one file for the whole stack, once every layer
//! is indexed, and loaded from it when it is there: 5 to 12 ms cold, 2 ms warm. Each layer's
//! own file is kept as well, for the other stacks that share the layer.
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

use super::index::{self, LayerIndex};
use super::LayerRoot;

/// The longest lookups wait for the saved indexes after loading starts: about twice what 100
/// saved indexes take to load from a cold disk here. Past it, lookups probe the layers.
pub(super) const WAIT_FOR_SAVED: Duration = Duration::from_millis(50);

/// How many layers ahead of the one loading the loader opens saved indexes, so that their reads
/// are under way together; also the most files it holds open at once.
const READ_AHEAD: usize = 32;

/// From how many lower layers a stack is deep: it gets a [`Presence`] map, and its indexes are
/// also saved together in one file. Below it, asking each layer's index costs about as much
/// as the map, which would only take memory (about as much again as the indexes: a key per
/// path, and two bytes per layer holding it); and opening each layer's file costs little more
/// than the one, which would only take disk space.
const DEEP_STACK: usize = 16;

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
    /// Set once every layer is indexed, on a stack of at least [`DEEP_STACK`] layers.
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
        if self.slots.len() < DEEP_STACK || self.presence.get().is_some() {
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
        // Named as the held root is named now, with the attributes it had when opened: one
        // system call, where resolving `root` again takes one per component.
        let ids: Vec<Option<[u8; 32]>> = layers
            .iter()
            .map(|(_, held, st)| {
                held.canonical()
                    .ok()
                    .map(|c| LayerIndex::identity_of(&c, st))
            })
            .collect();
        let stack: Option<Vec<[u8; 32]>> = if count >= DEEP_STACK {
            ids.iter().copied().collect()
        } else {
            None
        };
        if let (Some(dir), Some(stack)) = (dir, &stack) {
            if self.load_stack(dir, stack) {
                tracing::debug!(layers = count, elapsed = ?started.elapsed(), "stack index loaded");
                return;
            }
        }
        let open = |(i, ((root, _, _), id)): (usize, (ToIndex, Option<[u8; 32]>))| {
            let saved = dir
                .zip(id.as_ref())
                .map(|(d, id)| LayerIndex::open_saved(d, id));
            (i, root, id, saved)
        };
        let mut opened = layers.into_iter().zip(ids).enumerate().map(open);
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
        if let (Some(dir), Some(stack)) = (dir, &stack) {
            self.save_stack(dir, stack);
        }
    }

    /// Sets every layer's index from the file saved for the whole stack, whose layers'
    /// identities are `ids`; false when there is no sound one.
    fn load_stack(&self, dir: &Path, ids: &[[u8; 32]]) -> bool {
        match LayerIndex::load_stack(dir, ids) {
            Ok((indexes, marked_used)) => {
                for (i, idx) in indexes.into_iter().enumerate() {
                    self.set(i, Some(idx));
                }
                self.end_wait();
                self.build_presence();
                if marked_used {
                    index::mark_layers_used(dir, ids);
                }
                true
            }
            Err(index::Error::Read { .. }) => false,
            Err(e) => {
                tracing::info!(error = %e, "stack index not used: loading each layer's");
                false
            }
        }
    }

    /// Saves every layer's index in one file for the whole stack, whose layers' identities
    /// are `ids`, once each layer has one.
    fn save_stack(&self, dir: &Path, ids: &[[u8; 32]]) {
        let all: Option<Vec<([u8; 32], &LayerIndex)>> = ids
            .iter()
            .zip(&self.slots)
            .map(|(id, slot)| Some((*id, slot.get()?.as_ref()?)))
            .collect();
        if let Some(all) = all {
            if let Err(e) = index::save_stack(dir, &all) {
                tracing::debug!(error = %e, "stack index not saved");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::super::index::{self, LayerIndex};
    use super::super::Layers;

    /// A layer holding `name`, so that each layer's index tells it apart.
    fn layer_with(name: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join(name), "x").expect("file");
        d
    }

    /// Starts loading the indexes of `paths` (top-most first) from and to `cache`, as a mount
    /// does, and waits until every layer is indexed and the presence map built: the loader's
    /// last step before saving the stack's file.
    fn load_deep(paths: &[std::path::PathBuf], cache: &Path) -> Layers {
        let layers = Layers::open(None, paths).expect("open");
        let to_index = layers
            .lowers
            .iter()
            .map(|l| (l.root.clone(), l.base.clone(), l.st))
            .collect();
        layers
            .indexes
            .start(to_index, Some(cache.to_path_buf()), Duration::from_secs(10));
        eventually("indexes not ready", || layers.indexes.presence().is_some());
        layers
    }

    /// Waits for `done` to hold, failing with `what` after 10 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} after 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether every layer `i` of `layers` is indexed as holding its own name `n<i>` only.
    fn indexed_right(layers: &Layers, n: usize) -> bool {
        (0..n).all(|i| {
            layers.indexes.get(i).is_some_and(|idx| {
                let own = idx.marks(Path::new(&format!("n{i}"))) != 0;
                own && idx.marks(Path::new(&format!("n{}", (i + 1) % n))) == 0
            })
        })
    }

    #[test]
    fn a_deep_stack_loads_every_index_from_its_own_file() {
        let n = super::DEEP_STACK;
        let dirs: Vec<_> = (0..n).map(|i| layer_with(&format!("n{i}"))).collect();
        let paths: Vec<_> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
        let ids: Vec<_> = paths
            .iter()
            .map(|p| LayerIndex::identity(p).expect("identity"))
            .collect();
        let cache = tempfile::tempdir().expect("cache");
        assert!(indexed_right(&load_deep(&paths, cache.path()), n));
        // The first load built every layer's index and saved each, then the stack's file.
        let stack_saved = || LayerIndex::load_stack(cache.path(), &ids).is_ok();
        eventually("stack's file not saved", stack_saved);
        // Loading a stack's file that no mount has used for days marks its layers' own files
        // used too, so that they stay for other stacks sharing the layers.
        let old = std::time::SystemTime::now() - Duration::from_secs(10 * 24 * 60 * 60);
        let set_mtime = |id: &[u8; 32]| {
            std::fs::File::open(index::saved_path(cache.path(), id))
                .and_then(|f| f.set_modified(old))
                .expect("set mtime");
        };
        let stack = index::stack_identity(&ids);
        for id in ids.iter().chain([&stack]) {
            set_mtime(id);
        }
        assert!(indexed_right(&load_deep(&paths, cache.path()), n));
        let marked = |id: &[u8; 32]| {
            std::fs::metadata(index::saved_path(cache.path(), id))
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > old)
        };
        eventually("layers' files not marked used", || {
            ids.iter().chain([&stack]).all(marked)
        });
        for id in &ids {
            LayerIndex::load(cache.path(), id).expect("each layer's own file saved too");
            std::fs::remove_file(index::saved_path(cache.path(), id)).expect("remove");
        }
        // Without the layers' own files, the next load has every index from the stack's file
        // and builds nothing: no layer's file is saved again.
        assert!(indexed_right(&load_deep(&paths, cache.path()), n));
        for id in &ids {
            assert!(
                LayerIndex::load(cache.path(), id).is_err(),
                "layer index rebuilt"
            );
        }
        // A stack's file that is not sound is not used: each layer is indexed from its own
        // file or rebuilt, and the stack's file is saved again.
        std::fs::write(index::saved_path(cache.path(), &stack), b"garbage").expect("corrupt");
        assert!(indexed_right(&load_deep(&paths, cache.path()), n));
        eventually("stack's file not saved again", stack_saved);
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
        eventually("indexes not ready", || {
            (0..3).all(|i| layers.indexes.get(i).is_some())
        });
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
