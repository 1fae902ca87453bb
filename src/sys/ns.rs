//! The system calls that build a container: namespaces, mounts, the root switch, identity and
//! privileges, behind one [`Syscalls`] trait.
//!
//! The launcher in `crate::run` only ever calls these through the trait, so that the order of
//! its steps (which matters: propagation before mounts, mounts before `pivot_root`, capabilities
//! before `execve`) is unit-tested against a recording fake without root, as youki does. [`Linux`]
//! is the real implementation; it does nothing clever, each method is one or two calls. The
//! methods return `io::Result` so that a caller can attach which step and which path failed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Every raw step of container setup. Implemented by [`Linux`] and, in tests, by a fake that
/// records the calls.
pub trait Syscalls {
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// setns(2) into the namespace open at `ns`.
    fn setns(&self, ns: std::os::fd::BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()>;
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// chroot(2), only as the fallback where `pivot_root` is impossible.
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// sethostname(2) in the current UTS namespace.
    fn sethostname(&self, name: &OsStr) -> io::Result<()>;
    /// `mkdir -p` with `mode` for the directories it creates.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// mknod(2) of a device node, then chmod to exactly `mode` (mknod applies the umask).
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: (u64, u64)) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Whether `path` exists (without following a final symlink).
    fn exists(&self, path: &Path) -> bool;
    /// realpath(3): where `path` really leads, to refuse mount targets that leave the root.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    /// Writes `data` to an existing file (cgroup and proc files), in one write(2).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// rmdir(2).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// prctl(PR_SET_DUMPABLE, 0): /proc/PID/{root,cwd,fd,exe} of this process become
    /// unreachable to processes without CAP_SYS_PTRACE.
    fn set_undumpable(&self) -> io::Result<()>;
    /// Removes every capability not in `keep` from the bounding set and clears the ambient set.
    fn drop_bounding_caps(&self, keep: &[caps::Capability]) -> io::Result<()>;
    /// Sets the effective, permitted and inheritable sets to `keep`, as far as permitted.
    fn set_caps(&self, keep: &[caps::Capability]) -> io::Result<()>;
    /// setgroups(2) (to `gid` only), setgid(2), setuid(2), in that order.
    fn set_ids(&self, uid: u32, gid: u32) -> io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Syscalls for Linux {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::unshare(flags)?)
    }

    fn setns(&self, ns: std::os::fd::BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::setns(ns, kind)?)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        Ok(nix::mount::mount(source, target, fstype, flags, data)?)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        Ok(nix::mount::umount2(target, flags)?)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        Ok(nix::unistd::pivot_root(new_root, put_old)?)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        Ok(nix::unistd::chroot(path)?)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        Ok(nix::unistd::chdir(path)?)
    }

    fn sethostname(&self, name: &OsStr) -> io::Result<()> {
        Ok(nix::unistd::sethostname(name)?)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: (u64, u64)) -> io::Result<()> {
        let perm = Mode::from_bits_truncate(mode);
        nix::sys::stat::mknod(path, kind, perm, nix::sys::stat::makedev(dev.0, dev.1))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn loopback_up(&self) -> io::Result<()> {
        loopback_up()
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_no_new_privs()?)
    }

    fn set_undumpable(&self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_dumpable(false)?)
    }

    fn drop_bounding_caps(&self, keep: &[caps::Capability]) -> io::Result<()> {
        super::caps::drop_bounding(keep)
    }

    fn set_caps(&self, keep: &[caps::Capability]) -> io::Result<()> {
        super::caps::set_sets(keep)
    }

    fn set_ids(&self, uid: u32, gid: u32) -> io::Result<()> {
        nix::unistd::setgroups(&[Gid::from_raw(gid)])?;
        nix::unistd::setgid(Gid::from_raw(gid))?;
        nix::unistd::setuid(Uid::from_raw(uid))?;
        Ok(())
    }
}

/// Sets IFF_UP on `lo` with the SIOCGIFFLAGS / SIOCSIFFLAGS ioctls on a datagram socket, as
/// `ip link set lo up` does (netdevice(7)).
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) takes no pointers; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `req`, which lives
    // across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union was just filled in by SIOCGIFFLAGS as flags.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC), so that `execve` passes only the standard streams on.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes no pointers; with CLOSE_RANGE_CLOEXEC it closes nothing now, so
    // no descriptor owned elsewhere in this process is invalidated.
    let rc = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as _) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the default action of every signal and unblocks them all, so that a command we
/// execute starts as a shell would start it (Rust's runtime ignores SIGPIPE, and ignored
/// signals stay ignored across execve(2)).
pub fn reset_signals() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL involves no handler code, so no async-signal-safety
        // requirement applies.
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}
