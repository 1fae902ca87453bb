//! `cargo xtask test`: the project's one test command, run by developers and by CI alike.
//!
//! It makes the machine able to run every test (root, `/dev/fuse`, the packages in
//! [`host::NEEDED_TOOLS`]) and then runs `cargo test --workspace` with `UNIONFS_STRICT=1`, so
//! that a test which cannot mount fails rather than skipping: a green run means every test ran.
//! Then it runs `cargo xtask conformance --quick` (about four minutes), which fails when a
//! third-party suite case fails on unionfs but passes on kernel overlayfs.
//! It must never weaken that: no filtering of tests, no retries, and its exit status is the
//! test run's.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::host::{self, Result};

const PHASES: usize = 4;

/// Runs the whole suite; `extra` is appended to `cargo test --workspace --no-fail-fast`
/// (filters, `--` and test-binary flags such as `--nocapture`).
pub fn run(extra: &[OsString]) -> Result<ExitCode> {
    host::phase(1, PHASES, "checking the host can mount");
    host::require_mount_rights()?;
    host::enable_fuse_uring();
    note_overlayfs();

    host::phase(2, PHASES, "installing missing test dependencies");
    host::ensure_tools()?;

    host::phase(3, PHASES, "cargo test --workspace (UNIONFS_STRICT=1)");
    let mut cmd = host::cargo();
    cmd.current_dir(host::workspace_root())
        .env("UNIONFS_STRICT", "1")
        // Every test binary runs even after one fails, so one CI log lists every failure.
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra);
    let status = host::status(&mut cmd)?;
    // The conformance suites run even after a test failure, so one CI log shows both.
    host::phase(
        4,
        PHASES,
        "cargo xtask conformance --quick (pjdfstest, fsx, stress-ng)",
    );
    let conformance = crate::conformance::run(&["--quick".into()])?;
    if status.success() && conformance == ExitCode::SUCCESS {
        println!("\n==> all tests passed");
        return Ok(ExitCode::SUCCESS);
    }
    if conformance != ExitCode::SUCCESS {
        println!("\n==> conformance: some cases fail on unionfs but pass on kernel overlayfs");
    }
    println!("\n==> tests failed ({status})");
    // A signal-killed run has no code; report it as a plain failure.
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1);
    Ok(ExitCode::from(code.max(1)))
}

/// The differential tests compare against kernel overlayfs; say early when the kernel lacks it,
/// since their failures would otherwise look like unionfs bugs. `mount -t overlay` loads the
/// module on demand, so its absence from `/proc/filesystems` is only a warning.
fn note_overlayfs() {
    let listed = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    });
    if listed {
        println!("kernel overlayfs available (reference for the differential tests)");
    } else {
        println!(
            "warning: overlay is not in /proc/filesystems yet; the differential tests need \
             `mount -t overlay` to load it"
        );
    }
}
