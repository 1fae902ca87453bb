//! Turns the mounted union into the container's root: new namespaces, the mounts a program
//! expects (`/proc`, a minimal `/dev`, a read-only `/sys`, bind volumes), then the root switch.
//!
//! Runs in the container's init (pid 1 of the new pid namespace) while the launcher places it in
//! its cgroups, and only through [`Syscalls`], so that the order is unit-tested below. The order
//! matters: mount propagation is made slave before any mount, so nothing leaks back to the host
//! while host unmounts still reach us; every mount target is created and then checked to be
//! inside the root, so a symlink in the image cannot redirect a mount onto the host; the
//! root is made read-only last (the mounts need their directories created first); and
//! `pivot_root(".", ".")` followed by a lazy unmount of the old root leaves no path to the
//! host's tree (pivot_root(2), "pivot_root(".", ".")"). chroot(2) is only the fallback where
//! pivot_root is impossible (a root on initramfs) and is reported as such.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;

use crate::run::spec::{Network, Volume};
use crate::sys::ns::Syscalls;

/// Why the root could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create namespaces ({flags:?})")]
    Unshare {
        flags: CloneFlags,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the mount tree a slave of the host's")]
    Propagation(#[source] io::Error),
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount target {0} leads outside the container's root")]
    Escape(PathBuf),
    #[error("cannot switch the root to {root} (pivot_root, and chroot as fallback)")]
    Switch {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot detach the host's root")]
    DetachOldRoot(#[source] io::Error),
    #[error("cannot change directory to {path}")]
    Chdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the hostname")]
    Hostname(#[source] io::Error),
    #[error("cannot bring up the loopback interface")]
    Loopback(#[source] io::Error),
}

/// What the container's root is made of.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// The mounted union, as seen from the host.
    pub root: &'a Path,
    pub hostname: &'a OsStr,
    pub volumes: &'a [Volume],
    /// Created if missing (absolute, inside the container).
    pub workdir: &'a Path,
    pub read_only: bool,
    pub network: Network,
}

/// How the root was switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    PivotRoot,
    /// pivot_root failed with EINVAL (e.g. the host root is initramfs).
    Chroot,
}

/// The namespaces init creates while building the root (the pid namespace was created by the
/// launcher; the cgroup namespace is created by init once inside its cgroups, as it is rooted
/// at the group its creator is in).
pub fn namespaces(network: Network) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if network == Network::None {
        f |= CloneFlags::CLONE_NEWNET;
    }
    f
}

/// Files of /proc that are made read-only, and ones hidden behind /dev/null, as docker does.
const PROC_READ_ONLY: [&str; 4] = ["sys", "sysrq-trigger", "irq", "bus"];
const PROC_MASKED: [&str; 4] = ["kcore", "keys", "timer_list", "sched_debug"];

/// Device nodes of the minimal /dev: name, major, minor (Documentation/admin-guide/devices.txt).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Enters new namespaces and switches the root to `plan.root`, leaving the cwd at `/`.
pub fn enter(sys: &dyn Syscalls, plan: &Plan<'_>) -> Result<Switched, Error> {
    let flags = namespaces(plan.network);
    sys.unshare(flags)
        .map_err(|source| Error::Unshare { flags, source })?;
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )
    .map_err(Error::Propagation)?;
    let root = plan.root;
    // A bind of the root onto itself is a mount of our own, whose flags (--read-only) we may
    // change without touching the host's mount.
    mount(
        sys,
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    for v in plan.volumes {
        bind_volume(sys, root, v)?;
    }
    mount_proc(sys, root)?;
    mount_dev(sys, root)?;
    let sys_dir = target(sys, root, "sys")?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        sys,
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        ro,
        None,
    )?;
    target(sys, root, plan.workdir)?;
    if plan.read_only {
        let f = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(sys, None, root, None, f, None)?;
    }
    let switched = switch_root(sys, root)?;
    sys.sethostname(plan.hostname).map_err(Error::Hostname)?;
    if plan.network == Network::None {
        sys.loopback_up().map_err(Error::Loopback)?;
    }
    Ok(switched)
}

fn mount(
    sys: &dyn Syscalls,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    sys.mount(source, target, fstype, flags, data)
        .map_err(|e| Error::Mount {
            what: fstype
                .map(str::to_owned)
                .or_else(|| source.map(|s| s.display().to_string()))
                .unwrap_or_else(|| "(remount)".into()),
            target: target.to_path_buf(),
            source: e,
        })
}

/// Creates `rel` (a path inside the root) without following a symlink of the image out of it:
/// the deepest existing ancestor is resolved and checked to be inside the root first, and only
/// the missing components below it, which cannot be symlinks, are created.
fn target(sys: &dyn Syscalls, root: &Path, rel: impl AsRef<Path>) -> Result<PathBuf, Error> {
    let rel = rel.as_ref();
    let path = root.join(rel.strip_prefix("/").unwrap_or(rel));
    let mut existing = path.clone();
    let mut missing = Vec::new();
    while !sys.exists(&existing) && existing != root {
        missing.push(
            existing
                .file_name()
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
        );
        existing.pop();
    }
    let mut real = sys
        .canonicalize(&existing)
        .map_err(|source| Error::Create {
            path: existing.clone(),
            source,
        })?;
    if !real.starts_with(root) {
        return Err(Error::Escape(path));
    }
    if !missing.is_empty() {
        real.extend(missing.iter().rev());
        sys.mkdir_all(&real, 0o755)
            .map_err(|source| Error::Create {
                path: real.clone(),
                source,
            })?;
    }
    Ok(real)
}

fn bind_volume(sys: &dyn Syscalls, root: &Path, v: &Volume) -> Result<(), Error> {
    let dst = target(sys, root, &v.container)?;
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(sys, Some(&v.host), &dst, None, bind, None)?;
    if v.read_only {
        let f = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(sys, None, &dst, None, f, None)?;
    }
    Ok(())
}

fn mount_proc(sys: &dyn Syscalls, root: &Path) -> Result<(), Error> {
    let proc_dir = target(sys, root, "proc")?;
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        sys,
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        f,
        None,
    )?;
    for name in PROC_READ_ONLY {
        let p = proc_dir.join(name);
        if sys.exists(&p) {
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(sys, Some(&p), &p, None, bind, None)?;
            let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            mount(sys, None, &p, None, ro, None)?;
        }
    }
    for name in PROC_MASKED {
        let p = proc_dir.join(name);
        if sys.exists(&p) {
            mount(
                sys,
                Some(Path::new("/dev/null")),
                &p,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    Ok(())
}

fn mount_dev(sys: &dyn Syscalls, root: &Path) -> Result<(), Error> {
    let dev = target(sys, root, "dev")?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    let tmpfs = Some(Path::new("tmpfs"));
    mount(
        sys,
        tmpfs,
        &dev,
        Some("tmpfs"),
        nosuid,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        sys.mknod(&p, SFlag::S_IFCHR, 0o666, (major, minor))
            .map_err(|source| Error::Create { path: p, source })?;
    }
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, to) in links {
        let p = dev.join(name);
        sys.symlink(Path::new(to), &p)
            .map_err(|source| Error::Create { path: p, source })?;
    }
    // A private devpts instance: the container sees only its own terminals (devpts.rst).
    let pts = target(sys, root, "dev/pts")?;
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let opts = "newinstance,ptmxmode=0666,mode=0620,gid=5";
    mount(
        sys,
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        f,
        Some(opts),
    )?;
    let shm = target(sys, root, "dev/shm")?;
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        sys,
        tmpfs,
        &shm,
        Some("tmpfs"),
        f,
        Some("mode=1777,size=65536k"),
    )
}

/// pivot_root into `root` with the old root stacked on the same directory, then detach it.
fn switch_root(sys: &dyn Syscalls, root: &Path) -> Result<Switched, Error> {
    let chdir = |p: &Path| {
        sys.chdir(p).map_err(|source| Error::Chdir {
            path: p.to_path_buf(),
            source,
        })
    };
    chdir(root)?;
    let dot = Path::new(".");
    match sys.pivot_root(dot, dot) {
        Ok(()) => {
            // The old root is now mounted on top of the new one; our slave propagation keeps
            // the lazy unmount from reaching the host.
            sys.umount(dot, MntFlags::MNT_DETACH)
                .map_err(Error::DetachOldRoot)?;
            chdir(Path::new("/"))?;
            Ok(Switched::PivotRoot)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(root = %root.display(), "pivot_root impossible here; using chroot");
            let switch_err = |source| Error::Switch {
                root: root.to_path_buf(),
                source,
            };
            sys.mount(Some(root), Path::new("/"), None, MsFlags::MS_MOVE, None)
                .map_err(switch_err)?;
            sys.chroot(dot).map_err(switch_err)?;
            chdir(Path::new("/"))?;
            Ok(Switched::Chroot)
        }
        Err(source) => Err(Error::Switch {
            root: root.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::fake::Fake;

    fn plan<'a>(volumes: &'a [Volume], read_only: bool, network: Network) -> Plan<'a> {
        Plan {
            root: Path::new("/r"),
            hostname: OsStr::new("box"),
            volumes,
            workdir: Path::new("/work"),
            read_only,
            network,
        }
    }

    fn position(calls: &[String], prefix: &str) -> usize {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
    }

    #[test]
    fn full_sequence_in_order() {
        let fake = Fake::default();
        fake.absent("/r/work");
        let vols = [Volume {
            host: "/src".into(),
            container: "/data".into(),
            read_only: true,
        }];
        let got = enter(&fake, &plan(&vols, true, Network::None)).unwrap();
        assert_eq!(got, Switched::PivotRoot);
        let c = fake.calls();
        assert!(c[0].starts_with("unshare") && c[0].contains("CLONE_NEWNET"));
        assert_eq!(c[1], "mount - / - [rec,slave]");
        assert_eq!(c[2], "mount /r /r - [bind,rec]");
        let vol = position(&c, "mount /src /r/data - [bind,rec]");
        assert_eq!(c[vol + 1], "mount - /r/data - [remount,bind,ro]");
        let proc_ = position(&c, "mount proc /r/proc proc [nosuid,nodev,noexec]");
        assert!(c.contains(&"mount /dev/null /r/proc/kcore - [bind]".to_owned()));
        assert!(c.contains(&"mknod /r/dev/null 666 1:3".to_owned()));
        assert!(c.contains(&"symlink pts/ptmx /r/dev/ptmx".to_owned()));
        let pts = position(
            &c,
            "mount devpts /r/dev/pts devpts [nosuid,noexec] newinstance",
        );
        let sysfs = position(&c, "mount sysfs /r/sys sysfs [ro,nosuid,nodev,noexec]");
        let workdir = position(&c, "mkdir /r/work");
        let ro = position(&c, "mount - /r - [remount,bind,ro]");
        let pivot = position(&c, "pivot_root . .");
        assert!(vol < proc_ && proc_ < pts && pts < sysfs && sysfs < ro && workdir < ro);
        assert!(ro < pivot);
        assert_eq!(c[pivot - 1], "chdir /r");
        assert_eq!(c[pivot + 1], "umount . detach");
        assert_eq!(c[pivot + 2], "chdir /");
        assert_eq!(c[pivot + 3], "sethostname box");
        assert_eq!(c[pivot + 4], "loopback_up");
        assert_eq!(c.len(), pivot + 5);
    }

    #[test]
    fn host_network_keeps_the_namespace_and_skips_loopback() {
        let fake = Fake::default();
        enter(&fake, &plan(&[], false, Network::Host)).unwrap();
        let c = fake.calls();
        assert!(!c[0].contains("CLONE_NEWNET"));
        assert!(!c.iter().any(|l| l == "loopback_up"));
        assert!(!c.contains(&"mount - /r - [remount,bind,ro]".to_owned()));
    }

    #[test]
    fn falls_back_to_chroot_only_when_pivot_root_is_impossible() {
        let fake = Fake::default();
        fake.fail("pivot_root", libc::EINVAL);
        let got = enter(&fake, &plan(&[], false, Network::None)).unwrap();
        assert_eq!(got, Switched::Chroot);
        let c = fake.calls();
        let p = position(&c, "pivot_root");
        assert_eq!(c[p + 1], "mount /r / - [move]");
        assert_eq!(c[p + 2], "chroot .");
        assert_eq!(c[p + 3], "chdir /");

        let fake = Fake::default();
        fake.fail("pivot_root", libc::EPERM);
        assert!(matches!(
            enter(&fake, &plan(&[], false, Network::None)),
            Err(Error::Switch { .. })
        ));
    }

    #[test]
    fn mount_targets_must_stay_inside_the_root() {
        let fake = Fake::default();
        fake.absent("/r/data/sub");
        fake.resolve("/r/data", "/etc");
        let vols = [Volume {
            host: "/src".into(),
            container: "/data/sub".into(),
            read_only: false,
        }];
        let err = enter(&fake, &plan(&vols, false, Network::None)).unwrap_err();
        assert!(matches!(err, Error::Escape(p) if p == Path::new("/r/data/sub")));
        // Nothing was created through the symlink.
        assert!(!fake.calls().iter().any(|c| c.starts_with("mkdir")));
    }

    #[test]
    fn a_failing_step_stops_the_sequence() {
        let fake = Fake::default();
        fake.fail("mount proc", libc::EPERM);
        let err = enter(&fake, &plan(&[], false, Network::None)).unwrap_err();
        assert!(matches!(&err, Error::Mount { what, .. } if what == "proc"));
        assert!(fake.calls().last().unwrap().starts_with("mount proc"));
    }
}
