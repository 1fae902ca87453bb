//! What the tasks need from the machine, checked and (where it can be) provided in one place:
//! root, `/dev/fuse`, the Debian packages whose tools the tests and the demo call, and the
//! workspace's paths and `cargo`.
//!
//! Packages are installed only when one of their tools is missing, so that a prepared machine
//! never touches the network. This module must never install anything that the project does
//! not call: every entry in [`NEEDED_TOOLS`] names the code that uses it.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Why a task failed.
#[derive(Debug)]
pub enum Error {
    /// The command line was wrong; `main` prints the usage after it.
    Usage(String),
    /// The machine cannot run the task (not root, no `/dev/fuse`, no apt-get, ...).
    Host(String),
    /// A file-system step failed; `what` says which step and on which path.
    Io { what: String, source: io::Error },
    /// A command could not be started or exited unsuccessfully.
    Command { cmdline: String, why: String },
    /// The demo saw something other than what the filesystem must show.
    Unexpected(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Host(m) | Error::Unexpected(m) => f.write_str(m),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Command { cmdline, why } => write!(f, "`{cmdline}` {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Adds the step that failed to an [`io::Error`].
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// A tool the tests or the demo run, and the Debian package that ships it.
pub struct Tool {
    pub command: &'static str,
    pub package: &'static str,
    pub used_by: &'static str,
}

/// Everything outside the Rust toolchain that `cargo xtask test` and `cargo xtask demo` call.
/// `mknod` (coreutils) is not listed: it is Essential on Debian and always present.
pub const NEEDED_TOOLS: &[Tool] = &[
    Tool {
        command: "fusermount3",
        package: "fuse3",
        used_by: "fuser, to mount with auto_unmount and to unmount as a fallback",
    },
    Tool {
        command: "getfattr",
        package: "attr",
        used_by: "the demo, to show the overlay xattrs written in upper/",
    },
    Tool {
        command: "mount",
        package: "mount",
        used_by: "tests/common: the kernel overlayfs reference mount",
    },
    Tool {
        command: "umount",
        package: "mount",
        used_by: "tests/common: unmounting after each test",
    },
    Tool {
        command: "umoci",
        package: "umoci",
        used_by: "tests/store: builds, unpacks and reads back OCI images",
    },
    Tool {
        command: "skopeo",
        package: "skopeo",
        used_by: "tests/store: reads exported layouts, writes docker save archives",
    },
    Tool {
        command: "busybox",
        package: "busybox-static",
        used_by: "tests/run: the static binaries of the test image for `unionfs run`",
    },
    Tool {
        command: "script",
        package: "bsdutils",
        used_by: "tests/run: running `unionfs run -t` under a pseudo-terminal",
    },
    Tool {
        command: "podman",
        package: "podman",
        used_by: "tests/podman: podman with unionfs as the overlay driver's mount_program",
    },
    Tool {
        command: "buildah",
        package: "buildah",
        used_by: "tests/podman: buildah from scratch, copy, mount and commit over unionfs",
    },
    Tool {
        command: "runc",
        package: "runc",
        used_by: "tests/podman: the OCI runtime podman runs the test containers with",
    },
    Tool {
        command: "fuse-overlayfs",
        package: "fuse-overlayfs",
        used_by: "tests/podman: the reference the mount_program contract is compared with",
    },
];

/// Prints a phase header so that a long log can be read by its steps.
pub fn phase(step: usize, of: usize, title: &str) {
    println!("\n==> [{step}/{of}] {title}");
}

/// Fails unless this process can mount: effective uid 0 and a `/dev/fuse` to open.
pub fn require_mount_rights() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context(|| "read /proc/self/status to find the effective uid".into())?;
    match effective_uid(&status) {
        Some(0) => {}
        Some(uid) => {
            return Err(Error::Host(format!(
                "must run as root to mount and install packages (effective uid is {uid}); \
                 try `sudo -E cargo xtask ...`"
            )))
        }
        None => {
            return Err(Error::Host(
                "cannot tell the effective uid from /proc/self/status".into(),
            ))
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Host(
            "/dev/fuse does not exist: load the module (`modprobe fuse`) or, in a container, \
             pass the device (`--device /dev/fuse --cap-add SYS_ADMIN`)"
                .into(),
        ));
    }
    println!("running as root; /dev/fuse present");
    Ok(())
}

/// Lets the kernel offer FUSE-over-io_uring to new mounts: the fuse module's `enable_uring`
/// parameter, off by default. unionfs takes requests that way wherever it is offered.
pub fn enable_fuse_uring() {
    let param = Path::new("/sys/module/fuse/parameters/enable_uring");
    match std::fs::write(param, "Y") {
        Ok(()) => println!("FUSE-over-io_uring enabled ({})", param.display()),
        Err(e) => println!(
            "FUSE-over-io_uring unavailable ({}: {e}); unionfs serves over /dev/fuse only",
            param.display()
        ),
    }
}

/// The effective uid from the text of `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Installs, with apt-get, the packages of every [`NEEDED_TOOLS`] entry whose command is missing.
/// Does nothing (and needs no network) when all are present.
pub fn ensure_tools() -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for tool in NEEDED_TOOLS {
        if find_command(tool.command).is_none() {
            println!(
                "missing `{}` (package {}), used by {}",
                tool.command, tool.package, tool.used_by
            );
            if !missing.contains(&tool.package) {
                missing.push(tool.package);
            }
        }
    }
    if missing.is_empty() {
        let names: Vec<&str> = NEEDED_TOOLS.iter().map(|t| t.command).collect();
        println!("all present: {}", names.join(", "));
        return Ok(());
    }
    if find_command("apt-get").is_none() {
        return Err(Error::Host(format!(
            "apt-get not found: install these packages by hand: {}",
            missing.join(" ")
        )));
    }
    run(apt_get().args(["update", "-q"]))?;
    run(apt_get()
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// Where `name` would be run from: the first executable file of that name in `$PATH`, or in
/// the standard system directories, which a minimal `PATH` may lack.
pub fn find_command(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let standard = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(standard.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `cargo` as Cargo itself named it for this process, so that the same toolchain is used.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one directory below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set (relative to the root), else `target/`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The unionfs program cargo builds with `profile` ("debug", "release"): programs are built for
/// the host triple by name (`.cargo/config.toml`), the one this xtask was built for.
pub fn unionfs_binary(profile: &str) -> PathBuf {
    target_dir()
        .join(env!("XTASK_TARGET"))
        .join(profile)
        .join("unionfs")
}

/// The command line as a shell would show it, for logs and error messages.
pub fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited output, echoing it first, and returns how it exited.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let line = cmdline(cmd);
    println!("$ {line}");
    cmd.status().map_err(|e| Error::Command {
        cmdline: line,
        why: format!("could not start: {e}"),
    })
}

/// Runs `cmd` like [`status`] and fails unless it succeeded.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmdline: cmdline(cmd),
            why: format!("failed ({st})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        let status = "Uid:\t0\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn find_command_finds_sh_but_not_nonsense() {
        assert!(find_command("sh").is_some());
        assert!(find_command("no-such-command-for-xtask").is_none());
    }

    #[test]
    fn cmdline_joins_program_and_arguments() {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "fuse3"]);
        assert_eq!(cmdline(&cmd), "apt-get install -y fuse3");
    }
}
