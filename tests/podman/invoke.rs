//! Runs a mount program exactly as containers/storage 1.43 does (drivers/overlay: `PROG -o
//! <options> TARGET`, working directory the store's `overlay/` directory, stdin and stdout on
//! /dev/null, stderr a pipe that `cmd.Run` drains to EOF), over a store laid out like
//! containers/storage's: `l/<ID>` symlinks to each layer's `diff/`, relative `lowerdir` entries
//! (what it passes once the option string nears a page), AUFS whiteouts in the layers.
//!
//! The same invocation is made against unionfs (under its own name and as `fuse-overlayfs`)
//! and, when installed, the real fuse-overlayfs, so that the tests can compare what each shows.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::DirEntryExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a mount program may take to mount, and a daemon to exit after an unmount.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A containers/storage-like `overlay/` directory with `layers` lower layers (index 0 is the
/// top-most) and one container layer.
pub struct FakeStore {
    /// Kept for its `Drop`, which removes the store.
    _dir: tempfile::TempDir,
    /// `<dir>/overlay`, the mount program's working directory.
    pub home: PathBuf,
    /// `l/<ID>` for each lower layer, top-most first, relative to `home`.
    pub links: Vec<PathBuf>,
    /// Each lower layer's `diff/`, top-most first.
    pub diffs: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl FakeStore {
    pub fn new(layers: usize) -> FakeStore {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-cstore-")
            .tempdir()
            .expect("temporary directory");
        let home = dir.path().join("overlay");
        std::fs::create_dir_all(home.join("l")).expect("create l/");
        let mut links = Vec::new();
        let mut diffs = Vec::new();
        for i in 0..layers {
            // containers/storage names links with 26 base32 characters.
            let id = format!("LAYER{i:04}{}", "X".repeat(17));
            let layer = home.join(format!("layer{i:04}"));
            std::fs::create_dir_all(layer.join("diff")).expect("create a layer");
            std::os::unix::fs::symlink(format!("../layer{i:04}/diff"), home.join("l").join(&id))
                .expect("create the layer link");
            links.push(Path::new("l").join(id));
            diffs.push(layer.join("diff"));
        }
        let ctr = home.join("container");
        let (upper, work, merged) = (ctr.join("diff"), ctr.join("work"), ctr.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).expect("create the container layer");
        }
        FakeStore {
            _dir: dir,
            home,
            links,
            diffs,
            upper,
            work,
            merged,
        }
    }

    /// The option string containers/storage builds: relative lowers, an empty item before
    /// `volatile` (it appends `,volatile` to a string that may already end in a comma).
    pub fn options(&self, read_write: bool) -> OsString {
        let mut o = OsString::from("lowerdir=");
        for (i, l) in self.links.iter().enumerate() {
            if i > 0 {
                o.push(":");
            }
            o.push(l);
        }
        if read_write {
            o.push(",upperdir=");
            o.push(&self.upper);
            o.push(",workdir=");
            o.push(&self.work);
            o.push(",,volatile");
        }
        o
    }
}

impl Drop for FakeStore {
    fn drop(&mut self) {
        remove_daemon_logs(&self.home);
    }
}

/// Removes the log files that detached daemons left in the default log directory for mounts
/// below `dir` (containers/storage cannot pass `--log-file`, so each mount leaves one).
pub fn remove_daemon_logs(dir: &Path) {
    let log_dir = unionfs::config::default_log_dir(true, None, 0);
    let name = unionfs::config::log_file_name(dir);
    let prefix = name
        .as_encoded_bytes()
        .strip_suffix(b".log")
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&log_dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let below = n
            .as_encoded_bytes()
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(b"-"));
        if below {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What one invocation of a mount program did.
pub struct Invocation {
    pub status: ExitStatus,
    pub stderr: String,
    /// Whether the target was in the mount table the moment the program exited.
    pub mounted_at_exit: bool,
}

/// Runs `prog -o options target` in `cwd` as containers/storage does and waits for it to exit
/// and for its stderr pipe to reach EOF; panics if either takes longer than [`LIMIT`] (a daemon
/// that kept the pipe would hang podman forever).
pub fn run_mount_program(prog: &Path, options: &OsStr, target: &Path, cwd: &Path) -> Invocation {
    let mut child = Command::new(prog)
        .arg("-o")
        .arg(options)
        .arg(target)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the mount program") {
            break s;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{} did not exit within {LIMIT:?}",
            prog.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mounted_at_exit = crate::common::is_mountpoint(target);
    let stderr = rx.recv_timeout(LIMIT).unwrap_or_else(|_| {
        panic!(
            "{} exited but something still holds its stderr pipe after {LIMIT:?}",
            prog.display()
        )
    });
    Invocation {
        status,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        mounted_at_exit,
    }
}

/// The mount table's entry for `path`: (filesystem type, super options).
pub fn mount_entry(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        if fields.get(4) != Some(&want.as_ref()) {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        Some((
            fields.get(sep + 1)?.to_string(),
            fields.get(sep + 3)?.to_string(),
        ))
    })
}

/// Pids of live processes whose command line has `target` as an argument (the daemon).
pub fn processes_serving(target: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_none_or(|r| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline
            .split(|&b| b == 0)
            .any(|a| a == target.as_os_str().as_encoded_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `cond` holds, panicking after [`LIMIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= LIMIT {
            panic!("timed out waiting until {what}"); // a hang becomes a failure, not a stuck CI
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One directory entry as a container tool sees it through readdir and lstat.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub path: String,
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    /// d_ino was 0 in the listing (tar and `podman diff` then skip or mis-pair the entry).
    pub zero_d_ino: bool,
}

/// Walks `root` the way containers/storage's naive diff does (readdir, then lstat each name)
/// and returns every entry below it, sorted by path.
pub fn walk(root: &Path) -> Vec<Seen> {
    let mut out = Vec::new();
    walk_into(root, root, &mut out);
    out.sort();
    out
}

fn walk_into(root: &Path, dir: &Path, out: &mut Vec<Seen>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"));
    for e in entries {
        let e = e.expect("readdir entry");
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|err| {
            panic!("{p:?} is listed but lstat fails right after the listing: {err}")
        });
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            'o'
        };
        out.push(Seen {
            path: p
                .strip_prefix(root)
                .expect("below the root")
                .to_string_lossy()
                .into_owned(),
            kind,
            mode: m.mode() & 0o7777,
            size: if ft.is_dir() { 0 } else { m.len() },
            mtime: (m.mtime(), m.mtime_nsec()),
            zero_d_ino: e.ino() == 0,
        });
        if ft.is_dir() {
            walk_into(root, &p, out);
        }
    }
}
