//! Differential tests: the same operation sequences applied to kernel overlayfs
//! (`redirect_dir=on,index=on`, the reference) and to unionfs, over identical copies of the same
//! layers; the merged trees, the upper directories and every operation's result must agree.
//!
//! - `differential/fixture.rs`: the initial three lower layers, in overlay or AUFS/OCI format.
//! - `differential/ops.rs`: the operations, how they are applied, the proptest strategy.
//! - `differential/snapshot.rs`: what is recorded of a tree and how two are diffed.
//! - `differential/runner.rs`: runs a sequence on each target and builds the failure report.
//!
//! Every case runs on the kernel (overlay-format layers) and on unionfs twice: over
//! overlay-format layers and over the same layers in AUFS/OCI format. Each run ends with a
//! snapshot, a remount and a second snapshot, so redirects and hard-link indexes are always
//! read back from disk. `UNIONFS_DIFF_SELFCHECK=1` compares the kernel with itself on a second
//! copy instead (must pass: proves the snapshots are deterministic). `UNIONFS_DIFF_CASES` sets
//! the number of generated sequences (default 48), `UNIONFS_DIFF_SHRINK` the shrink iterations
//! on failure (default 64), `UNIONFS_DIFF_TIMEOUT` the seconds one run may take (default 120).
//! `UNIONFS_DIFF_KEEP_GOING=1` does not stop at the first failing sequence: it minimizes and
//! prints every one (to find several distinct bugs in one run) and fails at the end.

mod common;

#[path = "differential/fixture.rs"]
mod fixture;
#[path = "differential/ops.rs"]
mod ops;
#[path = "differential/runner.rs"]
mod runner;
#[path = "differential/snapshot.rs"]
mod snapshot;

use std::sync::atomic::{AtomicUsize, Ordering};

use ops::{Access, Op};
use proptest::prelude::{ProptestConfig, Strategy};
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};
use runner::check_case;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn generated_sequences_match_kernel() {
    if !common::can_mount("generated_sequences_match_kernel") {
        return;
    }
    run_generated(ops::sequence());
}

/// Sequences that hold descriptors across other operations: what a file or directory that is
/// open becomes when its names are unlinked, renamed over, linked or copied up.
#[test]
fn held_descriptor_sequences_match_kernel() {
    if !common::can_mount("held_descriptor_sequences_match_kernel") {
        return;
    }
    run_generated(ops::held_sequence());
}

/// Checks generated sequences against the kernel; panics with the (shrunk) report of the first
/// failure, or with the count of failures under `UNIONFS_DIFF_KEEP_GOING=1`.
fn run_generated(strategy: impl Strategy<Value = Vec<Op>>) {
    let config = ProptestConfig {
        cases: env_u32("UNIONFS_DIFF_CASES", 48),
        max_shrink_iters: env_u32("UNIONFS_DIFF_SHRINK", 64),
        // The report names the minimal sequence; no regression file beside the sources.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    };
    let keep_going = std::env::var_os("UNIONFS_DIFF_KEEP_GOING").is_some_and(|v| v == "1");
    let passed = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let outcome = TestRunner::new(config).run(&strategy, |ops| match runner::check(&ops) {
        Ok(()) => {
            passed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(report) if keep_going => {
            failed.fetch_add(1, Ordering::Relaxed);
            let (small, report) = minimize(ops, report);
            eprintln!("differential: failing sequence, minimized to {small:?}{report}");
            Ok(())
        }
        Err(report) => Err(TestCaseError::fail(report)),
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    eprintln!(
        "differential: {} generated sequences passed",
        passed.load(Ordering::Relaxed)
    );
    let failed = failed.load(Ordering::Relaxed);
    assert_eq!(
        failed, 0,
        "{failed} generated sequences failed (reports above)"
    );
}

/// For `UNIONFS_DIFF_KEEP_GOING=1`, where proptest's shrinking is not used: drops operations
/// one at a time, from the end, while the sequence still fails. Returns the smaller sequence
/// and its report.
fn minimize(mut ops: Vec<Op>, mut report: String) -> (Vec<Op>, String) {
    let mut i = ops.len();
    while i > 0 && ops.len() > 1 {
        i -= 1;
        let mut fewer = ops.clone();
        fewer.remove(i);
        if let Err(r) = runner::check(&fewer) {
            ops = fewer;
            report = r;
        }
    }
    (ops, report)
}

/// Declares a hand-written case: a `#[test]` that skips where it cannot mount.
macro_rules! case {
    ($(#[$doc:meta])* $name:ident: [$($op:expr),* $(,)?]) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            if !common::can_mount(stringify!($name)) {
                return;
            }
            check_case(&[$($op),*]);
        }
    };
}

case!(
    /// A directory from the lower layers renamed (overlayfs records a redirect), used after a
    /// remount, and its old name reused.
    rename_lower_dir_then_remount: [
        Op::Rename("d1", "nd"),
        Op::Remount,
        Op::Append { path: "nd/x", len: 100, seed: 1 },
        Op::Write { path: "nd/sub/n", len: 100, seed: 2 },
        Op::Mkdir { path: "d1", mode: 0o755 },
        Op::Write { path: "d1/x", len: 5, seed: 3 },
        Op::Remount,
        Op::Rename("nd/sub", "d1/sub"),
    ]
);

case!(
    /// Writing to one name of a lower hard-linked file keeps the other names linked
    /// (index=on), across a remount, for nlink 2 and 3.
    hardlink_copy_up_keeps_link: [
        Op::Append { path: "hl1", len: 100, seed: 1 },
        Op::Chmod { path: "h3b", mode: 0o600 },
        Op::Remount,
        Op::Append { path: "hl2", len: 100, seed: 2 },
        Op::Append { path: "d1/h3c", len: 5000, seed: 3 },
    ]
);

case!(
    /// Unlinking one name of a lower hard-linked file, then writing another.
    unlink_hardlink_then_write: [
        Op::Unlink("h3a"),
        Op::Append { path: "h3b", len: 10, seed: 1 },
        Op::Remount,
        Op::Unlink("hl2"),
        Op::Link("hl1", "new"),
        Op::Append { path: "new", len: 10, seed: 2 },
    ]
);

case!(
    /// Hard links made through the mount to lower files, including ones already linked.
    link_lower_files: [
        Op::Link("a", "new"),
        Op::Link("h3a", "d1/new"),
        Op::Link("hl2", "m/new"),
        Op::Remount,
        Op::Append { path: "d1/new", len: 100, seed: 1 },
        Op::Link("d1/x", "d2/x"),
        Op::Link("d1", "nd"),
        Op::Link("gone", "nd"),
    ]
);

case!(
    /// rmdir of a directory merged from three layers (with a lower whiteout inside) after
    /// emptying it, then mkdir on the same name: the new directory must hide the old entries.
    rmdir_merged_dir_with_whiteouts: [
        Op::Rmdir("m"),
        Op::Unlink("m/both"),
        Op::Unlink("m/l1file"),
        Op::Unlink("m/l2file"),
        Op::Unlink("m/wo"),
        Op::Rmdir("m/msub"),
        Op::Unlink("m/msub/z"),
        Op::Rmdir("m/msub"),
        Op::Rmdir("m"),
        Op::Remount,
        Op::Mkdir { path: "m", mode: 0o700 },
    ]
);

case!(
    /// mkdir where a lower directory and a lower file were removed: the upper whiteouts become
    /// directories, which overlayfs marks opaque.
    mkdir_over_whiteout_is_opaque: [
        Op::Rmdir("e"),
        Op::Mkdir { path: "e", mode: 0o755 },
        Op::Unlink("a"),
        Op::Mkdir { path: "a", mode: 0o700 },
        Op::Unlink("d1/sub/deep"),
        Op::Rmdir("d1/sub"),
        Op::Mkdir { path: "d1/sub", mode: 0o755 },
    ]
);

case!(
    /// mkdir and create where only a lower layer (lower0) has a whiteout: the whited-out lower
    /// directory's contents must stay hidden.
    create_over_lower_whiteout: [
        Op::Mkdir { path: "gonedir", mode: 0o755 },
        Op::Write { path: "gonedir/g", len: 10, seed: 1 },
        Op::Write { path: "gone", len: 10, seed: 2 },
        Op::Write { path: "m/wo", len: 10, seed: 3 },
        Op::Remount,
        Op::Unlink("gone"),
    ]
);

case!(
    /// Renaming directories onto names that are whiteouts (in the upper and in lower0).
    rename_dir_over_whiteout: [
        Op::Rmdir("e2"),
        Op::Rename("d1", "e2"),
        Op::Rename("d2", "gonedir"),
        Op::Unlink("b"),
        Op::Rename("m", "b"),
        Op::Remount,
        Op::Write { path: "e2/new", len: 1, seed: 1 },
    ]
);

case!(
    /// RENAME_EXCHANGE between a pure-upper and a merged lower directory, and between files.
    exchange_lower_and_upper_dirs: [
        Op::Mkdir { path: "nd", mode: 0o700 },
        Op::Write { path: "nd/f", len: 100, seed: 1 },
        Op::Exchange("nd", "d1"),
        Op::Remount,
        Op::Exchange("a", "b"),
        Op::Exchange("m", "d2"),
        Op::Exchange("c", "e"),
        Op::Exchange("a", "new"),
    ]
);

case!(
    /// Renames of files: to a new name, over an existing file, into and across directories,
    /// and the errors of renaming a file over a directory and back.
    rename_files: [
        Op::Rename("a", "new"),
        Op::Rename("b", "c"),
        Op::Rename("c", "d2/sub/c"),
        Op::Rename("xa", "m/both"),
        Op::Rename("d1/x", "d2/x"),
        Op::Rename("big", "e"),
        Op::Rename("e2", "new"),
        Op::Rename("fifo", "d1/fifo"),
        Op::Rename("ln", "m/ln"),
    ]
);

case!(
    /// Directory renames: over an empty dir, into another dir, into itself, and the errors
    /// renaming over non-empty or merged directories.
    rename_dirs: [
        Op::Rename("d2", "e"),
        Op::Rename("e2", "d1"),
        Op::Rename("d1", "d1/sub/x"),
        Op::Rename("d1/sub", "m/msub"),
        Op::Rename("m/msub", "nd"),
        Op::Rename("opq", "e2"),
        Op::Rename("m", "e/sub/m"),
        Op::Remount,
        Op::Rename("e/sub", "d1/sub"),
    ]
);

case!(
    /// A directory renamed twice, across parents, then back to its first name.
    rename_dir_twice_and_back: [
        Op::Rename("d1", "nd"),
        Op::Rename("nd", "d2/nd"),
        Op::Remount,
        Op::Rename("d2/nd", "d1"),
        Op::Remount,
        Op::Rename("d2", "m/d2"),
        Op::Rename("m", "nd"),
    ]
);

case!(
    /// RENAME_NOREPLACE and the errno of operations that must fail.
    errors_match: [
        Op::RenameNoReplace("a", "b"),
        Op::RenameNoReplace("a", "gone"),
        Op::RenameNoReplace("d1", "e2"),
        Op::Rmdir("d1"),
        Op::Rmdir("a"),
        Op::Unlink("d1"),
        Op::Mkdir { path: "a", mode: 0o755 },
        Op::Mkdir { path: "gone/x", mode: 0o755 },
        Op::Rename("gone", "new"),
        Op::Link("d1", "new"),
        Op::Append { path: "gone", len: 1, seed: 1 },
        Op::Write { path: "d1", len: 1, seed: 1 },
        Op::Truncate { path: "fifo", size: 0 },
        Op::Write { path: "fifo", len: 1, seed: 1 },
        Op::Symlink { target: "a", path: "b" },
        Op::RemoveXattr { path: "a", name: "user.none" },
        Op::SetXattr { path: "ln", name: "user.one", value: "v" },
    ]
);

case!(
    /// Metadata changes copy up files and directories (and their parents) without their data
    /// changing; chown of a setuid file clears the bit.
    metadata_copy_up: [
        Op::Chmod { path: "d2/sub/y", mode: 0o600 },
        Op::Chown { path: "priv", uid: 0, gid: 0 },
        Op::Chown { path: "suid", uid: 1000, gid: 1000 },
        Op::Chmod { path: "exe", mode: 0o4755 },
        Op::SetXattr { path: "xa", name: "user.one", value: "changed" },
        Op::RemoveXattr { path: "xa", name: "user.two" },
        Op::SetXattr { path: "d1", name: "user.new", value: "on a merged dir" },
        Op::Chown { path: "big", uid: 1000, gid: 0 },
        Op::Chmod { path: "m/msub", mode: 0o1777 },
        Op::Chown { path: "dang", uid: 1000, gid: 1000 },
        Op::Chmod { path: "ln", mode: 0o600 },
    ]
);

case!(
    /// Data changes: truncate (down, up past 2 MiB), O_TRUNC, writes inside and past the end,
    /// append, on lower files (including the > 1 MiB one) and new files.
    data_copy_up: [
        Op::Truncate { path: "big", size: 7 },
        Op::Overwrite { path: "a", len: 5000, seed: 1 },
        Op::Truncate { path: "m/both", size: (2 << 20) + 1 },
        Op::Append { path: "c", len: 70_000, seed: 2 },
        Op::Write { path: "priv", len: 3, seed: 3 },
        Op::Write { path: "new", len: 100, seed: 4 },
        Op::Write { path: "suid", len: 2, seed: 5 },
        Op::Append { path: "ln", len: 10, seed: 6 },
        Op::Remount,
        Op::Write { path: "big", len: 70_000, seed: 7 },
    ]
);

case!(
    /// Special files: fifos and symlinks created, renamed and removed.
    special_files: [
        Op::Mkfifo("new"),
        Op::Mkfifo("fifo"),
        Op::Symlink { target: "../a", path: "d1/new" },
        Op::Symlink { target: "nowhere", path: "nd" },
        Op::Unlink("fifo"),
        Op::Rename("ln", "d2/ln"),
        Op::Unlink("dang"),
        Op::Chown { path: "d2/ln", uid: 1000, gid: 1000 },
        Op::Link("new", "d1/fifo"),
    ]
);

case!(
    /// The opaque directory from lower0: writes inside, renamed, removed and recreated.
    opaque_lower_dir: [
        Op::Write { path: "opq/old", len: 10, seed: 1 },
        Op::Rename("opq", "nd"),
        Op::Remount,
        Op::Unlink("nd/new"),
        Op::Unlink("nd/old"),
        Op::Rmdir("nd"),
        Op::Mkdir { path: "opq", mode: 0o755 },
    ]
);

case!(
    /// A merged directory moved into a renamed directory, then the parent renamed again.
    rename_merged_dir_into_renamed_dir: [
        Op::Rename("d1", "nd"),
        Op::Rename("m", "nd/m"),
        Op::Remount,
        Op::Rename("nd", "d2/sub/nd"),
        Op::Write { path: "d2/sub/nd/m/new", len: 100, seed: 1 },
        Op::Unlink("d2/sub/nd/m/both"),
    ]
);

case!(
    /// Replacing one name of a lower hard-linked file (unlink, rename over it) lowers the nlink
    /// the other names report: overlayfs keeps the count with the index (found by the proptest).
    unlink_lower_hardlink_updates_nlink: [
        Op::Unlink("hl2"),
        Op::Rename("d1/y1", "h3b"),
    ]
);

case!(
    /// A directory that gains an upper copy because a child is copied up becomes a merged
    /// directory, which overlayfs reports with nlink 1 at once (found by the proptest).
    dir_nlink_after_child_copy_up: [
        Op::Chmod { path: "opq/new", mode: 0o600 },
        Op::SetXattr { path: "d2/sub/y", name: "user.new", value: "" },
    ]
);

case!(
    /// setxattr on another name of an already copied-up lower hard link changes the shared
    /// upper inode without linking that name into the upper directory (found by the proptest).
    setxattr_on_alias_of_copied_up_hardlink: [
        Op::Append { path: "hl2", len: 100, seed: 2 },
        Op::SetXattr { path: "hl1", name: "user.new", value: "v" },
        Op::Exchange("fifo", "h3a"),
        Op::SetXattr { path: "d1/h3c", name: "user.new", value: "" },
    ]
);

case!(
    /// chown through a new hard link to a lower hard-linked file, after another name was
    /// looked up (the failed removexattr only looks it up): only the names operated on may be
    /// linked into the upper (found by the proptest).
    chown_of_hardlink_links_up_only_that_name: [
        Op::Link("hl2", "gonedir"),
        Op::RemoveXattr { path: "hl1", name: "user.none" },
        Op::Chown { path: "gonedir", uid: 1001, gid: 0 },
    ]
);

case!(
    /// ftruncate through a descriptor of a copied-up hard link, after another name of it was
    /// looked up (the failed rename only looks it up): the change is made on the descriptor's
    /// file and links no other name into the upper (found by the held-descriptor proptest).
    ftruncate_through_descriptor_of_hardlink: [
        Op::Open { slot: 0, path: "hl2", how: Access::ReadWrite },
        Op::RenameNoReplace("hl2", "hl1"),
        Op::FTruncate { slot: 0, size: 2 },
        Op::FStat(0),
        Op::FRead(0),
    ]
);

case!(
    /// A read-only descriptor of a lower file keeps reading the object when another name of it
    /// is copied up and written, when its own name is renamed over, and after that unlinked.
    read_only_descriptor_follows_its_object: [
        Op::Open { slot: 0, path: "h3a", how: Access::Read },
        Op::Append { path: "h3b", len: 100, seed: 1 },
        Op::FRead(0),
        Op::Rename("a", "h3a"),
        Op::FStat(0),
        Op::FRead(0),
        Op::Unlink("h3b"),
        Op::Unlink("d1/h3c"),
        Op::FStat(0),
        Op::FRead(0),
    ]
);

case!(
    /// Directory descriptors held while one directory is renamed and its name reused, and
    /// another is renamed over: listings and creations through them follow the directory,
    /// not the name.
    directory_descriptor_follows_its_directory: [
        Op::Open { slot: 1, path: "d1", how: Access::Dir },
        Op::Rename("d1", "nd"),
        Op::FList(1),
        Op::FCreate { slot: 1, name: "n1" },
        Op::Mkdir { path: "d1", mode: 0o700 },
        Op::FList(1),
        Op::Open { slot: 2, path: "e2", how: Access::Dir },
        Op::Rename("e", "e2"),
        Op::FStat(2),
        Op::FList(2),
        Op::FCreate { slot: 2, name: "n2" },
    ]
);
