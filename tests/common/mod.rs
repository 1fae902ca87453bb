//! Shared helpers for the integration tests: skipping (or failing, under `UNIONFS_STRICT=1`)
//! where the machine cannot mount, building layer stacks in a temporary directory, and mounting
//! them with unionfs or with kernel overlayfs as the reference.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this machine can run mounting tests. Without root or `/dev/fuse` it prints
/// `skipping: <reason>` and returns false, unless `UNIONFS_STRICT=1`, where it panics: CI has
/// both, so a skip there would hide a failure.
pub fn can_mount(test: &str) -> bool {
    let reason = if !nix_is_root() {
        Some("not running as root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing")
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if std::env::var_os("UNIONFS_STRICT").is_some_and(|v| v == "1") => {
            panic!("{test}: cannot mount ({r}) and UNIONFS_STRICT=1")
        }
        Some(r) => {
            eprintln!("skipping {test}: {r}");
            false
        }
    }
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The unionfs binary under test.
pub fn unionfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfs"))
}

/// A stack of layer directories in a fresh temporary directory:
/// `lower0` (top-most) .. `lowerN`, `upper`, `work`, `mnt`.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    /// Mount with `-o noio_uring`: requests over `/dev/fuse` only.
    pub dev_fuse_only: bool,
}

impl Stack {
    pub fn new(n_lowers: usize) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-test-")
            .tempdir()
            .expect("temporary directory");
        let lowers: Vec<PathBuf> = (0..n_lowers)
            .map(|i| dir.path().join(format!("lower{i}")))
            .collect();
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let mnt = dir.path().join("mnt");
        for d in lowers.iter().chain([&upper, &work, &mnt]) {
            std::fs::create_dir_all(d).expect("create layer directory");
        }
        Stack {
            dir,
            lowers,
            upper,
            work,
            mnt,
            dev_fuse_only: false,
        }
    }

    /// Where the daemon keeps layer indexes: inside the test's directory, gone with it.
    pub fn index_dir(&self) -> PathBuf {
        self.dir.path().join("index-cache")
    }

    /// Where the daemon logs: inside the test's directory, gone with it.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("unionfs.log")
    }

    /// `A:B:C` for the lowers, top-most first.
    pub fn lowerdir(&self) -> OsString {
        let mut s = OsString::new();
        for (i, l) in self.lowers.iter().enumerate() {
            if i > 0 {
                s.push(":");
            }
            s.push(l);
        }
        s
    }

    /// Mounts the stack with unionfs (detached, as a user would) on `self.mnt`.
    pub fn mount_unionfs(&self) -> MountGuard {
        self.unionfs_mount(true)
    }

    /// Mounts the stack read-only (no upper) with unionfs.
    pub fn mount_unionfs_ro(&self) -> MountGuard {
        self.unionfs_mount(false)
    }

    fn unionfs_mount(&self, writable: bool) -> MountGuard {
        let mut cmd = Command::new(unionfs_bin());
        cmd.env("UNIONFS_INDEX_DIR", self.index_dir())
            .arg("mount")
            .arg("--lower")
            .arg(self.lowerdir());
        if self.dev_fuse_only {
            cmd.arg("-o").arg("noio_uring");
        }
        if writable {
            cmd.arg("--upper")
                .arg(&self.upper)
                .arg("--work")
                .arg(&self.work);
        }
        let out = cmd
            .arg("--log-file")
            .arg(self.log_file())
            .arg(&self.mnt)
            .output()
            .expect("run unionfs mount");
        assert!(
            out.status.success(),
            "unionfs mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        MountGuard {
            mnt: self.mnt.clone(),
        }
    }

    /// Mounts the stack with kernel overlayfs, `redirect_dir=on,index=on`: the reference.
    pub fn mount_overlay(&self) -> MountGuard {
        let mut opts = OsString::from("lowerdir=");
        opts.push(self.lowerdir());
        opts.push(",upperdir=");
        opts.push(&self.upper);
        opts.push(",workdir=");
        opts.push(&self.work);
        opts.push(",redirect_dir=on,index=on");
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(&opts)
            .arg(&self.mnt)
            .output()
            .expect("run mount -t overlay");
        assert!(
            out.status.success(),
            "overlay mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        MountGuard {
            mnt: self.mnt.clone(),
        }
    }
}

/// Unmounts on drop (so a failing test leaves nothing mounted).
pub struct MountGuard {
    pub mnt: PathBuf,
}

impl MountGuard {
    /// Unmounts now and waits until the mountpoint is free.
    pub fn unmount(self) {
        drop(self)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        // `umount` works for both unionfs (the daemon exits by itself) and overlayfs.
        let _ = Command::new("umount").arg(&self.mnt).status();
        for _ in 0..200 {
            if !is_mountpoint(&self.mnt) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Whether `path` is currently a mountpoint (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}
