//! A recording [`Syscalls`] for unit tests: every call becomes one line of text (`mount proc
//! /r/proc proc`), so a test states the expected sequence literally; chosen calls can be made
//! to fail with an errno. Nothing here touches the machine.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;

use crate::sys::ns::Syscalls;

/// Records calls; fails those whose text starts with a registered prefix.
#[derive(Default)]
pub struct Fake {
    calls: RefCell<Vec<String>>,
    failures: RefCell<Vec<(String, i32)>>,
    absent: RefCell<Vec<PathBuf>>,
    links: RefCell<Vec<(PathBuf, PathBuf)>>,
}

impl Fake {
    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Makes every call whose text starts with `prefix` fail with `errno`.
    pub fn fail(&self, prefix: &str, errno: i32) {
        self.failures.borrow_mut().push((prefix.to_owned(), errno));
    }

    /// Makes `path` (and everything below it) not exist.
    pub fn absent(&self, path: &str) {
        self.absent.borrow_mut().push(path.into());
    }

    /// Makes `path` canonicalize to `to`, as a symlink would.
    pub fn resolve(&self, path: &str, to: &str) {
        self.links.borrow_mut().push((path.into(), to.into()));
    }

    fn record(&self, call: String) -> io::Result<()> {
        let failure = self
            .failures
            .borrow()
            .iter()
            .find(|(p, _)| call.starts_with(p.as_str()))
            .map(|(_, e)| *e);
        self.calls.borrow_mut().push(call);
        match failure {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }
}

/// Short names for the flags tests care about, in a fixed order.
fn ms(flags: MsFlags) -> String {
    const NAMES: [(MsFlags, &str); 10] = [
        (MsFlags::MS_REMOUNT, "remount"),
        (MsFlags::MS_BIND, "bind"),
        (MsFlags::MS_MOVE, "move"),
        (MsFlags::MS_REC, "rec"),
        (MsFlags::MS_SLAVE, "slave"),
        (MsFlags::MS_PRIVATE, "private"),
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOEXEC, "noexec"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    names.join(",")
}

impl Syscalls for Fake {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record(format!("unshare {flags:?}"))
    }
    fn setns(&self, _ns: std::os::fd::BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        self.record(format!("setns {kind:?}"))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        let src = source.map_or("-".into(), |s| s.display().to_string());
        let mut call = format!("mount {src} {} {}", target.display(), fstype.unwrap_or("-"));
        call.push_str(&format!(" [{}]", ms(flags)));
        if let Some(d) = data {
            call.push_str(&format!(" {d}"));
        }
        self.record(call)
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        let lazy = if flags.contains(MntFlags::MNT_DETACH) {
            " detach"
        } else {
            ""
        };
        self.record(format!("umount {}{lazy}", target.display()))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chroot {}", path.display()))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", path.display()))
    }
    fn sethostname(&self, name: &OsStr) -> io::Result<()> {
        self.record(format!("sethostname {}", name.to_string_lossy()))
    }
    fn mkdir_all(&self, path: &Path, _mode: u32) -> io::Result<()> {
        self.record(format!("mkdir {}", path.display()))
    }
    fn mknod(&self, path: &Path, _kind: SFlag, mode: u32, dev: (u64, u64)) -> io::Result<()> {
        self.record(format!(
            "mknod {} {mode:o} {}:{}",
            path.display(),
            dev.0,
            dev.1
        ))
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(format!("symlink {} {}", target.display(), link.display()))
    }
    fn exists(&self, path: &Path) -> bool {
        !self.absent.borrow().iter().any(|a| path.starts_with(a))
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        let links = self.links.borrow();
        Ok(
            match links.iter().find(|(from, _)| path.starts_with(from)) {
                Some((from, to)) => to.join(path.strip_prefix(from).expect("checked prefix")),
                None => path.to_path_buf(),
            },
        )
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.record(format!(
            "write {} {}",
            path.display(),
            String::from_utf8_lossy(data)
        ))
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("rmdir {}", path.display()))
    }
    fn loopback_up(&self) -> io::Result<()> {
        self.record("loopback_up".into())
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record("no_new_privs".into())
    }
    fn set_undumpable(&self) -> io::Result<()> {
        self.record("undumpable".into())
    }
    fn drop_bounding_caps(&self, keep: &[caps::Capability]) -> io::Result<()> {
        self.record(format!("drop_bounding_caps keep {}", keep.len()))
    }
    fn set_caps(&self, keep: &[caps::Capability]) -> io::Result<()> {
        self.record(format!("set_caps {}", keep.len()))
    }
    fn set_ids(&self, uid: u32, gid: u32) -> io::Result<()> {
        self.record(format!("set_ids {uid}:{gid}"))
    }
}
