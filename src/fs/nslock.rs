//! The namespace lock, and the generation of the upper layer that it guards.
//!
//! Lookups, listings and attribute reads share the lock; every operation that changes the
//! upper (creates, removes, renames, copy-ups, attribute and xattr changes) holds it alone.
//! Each exclusive hold ends by advancing the generation, so a fact read from the upper under
//! the shared lock ("this name has no upper object") stays true for as long as the generation
//! is unchanged, and can be remembered instead of asked again: see `inode::UpperAbsence`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug)]
pub struct NsLock {
    lock: RwLock<()>,
    generation: AtomicU64,
    /// Whether a change is in progress: facts remembered earlier may be stale until it ends.
    changing: AtomicBool,
    /// How many directories have been renamed or removed: a directory read by path without
    /// the lock was read where it was only if this did not move meanwhile.
    moves: AtomicU64,
}

impl Default for NsLock {
    fn default() -> NsLock {
        NsLock {
            lock: RwLock::new(()),
            // 0 is never a generation, so that it can stand for "not known".
            generation: AtomicU64::new(1),
            changing: AtomicBool::new(false),
            moves: AtomicU64::new(0),
        }
    }
}

impl NsLock {
    pub fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read()
    }

    /// Holds the lock alone for a change; dropping the guard advances the generation.
    pub fn write(&self) -> NsWrite<'_> {
        let guard = self.lock.write();
        self.changing.store(true, Ordering::Relaxed);
        NsWrite {
            ns: self,
            _guard: guard,
        }
    }

    /// The generation facts read now belong to, or `None` while a change is in progress.
    /// Called with the lock held (shared or alone); the lock orders it with the changes.
    pub fn generation(&self) -> Option<u64> {
        if self.changing.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.generation.load(Ordering::Relaxed))
    }

    /// How many directories have been renamed or removed so far. Called with the lock held.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }
}

pub struct NsWrite<'a> {
    ns: &'a NsLock,
    _guard: RwLockWriteGuard<'a, ()>,
}

impl NsWrite<'_> {
    /// Counts a directory renamed or removed under this hold (see [`NsLock::moves`]).
    pub fn dir_moved(&self) {
        self.ns.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// The generation the upper was at when this hold began: if it equals one read earlier,
    /// nothing changed the upper in between.
    pub fn started_at(&self) -> u64 {
        self.ns.generation.load(Ordering::Relaxed)
    }
}

impl Drop for NsWrite<'_> {
    /// Runs before the guard field is dropped, so no reader sees the new state at the old
    /// generation.
    fn drop(&mut self) {
        self.ns.generation.fetch_add(1, Ordering::Relaxed);
        self.ns.changing.store(false, Ordering::Relaxed);
    }
}
