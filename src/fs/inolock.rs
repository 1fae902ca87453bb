//! Locks by inode number, for work that must not run twice at once on one object but may run
//! beside the same work on any other: a copy-up of its data, the opening of its files.
//!
//! Such work makes system calls that can take long (a copy-up copies a whole file; an open of
//! a lower file may wait for the disk), so one lock for all inodes would hold up every other
//! open or copy-up of the mount meanwhile. A lock is made when first asked for and dropped
//! once nobody holds or waits for it, so the table holds only the inodes being worked on.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{ArcMutexGuard, Mutex, RawMutex};

#[derive(Debug, Default)]
pub struct InodeLocks {
    table: Mutex<HashMap<u64, Arc<Mutex<()>>>>,
}

impl InodeLocks {
    /// Holds the lock of `ino` while the guard lives, waiting for it if another holds it.
    pub fn lock(&self, ino: u64) -> InodeGuard<'_> {
        let lock = self.table.lock().entry(ino).or_default().clone();
        InodeGuard {
            locks: self,
            ino,
            guard: Some(lock.lock_arc()),
        }
    }
}

/// A held inode lock; the lock leaves the table when nobody else holds or waits for it.
pub struct InodeGuard<'a> {
    locks: &'a InodeLocks,
    ino: u64,
    guard: Option<ArcMutexGuard<RawMutex, ()>>,
}

impl Drop for InodeGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut table = self.locks.table.lock();
        // Waiters take their reference under the table's lock, so none is missed here.
        if table
            .get(&self.ino)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            table.remove(&self.ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn one_inode_at_a_time_others_alongside() {
        let locks = Arc::new(InodeLocks::default());
        let held = locks.lock(7);
        // Another inode's lock is free while 7 is held.
        drop(locks.lock(8));
        let entered = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (locks, entered) = (locks.clone(), entered.clone());
            std::thread::spawn(move || {
                let _g = locks.lock(7);
                entered.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "7 was entered while held");
        drop(held);
        waiter.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
        assert!(locks.table.lock().is_empty(), "a lock outlived its holders");
    }
}
