//! The two filesystems every suite runs on: unionfs and kernel overlayfs
//! (`redirect_dir=on,index=on`), each mounted fresh over its own copy of the same layers.
//!
//! A [`Mounted`] unmounts when dropped, so a suite that fails half way leaves nothing mounted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::{self, Context, Error, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Unionfs,
    Overlay,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Unionfs, Target::Overlay];

    pub fn name(self) -> &'static str {
        match self {
            Target::Unionfs => "unionfs",
            Target::Overlay => "overlayfs",
        }
    }
}

/// One stack's directories: `lower/` (filled by the suite), `upper/`, `work/`, `mnt/`.
pub struct Stack {
    pub root: PathBuf,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    /// Empties and recreates `root` as a stack, mounted on `mnt`.
    ///
    /// The mountpoint is given apart because it must be short: pjdfstest binds sockets two
    /// directories and 66 characters below it, and `sun_path` holds 108 bytes.
    pub fn fresh(root: PathBuf, mnt: PathBuf) -> Result<Stack> {
        if root.exists() {
            fs::remove_dir_all(&root).context(|| format!("remove {}", root.display()))?;
        }
        let s = Stack {
            lower: root.join("lower"),
            upper: root.join("upper"),
            work: root.join("work"),
            mnt,
            root,
        };
        for d in [&s.lower, &s.upper, &s.work, &s.mnt] {
            fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
        }
        Ok(s)
    }

    /// Mounts the stack with `target` on `self.mnt`.
    pub fn mount(&self, target: Target, unionfs: &Path) -> Result<Mounted> {
        let mut cmd = match target {
            Target::Unionfs => {
                let mut c = Command::new(unionfs);
                c.env("UNIONFS_INDEX_DIR", self.root.join("index"))
                    .arg("mount")
                    .arg("--lower")
                    .arg(&self.lower)
                    .arg("--upper")
                    .arg(&self.upper)
                    .arg("--work")
                    .arg(&self.work)
                    .arg("--log-file")
                    .arg(self.root.join("unionfs.log"))
                    .arg(&self.mnt);
                c
            }
            Target::Overlay => {
                let mut c = Command::new("mount");
                c.args(["-t", "overlay", "overlay", "-o"])
                    .arg(format!(
                        "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on",
                        self.lower.display(),
                        self.upper.display(),
                        self.work.display()
                    ))
                    .arg(&self.mnt);
                c
            }
        };
        host::run(&mut cmd)?;
        if !is_mount_point(&self.mnt) {
            return Err(Error::Unexpected(format!(
                "{} is not a mountpoint after mounting {}",
                self.mnt.display(),
                target.name()
            )));
        }
        Ok(Mounted {
            mnt: self.mnt.clone(),
            live: true,
        })
    }
}

/// A live mount, unmounted on drop.
pub struct Mounted {
    mnt: PathBuf,
    live: bool,
}

impl Mounted {
    pub fn unmount(mut self) -> Result<()> {
        self.live = false;
        unmount(&self.mnt)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = unmount(&self.mnt) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

/// `umount`, then waits until the mount is gone (unionfs's daemon exits by itself); a mount
/// still busy after ten seconds is detached, and that is reported as an error.
fn unmount(mnt: &Path) -> Result<()> {
    let _ = Command::new("umount").arg(mnt).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if !is_mount_point(mnt) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
    Err(Error::Unexpected(format!(
        "{} stayed mounted (busy?); detached it",
        mnt.display()
    )))
}

/// Whether `path` is a mountpoint, per `/proc/self/mountinfo` (field 5, octal escapes undone).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
