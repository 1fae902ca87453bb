//! Helpers for reading an export back with podman: a private podman store (`--root`,
//! `--runroot`, the vfs driver, so no mount program is involved), its own `containers.conf`,
//! and a two-layer busybox image built with umoci, so that a container can run from the export.
//!
//! The settings are those of tests/podman/engine.rs: runc, cgroupfs, no network, ulimits of
//! 1024 because podman's defaults exceed the hard limits of this sandbox.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::fixture::Fixture;

/// Longest a single podman command may take before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Whether podman, runc and umoci are installed and we are root; otherwise says why the test
/// skips (or fails under `UNIONFS_STRICT=1`, as CI installs them and runs as root).
pub fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["podman", "runc", "umoci"]
        .into_iter()
        .filter(|t| find_command(t).is_none())
        .collect();
    let why = if !missing.is_empty() {
        format!("{} not installed", missing.join(", "))
    } else if !nix::unistd::geteuid().is_root() {
        "not running as root (rootful podman)".to_string()
    } else {
        return true;
    };
    if std::env::var_os("UNIONFS_STRICT").is_some_and(|v| v == "1") {
        panic!("{test}: {why} and UNIONFS_STRICT=1 (cargo xtask test installs them)");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// The first executable named `name` on `PATH` (or in the sbin directories, where runc is).
fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A private podman store; dropping it removes every container and image and unmounts
/// whatever podman left below its directory.
pub struct Podman {
    dir: tempfile::TempDir,
    conf: PathBuf,
    runc: PathBuf,
}

impl Podman {
    pub fn new() -> Podman {
        // Lowercase only: `podman pull oci:DIR` names the image after DIR, and a reference
        // with capitals (tempfile's random names have them) is refused.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .subsec_nanos();
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "unionfs-store-podman-{}-{nanos}",
                std::process::id()
            ))
            .rand_bytes(0)
            .tempdir()
            .expect("temporary directory");
        let runc = find_command("runc").expect("runc is installed");
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 netns = \"none\"\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 [engine.runtimes]\n\
                 runc = [\"{}\"]\n",
                runc.display()
            ),
        )
        .expect("write containers.conf");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("create podman's TMPDIR");
        Podman { dir, conf, runc }
    }

    /// A path below the store's directory whose name podman accepts as an image reference.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `podman args` in the private store, within [`COMMAND_LIMIT`], whatever its status.
    pub fn try_run(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("TMPDIR", d.join("tmp"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(&self.runc)
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--tmpdir")
            .arg(d.join("libpod"))
            .args(args)
            .stdin(Stdio::null());
        let desc = format!("podman {args:?}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(cmd.output());
        });
        match rx.recv_timeout(COMMAND_LIMIT) {
            Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {desc}: {e}")),
            Err(_) => panic!("{desc} did not finish within {COMMAND_LIMIT:?}"),
        }
    }

    /// `podman args`, panicking with its output unless it succeeds; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "`podman {}` failed ({})\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Mount points at or below the store's directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(self.dir.path()))
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.try_run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.try_run(&["system", "reset", "--force"]);
        let mut left = self.mounts();
        left.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in left {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A two-layer OCI layout `oci:t` made with umoci: the host's static busybox with a few
/// applets and `/etc/old`; then `/etc/message` added and `/etc/old` deleted (a whiteout).
pub fn busybox_image(f: &Fixture) -> PathBuf {
    let layout = f.root.path().join("busybox-oci");
    let l = layout.to_str().unwrap();
    let bundle = f.root.path().join("busybox-bundle");
    let b = bundle.to_str().unwrap();
    let image = format!("{l}:t");
    f.run("umoci", &["init", "--layout", l]);
    f.run("umoci", &["new", "--image", &image]);
    f.run("umoci", &["unpack", "--image", &image, b]);
    let r = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox-static is installed (cargo xtask test installs it)");
    std::fs::copy(busybox, r.join("bin/busybox")).unwrap();
    for a in ["sh", "cat", "test", "true"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
    }
    std::fs::write(r.join("etc/old"), b"deleted in layer two\n").unwrap();
    f.run(
        "umoci",
        &["repack", "--refresh-bundle", "--image", &image, b],
    );
    std::fs::write(r.join("etc/message"), b"from layer two\n").unwrap();
    std::fs::remove_file(r.join("etc/old")).unwrap();
    f.run(
        "umoci",
        &["repack", "--refresh-bundle", "--image", &image, b],
    );
    layout
}

/// The diffIDs in the config of the image tagged `tag` in the OCI layout `layout`.
pub fn layout_diff_ids(layout: &Path, tag: &str) -> Vec<String> {
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    let blob = |digest: &serde_json::Value| {
        let d = digest.as_str().unwrap();
        layout.join("blobs/sha256").join(&d["sha256:".len()..])
    };
    let index = json(layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}"));
    let manifest = json(blob(&manifest["digest"]));
    let config = json(blob(&manifest["config"]["digest"]));
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}
