//! Concurrency and resource bounds: many threads and processes changing shared directories at
//! once, two writers copying up the same lower file, lookups and opens while a large file is
//! copied up, listings while entries come and go, and what the daemon holds (descriptors,
//! memory) after opening many files and listing a huge directory, before and after the kernel
//! forgets its inodes.
//!
//! Every wait has a time limit ([`daemon::within`]), so a deadlock fails the test instead of
//! hanging CI; every test ends by checking that the daemon is still alive. Errors are allowed
//! only where POSIX allows them for a racing peer (`ENOENT`, `EEXIST`).

mod common;
#[path = "crash/daemon.rs"]
mod daemon;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::Stack;
use daemon::Rng;

const LIMIT: Duration = Duration::from_secs(60);

/// Whether a racing peer explains `e` (the name vanished or appeared under us).
fn racing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists)
}

fn check_race(what: &str, r: std::io::Result<()>) {
    if let Err(e) = r {
        assert!(racing(&e), "{what}: {e} ({:?})", e.raw_os_error());
    }
}

fn names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(v)
}

fn assert_alive(mnt: &Path) {
    let pid = daemon::daemon_pid(mnt);
    assert!(daemon::is_alive(pid), "daemon died");
    std::fs::metadata(mnt).expect("mount still answers");
}

/// Makes `dir` in the stack's lower layer holding `n` files `<prefix><i>` of 5 bytes.
fn lower_dir(s: &Stack, dir: &str, prefix: &str, n: usize) {
    let dir = s.lowers[0].join(dir);
    std::fs::create_dir(&dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}{i}")), b"lower").unwrap();
    }
}

/// One thread's random mix of create+write, rename across directories, unlink, list and read.
fn worker(mnt: PathBuf, id: usize, ops: usize, seed: u64) {
    let mut rng = Rng::new(seed ^ id as u64);
    for k in 0..ops {
        let dir = mnt.join(format!("d{}", rng.below(4)));
        match rng.below(5) {
            0 | 1 => {
                let r = std::fs::File::create_new(dir.join(format!("t{id}-{k}")))
                    .and_then(|mut f| f.write_all(format!("{id}/{k}").as_bytes()));
                check_race("create", r);
            }
            2 => {
                let list = names(&dir);
                if let Ok(list) = list.as_ref() {
                    if let Some(n) = list.get(rng.below(list.len().max(1) as u64) as usize) {
                        let to = mnt.join(format!("d{}/m{id}-{k}", rng.below(4)));
                        check_race("rename", std::fs::rename(dir.join(n), to));
                    }
                }
            }
            3 => {
                if let Ok(list) = names(&dir) {
                    if let Some(n) = list.get(rng.below(list.len().max(1) as u64) as usize) {
                        check_race("unlink", std::fs::remove_file(dir.join(n)));
                    }
                }
            }
            _ => {
                let list = names(&dir).expect("readdir of a shared directory");
                let mut uniq = BTreeSet::new();
                let dups: Vec<&String> = list.iter().filter(|n| !uniq.insert(*n)).collect();
                assert!(
                    dups.is_empty(),
                    "{}: names listed twice: {dups:?}",
                    dir.display()
                );
                if let Some(n) = list.first() {
                    let r = std::fs::read(dir.join(n)).map(drop);
                    check_race("read", r);
                }
            }
        }
    }
}

/// The reference: kernel overlayfs passes the same workload (proves the expectations).
#[test]
fn threads_and_processes_share_directories_overlayfs() {
    if !common::can_mount("threads_and_processes_share_directories_overlayfs") {
        return;
    }
    shared_directories(true);
}

#[test]
fn threads_and_processes_share_directories() {
    if !common::can_mount("threads_and_processes_share_directories") {
        return;
    }
    shared_directories(false);
}

fn mount(s: &Stack, overlay: bool) -> common::MountGuard {
    if overlay {
        s.mount_overlay()
    } else {
        s.mount_unionfs()
    }
}

fn shared_directories(overlay: bool) {
    let s = Stack::new(1);
    for d in 0..4 {
        let dir = s.lowers[0].join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..50 {
            std::fs::write(dir.join(format!("l{i}")), format!("lower {d}/{i}")).unwrap();
        }
    }
    let _m = mount(&s, overlay);
    let mut procs = Vec::new();
    for p in 0..4 {
        // Each shell process creates, renames across directories, lists and deletes.
        let script = format!(
            "i=0; while [ $i -lt 150 ]; do d=d$((i % 4)); e=d$(((i + 1) % 4)); \
             echo $i > $d/p{p}-$i; mv $d/p{p}-$i $e/q{p}-$i 2>/dev/null; \
             ls $d > /dev/null || exit 3; rm -f $e/q{p}-$i $d/l$((i % 50)); i=$((i + 1)); done"
        );
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&s.mnt)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        procs.push(child);
    }
    let threads: Vec<_> = (0..8)
        .map(|id| {
            let mnt = s.mnt.clone();
            std::thread::spawn(move || worker(mnt, id, 400, daemon::seed()))
        })
        .collect();
    daemon::within("8 threads and 4 processes", LIMIT, move || {
        for t in threads {
            t.join().expect("worker thread");
        }
        for c in procs {
            let out = c.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            // The threads may take a shell's file away before its `mv`; nothing else may fail.
            assert!(
                out.status.success() && err.is_empty(),
                "shell worker: {err}"
            );
        }
    });
    if !overlay {
        assert_alive(&s.mnt);
    }
    // Every listed name can be stat'ed, and the upper survives a remount unchanged.
    let mut before = BTreeMap::new();
    for d in 0..4 {
        let dir = s.mnt.join(format!("d{d}"));
        for n in names(&dir).unwrap() {
            let data = std::fs::read(dir.join(&n)).unwrap_or_else(|e| panic!("d{d}/{n}: {e}"));
            before.insert(format!("d{d}/{n}"), data);
        }
    }
    drop(_m);
    let _m = mount(&s, overlay);
    let mut after = BTreeMap::new();
    for d in 0..4 {
        let dir = s.mnt.join(format!("d{d}"));
        for n in names(&dir).unwrap() {
            after.insert(format!("d{d}/{n}"), std::fs::read(dir.join(&n)).unwrap());
        }
    }
    assert_eq!(
        before.len(),
        after.len(),
        "entries changed across a remount"
    );
    assert!(before == after, "contents changed across a remount");
}

#[test]
fn two_writers_copy_up_the_same_lower_file() {
    if !common::can_mount("two_writers_copy_up_the_same_lower_file") {
        return;
    }
    const N: usize = 30;
    const LEN: usize = 1 << 20;
    let s = Stack::new(1);
    let mut rng = Rng::new(daemon::seed());
    let mut originals = Vec::new();
    for i in 0..N {
        let mut data = vec![0u8; LEN];
        rng.fill(&mut data);
        std::fs::write(s.lowers[0].join(format!("shared{i}")), &data).unwrap();
        originals.push(data);
    }
    let _m = s.mount_unionfs();
    for (i, original) in originals.iter_mut().enumerate() {
        let path = s.mnt.join(format!("shared{i}"));
        let barrier = Arc::new(Barrier::new(2));
        // Writer 0 patches the first 4 KiB, writer 1 the 4 KiB at 512 KiB.
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                    f.write_all_at(&[w + 1; 4096], u64::from(w) * (512 << 10))
                })
            })
            .collect();
        daemon::within("two writers", LIMIT, move || {
            for w in writers {
                w.join().unwrap().expect("write to a lower file");
            }
        });
        original[..4096].fill(1);
        original[512 << 10..(512 << 10) + 4096].fill(2);
        let got = std::fs::read(&path).unwrap();
        assert!(got == *original, "shared{i}: a writer's data was lost");
    }
    assert_alive(&s.mnt);
    drop(_m);
    for (i, original) in originals.iter().enumerate() {
        let upper = std::fs::read(s.upper.join(format!("shared{i}"))).unwrap();
        assert!(upper == *original, "upper shared{i} lacks a write");
    }
    let work = s.work.join("unionfs-work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "staging leftovers after clean unmount: {left:?}"
    );
}

/// A file staged for copy-up in the work directory, with some of its data copied.
fn staging_under_way(work: &Path) -> bool {
    std::fs::read_dir(work.join("unionfs-work"))
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with('#')
                    && e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0)
            })
        })
        .unwrap_or(false)
}

/// While a large lower file is being copied up (set off by a chmod, by an open for writing,
/// by a rename, by a link), other names of the mount can be looked up and other files opened: the copy
/// is made holding no lock over the whole mount. Checked by what the upper holds once each
/// probe is answered: the copy not yet in place.
#[test]
fn copy_up_of_a_large_file_holds_up_nothing_else() {
    if !common::can_mount("copy_up_of_a_large_file_holds_up_nothing_else") {
        return;
    }
    const LEN: usize = 128 << 20;
    let s = Stack::new(1);
    let hows = ["chmod", "open for writing", "rename", "link"];
    for how in hows {
        // Data, not a hole: holes are not copied.
        std::fs::write(s.lowers[0].join(format!("big-{how}")), vec![0x5a; LEN]).unwrap();
    }
    lower_dir(&s, "d", "f", hows.len());
    let _m = s.mount_unionfs();
    std::fs::metadata(s.mnt.join("d")).unwrap();
    for (i, how) in hows.into_iter().enumerate() {
        let big = s.mnt.join(format!("big-{how}"));
        std::fs::metadata(&big).unwrap();
        let copier = std::thread::spawn({
            let big = big.clone();
            move || match how {
                "chmod" => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600))
                }
                "rename" => std::fs::rename(&big, big.with_extension("moved")),
                "link" => std::fs::hard_link(&big, big.with_extension("moved")),
                _ => std::fs::OpenOptions::new()
                    .append(true)
                    .open(&big)
                    .map(drop),
            }
        });
        let work = s.work.clone();
        daemon::within("the copy-up to start", LIMIT, move || {
            while !staging_under_way(&work) {
                std::thread::yield_now();
            }
        });
        let (mnt, upper) = (s.mnt.clone(), s.upper.clone());
        daemon::within("lookups and opens beside the copy-up", LIMIT, move || {
            let copied = upper.join(format!("big-{how}"));
            let moved = copied.with_extension("moved");
            let in_place = || copied.exists() || moved.exists();
            // Probes (each a new name to look up and an open, so each reaches the daemon)
            // until one started during the copy is answered before the copy is in place.
            // While a lock is held over the copy none can be; probing again rather than once
            // keeps a probe thread the scheduler left waiting from deciding alone.
            let mut answered = false;
            for n in 0.. {
                if in_place() {
                    break;
                }
                let missing = mnt.join(format!("d/missing{i}-{n}"));
                assert!(std::fs::symlink_metadata(&missing).is_err());
                let other = std::fs::read(mnt.join(format!("d/f{i}"))).expect("open another file");
                assert_eq!(other, b"lower");
                if !in_place() {
                    answered = true;
                    break;
                }
            }
            assert!(
                answered,
                "{how}: lookups and opens of other files waited for the copy-up to end"
            );
        });
        daemon::within("the copy-up", LIMIT, move || copier.join().unwrap())
            .unwrap_or_else(|e| panic!("{how}: {e}"));
    }
    for how in hows {
        let name = match how {
            "rename" => format!("big-{how}.moved"),
            _ => format!("big-{how}"),
        };
        let len = std::fs::metadata(s.upper.join(&name)).map(|m| m.len());
        assert_eq!(
            len.ok(),
            Some(LEN as u64),
            "{how}: the upper copy of {name}"
        );
    }
    assert_alive(&s.mnt);
}

#[test]
fn readdir_while_entries_change() {
    if !common::can_mount("readdir_while_entries_change") {
        return;
    }
    let s = Stack::new(1);
    lower_dir(&s, "busy", "s", 150);
    let _m = s.mount_unionfs();
    let merged = s.mnt.join("busy");
    for i in 150..300 {
        std::fs::write(merged.join(format!("s{i}")), b"upper").unwrap();
    }
    let stable: BTreeSet<String> = (0..300).map(|i| format!("s{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|c| {
            let (dir, stop) = (merged.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let p = dir.join(format!("c{c}-{}", k % 64));
                    if k % 128 < 64 {
                        check_race("create", std::fs::write(&p, b"x"));
                    } else {
                        check_race("unlink", std::fs::remove_file(&p));
                    }
                    k += 1;
                }
            })
        })
        .collect();
    let listed = daemon::within("listings", LIMIT, move || {
        let mut n = 0;
        for _ in 0..200 {
            let mut seen = BTreeSet::new();
            for e in std::fs::read_dir(&merged).expect("opendir") {
                let name = e.expect("readdir entry").file_name();
                let name = name.to_string_lossy().into_owned();
                assert!(
                    name.starts_with('s') || name.starts_with('c'),
                    "a name that never existed: {name:?}"
                );
                // POSIX: an entry neither added nor removed is returned exactly once.
                assert!(
                    seen.insert(name.clone()) || name.starts_with('c'),
                    "{name} twice"
                );
            }
            let missing: Vec<_> = stable.difference(&seen).collect();
            assert!(missing.is_empty(), "stable entries missing: {missing:?}");
            n += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for c in churners {
            c.join().unwrap();
        }
        n
    });
    assert_eq!(listed, 200);
    assert_alive(&s.mnt);
}

/// Polls until `pid` holds at most `bound` descriptors (FORGET is sent asynchronously);
/// returns the last count.
fn settle_fds(pid: i32, bound: usize) -> usize {
    let mut n = daemon::fd_count(pid);
    for _ in 0..100 {
        if n <= bound {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        n = daemon::fd_count(pid);
    }
    n
}

#[test]
fn open_close_20k_files_and_forget() {
    if !common::can_mount("open_close_20k_files_and_forget") {
        return;
    }
    const FILES: usize = 20_000;
    let s = Stack::new(1);
    lower_dir(&s, "many", "f", FILES);
    let _m = s.mount_unionfs();
    let pid = daemon::daemon_pid(&s.mnt);
    std::fs::create_dir(s.mnt.join("new")).unwrap();
    let (fd0, rss0) = (daemon::fd_count(pid), daemon::status_kib(pid, "VmRSS"));
    let mnt = s.mnt.clone();
    daemon::within("open and close 20k files", LIMIT * 2, move || {
        let mut b = [0u8; 1];
        for i in 0..FILES {
            let mut f = std::fs::File::open(mnt.join(format!("many/f{i}"))).unwrap();
            assert_eq!(f.read(&mut b).unwrap(), 1);
        }
        // A tenth of them new in the upper, written and closed.
        for i in 0..FILES / 10 {
            std::fs::write(mnt.join(format!("new/n{i}")), b"y").unwrap();
        }
    });
    let (fd1, rss1) = (daemon::fd_count(pid), daemon::status_kib(pid, "VmRSS"));
    daemon::drop_caches();
    let fd2 = settle_fds(pid, fd0 + 64);
    let rss2 = daemon::status_kib(pid, "VmRSS");
    eprintln!(
        "open/close {FILES}+{} files: fds {fd0} -> {fd1} -> {fd2} after drop_caches; \
         VmRSS {rss0} -> {rss1} -> {rss2} KiB; VmHWM {} KiB",
        FILES / 10,
        daemon::status_kib(pid, "VmHWM")
    );
    assert!(
        fd1 <= fd0 + 1000,
        "descriptors grow with files opened and closed: {fd0} -> {fd1}"
    );
    assert!(
        fd2 <= fd0 + 64,
        "descriptors not released after FORGET: {fd0} -> {fd2}"
    );
    assert!(rss1 < 512 * 1024, "VmRSS {rss1} KiB after 22k files");
    assert_alive(&s.mnt);
}

#[test]
fn list_100k_entry_directory() {
    if !common::can_mount("list_100k_entry_directory") {
        return;
    }
    const ENTRIES: usize = 100_000;
    let s = Stack::new(1);
    let huge = s.lowers[0].join("huge");
    std::fs::create_dir(&huge).unwrap();
    for i in 0..ENTRIES {
        std::fs::File::create(huge.join(format!("entry-{i:06}"))).unwrap();
    }
    let _m = s.mount_unionfs();
    let pid = daemon::daemon_pid(&s.mnt);
    let (fd0, rss0) = (daemon::fd_count(pid), daemon::status_kib(pid, "VmRSS"));
    let dir = s.mnt.join("huge");
    let counts = daemon::within("list 100k entries twice", LIMIT * 2, move || {
        let plain = std::fs::read_dir(&dir).unwrap().count();
        // The second listing stats every entry, as `ls -l` does (lookups for all of them).
        let mut statted = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            e.unwrap().metadata().unwrap();
            statted += 1;
        }
        (plain, statted)
    });
    assert_eq!(counts, (ENTRIES, ENTRIES));
    let (fd1, rss1) = (daemon::fd_count(pid), daemon::status_kib(pid, "VmRSS"));
    daemon::drop_caches();
    let fd2 = settle_fds(pid, fd0 + 64);
    std::thread::sleep(Duration::from_millis(200));
    let rss2 = daemon::status_kib(pid, "VmRSS");
    eprintln!(
        "list {ENTRIES} entries: fds {fd0} -> {fd1} -> {fd2} after drop_caches; \
         VmRSS {rss0} -> {rss1} -> {rss2} KiB; VmHWM {} KiB",
        daemon::status_kib(pid, "VmHWM")
    );
    assert!(
        fd1 <= fd0 + 1000,
        "descriptors grow with entries listed: {fd0} -> {fd1}"
    );
    assert!(
        fd2 <= fd0 + 64,
        "descriptors not released after FORGET: {fd2}"
    );
    assert!(
        rss1 < 1024 * 1024,
        "VmRSS {rss1} KiB after listing {ENTRIES} entries"
    );
    assert_alive(&s.mnt);
}

/// Removing a merged directory swaps a whiteout into its place and leaves deleting the old
/// directory, full of whiteouts, to a background thread. The daemon waits for that thread when
/// unmounted: once it has exited, the work directory holds none of those directories.
#[test]
fn swapped_out_directories_are_gone_once_the_daemon_exits() {
    if !common::can_mount("swapped_out_directories_are_gone_once_the_daemon_exits") {
        return;
    }
    let s = Stack::new(1);
    lower_dir(&s, "tree", "f", 500);
    // `big` looks empty: its upper copy hides the lower file, and holds many more whiteouts,
    // so that deleting it takes long enough to be under way at unmount.
    std::fs::create_dir(s.lowers[0].join("big")).unwrap();
    std::fs::write(s.lowers[0].join("big/f0"), b"lower").unwrap();
    let big = s.upper.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..10_000 {
        nix::sys::stat::mknod(
            &big.join(format!("f{i}")),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("whiteout in the upper fixture");
    }
    let m = s.mount_unionfs();
    let pid = daemon::daemon_pid(&s.mnt);
    let mnt = s.mnt.clone();
    daemon::within("rm -rf of merged directories", LIMIT, move || {
        std::fs::remove_dir_all(mnt.join("tree")).expect("rm -rf tree");
        std::fs::remove_dir(mnt.join("big")).expect("rmdir big");
    });
    drop(m);
    daemon::within("daemon exit after umount", LIMIT, move || {
        while !daemon::is_dead(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    for name in ["tree", "big"] {
        let st = nix::sys::stat::lstat(&s.upper.join(name)).expect("upper entry");
        assert_eq!(
            (st.st_mode & libc::S_IFMT, st.st_rdev),
            (libc::S_IFCHR, 0),
            "upper {name} is not a whiteout"
        );
    }
    let left: Vec<_> = names(&s.work.join("unionfs-work"))
        .expect("list the staging directory")
        .into_iter()
        .filter(|n| n != "whiteout")
        .collect();
    assert!(left.is_empty(), "left in the work directory: {left:?}");
}
