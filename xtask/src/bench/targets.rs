//! The filesystems the benchmark compares — kernel overlayfs (the reference), unionfs and
//! fuse-overlayfs — and how each is mounted over a stack and unmounted again.
//!
//! A mount lives in a [`Mounted`] guard: dropping it unmounts (falling back to `umount -l`) and
//! waits for the FUSE daemon to exit, so that an error anywhere in the benchmark leaves neither
//! a mount nor a daemon behind. Every mount gets a fresh upper and work directory, so that no
//! row sees what another wrote.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::quiet;
use crate::host::{self, Context, Error, Result};

/// Which filesystem a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    Unionfs,
    FuseOverlayfs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Unionfs => "unionfs",
            Kind::FuseOverlayfs => "fuse-overlayfs",
        }
    }
}

/// A filesystem to benchmark, with the program that mounts it (none for the kernel's).
pub struct Target {
    pub kind: Kind,
    program: PathBuf,
    /// `target/bench/run/<name>/`: upper, work, mount point, daemon log.
    dir: PathBuf,
}

/// What to mount: lower layers, bottom first (as the stacks list them), and whether to skip
/// fsyncs (`volatile`).
pub struct Spec<'a> {
    pub layers: &'a [PathBuf],
    pub volatile: bool,
}

impl Target {
    pub fn new(kind: Kind, program: PathBuf, run_dir: &Path) -> Target {
        Target {
            kind,
            program,
            dir: run_dir.join(kind.name()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn mount_point(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// The program that mounts this target (`unionfs` itself for [`Kind::Unionfs`]).
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// `target/bench/run/<name>/state`: where `unionfs run` creates its read/write layers.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Mounts `spec` on a fresh upper and work directory and returns once the mount is live.
    pub fn mount(&self, spec: &Spec) -> Result<Mounted> {
        self.mount_timed(spec).map(|(m, _)| m)
    }

    /// [`Target::mount`], also returning how long the mount command took until the mount was
    /// live; preparing the directories and finding the daemon are not counted.
    pub fn mount_timed(&self, spec: &Spec) -> Result<(Mounted, Duration)> {
        let (upper, work, mnt) = (
            self.dir.join("upper"),
            self.dir.join("work"),
            self.mount_point(),
        );
        for d in [&upper, &work] {
            remove_tree(d)?;
            fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
        }
        fs::create_dir_all(&mnt).context(|| format!("create {}", mnt.display()))?;
        if super::is_mount_point(&mnt) {
            return Err(Error::Host(format!(
                "{} is still mounted from an earlier row",
                mnt.display()
            )));
        }
        let mut cmd = self.mount_command(spec, &upper, &work, &mnt);
        let start = Instant::now();
        quiet(&mut cmd)?;
        let mut mounted = Mounted {
            kind: self.kind,
            program: self.program.clone(),
            mnt,
            upper,
            work,
            daemon: None,
            live: true,
        };
        if !wait_for(Duration::from_secs(5), || {
            super::is_mount_point(&mounted.mnt)
        }) {
            return Err(Error::Unexpected(format!(
                "`{}` succeeded but {} is not mounted",
                host::cmdline(&cmd),
                mounted.mnt.display()
            )));
        }
        let took = start.elapsed();
        if self.kind != Kind::Kernel {
            mounted.daemon = find_daemon(&self.program, &mounted.mnt);
        }
        Ok((mounted, took))
    }

    fn mount_command(&self, spec: &Spec, upper: &Path, work: &Path, mnt: &Path) -> Command {
        let top_first = |layers: &[PathBuf], f: &dyn Fn(&PathBuf) -> String| {
            layers.iter().rev().map(f).collect::<Vec<_>>().join(":")
        };
        match self.kind {
            Kind::Kernel => {
                // mount(2) takes at most a page of options: name the layers relative to their
                // common parent (the mount runs there), so 100 layers still fit.
                let parent = spec.layers[0].parent().expect("layers live in a stack dir");
                let lower = top_first(spec.layers, &|l| file_name(l));
                let mut opts = format!(
                    "lowerdir={lower},upperdir={},workdir={},redirect_dir=on,index=on",
                    upper.display(),
                    work.display()
                );
                if spec.volatile {
                    opts.push_str(",volatile");
                }
                let mut cmd = Command::new("mount");
                cmd.current_dir(parent)
                    .args(["-t", "overlay", "overlay", "-o", &opts])
                    .arg(mnt);
                cmd
            }
            Kind::Unionfs => {
                let lower = top_first(spec.layers, &|l| l.display().to_string());
                let mut cmd = Command::new(&self.program);
                cmd.arg("mount")
                    .arg("--lower")
                    .arg(lower)
                    .arg("--upper")
                    .arg(upper)
                    .arg("--work")
                    .arg(work)
                    .arg("--log-file")
                    .arg(self.dir.join("daemon.log"));
                if spec.volatile {
                    cmd.args(["-o", "volatile"]);
                }
                cmd.arg(mnt);
                cmd
            }
            Kind::FuseOverlayfs => {
                let lower = top_first(spec.layers, &|l| l.display().to_string());
                let opts = format!(
                    "lowerdir={lower},upperdir={},workdir={}",
                    upper.display(),
                    work.display()
                );
                let mut cmd = Command::new(&self.program);
                cmd.args(["-o", &opts]).arg(mnt);
                cmd
            }
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("layer dirs have a name")
        .to_string_lossy()
        .into_owned()
}

/// A live mount. [`Mounted::unmount`] reports failures; dropping it unmounts best-effort.
pub struct Mounted {
    pub kind: Kind,
    program: PathBuf,
    pub mnt: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    /// The FUSE daemon's process id, if it could be found.
    pub daemon: Option<u32>,
    live: bool,
}

impl Mounted {
    /// The daemon's resident set size in MiB (VmRSS in /proc/PID/status).
    pub fn daemon_rss_mib(&self) -> Option<f64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.daemon?)).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Unmounts, waits for the daemon to exit and removes the upper and work directories.
    pub fn unmount(self) -> Result<()> {
        self.unmount_timed().map(drop)
    }

    /// [`Mounted::unmount`], also returning how long it took until the mount was gone and the
    /// daemon had exited; removing the upper and work directories is not counted.
    pub fn unmount_timed(mut self) -> Result<Duration> {
        self.live = false;
        let start = Instant::now();
        let mut cmd = match self.kind {
            Kind::Kernel => {
                let mut c = Command::new("umount");
                c.arg(&self.mnt);
                c
            }
            Kind::Unionfs => {
                let mut c = Command::new(&self.program);
                c.arg("umount").arg(&self.mnt);
                c
            }
            Kind::FuseOverlayfs => {
                let mut c = Command::new("fusermount3");
                c.arg("-u").arg(&self.mnt);
                c
            }
        };
        // Another process can hold the mount busy for a moment (a program walking the
        // workspace, a mount namespace created meanwhile); retry before detaching lazily.
        let mut result = quiet(&mut cmd);
        for _ in 0..5 {
            if result.is_ok() || !super::is_mount_point(&self.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            result = quiet(&mut cmd);
        }
        if result.is_err()
            || !wait_for(Duration::from_secs(5), || !super::is_mount_point(&self.mnt))
        {
            eprintln!(
                "note: {} stayed busy; detaching it lazily ({})",
                self.mnt.display(),
                result
                    .as_ref()
                    .err()
                    .map_or("still listed".into(), ToString::to_string)
            );
            force_unmount(&self.mnt);
        }
        if super::is_mount_point(&self.mnt) {
            return Err(Error::Unexpected(format!(
                "{} is still mounted after umount -l",
                self.mnt.display()
            )));
        }
        self.wait_for_daemon()?;
        let took = start.elapsed();
        remove_tree(&self.upper)?;
        remove_tree(&self.work)?;
        Ok(took)
    }

    /// The daemon exits by itself once its mount is gone; give it a few seconds.
    fn wait_for_daemon(&self) -> Result<()> {
        let Some(pid) = self.daemon else {
            return Ok(());
        };
        if wait_for(Duration::from_secs(10), || !alive(pid)) {
            Ok(())
        } else {
            Err(Error::Unexpected(format!(
                "{} daemon {pid} still runs 10 s after {} was unmounted",
                self.kind.name(),
                self.mnt.display()
            )))
        }
    }
}

/// Whether process `pid` still runs. A zombie counts as gone: a detached daemon's parent is
/// init, which may take a while to reap it.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        eprintln!("cleaning up: unmounting {}", self.mnt.display());
        let mut cmd = Command::new("umount");
        cmd.arg(&self.mnt);
        if quiet(&mut cmd).is_err() {
            force_unmount(&self.mnt);
        }
        if let Err(e) = self.wait_for_daemon() {
            eprintln!("cleaning up: {e}");
        }
    }
}

/// `umount`, then `umount -l`, each followed by a short wait; the caller checks the table.
pub fn force_unmount(mnt: &Path) {
    for lazy in [false, true] {
        if !super::is_mount_point(mnt) {
            return;
        }
        let mut cmd = Command::new("umount");
        if lazy {
            cmd.arg("-l");
        }
        cmd.arg(mnt);
        if let Err(e) = quiet(&mut cmd) {
            eprintln!("cleaning up: {e}");
        }
        wait_for(Duration::from_secs(5), || !super::is_mount_point(mnt));
    }
}

/// The process whose command line names `program` and ends with the mount point `mnt`: the
/// daemon that the mount command left running.
fn find_daemon(program: &Path, mnt: &Path) -> Option<u32> {
    let prog_name = program.file_name()?;
    let mnt = mnt.as_os_str().as_encoded_bytes();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let (Some(first), Some(last)) = (args.first(), args.last()) else {
            continue;
        };
        let first_name = Path::new(OsStr::from_bytes(first)).file_name();
        if first_name == Some(prog_name) && *last == mnt {
            return Some(pid);
        }
    }
    None
}

/// Live processes whose command line mentions `dir`: daemons that outlived their mount.
pub fn daemons_under(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != std::process::id() && alive(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Polls `done` every millisecond (then every 20 ms) until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        let pause = if start.elapsed() < Duration::from_millis(100) {
            1
        } else {
            20
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
    done()
}

/// Removes `dir` if it exists. Only ever called on upper and work directories of unmounted
/// targets, never on a live mount.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context(|| format!("remove {}", dir.display())),
    }
}
