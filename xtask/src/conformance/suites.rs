//! The third-party suites: how each is run on a mounted target and how its output becomes one
//! [`Outcome`] per case.
//!
//! - `pjdfstest` (POSIX conformance, run as root in the mount): one case per test it reports.
//! - `fsx` (file system exerciser): one case per run; fixed seeds, on new files and on files
//!   that start in the lower layer, so that copy-up happens under its mmap, truncate and write
//!   sequences.
//! - `stress-ng`: one case per filesystem stressor, each run with `--verify`.
//!
//! Every command runs in its own process group with a time limit, so a hung filesystem fails
//! the case instead of hanging the task; its output goes to a log file under `logs/`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::target::Stack;
use crate::host::{Context, Error, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

pub type Cases = BTreeMap<String, Outcome>;

/// What every suite run needs to know.
pub struct Env {
    pub tools: PathBuf,
    pub logs: PathBuf,
    pub quick: bool,
}

/// The size of the files `fsx` works on, and of the lower files it starts from.
const FSX_FLEN: usize = 256 << 10;

/// fsx runs: (seed, whether the file starts in the lower layer, config).
const FSX_RUNS: &[(u64, bool, &str)] = &[
    (1, false, FSX_ALL_OPS),
    (2, false, FSX_ALL_OPS),
    (3, false, FSX_ALL_OPS),
    (4, false, FSX_ALL_OPS),
    (5, true, FSX_BLOCKMODE),
    (6, true, FSX_BLOCKMODE),
    (7, true, FSX_ALL_OPS),
    (8, true, FSX_ALL_OPS),
];

/// Every operation fsx knows. On a lower file fsx opens with `O_TRUNC`, so the copy-up
/// happens inside a truncate.
const FSX_ALL_OPS: &str = "flen = 262144
[weights]
close_open = 2
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
";

/// Block mode keeps the lower file's size and data (fsx opens it without `O_TRUNC`, and
/// refuses `close_open`), so the copy-up carries its content and the following mapped reads
/// and writes check it.
const FSX_BLOCKMODE: &str = "blockmode = true
[weights]
close_open = 0
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 0
fsync = 1
fdatasync = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
";

/// Filesystem stressors of stress-ng that exercise the filesystem under `--temp-path`
/// (the class also holds ones that test the host: bind-mount, binderfs, fanotify, procfs, ...).
const STRESSORS: &[&str] = &[
    "access",
    "chdir",
    "chmod",
    "chown",
    "copy-file",
    "dentry",
    "dir",
    "dirdeep",
    "dirmany",
    "fallocate",
    "fcntl",
    "fiemap",
    "filename",
    "flock",
    "fpunch",
    "fsize",
    "fstat",
    "getdent",
    "hdd",
    "inotify",
    "io",
    "iomix",
    "lease",
    "link",
    "locka",
    "lockf",
    "lockofd",
    "mknod",
    "open",
    "rename",
    "seek",
    "symlink",
    "sync-file",
    "touch",
    "utime",
    "xattr",
    "mmap",
    "readahead",
];

/// Fills `stack.lower` with what the suite needs before mounting.
pub fn prepare(suite: &str, stack: &Stack) -> Result<()> {
    if suite == "fsx" {
        for &(seed, in_lower, _) in FSX_RUNS {
            if in_lower {
                let path = stack.lower.join(format!("fsx-{seed}"));
                fs::write(&path, pseudo_random(seed, FSX_FLEN))
                    .context(|| format!("write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Runs `suite` in the mounted `stack`; `label` names the target in log file names.
pub fn run(suite: &str, stack: &Stack, label: &str, env: &Env) -> Result<Cases> {
    match suite {
        "pjdfstest" => pjdfstest(stack, label, env),
        "fsx" => fsx(stack, label, env),
        "stress-ng" => stress_ng(stack, label, env),
        other => Err(Error::Usage(format!("unknown suite `{other}`"))),
    }
}

fn pjdfstest(stack: &Stack, label: &str, env: &Env) -> Result<Cases> {
    let conf = env.logs.join("pjdfstest.toml");
    // The suite switches to two unprivileged users; Debian has `nobody`/`nogroup` and
    // `daemon`/`daemon` (its default `tests` user does not exist).
    fs::write(
        &conf,
        "[features]\nposix_fallocate = {}\nutime_now = {}\nutimensat = {}\n\n\
         [settings]\nnaptime = 0.01\nallow_remount = false\n\n\
         [dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"]]\n",
    )
    .context(|| format!("write {}", conf.display()))?;
    let log = env.logs.join(format!("pjdfstest-{label}.log"));
    let mut cmd = Command::new(env.tools.join("bin/pjdfstest"));
    // Run from the mount with a relative path: socket tests bind(2) paths below it, and
    // `sun_path` holds only 108 bytes.
    cmd.current_dir(&stack.mnt)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(".");
    let code = run_logged(&mut cmd, &log, Duration::from_secs(900))?;
    let text = fs::read_to_string(&log).context(|| format!("read {}", log.display()))?;
    let mut cases = parse_pjdfstest(&text);
    if code.is_none() || !text.contains("Summary:") {
        cases.insert("(pjdfstest finished)".into(), Outcome::Fail);
    }
    Ok(cases)
}

/// One outcome per `name   ok|FAILED|skipped` line of pjdfstest's output.
pub fn parse_pjdfstest(text: &str) -> Cases {
    let mut cases = Cases::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(' ') else {
            continue;
        };
        if !name.contains("::") {
            continue;
        }
        let rest = rest.trim();
        let outcome = match rest {
            "ok" | "PASSED UNEXPECTEDLY" => Outcome::Pass,
            "FAILED" | "failed as expected" => Outcome::Fail,
            "skipped" => Outcome::Skip,
            _ => continue,
        };
        cases.insert(name.to_string(), outcome);
    }
    cases
}

fn fsx(stack: &Stack, label: &str, env: &Env) -> Result<Cases> {
    let ops = if env.quick { 10_000 } else { 100_000 };
    let mut cases = Cases::new();
    for &(seed, in_lower, conf) in FSX_RUNS {
        let mode = match (in_lower, conf == FSX_BLOCKMODE) {
            (false, _) => "new file",
            (true, true) => "lower file, block mode",
            (true, false) => "lower file, truncated at open",
        };
        let case = format!("fsx -S {seed} -N {ops} ({mode})");
        let conf_path = env.logs.join(format!("fsx-{seed}.toml"));
        fs::write(&conf_path, conf).context(|| format!("write {}", conf_path.display()))?;
        let artifacts = env.logs.join(format!("fsx-{label}-{seed}"));
        fs::create_dir_all(&artifacts).context(|| format!("create {}", artifacts.display()))?;
        let mut cmd = Command::new(env.tools.join("bin/fsx"));
        cmd.arg("-N")
            .arg(ops.to_string())
            .arg("-S")
            .arg(seed.to_string())
            .arg("-f")
            .arg(&conf_path)
            .arg("-P")
            .arg(&artifacts)
            .arg(stack.mnt.join(format!("fsx-{seed}")));
        let log = env.logs.join(format!("fsx-{label}-{seed}.log"));
        let code = run_logged(&mut cmd, &log, Duration::from_secs(1800))?;
        let outcome = if code == Some(0) {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        println!("  {case}: {outcome:?}");
        cases.insert(case, outcome);
    }
    Ok(cases)
}

fn stress_ng(stack: &Stack, label: &str, env: &Env) -> Result<Cases> {
    let secs = if env.quick { 1 } else { 5 };
    let mut cases = Cases::new();
    for name in STRESSORS {
        let log = env.logs.join(format!("stress-ng-{label}-{name}.log"));
        let mut cmd = Command::new("stress-ng");
        cmd.current_dir(&stack.mnt)
            .arg(format!("--{name}"))
            .arg("1")
            .arg("--temp-path")
            .arg(&stack.mnt)
            .args(["--verify", "--timeout"])
            .arg(format!("{secs}s"))
            // Bound the data stressors write, so a run fits any disk.
            .args(["--hdd-bytes", "32M", "--iomix-bytes", "32M"])
            .args(["--fallocate-bytes", "32M", "--mmap-bytes", "32M"]);
        let code = run_logged(&mut cmd, &log, Duration::from_secs(secs + 120))?;
        // stress-ng's exit codes: 0 passed, 3 no resource, 4 not implemented here.
        let outcome = match code {
            Some(0) => Outcome::Pass,
            Some(3 | 4) => Outcome::Skip,
            _ => Outcome::Fail,
        };
        cases.insert(format!("stress-ng --{name}"), outcome);
    }
    Ok(cases)
}

/// Runs `cmd` with stdout and stderr in `log`, in its own process group; kills the group after
/// `limit`. Returns the exit code, `None` for a timeout or a signal.
fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> Result<Option<i32>> {
    let out = fs::File::create(log).context(|| format!("create {}", log.display()))?;
    let err = out
        .try_clone()
        .context(|| format!("dup {}", log.display()))?;
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let line = crate::host::cmdline(cmd);
    let mut child = cmd.spawn().map_err(|e| Error::Command {
        cmdline: line.clone(),
        why: format!("could not start: {e}"),
    })?;
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().context(|| format!("wait for {line}"))? {
            return Ok(st.code());
        }
        if start.elapsed() > limit {
            println!("  timeout after {limit:?}: {line} (log {})", log.display());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic bytes for the lower files (xorshift64*), so both targets start equal.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pjdfstest_lines() {
        let text = "chmod::eperm    ok\nrename::x   FAILED\n\tpanic text\n\
                    unlink::erofs    skipped\n\tRemounts not allowed\nSummary: 1 failed\n";
        let c = parse_pjdfstest(text);
        assert_eq!(c.get("chmod::eperm"), Some(&Outcome::Pass));
        assert_eq!(c.get("rename::x"), Some(&Outcome::Fail));
        assert_eq!(c.get("unlink::erofs"), Some(&Outcome::Skip));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn pseudo_random_is_repeatable() {
        assert_eq!(pseudo_random(3, 100), pseudo_random(3, 100));
        assert_ne!(pseudo_random(3, 100), pseudo_random(4, 100));
        assert_eq!(pseudo_random(3, 5).len(), 5);
    }
}
