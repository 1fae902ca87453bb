//! `cargo xtask conformance [--quick]`: third-party filesystem suites (pjdfstest, fsx,
//! stress-ng) run side by side on unionfs and on kernel overlayfs over the same layers.
//!
//! Kernel overlayfs is the reference: a case that fails on both is a limit of overlay
//! semantics (e.g. pjdfstest's character devices 0/0, which overlayfs reads as whiteouts), a
//! case that fails only on unionfs is a bug. The task prints `N passed, M failed` per suite and
//! target, lists every case that fails on unionfs but passes on overlayfs, and fails when that
//! list is not empty.
//!
//! The suites come from crates.io (`cargo install --locked` into `target/tools/`) and Debian
//! (`stress-ng`); nothing is installed when the right versions are already there. Every run
//! gets a fresh stack under `target/conformance/`, where the logs stay; only the (empty)
//! mountpoints are in `/tmp`, since pjdfstest's socket paths must fit in 108 bytes.

mod suites;
mod target;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::host::{self, Context, Error, Result, Tool};
use suites::{Cases, Env, Outcome};
use target::{Stack, Target};

const SUITES: &[&str] = &["pjdfstest", "fsx", "stress-ng"];

/// The crates.io tools: (crate, version requirement, binary).
const CRATES: &[(&str, &str, &str)] =
    &[("pjdfstest", "0.2.2", "pjdfstest"), ("fsx", "0.3.2", "fsx")];

const STRESS_NG: &[Tool] = &[Tool {
    command: "stress-ng",
    package: "stress-ng",
    used_by: "cargo xtask conformance: the filesystem stressors",
}];

const PHASES: usize = 4;

pub fn run(args: &[OsString]) -> Result<ExitCode> {
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let v = it
                    .next()
                    .ok_or(Error::Usage("--only needs a suite".into()))?;
                only.extend(v.split(',').map(str::to_string));
            }
            other => {
                return Err(Error::Usage(format!(
                    "conformance: unknown argument `{other}`"
                )))
            }
        }
    }
    if let Some(bad) = only.iter().find(|s| !SUITES.contains(&s.as_str())) {
        return Err(Error::Usage(format!(
            "unknown suite `{bad}` (have {SUITES:?})"
        )));
    }
    let start = Instant::now();
    host::phase(1, PHASES, "checking the host can mount");
    host::require_mount_rights()?;
    host::enable_fuse_uring();

    host::phase(2, PHASES, "installing the suites (target/tools, stress-ng)");
    let tools = host::target_dir().join("tools");
    install_crates(&tools)?;
    ensure_stress_ng()?;

    host::phase(3, PHASES, "building unionfs");
    host::run(host::cargo().current_dir(host::workspace_root()).args([
        "build",
        "--package",
        "unionfs",
        "--bin",
        "unionfs",
    ]))?;
    let unionfs = host::unionfs_binary("debug");

    host::phase(
        4,
        PHASES,
        if quick {
            "running the suites (quick)"
        } else {
            "running the suites"
        },
    );
    let root = host::target_dir().join("conformance");
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).context(|| format!("create {}", logs.display()))?;
    let env = Env { tools, logs, quick };
    let mut results = Vec::new();
    for suite in SUITES
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == *s))
    {
        let mut per_target = Vec::new();
        for t in Target::ALL {
            println!("\n--- {suite} on {} ---", t.name());
            let began = Instant::now();
            let cases = run_one(suite, t, &root, &unionfs, &env)?;
            println!(
                "{suite} on {}: {} ({:.0?})",
                t.name(),
                summary(&cases),
                began.elapsed()
            );
            per_target.push(cases);
        }
        results.push((*suite, per_target));
    }
    let regressions = report(&results, &env.logs);
    println!("\nconformance took {:.0?}", start.elapsed());
    Ok(if regressions == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Installs each crate of [`CRATES`] into `tools` unless its binary already reports the version.
fn install_crates(tools: &Path) -> Result<()> {
    for (krate, version, bin) in CRATES {
        let path = tools.join("bin").join(bin);
        let have = Command::new(&path)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
            .unwrap_or(false);
        if have {
            println!("{bin} {version} present in {}", tools.display());
            continue;
        }
        host::run(
            host::cargo()
                .arg("install")
                .arg("--root")
                .arg(tools)
                .arg("--locked")
                .arg(format!("{krate}@{version}")),
        )?;
    }
    Ok(())
}

/// Installs `stress-ng` with apt-get unless it is on the path.
fn ensure_stress_ng() -> Result<()> {
    let Tool {
        command,
        package,
        used_by,
    } = &STRESS_NG[0];
    if host::find_command(command).is_some() {
        println!("{command} present");
        return Ok(());
    }
    println!("missing `{command}` (package {package}), used by {used_by}");
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        c
    };
    host::run(apt().args(["update", "-q"]))?;
    host::run(apt().args(["install", "-y", "-q", "--no-install-recommends", package]))
}

/// One suite on one target: a fresh stack, mounted, the suite, unmounted.
fn run_one(suite: &str, t: Target, root: &Path, unionfs: &Path, env: &Env) -> Result<Cases> {
    let mnt = PathBuf::from(format!("/tmp/ucf-{}-{}", std::process::id(), t.name()));
    let stack = Stack::fresh(root.join(format!("{suite}-{}", t.name())), mnt)?;
    suites::prepare(suite, &stack)?;
    let mounted = stack.mount(t, unionfs)?;
    let cases = suites::run(suite, &stack, t.name(), env);
    let unmounted = mounted.unmount();
    if unmounted.is_ok() {
        // Only the empty mountpoint lives outside target/; rmdir never removes content.
        let _ = std::fs::remove_dir(&stack.mnt);
    }
    let mut cases = cases?;
    if let Err(e) = unmounted {
        println!("unmount after {suite}: {e}");
        cases.insert("(clean unmount)".into(), Outcome::Fail);
    }
    Ok(cases)
}

fn summary(cases: &Cases) -> String {
    let count = |o| cases.values().filter(|v| **v == o).count();
    let (p, f, s) = (
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Skip),
    );
    if s > 0 {
        format!("{p} passed, {f} failed, {s} skipped")
    } else {
        format!("{p} passed, {f} failed")
    }
}

/// Prints the table and the cases failing only on unionfs; returns how many there are.
fn report(results: &[(&str, Vec<Cases>)], logs: &Path) -> usize {
    println!("\n==> conformance: unionfs vs kernel overlayfs (redirect_dir=on,index=on)\n");
    println!("{:<11} {:<34} kernel overlayfs", "suite", "unionfs");
    for (suite, per) in results {
        println!("{suite:<11} {:<34} {}", summary(&per[0]), summary(&per[1]));
    }
    let mut total = 0;
    for (suite, per) in results {
        let only_unionfs: Vec<&String> = per[0]
            .iter()
            .filter(|(name, o)| {
                **o == Outcome::Fail && per[1].get(*name).is_some_and(|r| *r == Outcome::Pass)
            })
            .map(|(name, _)| name)
            .collect();
        let both: Vec<&String> = per[0]
            .iter()
            .filter(|(n, o)| **o == Outcome::Fail && per[1].get(*n) == Some(&Outcome::Fail))
            .map(|(n, _)| n)
            .collect();
        println!(
            "\n{suite}: {} fail on unionfs but pass on overlayfs",
            only_unionfs.len()
        );
        for n in &only_unionfs {
            println!("  {n}");
        }
        if !both.is_empty() {
            let names: Vec<&str> = both.iter().map(|s| s.as_str()).collect();
            println!("  (fail on both: {})", names.join(", "));
        }
        total += only_unionfs.len();
    }
    println!("\nlogs: {}", logs.display());
    // One plain closing line for whoever reads the log: cases passing on unionfs, and cases
    // failing on unionfs that pass on kernel overlayfs (failures of both are not counted).
    let passed: usize = results
        .iter()
        .map(|(_, per)| per[0].values().filter(|o| **o == Outcome::Pass).count())
        .sum();
    println!("\nconformance: {passed} passed, {total} failed");
    total
}
