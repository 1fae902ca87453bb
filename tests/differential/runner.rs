//! Runs one operation sequence on the reference (kernel overlayfs over overlay-format layers)
//! and on each implementation under test, then compares per-operation results, the merged tree
//! (before and after a final remount) and the upper directory.
//!
//! Under test by default: unionfs over overlay-format layers and unionfs over the same layers
//! in AUFS/OCI format. With `UNIONFS_DIFF_SELFCHECK=1`, kernel overlayfs over a second copy is
//! the one under test instead: that must always pass, which shows the snapshots are
//! deterministic (no inode numbers, times or other per-mount values leak into them). With
//! `UNIONFS_DIFF_SELFCHECK=aufs` the kernel over AUFS-format layers (which it does not read)
//! is under test: that must fail, and shows what a report looks like. `UNIONFS_DIFF_DUMP=1`
//! prints the kernel's results and snapshots for every sequence.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{is_mountpoint, MountGuard, Stack};
use crate::fixture::{write_layers, Format};
use crate::ops::{show_result, Fds, Op, OpResult};
use crate::snapshot::{self, Snapshot, View};

/// Which filesystem serves a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Unionfs,
}

/// One filesystem over its own copy of the fixture.
struct Target {
    imp: Impl,
    stack: Stack,
    guard: Option<MountGuard>,
}

impl Target {
    fn new(imp: Impl, format: Format) -> Target {
        let stack = Stack::new(3);
        write_layers(&stack, format);
        let mut t = Target {
            imp,
            stack,
            guard: None,
        };
        t.mount();
        t
    }

    fn mount(&mut self) {
        assert!(self.guard.is_none(), "already mounted");
        let guard = match self.imp {
            Impl::Kernel => self.stack.mount_overlay(),
            Impl::Unionfs => self.stack.mount_unionfs(),
        };
        assert!(
            is_mountpoint(&self.stack.mnt),
            "{:?} mount reported success but nothing is mounted on {}",
            self.imp,
            self.stack.mnt.display()
        );
        self.guard = Some(guard);
    }

    fn unmount(&mut self) {
        if let Some(g) = self.guard.take() {
            g.unmount();
        }
        assert!(
            !is_mountpoint(&self.stack.mnt),
            "{} is still mounted after umount",
            self.stack.mnt.display()
        );
    }

    fn remount(&mut self) {
        self.unmount();
        self.mount();
    }
}

/// Everything recorded from one run of a sequence.
pub struct Outcome {
    pub results: Vec<OpResult>,
    pub merged: Snapshot,
    pub merged_after_remount: Snapshot,
    pub upper: Snapshot,
}

/// How long one target's run may take before it is considered hung.
fn run_timeout() -> Duration {
    let secs = std::env::var("UNIONFS_DIFF_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Runs a target, turning a panic (a failed mount, say) into an error and a hang into a kill of
/// the unionfs daemon serving it (so the blocked calls fail with ENOTCONN instead of hanging
/// the test binary forever).
fn run_guarded(imp: Impl, format: Format, ops: &[Op]) -> Result<Outcome, String> {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (dir_tx, dir_rx) = mpsc::channel::<std::path::PathBuf>();
    let watchdog = std::thread::spawn(move || {
        let timeout = run_timeout();
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
            eprintln!("differential: {imp:?} run exceeded {timeout:?}, killing its daemon");
            if let Ok(dir) = dir_rx.try_recv() {
                kill_daemons_under(&dir);
            }
        }
    });
    let result = catch_unwind(AssertUnwindSafe(|| run_target(imp, format, ops, &dir_tx)));
    let _ = done_tx.send(());
    let _ = watchdog.join();
    result.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())
    })
}

/// Builds a target, applies `ops`, and records everything. Tells the watchdog (through
/// `dir_tx`) where the stack lives before anything can hang.
fn run_target(
    imp: Impl,
    format: Format,
    ops: &[Op],
    dir_tx: &mpsc::Sender<std::path::PathBuf>,
) -> Outcome {
    let mut t = Target::new(imp, format);
    let _ = dir_tx.send(t.stack.dir.path().to_path_buf());
    let mut results = Vec::with_capacity(ops.len());
    let mut fds = Fds::default();
    for op in ops {
        if *op == Op::Remount {
            fds.close_all();
            t.remount();
            results.push(Ok(None));
        } else {
            results.push(op.apply(&t.stack.mnt, &t.stack.upper, &mut fds));
        }
    }
    drop(fds);
    let merged = snapshot::take(&t.stack.mnt, View::Merged);
    t.remount();
    let merged_after_remount = snapshot::take(&t.stack.mnt, View::Merged);
    t.unmount();
    let upper = snapshot::take(&t.stack.upper, View::Upper);
    Outcome {
        results,
        merged,
        merged_after_remount,
        upper,
    }
}

/// Kills (by pid) the unionfs daemons this test started for the stack in `dir`: the processes
/// whose command line names a path inside that unique temporary directory.
fn kill_daemons_under(dir: &Path) {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmd.windows(needle.len()).any(|w| w == needle) {
            eprintln!("differential: killing pid {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The implementations compared with the kernel, with a label for messages.
fn under_test() -> Vec<(Impl, Format, &'static str)> {
    const UNIONFS: [(Impl, Format, &str); 2] = [
        (
            Impl::Unionfs,
            Format::Overlay,
            "unionfs (overlay-format lowers)",
        ),
        (
            Impl::Unionfs,
            Format::Aufs,
            "unionfs (AUFS/OCI-format lowers)",
        ),
    ];
    match std::env::var("UNIONFS_DIFF_SELFCHECK").as_deref() {
        Ok("1") => vec![(
            Impl::Kernel,
            Format::Overlay,
            "kernel overlayfs (self-check)",
        )],
        // The kernel does not read AUFS markers, so this must fail: it shows what a report
        // looks like.
        Ok("aufs") => vec![(Impl::Kernel, Format::Aufs, "kernel overlayfs (AUFS lowers)")],
        _ => UNIONFS.to_vec(),
    }
}

/// Runs `ops` everywhere and returns a readable report of every difference from the kernel.
pub fn check(ops: &[Op]) -> Result<(), String> {
    let expected = run_guarded(Impl::Kernel, Format::Overlay, ops).unwrap_or_else(|e| {
        panic!(
            "the reference (kernel overlayfs) run failed: {e}\n{}",
            listing(ops)
        )
    });
    assert!(
        expected.merged.errors.is_empty() && expected.upper.errors.is_empty(),
        "the reference snapshot has errors (harness bug): {:?} {:?}",
        expected.merged.errors,
        expected.upper.errors
    );
    if std::env::var_os("UNIONFS_DIFF_DUMP").is_some_and(|v| v == "1") {
        eprintln!("{}{}", listing(ops), dump(&expected));
    }
    let mut report = String::new();
    for (imp, format, label) in under_test() {
        match run_guarded(imp, format, ops) {
            Ok(actual) => {
                if let Some(r) = compare(&expected, &actual, ops, label) {
                    report.push_str(&r);
                }
            }
            Err(e) => report.push_str(&format!("\n{label}: the run failed: {e}\n{}", listing(ops))),
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

/// Like [`check`], panicking with the report: for hand-written cases.
pub fn check_case(ops: &[Op]) {
    if let Err(report) = check(ops) {
        panic!("{report}");
    }
}

/// The whole reference outcome, for `UNIONFS_DIFF_DUMP=1`.
fn dump(o: &Outcome) -> String {
    let mut s = String::from("kernel results:");
    for r in &o.results {
        s.push(' ');
        s.push_str(&show_result(r));
    }
    for (what, snap) in [("merged", &o.merged), ("upper", &o.upper)] {
        s.push_str(&format!("\nkernel {what}:\n"));
        for (path, node) in &snap.nodes {
            s.push_str(&format!("  {path}: {node}\n"));
        }
        if !snap.ino_groups.is_empty() {
            s.push_str(&format!("  shared inodes: {:?}\n", snap.ino_groups));
        }
        if !snap.dino_mismatches.is_empty() {
            s.push_str(&format!("  d_ino != st_ino: {:?}\n", snap.dino_mismatches));
        }
    }
    s
}

fn listing(ops: &[Op]) -> String {
    let mut s = format!("sequence ({} ops):\n", ops.len());
    for (i, op) in ops.iter().enumerate() {
        s.push_str(&format!("  {i:2}. {op}\n"));
    }
    s
}

fn compare(expected: &Outcome, actual: &Outcome, ops: &[Op], label: &str) -> Option<String> {
    let mut sections = Vec::new();
    let results_differ = expected.results != actual.results;
    if results_differ {
        let mut s = String::from("operation results (kernel vs this):\n");
        for (i, op) in ops.iter().enumerate() {
            let (e, a) = (&expected.results[i], &actual.results[i]);
            let mark = if e == a { "" } else { "   <-- differs" };
            s.push_str(&format!(
                "  {i:2}. {op}  kernel: {}  this: {}{mark}\n",
                show_result(e),
                show_result(a)
            ));
        }
        sections.push(s);
    }
    let parts = [
        ("merged tree", &expected.merged, &actual.merged),
        (
            "merged tree after a final remount",
            &expected.merged_after_remount,
            &actual.merged_after_remount,
        ),
        ("upper directory", &expected.upper, &actual.upper),
    ];
    for (what, e, a) in parts {
        let d = snapshot::diff(e, a, 12);
        if !d.is_empty() {
            sections.push(format!(
                "{what} differs (expected = kernel):\n{}\n",
                d.join("\n")
            ));
        }
    }
    if sections.is_empty() {
        return None;
    }
    let mut s = format!("\n=== {label} differs from kernel overlayfs ===\n");
    if !results_differ {
        s.push_str(&listing(ops));
    }
    for sec in sections {
        s.push_str(&sec);
    }
    Some(s)
}
