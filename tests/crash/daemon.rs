//! Helpers shared by the crash, concurrency and hostile-input tests: finding the unionfs daemon
//! that serves a mountpoint (through /proc, since `unionfs mount` detaches it), measuring what it
//! holds (open descriptors, resident memory), killing it, running a step under a time limit so a
//! hang fails the test instead of stalling CI, and a small seeded random number generator.
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pid of the live unionfs daemon whose command line names `mnt`. Panics unless there is
/// exactly one.
pub fn daemon_pid(mnt: &Path) -> i32 {
    let found = daemon_pids(mnt);
    assert_eq!(
        found.len(),
        1,
        "expected one unionfs daemon for {}, found {found:?}",
        mnt.display()
    );
    found[0]
}

/// Pids of live (not zombie) processes running the unionfs binary with `mnt` as an argument.
pub fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let bin = std::fs::canonicalize(super::common::unionfs_bin()).expect("unionfs binary");
    let want = mnt.as_os_str().as_bytes();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
        if exe.map(|x| x != bin).unwrap_or(true) || !is_alive(pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|arg| arg == want) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether every thread of `pid` has exited (so its descriptors are closed): the process is
/// gone, or only its zombie leader is left. A zombie leader alone is not enough: the other
/// threads may still be exiting and hold the descriptor table.
pub fn is_dead(pid: i32) -> bool {
    if is_alive(pid) {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |d| d.count() <= 1)
}

/// SIGKILLs `pid` and waits (up to 10 s) until all its threads are gone.
pub fn kill_and_wait(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_dead(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Number of open descriptors of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// A `kB` field (`VmRSS`, `VmHWM`, ...) of `/proc/PID/status`.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Runs `f` on its own thread and returns its result, or panics after `limit`: a request that
/// never returns fails the test (the stuck thread is left behind; the test process ends).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: no result within {limit:?} (deadlock or hung request)"),
    }
}

/// Drops the kernel's dentry and inode caches, so that it sends FORGET for every unused node.
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches");
}

/// splitmix64: a seeded generator, so that a failing trial can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The seed for this run: `$UNIONFS_QA_SEED`, else a fixed default so that CI is repeatable.
pub fn seed() -> u64 {
    std::env::var("UNIONFS_QA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2024)
}
