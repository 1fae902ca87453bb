//! The container-launch rows: what starting a container over a union costs, end to end.
//!
//! They do not fit the mount-then-operate pattern of the other rows, because `unionfs run`
//! mounts, runs and unmounts by itself. So each row times the whole sequence on its own, with
//! kernel overlayfs plus `unshare --mount --pid --fork chroot` as the reference in both rows:
//! - [`Launch::RunTrue`]: on the kernel target, mount a fresh upper and work dir, `unshare
//!   --mount --pid --fork chroot MNT /bin/true`, umount; on unionfs, `unionfs run --rm --lower
//!   STACK -- /bin/true` (mount, namespaces, cgroups, command, teardown).
//! - [`Launch::MountOnly`]: the same reference on the kernel target, and on the FUSE targets
//!   only the mount and the unmount (until the daemon exited), with no command: the part of
//!   `unionfs run` that is the filesystem's.
//!
//! Preparing the upper and work directories and removing them afterwards is not timed. A run
//! must leave nothing mounted below the state directory; one that does is an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::quiet;
use super::targets::{remove_tree, Kind, Spec, Target};
use crate::host::{Context, Error, Result};

/// Which launch row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    RunTrue,
    MountOnly,
}

/// Times one run of `row` on `target` over `layers` (bottom first).
pub fn measure(row: Launch, target: &Target, layers: &[PathBuf]) -> Result<f64> {
    let spec = Spec {
        layers,
        volatile: false,
    };
    let took = match (row, target.kind) {
        (_, Kind::Kernel) => kernel_chroot_true(target, &spec)?,
        (Launch::RunTrue, Kind::Unionfs) => unionfs_run_true(target, layers)?,
        (Launch::RunTrue, Kind::FuseOverlayfs) => {
            return Err(Error::Unexpected(
                "the run-true row has no fuse-overlayfs launcher".into(),
            ))
        }
        (Launch::MountOnly, _) => {
            let (mounted, mount) = target.mount_timed(&spec)?;
            mount + mounted.unmount_timed()?
        }
    };
    Ok(took.as_secs_f64())
}

/// Kernel overlayfs on a fresh upper and work dir, `/bin/true` chrooted into it in new mount
/// and pid namespaces, umount.
fn kernel_chroot_true(target: &Target, spec: &Spec) -> Result<Duration> {
    let (mounted, mount) = target.mount_timed(spec)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "chroot"])
        .arg(&mounted.mnt)
        .arg("/bin/true");
    let start = Instant::now();
    let ran = quiet(&mut cmd);
    let command = start.elapsed();
    // Unmount even when the command failed; the guard would, but less carefully.
    let unmount = mounted.unmount_timed()?;
    ran?;
    Ok(mount + command + unmount)
}

/// `unionfs run --rm` of `/bin/true`, its read/write layer in the target's state directory.
fn unionfs_run_true(target: &Target, layers: &[PathBuf]) -> Result<Duration> {
    let state = target.state_dir();
    std::fs::create_dir_all(&state).context(|| format!("create {}", state.display()))?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let mut cmd = Command::new(target.program());
    cmd.arg("run")
        .arg("--rm")
        .arg("--state-dir")
        .arg(&state)
        .arg("--lower")
        .arg(lower.join(":"))
        .args(["--", "/bin/true"]);
    let start = Instant::now();
    let ran = quiet(&mut cmd);
    let took = start.elapsed();
    ran?;
    check_clean(&state)?;
    Ok(took)
}

/// `unionfs run --rm` must have unmounted its union and removed its layer.
fn check_clean(state: &Path) -> Result<()> {
    if super::mount_points().iter().any(|m| m.starts_with(state)) {
        return Err(Error::Unexpected(format!(
            "`unionfs run --rm` left a mount below {}",
            state.display()
        )));
    }
    let left: Vec<PathBuf> = std::fs::read_dir(state)
        .context(|| format!("list {}", state.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    for l in &left {
        remove_tree(l)?;
    }
    Err(Error::Unexpected(format!(
        "`unionfs run --rm` left {} below {}",
        left[0].display(),
        state.display()
    )))
}
