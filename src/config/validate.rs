//! Validation: every check that can be made before anything is mounted, so that a bad path
//! never leaves a half-made mount behind.
//!
//! [`MountConfig::validate`] reads the machine's state only through the small [`Host`] trait
//! ([`RealHost`] is the running machine), so tests fake `/dev/fuse`, devices and the mount
//! table. Each failing check has its own [`ConfigError`] variant naming the [`Role`] and path.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mountinfo::find_mount;
use super::MountConfig;

/// What a path stands for in a mount, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Lower layer, 0 = top-most.
    Lower(usize),
    Upper,
    Work,
    Mountpoint,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Lower(i) => write!(f, "lower layer {}", i + 1),
            Role::Upper => f.write_str("upper directory"),
            Role::Work => f.write_str("work directory"),
            Role::Mountpoint => f.write_str("mountpoint"),
        }
    }
}

/// Why a configuration cannot be mounted on a given mountpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no lower layer given")]
    NoLowers,
    #[error("an upper directory needs a work directory")]
    UpperWithoutWork,
    #[error("a work directory needs an upper directory")]
    WorkWithoutUpper,
    #[error("{role} {} does not exist", path.display())]
    Missing {
        role: Role,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve {role} {}", path.display())]
    Resolve {
        role: Role,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{role} {} is not a directory", path.display())]
    NotADirectory { role: Role, path: PathBuf },
    #[error(
        "upper directory {} and work directory {} are on different filesystems",
        upper.display(),
        work.display()
    )]
    CrossDevice { upper: PathBuf, work: PathBuf },
    #[error("work directory {} is inside upper directory {}", work.display(), upper.display())]
    WorkInsideUpper { upper: PathBuf, work: PathBuf },
    #[error("upper directory {} is inside work directory {}", upper.display(), work.display())]
    UpperInsideWork { upper: PathBuf, work: PathBuf },
    #[error("{} is used twice, as {first} and as {second}", path.display())]
    Duplicate {
        path: PathBuf,
        first: Role,
        second: Role,
    },
    #[error("{inner_role} {} is inside {outer_role} {}", inner.display(), outer.display())]
    Nested {
        inner_role: Role,
        inner: PathBuf,
        outer_role: Role,
        outer: PathBuf,
    },
    #[error("mountpoint {} is already in use ({fstype} is mounted there)", path.display())]
    MountpointBusy { path: PathBuf, fstype: String },
    #[error("cannot read the mount table (/proc/self/mountinfo)")]
    MountTable(#[source] io::Error),
    #[error("/dev/fuse is missing (load the fuse module: modprobe fuse)")]
    NoFuseDevice,
}

/// The machine state validation looks at, behind a trait so tests can fake it.
pub trait Host {
    /// The contents of `/proc/self/mountinfo`.
    fn mountinfo(&self) -> io::Result<Vec<u8>>;
    /// Whether `/dev/fuse` exists.
    fn has_fuse_device(&self) -> bool;
    /// The device (`st_dev`) holding `path`.
    fn device_of(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.dev())
    }
    /// `false` only if `path` is known not to be the root of any mount, which spares reading
    /// the mount table.
    fn may_be_mount_root(&self, _path: &Path) -> bool {
        true
    }
}

/// The running machine.
pub struct RealHost;

impl Host for RealHost {
    fn mountinfo(&self) -> io::Result<Vec<u8>> {
        std::fs::read("/proc/self/mountinfo")
    }
    fn has_fuse_device(&self) -> bool {
        Path::new("/dev/fuse").exists()
    }
    fn may_be_mount_root(&self, path: &Path) -> bool {
        crate::sys::stat::is_mount_root(path) != Ok(Some(false))
    }
}

/// A configuration that [`MountConfig::validate`] found mountable: every path canonical (see
/// [`MountConfig::canonicalize`]), and the layer roots it opened on the way, so that mounting
/// neither resolves a path a second time nor finds another directory there than was checked.
#[derive(Debug)]
pub struct Validated {
    pub config: MountConfig,
    pub mountpoint: PathBuf,
    /// The directories of `config.lowers`, in the same order, each open (`O_PATH`) since it was
    /// checked; `None` for one that was resolved without opening it.
    pub lower_dirs: Vec<Option<Arc<OwnedFd>>>,
    /// The same for `config.upper`.
    pub upper_dir: Option<Arc<OwnedFd>>,
}

impl MountConfig {
    /// Checks, before anything is mounted, that this configuration can be mounted on
    /// `mountpoint`: every path exists and is a directory, upper and work share a filesystem and
    /// do not contain each other, no layer is listed twice or lies inside another (nor the
    /// mountpoint inside a layer or the reverse), the mountpoint is free and `/dev/fuse` exists.
    pub fn validate(&self, mountpoint: &Path) -> Result<Validated, ConfigError> {
        self.validate_on(&RealHost, mountpoint)
    }

    /// [`MountConfig::validate`] against the given machine state.
    pub fn validate_on(
        &self,
        host: &dyn Host,
        mountpoint: &Path,
    ) -> Result<Validated, ConfigError> {
        let v = self.canonicalize_holding(mountpoint)?;
        let (cfg, mnt) = (&v.config, &v.mountpoint);
        let roles = cfg.roles(mnt);
        if let (Some(upper), Some(work)) = (&cfg.upper, &cfg.work) {
            check_upper_work(host, upper, work)?;
        }
        check_overlaps(&roles)?;
        // The table names what is mounted there, for the message.
        if host.may_be_mount_root(mnt) {
            let table = host.mountinfo().map_err(ConfigError::MountTable)?;
            if let Some(entry) = find_mount(&table, mnt) {
                return Err(ConfigError::MountpointBusy {
                    path: mnt.clone(),
                    fstype: entry.fstype,
                });
            }
        }
        if !host.has_fuse_device() {
            return Err(ConfigError::NoFuseDevice);
        }
        Ok(v)
    }

    /// Returns the configuration and mountpoint with every path made absolute and free of
    /// symlinks and `..`, checking on the way that each exists and is a directory. The daemon
    /// changes directory to `/`, so it must only ever see such paths.
    pub fn canonicalize(&self, mountpoint: &Path) -> Result<(MountConfig, PathBuf), ConfigError> {
        self.canonicalize_holding(mountpoint)
            .map(|v| (v.config, v.mountpoint))
    }

    /// [`MountConfig::canonicalize`], keeping the layer roots it opened.
    fn canonicalize_holding(&self, mountpoint: &Path) -> Result<Validated, ConfigError> {
        if self.lowers.is_empty() {
            return Err(ConfigError::NoLowers);
        }
        match (&self.upper, &self.work) {
            (Some(_), None) => return Err(ConfigError::UpperWithoutWork),
            (None, Some(_)) => return Err(ConfigError::WorkWithoutUpper),
            _ => {}
        }
        let (lowers, lower_dirs) = self
            .lowers
            .iter()
            .enumerate()
            .map(|(i, l)| canonical_dir(Role::Lower(i), l))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let (upper, upper_dir) = match self.upper.as_deref() {
            Some(u) => {
                let (path, dir) = canonical_dir(Role::Upper, u)?;
                (Some(path), dir)
            }
            None => (None, None),
        };
        let work = self.work.as_deref().map(|w| canonical_dir(Role::Work, w));
        let config = MountConfig {
            lowers,
            upper,
            work: work.transpose()?.map(|(path, _)| path),
            volatile: self.volatile,
            no_io_uring: self.no_io_uring,
        };
        let (mountpoint, _) = canonical_dir(Role::Mountpoint, mountpoint)?;
        Ok(Validated {
            config,
            mountpoint,
            lower_dirs,
            upper_dir,
        })
    }

    fn roles<'a>(&'a self, mountpoint: &'a Path) -> Vec<(Role, &'a Path)> {
        let mut roles: Vec<(Role, &Path)> = Vec::new();
        roles.extend(self.upper.as_deref().map(|u| (Role::Upper, u)));
        roles.extend(self.work.as_deref().map(|w| (Role::Work, w)));
        roles.extend(
            self.lowers
                .iter()
                .enumerate()
                .map(|(i, l)| (Role::Lower(i), l.as_path())),
        );
        roles.push((Role::Mountpoint, mountpoint));
        roles
    }
}

/// The canonical path of the directory at `path`, and the directory opened (`O_PATH`) if that
/// was the way to find it.
fn canonical_dir(role: Role, path: &Path) -> Result<(PathBuf, Option<Arc<OwnedFd>>), ConfigError> {
    if let Some((canon, dir)) = canonical_dir_fast(path) {
        return Ok((canon, Some(Arc::new(dir))));
    }
    let canon = std::fs::canonicalize(path).map_err(|source| {
        let path = path.to_path_buf();
        if source.kind() == io::ErrorKind::NotFound {
            ConfigError::Missing { role, path, source }
        } else {
            ConfigError::Resolve { role, path, source }
        }
    })?;
    let is_dir = std::fs::metadata(&canon).map(|m| m.is_dir());
    match is_dir {
        Ok(true) => Ok((canon, None)),
        Ok(false) => Err(ConfigError::NotADirectory {
            role,
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ConfigError::Resolve {
            role,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The canonical path of the directory at `path`, cheaply, and the directory opened. The paths
/// tools hand over are mostly canonical already: absolute, written cleanly (no `.`, `..`,
/// doubled or trailing `/`) and free of symbolic links, which one openat2(2) with
/// `RESOLVE_NO_SYMLINKS` confirms.
/// Otherwise three system calls: open the directory and ask procfs what the descriptor names
/// (reading `/proc/self/fd/N` walks procfs, several times the cost of the open). realpath(3)
/// reads every component as a link instead, which for 100 layers is most of the cost of
/// validating a mount. `None` when neither works out (no such directory, no procfs), and the
/// caller resolves the slow way, which also tells the reasons apart.
fn canonical_dir_fast(path: &Path) -> Option<(PathBuf, OwnedFd)> {
    use nix::fcntl::{open, openat2, readlink, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if is_written_canonically(path) {
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        // ELOOP (a link on the way) or ENOSYS (a kernel before 5.6) take the procfs way.
        if let Ok(dir) = openat2(AT_FDCWD, path, how) {
            return Some((path.to_path_buf(), dir));
        }
    }
    let fd = open(path, flags, Mode::empty()).ok()?;
    let name = readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str()).ok()?;
    // A removed directory reads as "<path> (deleted)" (a directory really named so takes the
    // slow way), and anything not absolute (an object outside this root) is no path at all.
    let usable = name.as_bytes().starts_with(b"/") && !name.as_bytes().ends_with(b" (deleted)");
    usable.then(|| (PathBuf::from(name), fd))
}

/// Whether `path` is absolute and spelled as its canonical form would be, if none of its
/// components is a symbolic link: only names after the root, each `/` alone, none at the end.
fn is_written_canonically(path: &Path) -> bool {
    use std::path::Component;
    let mut rebuilt = PathBuf::new();
    for c in path.components() {
        if !matches!(c, Component::RootDir | Component::Normal(_)) {
            return false;
        }
        rebuilt.push(c);
    }
    // `components` reads past what is not canonical: `//`, `/./` and a trailing `/`.
    path.is_absolute() && rebuilt.as_os_str() == path.as_os_str()
}

/// Upper and work must be distinct siblings on one filesystem: copy-up stages a file in work and
/// renames it into upper, and rename(2) cannot cross filesystems (overlayfs.rst, "workdir").
fn check_upper_work(host: &dyn Host, upper: &Path, work: &Path) -> Result<(), ConfigError> {
    let pair = || (upper.to_path_buf(), work.to_path_buf());
    if work != upper && work.starts_with(upper) {
        let (upper, work) = pair();
        return Err(ConfigError::WorkInsideUpper { upper, work });
    }
    if work != upper && upper.starts_with(work) {
        let (upper, work) = pair();
        return Err(ConfigError::UpperInsideWork { upper, work });
    }
    let dev = |role, p: &Path| {
        host.device_of(p).map_err(|source| ConfigError::Resolve {
            role,
            path: p.to_path_buf(),
            source,
        })
    };
    if dev(Role::Upper, upper)? != dev(Role::Work, work)? {
        let (upper, work) = pair();
        return Err(ConfigError::CrossDevice { upper, work });
    }
    Ok(())
}

/// No two paths of a mount may be equal or nested: the daemon reads layers by path, so a layer
/// seen through another layer (or through the mount itself) would show up twice or recurse.
///
/// The paths are canonical. Each is compared as its bytes plus a final `/`, so that "`a` lies in
/// `b`" is "`b`'s key is a prefix of `a`'s". Sorted, the keys that start with a given key follow
/// it directly, so comparing neighbours finds a clash if there is one: a 100-layer stack costs
/// one sort rather than 5,000 component-wise comparisons.
fn check_overlaps(roles: &[(Role, &Path)]) -> Result<(), ConfigError> {
    let key = |p: &Path| {
        let mut k = p.as_os_str().as_bytes().to_vec();
        if k.last() != Some(&b'/') {
            k.push(b'/');
        }
        k
    };
    let mut keyed: Vec<(Vec<u8>, usize)> = roles
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (key(p), i))
        .collect();
    keyed.sort_unstable();
    for pair in keyed.windows(2) {
        let ((outer_key, o), (inner_key, i)) = (&pair[0], &pair[1]);
        let ((outer_role, outer), (inner_role, inner)) = (roles[*o], roles[*i]);
        if outer_key == inner_key {
            // Equal keys sort by position: `o` was given first.
            return Err(ConfigError::Duplicate {
                path: outer.to_path_buf(),
                first: outer_role,
                second: inner_role,
            });
        }
        if inner_key.starts_with(outer_key) {
            return Err(ConfigError::Nested {
                inner_role,
                inner: inner.to_path_buf(),
                outer_role,
                outer: outer.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::ffi::OsStrExt;

    /// A machine with `/dev/fuse`, the given mount table and optionally faked devices.
    struct FakeHost {
        mountinfo: Vec<u8>,
        fuse: bool,
        devices: Vec<(PathBuf, u64)>,
    }

    impl FakeHost {
        fn ok() -> FakeHost {
            FakeHost {
                mountinfo: b"27 1 254:0 / / rw - ext4 /dev/vda rw\n".to_vec(),
                fuse: true,
                devices: Vec::new(),
            }
        }
    }

    impl Host for FakeHost {
        fn mountinfo(&self) -> io::Result<Vec<u8>> {
            Ok(self.mountinfo.clone())
        }
        fn has_fuse_device(&self) -> bool {
            self.fuse
        }
        fn device_of(&self, path: &Path) -> io::Result<u64> {
            match self.devices.iter().find(|(p, _)| p == path) {
                Some((_, d)) => Ok(*d),
                None => Ok(std::fs::metadata(path)?.dev()),
            }
        }
    }

    /// A temp dir with the given subdirectories (and `file` as a regular file).
    fn tree(dirs: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("file"), b"x").unwrap();
        (t, root)
    }

    fn check(
        host: &FakeHost,
        root: &Path,
        lowers: &[&str],
        uw: Option<(&str, &str)>,
        mnt: &str,
    ) -> Result<(), ConfigError> {
        let c = MountConfig {
            lowers: lowers.iter().map(|l| root.join(l)).collect(),
            upper: uw.map(|(u, _)| root.join(u)),
            work: uw.map(|(_, w)| root.join(w)),
            volatile: false,
            no_io_uring: false,
        };
        c.validate_on(host, &root.join(mnt)).map(drop)
    }

    #[test]
    fn validate_table() {
        let (_t, root) = tree(&[
            "l0", "l1", "l0/sub", "l0-x", "u", "w", "u/w2", "w/u2", "m", "l1/m2",
        ]);
        let h = FakeHost::ok();
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: &[Case] = &[
            (&["l0", "l1"], Some(("u", "w")), "m", ""),
            (&["l0"], None, "m", ""),
            (
                &["nope"],
                None,
                "m",
                "lower layer 1 {root}/nope does not exist",
            ),
            (
                &["l0", "file"],
                None,
                "m",
                "lower layer 2 {root}/file is not a directory",
            ),
            (
                &["l0"],
                Some(("nope", "w")),
                "m",
                "upper directory {root}/nope does not exist",
            ),
            (
                &["l0"],
                Some(("u", "file")),
                "m",
                "work directory {root}/file is not a directory",
            ),
            (
                &["l0"],
                None,
                "nope",
                "mountpoint {root}/nope does not exist",
            ),
            (
                &["l0"],
                None,
                "file",
                "mountpoint {root}/file is not a directory",
            ),
            (
                &["l0"],
                Some(("u", "u/w2")),
                "m",
                "work directory {root}/u/w2 is inside upper directory {root}/u",
            ),
            (
                &["l0"],
                Some(("w/u2", "w")),
                "m",
                "upper directory {root}/w/u2 is inside work directory {root}/w",
            ),
            (
                &["l0", "l1", "l0"],
                None,
                "m",
                "{root}/l0 is used twice, as lower layer 1 and as lower layer 3",
            ),
            (
                &["l0", "l0/sub"],
                None,
                "m",
                "lower layer 2 {root}/l0/sub is inside lower layer 1 {root}/l0",
            ),
            // A name that merely starts with another layer's name is not inside it, and does
            // not hide a real nesting that sorts after it.
            (&["l0-x", "l0", "l1"], None, "m", ""),
            (
                &["l0/sub", "l0-x", "l1", "l0"],
                None,
                "m",
                "lower layer 1 {root}/l0/sub is inside lower layer 4 {root}/l0",
            ),
            (
                &["l0"],
                Some(("u", "w")),
                "u",
                "{root}/u is used twice, as upper directory and as mountpoint",
            ),
            (
                &["l1"],
                None,
                "l1/m2",
                "mountpoint {root}/l1/m2 is inside lower layer 1 {root}/l1",
            ),
            (
                &["l0/sub"],
                None,
                "l0",
                "lower layer 1 {root}/l0/sub is inside mountpoint {root}/l0",
            ),
            (
                &["u/w2"],
                Some(("u", "w")),
                "m",
                "lower layer 1 {root}/u/w2 is inside upper directory {root}/u",
            ),
        ];
        let r = root.display().to_string();
        for (lowers, uw, mnt, want) in cases {
            let got = check(&h, &root, lowers, *uw, mnt);
            let want = want.replace("{root}", &r);
            match got {
                Ok(()) => assert!(want.is_empty(), "{lowers:?} {uw:?} {mnt}: expected {want}"),
                Err(e) => assert_eq!(e.to_string(), want, "{lowers:?} {uw:?} {mnt}"),
            }
        }
    }

    #[test]
    fn validate_relative_and_symlinked_paths_resolve() {
        let (_t, root) = tree(&["l0", "m"]);
        std::os::unix::fs::symlink(root.join("l0"), root.join("link")).unwrap();
        let err = check(&FakeHost::ok(), &root, &["l0", "link"], None, "m").unwrap_err();
        assert!(matches!(err, ConfigError::Duplicate { .. }), "{err}");
        let c = MountConfig {
            lowers: vec![root.join("m/../l0")],
            ..MountConfig::default()
        };
        let (canon, mnt) = c.canonicalize(&root.join("m")).unwrap();
        assert_eq!(canon.lowers, vec![root.join("l0")]);
        assert_eq!(mnt, root.join("m"));
        // Every way of spelling the same directory comes out as the one canonical path.
        let l0 = root.join("l0");
        let text = l0.to_str().unwrap();
        for spelled in [
            l0.clone(),
            root.join("link"),
            root.join("link/"),
            PathBuf::from(format!("{text}/")),
            PathBuf::from(format!("{text}/.")),
            PathBuf::from(text.replacen('/', "//", 2)),
            root.join("./l0"),
        ] {
            assert_eq!(
                canonical_dir(Role::Upper, &spelled).unwrap().0,
                l0,
                "{spelled:?}"
            );
        }
    }

    #[test]
    fn validation_holds_the_roots_it_checked() {
        use std::os::fd::AsFd;
        let (_t, root) = tree(&["l0", "l1", "u", "w", "m"]);
        std::os::unix::fs::symlink(root.join("l1"), root.join("link")).unwrap();
        let c = MountConfig {
            lowers: vec![root.join("l0"), root.join("link")],
            upper: Some(root.join("u")),
            work: Some(root.join("w")),
            ..MountConfig::default()
        };
        let v = c.validate_on(&FakeHost::ok(), &root.join("m")).unwrap();
        let is = |held: &Option<Arc<OwnedFd>>, dir: &str| {
            let held = nix::sys::stat::fstat(held.as_ref().expect("held").as_fd()).unwrap();
            let named = std::fs::metadata(root.join(dir)).unwrap();
            assert_eq!(
                (held.st_dev, held.st_ino),
                (named.dev(), named.ino()),
                "{dir}"
            );
        };
        is(&v.lower_dirs[0], "l0");
        is(&v.lower_dirs[1], "l1");
        is(&v.upper_dir, "u");
        assert_eq!(v.lower_dirs.len(), 2);
    }

    #[test]
    fn written_canonically() {
        for (path, want) in [
            ("/", true),
            ("/a/b", true),
            ("/a/b/", false),
            ("/a//b", false),
            ("//a", false),
            ("/a/./b", false),
            ("/a/../b", false),
            ("a/b", false),
            ("./a", false),
        ] {
            assert_eq!(is_written_canonically(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn validate_cross_device() {
        let (_t, root) = tree(&["l0", "u", "w", "m"]);
        let mut h = FakeHost::ok();
        h.devices = vec![(root.join("u"), 1), (root.join("w"), 2)];
        let err = check(&h, &root, &["l0"], Some(("u", "w")), "m").unwrap_err();
        assert!(matches!(err, ConfigError::CrossDevice { .. }), "{err}");
        assert!(err.to_string().contains("different filesystems"));
    }

    #[test]
    fn validate_busy_mountpoint_and_missing_fuse() {
        let (_t, root) = tree(&["l0", "m m"]);
        let mut h = FakeHost::ok();
        let escaped = root.join("m\\040m");
        h.mountinfo.extend_from_slice(b"50 27 0:40 / ");
        h.mountinfo
            .extend_from_slice(escaped.as_os_str().as_bytes());
        h.mountinfo
            .extend_from_slice(b" rw,relatime shared:1 - tmpfs tmpfs rw\n");
        let err = check(&h, &root, &["l0"], None, "m m").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mountpoint {} is already in use (tmpfs is mounted there)",
                root.join("m m").display()
            )
        );
        let mut h = FakeHost::ok();
        h.fuse = false;
        let err = check(&h, &root, &["l0"], None, "m m").unwrap_err();
        assert!(matches!(err, ConfigError::NoFuseDevice), "{err}");
    }

    #[test]
    fn validate_upper_work_pairing() {
        let (_t, root) = tree(&["l0", "u", "m"]);
        let c = MountConfig {
            lowers: vec![root.join("l0")],
            upper: Some(root.join("u")),
            ..MountConfig::default()
        };
        let err = c.validate_on(&FakeHost::ok(), &root.join("m")).unwrap_err();
        assert!(matches!(err, ConfigError::UpperWithoutWork));
        let err = MountConfig::default()
            .validate_on(&FakeHost::ok(), &root.join("m"))
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoLowers));
    }
}
