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
//! Holding the layers ahead open grows the daemon's descriptor table, which is why
//! `fs::mount` reserves the table's size before any thread starts: growing it in the running
//! daemon stalled these same lookups by 13 ms.

use std::collections::VecDeque;
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

/// One slot per lower layer, each set once its index is loaded or built (`None` inside: the
/// layer could not be indexed), and what lookups wait on meanwhile.
#[derive(Debug)]
pub(super) struct Indexes {
    slots: Vec<OnceLock<Option<LayerIndex>>>,
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
