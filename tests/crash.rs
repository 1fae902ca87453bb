//! Crash safety: the unionfs daemon is SIGKILLed at random moments while it copies up large
//! files, renames, creates whiteouts and copies up directories. After each kill the dead mount
//! must answer ENOTCONN, `unionfs umount` must clear it, and a remount of the same upper and work
//! directories must show every object either in its old or in its new state (never a partial
//! copy), no staging leftovers from the work directory, and everything fsynced before the kill.
//!
//! Each scenario runs its trials on one stack, one object per trial, and the remount after a
//! kill serves the next trial. Trials are drawn from a seeded generator (`UNIONFS_QA_SEED`);
//! `UNIONFS_CRASH_TRIALS` sets the total number of trials across the four scenarios (default
//! 200, which keeps the file well under a minute).

mod common;
#[path = "crash/daemon.rs"]
mod daemon;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{is_mountpoint, unionfs_bin, Stack};
use daemon::Rng;
use sha2::{Digest, Sha256};

const BIG: usize = 2 << 20;
const PATCH_AT: u64 = 1 << 20;
const PATCH: usize = 64 << 10;
const LIMIT: Duration = Duration::from_secs(20);

fn trials_per_scenario() -> usize {
    let total = std::env::var("UNIONFS_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(200);
    total.div_ceil(4).max(1)
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// What one scenario does; `i` numbers the trial and so names its objects.
trait Scenario: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Fills the lower layer with the objects of trials `0..n`.
    fn prepare(&mut self, lower: &Path, n: usize, rng: &mut Rng);
    /// The operation interrupted by the kill, run through the mount.
    fn action(&self, mnt: &Path, i: usize) -> std::io::Result<()>;
    /// Asserts that trial `i`'s objects are in the old or the new state (the new one if the
    /// action returned before the kill).
    fn check(&self, mnt: &Path, i: usize, completed: bool);
    /// Upper bound of the random delay between the start of the action and the kill.
    fn max_delay_us(&self) -> u64;
}

struct CopyUpLarge {
    old: Vec<[u8; 32]>,
    new: Vec<[u8; 32]>,
    patch: Vec<u8>,
}

impl Scenario for CopyUpLarge {
    fn name(&self) -> &'static str {
        "copy-up of a 2 MiB file then a 64 KiB write and fsync"
    }
    fn prepare(&mut self, lower: &Path, n: usize, rng: &mut Rng) {
        self.patch = vec![0xa5; PATCH];
        let mut data = vec![0u8; BIG];
        for i in 0..n {
            rng.fill(&mut data);
            std::fs::write(lower.join(format!("big{i}")), &data).unwrap();
            self.old.push(sha(&data));
            let mut patched = data.clone();
            patched[PATCH_AT as usize..PATCH_AT as usize + PATCH].copy_from_slice(&self.patch);
            self.new.push(sha(&patched));
        }
    }
    fn action(&self, mnt: &Path, i: usize) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join(format!("big{i}")))?;
        f.write_all_at(&self.patch, PATCH_AT)?;
        f.sync_all()
    }
    fn check(&self, mnt: &Path, i: usize, completed: bool) {
        let data = std::fs::read(mnt.join(format!("big{i}"))).unwrap();
        let h = sha(&data);
        assert!(
            h == self.old[i] || h == self.new[i],
            "big{i}: content is neither the lower nor the patched one (size {})",
            data.len()
        );
        if completed {
            assert_eq!(h, self.new[i], "big{i}: fsynced write lost");
        }
    }
    fn max_delay_us(&self) -> u64 {
        30_000
    }
}

struct Rename;

impl Scenario for Rename {
    fn name(&self) -> &'static str {
        "rename of a lower file (copy-up, rename, whiteout)"
    }
    fn prepare(&mut self, lower: &Path, n: usize, _rng: &mut Rng) {
        std::fs::create_dir(lower.join("r")).unwrap();
        for i in 0..n {
            std::fs::write(lower.join(format!("r/ren{i}")), format!("rename {i}")).unwrap();
        }
    }
    fn action(&self, mnt: &Path, i: usize) -> std::io::Result<()> {
        std::fs::rename(
            mnt.join(format!("r/ren{i}")),
            mnt.join(format!("r/renamed{i}")),
        )
    }
    fn check(&self, mnt: &Path, i: usize, completed: bool) {
        let old = std::fs::read(mnt.join(format!("r/ren{i}"))).ok();
        let new = std::fs::read(mnt.join(format!("r/renamed{i}"))).ok();
        let want = format!("rename {i}").into_bytes();
        match (old, new) {
            (Some(o), None) => {
                assert!(!completed, "ren{i}: completed rename not visible");
                assert_eq!(o, want, "ren{i}: content changed");
            }
            (None, Some(n)) => assert_eq!(n, want, "renamed{i}: content changed"),
            (o, n) => panic!(
                "ren{i}: rename is half done: old name {}, new name {}",
                if o.is_some() { "visible" } else { "gone" },
                if n.is_some() { "visible" } else { "gone" }
            ),
        }
    }
    fn max_delay_us(&self) -> u64 {
        3_000
    }
}

struct Whiteout;

impl Scenario for Whiteout {
    fn name(&self) -> &'static str {
        "unlink of a lower file (whiteout creation)"
    }
    fn prepare(&mut self, lower: &Path, n: usize, _rng: &mut Rng) {
        std::fs::create_dir(lower.join("w")).unwrap();
        for i in 0..n {
            std::fs::write(lower.join(format!("w/del{i}")), format!("delete {i}")).unwrap();
        }
    }
    fn action(&self, mnt: &Path, i: usize) -> std::io::Result<()> {
        std::fs::remove_file(mnt.join(format!("w/del{i}")))
    }
    fn check(&self, mnt: &Path, i: usize, completed: bool) {
        match std::fs::read(mnt.join(format!("w/del{i}"))) {
            Ok(data) => {
                assert!(!completed, "del{i}: completed unlink not visible");
                assert_eq!(data, format!("delete {i}").into_bytes(), "del{i}: content");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "del{i}: {e}"),
        }
    }
    fn max_delay_us(&self) -> u64 {
        3_000
    }
}

/// Even trials rename a lower directory (copy-up with redirect, whiteout of the old name); odd
/// ones create a file two levels down in one (copy-up of both ancestors).
struct DirCopyUp;

const DIR_FILES: usize = 20;

fn dir_listing(dir: &Path) -> Option<BTreeSet<OsString>> {
    let rd = std::fs::read_dir(dir).ok()?;
    Some(rd.map(|e| e.unwrap().file_name()).collect())
}

fn expected_dir_listing() -> BTreeSet<OsString> {
    let mut s: BTreeSet<OsString> = (0..DIR_FILES).map(|k| format!("f{k}").into()).collect();
    s.insert("sub".into());
    s
}

impl Scenario for DirCopyUp {
    fn name(&self) -> &'static str {
        "directory copy-up (rename of a lower directory, create two levels down)"
    }
    fn prepare(&mut self, lower: &Path, n: usize, _rng: &mut Rng) {
        for i in 0..n {
            let d = lower.join(format!("dir{i}"));
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/inner"), b"inner").unwrap();
            for k in 0..DIR_FILES {
                std::fs::write(d.join(format!("f{k}")), format!("{i}/{k}")).unwrap();
            }
        }
    }
    fn action(&self, mnt: &Path, i: usize) -> std::io::Result<()> {
        let d = mnt.join(format!("dir{i}"));
        if i % 2 == 0 {
            std::fs::rename(&d, mnt.join(format!("moved{i}")))
        } else {
            let mut f = std::fs::File::create_new(d.join("sub/new"))?;
            f.write_all(b"new")?;
            f.sync_all()
        }
    }
    fn check(&self, mnt: &Path, i: usize, completed: bool) {
        let d = mnt.join(format!("dir{i}"));
        let want = expected_dir_listing();
        if i % 2 == 0 {
            let moved = mnt.join(format!("moved{i}"));
            let (old, new) = (dir_listing(&d), dir_listing(&moved));
            let visible = match (&old, &new) {
                (Some(l), None) => {
                    assert!(!completed, "dir{i}: completed rename not visible");
                    l
                }
                (None, Some(l)) => l,
                _ => panic!(
                    "dir{i}: directory rename half done: old {:?}, new {:?}",
                    old, new
                ),
            };
            assert_eq!(visible, &want, "dir{i}: listing after rename");
            let dir = if old.is_some() { &d } else { &moved };
            for k in 0..DIR_FILES {
                let got = std::fs::read(dir.join(format!("f{k}"))).unwrap();
                assert_eq!(got, format!("{i}/{k}").into_bytes(), "dir{i}/f{k}");
            }
        } else {
            assert_eq!(dir_listing(&d).as_ref(), Some(&want), "dir{i}: listing");
            let sub = dir_listing(&d.join("sub")).expect("sub listable");
            let has_new = sub.contains(&OsString::from("new"));
            let mut base = sub.clone();
            base.remove(&OsString::from("new"));
            assert_eq!(
                base,
                BTreeSet::from([OsString::from("inner")]),
                "dir{i}/sub"
            );
            if has_new {
                let got = std::fs::read(d.join("sub/new")).unwrap();
                assert!(
                    got.is_empty() || got == b"new",
                    "dir{i}/sub/new: partial content {got:?}"
                );
            }
            if completed {
                assert!(has_new, "dir{i}/sub/new: fsynced file lost");
                assert_eq!(std::fs::read(d.join("sub/new")).unwrap(), b"new");
            }
        }
    }
    fn max_delay_us(&self) -> u64 {
        8_000
    }
}

/// Mounts `s` with unionfs; the guard is dropped only at the end, since each kill leaves the
/// mountpoint to `unionfs umount`.
fn mount(s: &Stack) {
    std::mem::forget(s.mount_unionfs());
}

fn unionfs_umount(mnt: &Path) {
    let out = std::process::Command::new(unionfs_bin())
        .arg("umount")
        .arg(mnt)
        .output()
        .expect("run unionfs umount");
    assert!(
        out.status.success(),
        "unionfs umount of the dead mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(mnt), "dead mount still listed after umount");
}

/// Every name in the merged tree, as paths relative to `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let p = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Whether a merged name is one the scenarios create (anything else is a leftover).
fn is_known_name(rel: &Path) -> bool {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    ["big", "r", "w", "dir", "moved", "sync-"]
        .iter()
        .any(|p| first.starts_with(p))
        && !rel.to_string_lossy().contains("unionfs-")
}

/// Outcome counts of one scenario, for the log.
#[derive(Default, Debug)]
struct Tally {
    interrupted: usize,
    completed: usize,
}

fn run_scenario(mut sc: impl Scenario, seed: u64) {
    if !common::can_mount(sc.name()) {
        return;
    }
    let n = trials_per_scenario();
    let mut rng = Rng::new(seed);
    let s = Stack::new(1);
    sc.prepare(&s.lowers[0], n, &mut rng);
    let sc = Arc::new(sc);
    let mut tally = Tally::default();
    mount(&s);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for i in 0..n {
            trial(&s, &sc, i, &mut rng, &mut tally);
        }
        let mnt = s.mnt.clone();
        for p in daemon::within("walk the merged tree", LIMIT, move || walk(&mnt)) {
            assert!(is_known_name(&p), "unexpected name in merged view: {p:?}");
        }
    }));
    common::MountGuard { mnt: s.mnt.clone() }.unmount();
    eprintln!("{}: {n} trials, {tally:?} (seed {seed:#x})", sc.name());
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn trial(s: &Stack, sc: &Arc<impl Scenario>, i: usize, rng: &mut Rng, tally: &mut Tally) {
    let mnt = s.mnt.clone();
    let pid = daemon::daemon_pid(&mnt);
    let synced = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let (mnt, sc, synced, done) = (mnt.clone(), sc.clone(), synced.clone(), done.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(mnt.join(format!("sync-{i}"))).unwrap();
            f.write_all(format!("durable {i}").as_bytes()).unwrap();
            f.sync_all().unwrap();
            drop(f);
            synced.store(true, Ordering::SeqCst);
            if sc.action(&mnt, i).is_ok() {
                done.store(true, Ordering::SeqCst);
            }
        })
    };
    let delay = rng.below(sc.max_delay_us());
    daemon::within("wait for the fsync before the kill", LIMIT, {
        let synced = synced.clone();
        move || {
            while !synced.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    });
    std::thread::sleep(Duration::from_micros(delay));
    daemon::kill_and_wait(pid);
    daemon::within("action after the kill", LIMIT, move || worker.join()).expect("worker");
    let completed = done.load(Ordering::SeqCst);
    if completed {
        tally.completed += 1;
    } else {
        tally.interrupted += 1;
    }
    // A dead mount answers ENOTCONN. Over io_uring a request can also reach the connection
    // before the kernel has torn it down: handed to a queue entry whose ring died with the
    // daemon it fails with ECANCELED, and left waiting for an entry it is ended with
    // ECONNABORTED. Either way nothing is served.
    let dead = [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED];
    let err = nix::sys::statfs::statfs(&mnt).expect_err("statfs of a dead mount succeeded");
    assert!(
        dead.contains(&(err as i32)),
        "statfs of the dead mount: {err}"
    );
    // The kernel opens directories without asking the daemon (it was told it need not), so
    // the error may come from the open or from the first read.
    let err = std::fs::read_dir(&mnt)
        .and_then(|mut rd| rd.next().transpose())
        .expect_err("listing a dead mount succeeded");
    let errno = err.raw_os_error().unwrap_or(0);
    assert!(dead.contains(&errno), "readdir of the dead mount: {err}");
    unionfs_umount(&mnt);
    mount(s);
    let sc = sc.clone();
    daemon::within("check after remount", LIMIT, move || {
        sc.check(&mnt, i, completed);
        let durable = std::fs::read(mnt.join(format!("sync-{i}"))).expect("fsynced file lost");
        assert_eq!(durable, format!("durable {i}").into_bytes(), "sync-{i}");
    });
}

#[test]
fn kill_during_large_copy_up() {
    run_scenario(
        CopyUpLarge {
            old: vec![],
            new: vec![],
            patch: vec![],
        },
        daemon::seed(),
    );
}

#[test]
fn kill_during_rename() {
    run_scenario(Rename, daemon::seed() ^ 1);
}

#[test]
fn kill_during_whiteout_creation() {
    run_scenario(Whiteout, daemon::seed() ^ 2);
}

#[test]
fn kill_during_directory_copy_up() {
    run_scenario(DirCopyUp, daemon::seed() ^ 3);
}
