//! A private podman/buildah installation for one test: its own store (`--root`, `--runroot`),
//! `containers.conf` and `storage.conf` in a temporary directory, unionfs as the overlay
//! driver's `mount_program`, and a teardown that removes every container, image and mount and
//! checks that nothing is left mounted or serving.
//!
//! The private `containers.conf` holds what this sandbox needs (the runc runtime, cgroupfs, no
//! network, ulimits of 1024 because podman's defaults exceed the hard limits here); the same
//! settings are also passed as flags so that a user's own configuration cannot leak in.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::invoke::{processes_serving, wait_until};

/// Longest a single podman or buildah command may take before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Whether podman, buildah and runc are installed; otherwise says why the test skips (or
/// fails under `UNIONFS_STRICT=1`, as CI installs them).
pub fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["podman", "buildah", "runc"]
        .into_iter()
        .filter(|t| find_command(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{} not installed", missing.join(", "));
    if std::env::var_os("UNIONFS_STRICT").is_some_and(|v| v == "1") {
        panic!("{test}: {why} and UNIONFS_STRICT=1 (cargo xtask test installs them)");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// The first executable named `name` on `PATH` (or in the sbin directories, where runc is).
pub fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One private container-engine setup; dropping it tears everything down.
pub struct Engine {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub mount_program: PathBuf,
    containers_conf: PathBuf,
    storage_conf: PathBuf,
    tmp: PathBuf,
    runc: PathBuf,
}

impl Engine {
    /// A fresh store whose overlay driver mounts with `mount_program`.
    pub fn new(mount_program: &Path) -> Engine {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-podman-")
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().join("root");
        let runroot = dir.path().join("runroot");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("create the engine's TMPDIR");
        let runc = find_command("runc").expect("runc is installed");
        let containers_conf = dir.path().join("containers.conf");
        std::fs::write(
            &containers_conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 netns = \"none\"\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 tmp_dir = \"{}\"\n\
                 [engine.runtimes]\n\
                 runc = [\"{}\"]\n",
                dir.path().join("libpod").display(),
                runc.display()
            ),
        )
        .expect("write containers.conf");
        let storage_conf = dir.path().join("storage.conf");
        std::fs::write(
            &storage_conf,
            storage_conf_text(&root, &runroot, mount_program),
        )
        .expect("write storage.conf");
        Engine {
            dir,
            root,
            runroot,
            mount_program: mount_program.to_path_buf(),
            containers_conf,
            storage_conf,
            tmp,
            runc,
        }
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.env("CONTAINERS_CONF", &self.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env("TMPDIR", &self.tmp)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!(
                "overlay.mount_program={}",
                self.mount_program.display()
            ));
        if tool == "podman" {
            cmd.arg("--runtime")
                .arg(&self.runc)
                .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
                // podman's default (/run/libpod) is shared, and a reset elsewhere removes it.
                .arg("--tmpdir")
                .arg(self.dir.path().join("libpod"));
        }
        cmd
    }

    /// Runs `tool args` (within [`COMMAND_LIMIT`]) and returns its output, whatever its status.
    pub fn try_run<S: AsRef<OsStr>>(&self, tool: &str, args: &[S]) -> Output {
        let mut cmd = self.command(tool);
        cmd.args(args).stdin(Stdio::null());
        let desc = format!(
            "{tool} {:?}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(cmd.output());
        });
        match rx.recv_timeout(COMMAND_LIMIT) {
            Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {desc}: {e}")),
            Err(_) => panic!("{desc} did not finish within {COMMAND_LIMIT:?}"),
        }
    }

    /// Runs `tool args`, panics (with its stderr) unless it succeeds, and returns its stdout.
    pub fn run<S: AsRef<OsStr>>(&self, tool: &str, args: &[S]) -> String {
        let out = self.try_run(tool, args);
        let desc = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            out.status.success(),
            "`{tool} {desc}` failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman args`, checked.
    pub fn podman<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        self.run("podman", args)
    }

    /// `buildah args`, checked.
    pub fn buildah<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        self.run("buildah", args)
    }

    /// Mounts below the engine's directory (the store's own bind mount included).
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_below(self.dir.path())
    }

    /// Removes every container and image, resets the store and checks that nothing is left
    /// mounted below the engine's directory and no daemon still serves one of its mounts.
    pub fn finish(self) {
        let fuse_targets: Vec<PathBuf> = self.mounts();
        self.teardown();
        let left = self.mounts();
        assert!(left.is_empty(), "left mounted after the reset: {left:?}");
        for t in fuse_targets {
            wait_until(&format!("no daemon serves {}", t.display()), || {
                processes_serving(&t).is_empty()
            });
        }
    }

    fn teardown(&self) {
        let _ = self.try_run("podman", &["rm", "--all", "--force", "--time", "0"]);
        let _ = self.try_run("buildah", &["rm", "--all"]);
        let _ = self.try_run("podman", &["system", "reset", "--force"]);
        crate::invoke::remove_daemon_logs(self.dir.path());
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.mounts().is_empty() {
            crate::invoke::remove_daemon_logs(self.dir.path());
            return;
        }
        // A test failed half-way: leave nothing behind for the next one.
        self.teardown();
        let mut left = self.mounts();
        left.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in left {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The `storage.conf` for a private store using `mount_program` (also the README's example).
pub fn storage_conf_text(root: &Path, runroot: &Path, mount_program: &Path) -> String {
    format!(
        "[storage]\n\
         driver = \"overlay\"\n\
         graphroot = \"{}\"\n\
         runroot = \"{}\"\n\
         [storage.options.overlay]\n\
         mount_program = \"{}\"\n",
        root.display(),
        runroot.display(),
        mount_program.display()
    )
}

/// Mountpoints at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// The fstype of each mount at or below `dir`, keyed by mountpoint.
pub fn fuse_mounts_below(dir: &Path) -> Vec<PathBuf> {
    mounts_below(dir)
        .into_iter()
        .filter(|m| {
            crate::invoke::mount_entry(m)
                .is_some_and(|(t, _)| t == "fuse" || t.starts_with("fuse."))
        })
        .collect()
}

/// Writes a tiny root filesystem of the host's static busybox into `dir`: `/bin/busybox` and
/// links for the applets the tests use, the users, and the files runc bind-mounts over.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox-static is installed");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "root",
        "tmp",
        "home/user",
    ] {
        std::fs::create_dir_all(dir.join(d)).expect("create a rootfs directory");
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "ls", "cat", "echo", "rm", "mkdir", "touch", "stat", "id", "sleep", "chmod", "mv",
        "ln", "find", "sort", "test", "true", "wc", "rmdir", "head",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))
            .expect("link a busybox applet");
    }
    let files: &[(&str, &str)] = &[
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        ),
        ("etc/group", "root:x:0:\nuser:x:1000:\n"),
        // runc bind-mounts these; shipping them means it never has to create them.
        ("etc/hosts", ""),
        ("etc/resolv.conf", ""),
        ("etc/hostname", ""),
        ("run/.containerenv", ""),
    ];
    for (path, text) in files {
        std::fs::write(dir.join(path), text).expect("write a rootfs file");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod /tmp");
    std::os::unix::fs::chown(dir.join("home/user"), Some(1000), Some(1000)).expect("chown home");
}
