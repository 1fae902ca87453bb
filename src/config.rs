//! What a mount is made of: lower layers, an optional upper and work directory, and options.
//!
//! Both command-line forms (`--lower A:B --upper U --work W` and the mount(8) style
//! `-o lowerdir=A:B,upperdir=U,workdir=W`) end up as one [`MountConfig`], which is validated
//! here before anything is mounted, so that a bad path never leaves a half-made mount behind.
//!
//! Everything here is pure logic over strings and `stat` results: the option parser follows the
//! overlayfs option syntax (Documentation/filesystems/overlayfs.rst: `lowerdir` is `:`-separated,
//! top-most first, and a backslash escapes `:` and `,`), and [`MountConfig::validate`] reads the
//! machine's state only through the small [`Host`] trait, so tests can fake `/dev/fuse` and the
//! mount table. Paths stay `OsStr` bytes end to end; this module never mounts, forks or logs
//! anywhere but through `tracing`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A fully described union mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountConfig {
    /// Read-only layers, top-most first (as overlayfs's `lowerdir`).
    pub lowers: Vec<PathBuf>,
    /// Writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Scratch directory on the same filesystem as `upper`, used to stage copy-ups.
    pub work: Option<PathBuf>,
    /// Skip the fsyncs of copy-up and of fsync(2), like overlayfs's `volatile`.
    pub volatile: bool,
}

/// Why a set of mount options or layer flags does not describe a mount.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option \"{0}\"")]
    Unknown(String),
    #[error("mount option \"{0}\" is not supported yet")]
    NotSupported(String),
    #[error("mount option \"{0}\" needs a value (\"{0}=...\")")]
    MissingValue(String),
    #[error("mount option \"{0}\" takes no value")]
    UnexpectedValue(String),
    #[error("empty layer in lower directory list \"{}\"", .0.display())]
    EmptyLayer(PathBuf),
    #[error("the lower layers are given twice (both --lower and -o lowerdir)")]
    LowersTwice,
    #[error("the upper directory is given twice (both --upper and -o upperdir)")]
    UpperTwice,
    #[error("the work directory is given twice (both --work and -o workdir)")]
    WorkTwice,
    #[error("no lower layer given (use --lower A:B or -o lowerdir=A:B)")]
    NoLowers,
    #[error("an upper directory needs a work directory (--work or -o workdir)")]
    UpperWithoutWork,
    #[error("a work directory needs an upper directory (--upper or -o upperdir)")]
    WorkWithoutUpper,
}

/// Generic mount(8)/FUSE options that change nothing for unionfs and are accepted silently.
const HARMLESS: &[&str] = &[
    "rw",
    "default_permissions",
    "allow_other",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
];

/// fuse-overlayfs / containers-storage options we know but do not implement: refusing them is
/// safer than mounting with an id mapping or label silently missing.
const NOT_SUPPORTED: &[&str] = &[
    "uidmapping",
    "gidmapping",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "context",
];

/// `-o` options and layer flags gathered before they become a [`MountConfig`].
///
/// Later options override earlier ones, as with mount(8); `ro` drops the upper layer when the
/// configuration is finished, whatever the order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub lowers: Option<Vec<PathBuf>>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub volatile: bool,
    pub read_only: bool,
}

impl MountOptions {
    /// Parses one `-o` string.
    pub fn parse(opts: &OsStr) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        o.apply(opts)?;
        Ok(o)
    }

    /// Applies one comma-separated `-o` string; empty items (`a,,b`, trailing commas) are
    /// ignored.
    pub fn apply(&mut self, opts: &OsStr) -> Result<(), OptionError> {
        for item in split_escaped(opts.as_bytes(), b',') {
            if !item.is_empty() {
                self.apply_one(item)?;
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, item: &[u8]) -> Result<(), OptionError> {
        let (name, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match name.as_str() {
            "lowerdir" => self.lowers = Some(parse_lowerdir(need(&name, value)?)?),
            "lowerdir+" => {
                let layer = unescape(need(&name, value)?);
                self.lowers.get_or_insert_with(Vec::new).push(layer);
            }
            "upperdir" => self.upper = Some(unescape(need(&name, value)?)),
            "workdir" => self.work = Some(unescape(need(&name, value)?)),
            "volatile" | "ro" => {
                if value.is_some() {
                    return Err(OptionError::UnexpectedValue(name));
                }
                if name == "ro" {
                    self.read_only = true;
                } else {
                    self.volatile = true;
                }
            }
            n if HARMLESS.contains(&n) => {
                if value.is_some() {
                    return Err(OptionError::UnexpectedValue(name));
                }
                if n == "rw" {
                    self.read_only = false;
                }
            }
            n if NOT_SUPPORTED.contains(&n) => return Err(OptionError::NotSupported(name)),
            _ => return Err(OptionError::Unknown(name)),
        }
        Ok(())
    }

    /// Adds the `--lower`, `--upper` and `--work` flags; giving a layer both as a flag and as an
    /// option is an error rather than a silent override.
    pub fn merge_flags(
        &mut self,
        lower: Option<&OsStr>,
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<(), OptionError> {
        if let Some(l) = lower {
            if self.lowers.is_some() {
                return Err(OptionError::LowersTwice);
            }
            self.lowers = Some(parse_lowerdir(l.as_bytes())?);
        }
        if let Some(u) = upper {
            if self.upper.replace(u.to_path_buf()).is_some() {
                return Err(OptionError::UpperTwice);
            }
        }
        if let Some(w) = work {
            if self.work.replace(w.to_path_buf()).is_some() {
                return Err(OptionError::WorkTwice);
            }
        }
        Ok(())
    }

    /// Finishes the configuration: at least one lower, upper and work together, `ro` applied.
    pub fn into_config(self) -> Result<MountConfig, OptionError> {
        let lowers = match self.lowers {
            Some(l) if !l.is_empty() => l,
            _ => return Err(OptionError::NoLowers),
        };
        match (&self.upper, &self.work) {
            (Some(_), None) => return Err(OptionError::UpperWithoutWork),
            (None, Some(_)) => return Err(OptionError::WorkWithoutUpper),
            _ => {}
        }
        let (upper, work) = if self.read_only {
            if self.upper.is_some() {
                tracing::debug!("option ro: the upper layer is not used");
            }
            (None, None)
        } else {
            (self.upper, self.work)
        };
        Ok(MountConfig {
            lowers,
            upper,
            work,
            volatile: self.volatile,
        })
    }
}

fn need<'a>(name: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], OptionError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OptionError::MissingValue(name.to_owned())),
    }
}

/// Splits `s` at every `sep` not preceded by a backslash; escapes are kept for the next stage.
fn split_escaped(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < s.len() {
        if s[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i] == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

/// Removes backslash escapes (`\:` → `:`, `\,` → `,`, `\\` → `\`).
fn unescape(s: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
                continue;
            }
        }
        out.push(b);
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses an overlayfs `lowerdir` value: `:`-separated, top-most first, `\:` for a literal colon.
pub fn parse_lowerdir(s: &[u8]) -> Result<Vec<PathBuf>, OptionError> {
    let parts = split_escaped(s, b':');
    if parts.iter().any(|p| p.is_empty()) {
        return Err(OptionError::EmptyLayer(PathBuf::from(OsStr::from_bytes(s))));
    }
    Ok(parts.into_iter().map(unescape).collect())
}

impl MountConfig {
    /// Builds a configuration from one mount(8)-style option string.
    pub fn from_options(opts: &OsStr) -> Result<MountConfig, OptionError> {
        MountOptions::parse(opts)?.into_config()
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: every check that can be made before mounting anything.

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
}

impl MountConfig {
    /// Checks, before anything is mounted, that this configuration can be mounted on
    /// `mountpoint`: every path exists and is a directory, upper and work share a filesystem and
    /// do not contain each other, no layer is listed twice or lies inside another (nor the
    /// mountpoint inside a layer or the reverse), the mountpoint is free and `/dev/fuse` exists.
    pub fn validate(&self, mountpoint: &Path) -> Result<(), ConfigError> {
        self.validate_on(&RealHost, mountpoint)
    }

    /// [`MountConfig::validate`] against the given machine state.
    pub fn validate_on(&self, host: &dyn Host, mountpoint: &Path) -> Result<(), ConfigError> {
        let (cfg, mnt) = self.canonicalize(mountpoint)?;
        let roles = cfg.roles(&mnt);
        if let (Some(upper), Some(work)) = (&cfg.upper, &cfg.work) {
            check_upper_work(host, upper, work)?;
        }
        check_overlaps(&roles)?;
        let table = host.mountinfo().map_err(ConfigError::MountTable)?;
        if let Some(entry) = find_mount(&table, &mnt) {
            return Err(ConfigError::MountpointBusy {
                path: mnt,
                fstype: entry.fstype,
            });
        }
        if !host.has_fuse_device() {
            return Err(ConfigError::NoFuseDevice);
        }
        Ok(())
    }

    /// Returns the configuration and mountpoint with every path made absolute and free of
    /// symlinks and `..`, checking on the way that each exists and is a directory. The daemon
    /// changes directory to `/`, so it must only ever see such paths.
    pub fn canonicalize(&self, mountpoint: &Path) -> Result<(MountConfig, PathBuf), ConfigError> {
        if self.lowers.is_empty() {
            return Err(ConfigError::NoLowers);
        }
        match (&self.upper, &self.work) {
            (Some(_), None) => return Err(ConfigError::UpperWithoutWork),
            (None, Some(_)) => return Err(ConfigError::WorkWithoutUpper),
            _ => {}
        }
        let lowers = self
            .lowers
            .iter()
            .enumerate()
            .map(|(i, l)| canonical_dir(Role::Lower(i), l))
            .collect::<Result<Vec<_>, _>>()?;
        let upper = self.upper.as_deref().map(|u| canonical_dir(Role::Upper, u));
        let work = self.work.as_deref().map(|w| canonical_dir(Role::Work, w));
        let cfg = MountConfig {
            lowers,
            upper: upper.transpose()?,
            work: work.transpose()?,
            volatile: self.volatile,
        };
        let mnt = canonical_dir(Role::Mountpoint, mountpoint)?;
        Ok((cfg, mnt))
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

fn canonical_dir(role: Role, path: &Path) -> Result<PathBuf, ConfigError> {
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
        Ok(true) => Ok(canon),
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
fn check_overlaps(roles: &[(Role, &Path)]) -> Result<(), ConfigError> {
    for (i, &(first, a)) in roles.iter().enumerate() {
        for &(second, b) in &roles[i + 1..] {
            if a == b {
                return Err(ConfigError::Duplicate {
                    path: a.to_path_buf(),
                    first,
                    second,
                });
            }
            let nested = if b.starts_with(a) {
                Some(((second, b), (first, a)))
            } else if a.starts_with(b) {
                Some(((first, a), (second, b)))
            } else {
                None
            };
            if let Some(((inner_role, inner), (outer_role, outer))) = nested {
                return Err(ConfigError::Nested {
                    inner_role,
                    inner: inner.to_path_buf(),
                    outer_role,
                    outer: outer.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo`, as far as we need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse.unionfs` or `overlay`.
    pub fstype: String,
}

/// The top-most mount whose mount point is exactly `path`, from the contents of
/// `/proc/self/mountinfo` (proc(5): field 5 is the mount point with `\ooo` octal escapes; the
/// filesystem type follows the ` - ` separator).
pub fn find_mount(mountinfo: &[u8], path: &Path) -> Option<MountEntry> {
    let want = path.as_os_str().as_bytes();
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(parse_mountinfo_line)
        .rev()
        .find(|e| e.mount_point.as_os_str().as_bytes() == want)
}

fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let mount_point = fields.get(4)?;
    let sep = fields.iter().position(|f| *f == b"-")?;
    let fstype = fields.get(sep + 1)?;
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape_octal(mount_point))),
        fstype: String::from_utf8_lossy(&unescape_octal(fstype)).into_owned(),
    })
}

fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let digits = s.get(i + 1..i + 4);
        if s[i] == b'\\' {
            if let Some(d) = digits.filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c))) {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Where a detached daemon logs.

/// The directory for log files of detached daemons: `/run/unionfs` for root,
/// `$XDG_RUNTIME_DIR/unionfs` for other users, `/tmp/unionfs-<uid>` when that is unset.
pub fn default_log_dir(is_root: bool, xdg_runtime_dir: Option<&OsStr>, uid: u32) -> PathBuf {
    if is_root {
        return PathBuf::from("/run/unionfs");
    }
    match xdg_runtime_dir.filter(|d| !d.is_empty()) {
        Some(d) => Path::new(d).join("unionfs"),
        None => PathBuf::from(format!("/tmp/unionfs-{uid}")),
    }
}

/// The log file name for a mountpoint, escaped like systemd-escape(1) `--path`: slashes become
/// `-`, and bytes other than ASCII letters, digits, `_`, `.` and `:` become `\xNN`, so each
/// mountpoint gets a distinct, flat name (`/mnt/a-b` → `mnt-a\x2db.log`).
pub fn log_file_name(mountpoint: &Path) -> OsString {
    let bytes = mountpoint.as_os_str().as_bytes();
    let trimmed: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut out = Vec::new();
    if trimmed.is_empty() {
        out.push(b'-');
    }
    for (i, comp) in trimmed.iter().enumerate() {
        if i > 0 {
            out.push(b'-');
        }
        for (j, &b) in comp.iter().enumerate() {
            let plain = b.is_ascii_alphanumeric()
                || b == b'_'
                || b == b':'
                || (b == b'.' && (i, j) != (0, 0));
            if plain {
                out.push(b);
            } else {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        }
    }
    out.extend_from_slice(b".log");
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn cfg(
        lowers: &[&str],
        upper: Option<&str>,
        work: Option<&str>,
        volatile: bool,
    ) -> MountConfig {
        MountConfig {
            lowers: lowers.iter().map(|l| p(l)).collect(),
            upper: upper.map(p),
            work: work.map(p),
            volatile,
        }
    }

    #[test]
    fn options_table() {
        let ok: &[(&str, MountConfig)] = &[
            ("lowerdir=/a", cfg(&["/a"], None, None, false)),
            (
                "lowerdir=/a:/b:/c",
                cfg(&["/a", "/b", "/c"], None, None, false),
            ),
            (
                "lowerdir=/a,upperdir=/u,workdir=/w",
                cfg(&["/a"], Some("/u"), Some("/w"), false),
            ),
            (",,lowerdir=/a,,volatile,", cfg(&["/a"], None, None, true)),
            (
                "lowerdir=/a,upperdir=/u,workdir=/w,ro",
                cfg(&["/a"], None, None, false),
            ),
            (
                "ro,lowerdir=/a,upperdir=/u,workdir=/w",
                cfg(&["/a"], None, None, false),
            ),
            (
                "ro,rw,lowerdir=/a,upperdir=/u,workdir=/w",
                cfg(&["/a"], Some("/u"), Some("/w"), false),
            ),
            ("lowerdir=/x,lowerdir=/a", cfg(&["/a"], None, None, false)),
            (
                "lowerdir+=/a,lowerdir+=/b",
                cfg(&["/a", "/b"], None, None, false),
            ),
            (
                r"lowerdir=/a\:b:/c\,d",
                cfg(&["/a:b", "/c,d"], None, None, false),
            ),
            (
                "lowerdir=/a,rw,default_permissions,allow_other,suid,nosuid,dev,nodev,exec,noexec",
                cfg(&["/a"], None, None, false),
            ),
        ];
        for (input, want) in ok {
            assert_eq!(
                MountConfig::from_options(OsStr::new(input)).as_ref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn option_errors_table() {
        use OptionError as E;
        let bad: &[(&str, E)] = &[
            ("lowerdir=/a,bogus", E::Unknown("bogus".into())),
            ("lowerdir=/a,bogus=1", E::Unknown("bogus".into())),
            (
                "lowerdir=/a,uidmapping=0:1:1",
                E::NotSupported("uidmapping".into()),
            ),
            (
                "lowerdir=/a,gidmapping=0:1:1",
                E::NotSupported("gidmapping".into()),
            ),
            (
                "lowerdir=/a,squash_to_uid=0",
                E::NotSupported("squash_to_uid".into()),
            ),
            (
                "lowerdir=/a,squash_to_gid=0",
                E::NotSupported("squash_to_gid".into()),
            ),
            (
                "lowerdir=/a,xattr_permissions=1",
                E::NotSupported("xattr_permissions".into()),
            ),
            ("lowerdir=/a,context=x", E::NotSupported("context".into())),
            ("lowerdir=", E::MissingValue("lowerdir".into())),
            ("lowerdir", E::MissingValue("lowerdir".into())),
            ("lowerdir=/a,upperdir", E::MissingValue("upperdir".into())),
            (
                "lowerdir=/a,volatile=1",
                E::UnexpectedValue("volatile".into()),
            ),
            ("lowerdir=/a,ro=1", E::UnexpectedValue("ro".into())),
            (
                "lowerdir=/a,allow_other=1",
                E::UnexpectedValue("allow_other".into()),
            ),
            ("lowerdir=/a::/b", E::EmptyLayer(p("/a::/b"))),
            ("lowerdir=/a:", E::EmptyLayer(p("/a:"))),
            ("upperdir=/u,workdir=/w", E::NoLowers),
            ("", E::NoLowers),
            ("lowerdir=/a,upperdir=/u", E::UpperWithoutWork),
            ("lowerdir=/a,workdir=/w", E::WorkWithoutUpper),
        ];
        for (input, want) in bad {
            assert_eq!(
                MountConfig::from_options(OsStr::new(input)).as_ref(),
                Err(want),
                "{input}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_option() {
        let e = MountConfig::from_options(OsStr::new("lowerdir=/a,frobnicate")).unwrap_err();
        assert_eq!(e.to_string(), "unknown mount option \"frobnicate\"");
        let e = MountConfig::from_options(OsStr::new("lowerdir=/a,uidmapping=0:1:1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount option \"uidmapping\" is not supported yet"
        );
    }

    #[test]
    fn several_option_strings_and_flags() {
        let mut o = MountOptions::default();
        o.apply(OsStr::new("upperdir=/u")).unwrap();
        o.apply(OsStr::new("workdir=/w,volatile")).unwrap();
        o.merge_flags(Some(OsStr::new("/a:/b")), None, None)
            .unwrap();
        assert_eq!(
            o.into_config(),
            Ok(cfg(&["/a", "/b"], Some("/u"), Some("/w"), true))
        );

        let mut o = MountOptions::parse(OsStr::new("lowerdir=/a")).unwrap();
        assert_eq!(
            o.merge_flags(Some(OsStr::new("/b")), None, None),
            Err(OptionError::LowersTwice)
        );
        let mut o = MountOptions::parse(OsStr::new("upperdir=/u")).unwrap();
        assert_eq!(
            o.merge_flags(None, Some(Path::new("/u")), None),
            Err(OptionError::UpperTwice)
        );
        let mut o = MountOptions::parse(OsStr::new("workdir=/w")).unwrap();
        assert_eq!(
            o.merge_flags(None, None, Some(Path::new("/w"))),
            Err(OptionError::WorkTwice)
        );
    }

    #[test]
    fn non_utf8_paths_survive() {
        let raw = b"lowerdir=/a\xff:/b".to_vec();
        let c = MountConfig::from_options(OsStr::from_bytes(&raw)).unwrap();
        assert_eq!(c.lowers[0].as_os_str().as_bytes(), b"/a\xff");
    }

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
        };
        c.validate_on(host, &root.join(mnt))
    }

    #[test]
    fn validate_table() {
        let (_t, root) = tree(&["l0", "l1", "l0/sub", "u", "w", "u/w2", "w/u2", "m", "l1/m2"]);
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

    #[test]
    fn mountinfo_lookup() {
        let info = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            45 27 0:39 / /tmp/a\\134b rw - overlay overlay rw,lowerdir=/x\n\
            46 45 0:40 / /tmp/a\\134b rw shared:3 master:1 - fuse.unionfs unionfs rw\n";
        assert_eq!(
            find_mount(info, Path::new("/tmp/a\\b")),
            Some(MountEntry {
                mount_point: p("/tmp/a\\b"),
                fstype: "fuse.unionfs".into()
            })
        );
        assert_eq!(find_mount(info, Path::new("/proc")).unwrap().fstype, "proc");
        assert_eq!(find_mount(info, Path::new("/tmp")), None);
    }

    #[test]
    fn log_locations() {
        assert_eq!(
            default_log_dir(true, Some(OsStr::new("/run/user/5")), 0),
            p("/run/unionfs")
        );
        assert_eq!(
            default_log_dir(false, Some(OsStr::new("/run/user/5")), 5),
            p("/run/user/5/unionfs")
        );
        assert_eq!(default_log_dir(false, None, 5), p("/tmp/unionfs-5"));
        assert_eq!(
            default_log_dir(false, Some(OsStr::new("")), 5),
            p("/tmp/unionfs-5")
        );
        let names: &[(&str, &str)] = &[
            ("/", "-.log"),
            ("/mnt/merged", "mnt-merged.log"),
            ("/mnt//a-b/", "mnt-a\\x2db.log"),
            ("/srv/.hidden/x y", "srv-.hidden-x\\x20y.log"),
            ("/.dot", "\\x2edot.log"),
        ];
        for (mnt, want) in names {
            assert_eq!(log_file_name(Path::new(mnt)), OsStr::new(want), "{mnt}");
        }
    }
}
