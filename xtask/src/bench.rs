//! `cargo xtask bench [--quick] [--only ROW,...] [--reps N]`: end-to-end comparison of unionfs
//! (the release build) with kernel overlayfs and, when installed, fuse-overlayfs, over
//! generated layer stacks.
//!
//! Other work shares the machine, so timings drift; the benchmark therefore interleaves: each
//! repetition runs every row on every target, in an order that rotates, and the report gives
//! the median of the per-repetition ratios target/kernel next to each target's own median and
//! range. Before measuring it checks that every target shows the same merged tree.
//!
//! It must never leave a mount or a daemon behind: every mount sits in a guard that unmounts
//! on drop, and a run first unmounts whatever an interrupted run left under `target/bench/`
//! (refusing to start if that fails). Everything it writes stays in `target/bench/`. The
//! targets' upper and work directories sit on a new file system of their own (see
//! [`upperfs`]).

mod check;
mod launch;
mod report;
mod stacks;
mod targets;
mod upperfs;
mod workloads;

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::host::{self, Context, Error, Result};
use report::{Report, Row, Unit};
use stacks::{DistroParams, Stacks};
use targets::{Kind, Target};
use workloads::{Scale, Workload};

const PHASES: usize = 6;

/// The command-line options of `cargo xtask bench`.
struct Options {
    quick: bool,
    only: Vec<String>,
    reps: Option<usize>,
    /// Use the release build of unionfs already there instead of building it.
    no_build: bool,
}

fn parse(args: &[OsString]) -> Result<Options> {
    let mut o = Options {
        quick: false,
        only: Vec::new(),
        reps: None,
        no_build: false,
    };
    let mut it = args.iter().map(|a| a.to_str());
    while let Some(arg) = it.next() {
        match arg {
            Some("--quick") => o.quick = true,
            Some("--no-build") => o.no_build = true,
            Some("--only") => {
                let v = it
                    .next()
                    .flatten()
                    .ok_or_else(|| usage("--only needs rows"))?;
                o.only.extend(v.split(',').map(str::to_string));
            }
            Some("--reps") => {
                let v = it
                    .next()
                    .flatten()
                    .ok_or_else(|| usage("--reps needs a number"))?;
                let n = v.parse().map_err(|_| usage("--reps needs a number"))?;
                if n == 0 {
                    return Err(usage("--reps must be at least 1"));
                }
                o.reps = Some(n);
            }
            _ => return Err(usage(&format!("unknown bench argument {arg:?}"))),
        }
    }
    Ok(o)
}

fn usage(m: &str) -> Error {
    Error::Usage(m.to_string())
}

/// Sizes of the full run and of `--quick`.
fn sizes(quick: bool) -> (DistroParams, Scale, usize) {
    if quick {
        let p = DistroParams {
            files: 4000,
            big_bytes: 256 << 20,
            rm_entries: 1000,
        };
        let s = Scale {
            rand_reads: 5000,
            write_bytes: 64 << 20,
            create_files: 2000,
            missing_stats: 10_000,
            layer_counts: &[1, 10, 100],
        };
        (p, s, 3)
    } else {
        let p = DistroParams {
            files: 60_000,
            big_bytes: 1 << 30,
            rm_entries: 10_000,
        };
        let s = Scale {
            rand_reads: 20_000,
            write_bytes: 256 << 20,
            create_files: 10_000,
            missing_stats: 10_000,
            layer_counts: &[1, 10, 100],
        };
        (p, s, 5)
    }
}

pub fn run(args: &[OsString]) -> Result<ExitCode> {
    let opts = parse(args)?;
    let (params, scale, default_reps) = sizes(opts.quick);
    let reps = opts.reps.unwrap_or(default_reps);

    host::phase(1, PHASES, "checking the host");
    host::require_mount_rights()?;
    host::enable_fuse_uring();
    host::ensure_tools()?;
    let bench_dir = host::target_dir().join("bench");
    fs::create_dir_all(&bench_dir).context(|| format!("create {}", bench_dir.display()))?;
    let bench_dir = bench_dir
        .canonicalize()
        .context(|| format!("resolve {}", bench_dir.display()))?;
    let _lock = lock(&bench_dir)?;
    clean_leftovers(&bench_dir)?;

    host::phase(2, PHASES, "building unionfs (release)");
    if opts.no_build {
        println!("--no-build: using the release build of unionfs already there");
    } else {
        let mut build = host::cargo();
        build.current_dir(host::workspace_root()).args([
            "build",
            "--release",
            "--package",
            "unionfs",
            "--bin",
            "unionfs",
        ]);
        host::run(&mut build)?;
    }
    let built = host::unionfs_binary("release");
    let unionfs = built
        .canonicalize()
        .context(|| format!("find {}", built.display()))?;

    host::phase(3, PHASES, "generating (or reusing) the layer stacks");
    let stack_dir = bench_dir.join("stacks");
    let stacks = Stacks {
        distro: stacks::distro(&stack_dir, params)?,
        layered: scale
            .layer_counts
            .iter()
            .map(|&n| stacks::layered(&stack_dir, n))
            .collect::<Result<_>>()?,
        busybox: stacks::busybox(&stack_dir)?,
    };
    let rows = select(workloads::all(&scale, &stacks), &opts.only)?;

    let run_dir = bench_dir.join("run");
    let _upperfs = upperfs::UpperFs::mount(&bench_dir, &run_dir);
    let mut targets = vec![
        Target::new(Kind::Kernel, PathBuf::from("mount"), &run_dir),
        Target::new(Kind::Unionfs, unionfs, &run_dir),
    ];
    match host::find_command("fuse-overlayfs") {
        Some(p) => {
            println!("fuse-overlayfs: {}", version(&p));
            targets.push(Target::new(Kind::FuseOverlayfs, p, &run_dir));
        }
        None => println!("fuse-overlayfs not installed; comparing kernel overlayfs and unionfs"),
    }

    host::phase(4, PHASES, "checking every target shows the same trees");
    check::same_trees(&targets, &stacks, &rows)?;

    host::phase(
        5,
        PHASES,
        &format!("measuring: {reps} repetitions x {} rows", rows.len()),
    );
    let load_before = loadavg();
    let start = Instant::now();
    let mut command = String::from("cargo xtask bench");
    for a in args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    let names: Vec<&'static str> = targets.iter().map(Target::name).collect();
    let make_report = |rows: Vec<Row>, completed: usize| Report {
        command: command.clone(),
        targets: names.clone(),
        reps,
        completed,
        host: host_info(&targets, load_before.clone(), start.elapsed().as_secs_f64()),
        rows,
    };
    let mut save = |rows: Vec<Row>, completed: usize| {
        if let Err(e) = report::write_files(&make_report(rows, completed), &bench_dir) {
            eprintln!("could not save the results so far: {e}");
        }
    };
    let results = measure_all(&rows, &targets, &stacks, reps, &mut save);

    host::phase(6, PHASES, "report");
    let report = make_report(results, reps);
    println!("\n{}", report::table(&report));
    report::write_files(&report, &bench_dir)?;
    println!(
        "wrote {0}/results.json and {0}/results.svg",
        bench_dir.display()
    );
    let stray = targets::daemons_under(&run_dir);
    if !stray.is_empty() {
        return Err(Error::Unexpected(format!(
            "daemons still running after their mounts were unmounted: pids {stray:?}"
        )));
    }
    let failed = report.rows.iter().any(|r| !r.errors.is_empty());
    Ok(if failed {
        println!("==> some runs failed (see the errors above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Keeps the rows whose id contains one of `only` (all rows if empty); the memory row goes
/// with the `stat` row that fills it.
fn select(rows: Vec<Workload>, only: &[String]) -> Result<Vec<Workload>> {
    if only.is_empty() {
        return Ok(rows);
    }
    let ids: Vec<String> = rows.iter().map(|w| w.id.clone()).collect();
    let kept: Vec<Workload> = rows
        .into_iter()
        .filter(|w| only.iter().any(|o| w.id.contains(o.as_str())))
        .collect();
    if kept.is_empty() {
        return Err(usage(&format!(
            "--only matches no row; rows: {}, {}",
            ids.join(", "),
            workloads::RSS_ROW
        )));
    }
    Ok(kept)
}

/// Runs every row on every target `reps` times, interleaved; a failed run is recorded as an
/// error of its row and the benchmark goes on.
/// `save` gets the rows measured so far after every repetition, so that an interrupted run
/// still leaves its results.
fn measure_all(
    rows: &[Workload],
    targets: &[Target],
    stacks: &Stacks,
    reps: usize,
    save: &mut dyn FnMut(Vec<Row>, usize),
) -> Vec<Row> {
    let blank = || vec![vec![None; reps]; targets.len()];
    let mut out: Vec<Row> = rows
        .iter()
        .map(|w| Row {
            id: w.id.clone(),
            title: w.title.clone(),
            unit: Unit::Seconds,
            samples: blank(),
            errors: Vec::new(),
        })
        .collect();
    let mut rss = Row {
        id: workloads::RSS_ROW.into(),
        title: "daemon RSS after walking the distro stack".into(),
        unit: Unit::MiB,
        samples: blank(),
        errors: Vec::new(),
    };
    for rep in 0..reps {
        for (wi, w) in rows.iter().enumerate() {
            print!("[{}/{reps}] {:<55}", rep + 1, w.title);
            let _ = std::io::stdout().flush();
            for k in 0..targets.len() {
                let ti = (k + rep + wi) % targets.len();
                let t = &targets[ti];
                if !w.runs_on(t.kind) {
                    continue;
                }
                match workloads::measure(w, t, stacks) {
                    Ok(m) => {
                        out[wi].samples[ti][rep] = Some(m.secs);
                        if w.rss_row.is_some() {
                            rss.samples[ti][rep] = m.rss_mib;
                        }
                        print!("  {} {}", t.name(), report::human(m.secs, Unit::Seconds));
                    }
                    Err(e) => {
                        out[wi]
                            .errors
                            .push(format!("rep {}: {}: {e}", rep + 1, t.name()));
                        print!("  {} ERROR", t.name());
                    }
                }
                let _ = std::io::stdout().flush();
            }
            println!();
        }
        save(with_derived(&out, &rss, rows), rep + 1);
    }
    with_derived(&out, &rss, rows)
}

/// The measured rows, plus the memory row when a row fills it and the parallel readers'
/// speedup when both reader rows ran.
fn with_derived(out: &[Row], rss: &Row, rows: &[Workload]) -> Vec<Row> {
    let mut all = out.to_vec();
    if rows.iter().any(|w| w.rss_row.is_some()) {
        all.push(rss.clone());
    }
    let readers = |n: usize| {
        rows.iter()
            .position(|w| matches!(w.op, workloads::Op::ReadFiles { readers } if readers == n))
    };
    if let (Some(one), Some(two)) = (readers(1), readers(2)) {
        all.push(speedup(&out[one], &out[two]));
    }
    all
}

/// Per target and repetition, how many times faster `fast` ran than `slow`: the same work on
/// two threads against one, measured moments apart.
fn speedup(slow: &Row, fast: &Row) -> Row {
    let samples = slow
        .samples
        .iter()
        .zip(&fast.samples)
        .map(|(s, f)| {
            s.iter()
                .zip(f)
                .map(|(s, f)| match (s, f) {
                    (Some(s), Some(f)) if *f > 0.0 => Some(s / f),
                    _ => None,
                })
                .collect()
        })
        .collect();
    Row {
        id: "readers-speedup".into(),
        title: "parallel readers: speedup of 2 threads over 1".into(),
        unit: Unit::Speedup,
        samples,
        errors: Vec::new(),
    }
}

/// Holds `target/bench/lock` for the run, so that two benchmarks never share mount points.
fn lock(dir: &Path) -> Result<fs::File> {
    let path = dir.join("lock");
    let f = fs::File::create(&path).context(|| format!("create {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(_) => Err(Error::Host(format!(
            "another `cargo xtask bench` holds {}",
            path.display()
        ))),
    }
}

/// Unmounts (deepest first) whatever an interrupted run left mounted under `dir`; refuses to
/// go on if something stays mounted.
fn clean_leftovers(dir: &Path) -> Result<()> {
    let mut left: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    left.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in &left {
        println!("unmounting {} (left by an earlier run)", m.display());
        targets::force_unmount(m);
        if is_mount_point(m) {
            return Err(Error::Host(format!(
                "{} is still mounted; unmount it by hand before benchmarking",
                m.display()
            )));
        }
    }
    Ok(())
}

/// The mount points in `/proc/self/mountinfo`, with the kernel's octal escapes (`\040`) undone.
fn mount_points() -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let Ok(info) = fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.split(|&b| b == b'\n')
        .filter_map(|l| l.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) if field[i] == b'\\' => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Runs `cmd` without echoing it (the benchmark runs hundreds), failing with its stderr.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            cmdline: host::cmdline(cmd),
            why: format!("could not start: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        cmdline: host::cmdline(cmd),
        why: format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

fn sync() -> Result<()> {
    quiet(&mut Command::new("sync"))
}

/// Writes dirty data back, then drops the page cache, dentries and inodes (proc(5),
/// /proc/sys/vm/drop_caches), so the next access goes to the disk.
fn drop_caches() -> Result<()> {
    sync()?;
    fs::write("/proc/sys/vm/drop_caches", "3").context(|| "write /proc/sys/vm/drop_caches".into())
}

/// The line of `program --version` that names the program (fuse-overlayfs prints
/// fusermount3's version first).
fn version(program: &Path) -> String {
    let name = program
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| l.contains(name.as_str()) && l.contains("version"))
                .unwrap_or("version unknown")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("version unknown ({e})"))
}

/// The commit the unionfs binary was built from, and whether the tree had local changes
/// (others may be editing while the benchmark runs).
fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(host::workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "Cargo.toml",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} with uncommitted changes")
    } else {
        head
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn host_info(targets: &[Target], load_before: String, elapsed: f64) -> Vec<(String, String)> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut info = vec![
        ("kernel".to_string(), kernel.trim().to_string()),
        ("cpus".to_string(), cpus.to_string()),
        ("loadavg_before".to_string(), load_before),
        ("loadavg_after".to_string(), loadavg()),
        ("measuring_seconds".to_string(), format!("{elapsed:.0}")),
    ];
    info.push(("unionfs_source".to_string(), source_revision()));
    for t in targets.iter().filter(|t| t.kind == Kind::FuseOverlayfs) {
        if let Some(p) = host::find_command("fuse-overlayfs") {
            info.push((t.name().to_string(), version(&p)));
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(br"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape(br"/plain\x"), br"/plain\x");
    }

    #[test]
    fn options_parse() {
        let args: Vec<OsString> = ["--quick", "--only", "find,stat", "--reps", "2"]
            .iter()
            .map(OsString::from)
            .collect();
        let o = parse(&args).unwrap();
        assert!(o.quick);
        assert_eq!(o.only, ["find", "stat"]);
        assert_eq!(o.reps, Some(2));
        assert!(parse(&[OsString::from("--bogus")]).is_err());
    }
}
