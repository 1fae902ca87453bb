//! What `unionfs run` is asked to do, parsed and checked before anything is created.
//!
//! Every option of the command line that can be wrong (limits, bind mounts, users, variables)
//! is turned into a typed value here, so that bad input is refused with exit status 125 before
//! a layer, a mount or a cgroup exists. The forms follow docker's (`--memory 64m`,
//! `-v /src:/dst:ro`, `-u 1000:1000`, `--cpus 0.5`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// A value on the command line that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid --lower: {0}")]
    Lower(String),
    #[error("invalid --memory {0:?}: expected a size such as 64m or 1g, at least 6m")]
    Memory(String),
    #[error("invalid --pids-limit {0:?}: expected a positive number, or -1 for no limit")]
    Pids(String),
    #[error("invalid --cpus {0:?}: expected a number greater than 0, at most {1}")]
    Cpus(String, usize),
    #[error("invalid volume {0:?}: expected HOST:CONTAINER[:ro|:rw] with absolute paths")]
    Volume(PathBuf),
    #[error("invalid user {0:?}: expected UID[:GID] as numbers")]
    User(String),
    #[error("invalid environment variable {0:?}: expected KEY=VALUE")]
    Env(OsString),
    #[error("invalid working directory {0:?}: expected an absolute path")]
    Workdir(PathBuf),
    #[error("invalid --network {0:?}: expected none or host")]
    Network(String),
    #[error("invalid hostname {0:?}: expected 1 to 64 letters, digits, '-' or '.'")]
    Hostname(String),
}

/// The network a container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A new network namespace with only loopback, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// Resource limits; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Bytes of memory (swap included: the container gets no swap beyond it).
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// CPU bandwidth: `quota` microseconds per `period` microseconds.
    pub cpu: Option<CpuQuota>,
}

/// CFS bandwidth, as cgroup v2 `cpu.max` and v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us` take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpu.is_some()
    }
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    /// Absolute, without `..`.
    pub container: PathBuf,
    pub read_only: bool,
}

/// Numeric identity of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// `--memory`: a number with an optional b/k/m/g suffix (powers of 1024), at least 6 MiB as
/// docker requires.
pub fn parse_memory(s: &str) -> Result<u64, SpecError> {
    let err = || SpecError::Memory(s.to_owned());
    let lower = s.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        _ => return Err(err()),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(err)?;
    if bytes < 6 << 20 {
        return Err(err());
    }
    Ok(bytes)
}

/// `--pids-limit`: a positive count, or 0 / -1 for no limit (docker's convention).
pub fn parse_pids(s: &str) -> Result<Option<u64>, SpecError> {
    match s.trim().parse::<i64>() {
        Ok(-1 | 0) => Ok(None),
        Ok(n) if n > 0 => Ok(Some(n as u64)),
        _ => Err(SpecError::Pids(s.to_owned())),
    }
}

/// `--cpus`: a decimal number of CPUs, greater than 0 and at most `available`.
pub fn parse_cpus(s: &str, available: usize) -> Result<CpuQuota, SpecError> {
    let err = || SpecError::Cpus(s.to_owned(), available);
    let cpus: f64 = s.trim().parse().map_err(|_| err())?;
    if !cpus.is_finite() || cpus <= 0.0 || cpus > available as f64 {
        return Err(err());
    }
    let period_us = 100_000;
    let quota_us = (cpus * period_us as f64).round() as u64;
    // The kernel refuses quotas under 1 ms.
    if quota_us < 1000 {
        return Err(err());
    }
    Ok(CpuQuota {
        quota_us,
        period_us,
    })
}

/// `-v HOST:CONTAINER[:ro|:rw]`.
pub fn parse_volume(s: &OsStr) -> Result<Volume, SpecError> {
    let err = || SpecError::Volume(PathBuf::from(s));
    let parts: Vec<&[u8]> = s.as_bytes().split(|&b| b == b':').collect();
    let (host, container, read_only) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, b"ro"] => (*h, *c, true),
        [h, c, b"rw"] => (*h, *c, false),
        _ => return Err(err()),
    };
    let host = PathBuf::from(OsStr::from_bytes(host));
    let container = PathBuf::from(OsStr::from_bytes(container));
    if !host.is_absolute() || !is_clean_absolute(&container) || container == Path::new("/") {
        return Err(err());
    }
    Ok(Volume {
        host,
        container,
        read_only,
    })
}

/// An absolute path without `..`, so that joining it to a root cannot climb out lexically.
pub fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| c != Component::ParentDir)
}

/// `-u UID[:GID]`; the group defaults to the uid's number, as with a user of the same name.
pub fn parse_user(s: &str) -> Result<User, SpecError> {
    let err = || SpecError::User(s.to_owned());
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid: u32 = u.parse().map_err(|_| err())?;
    let gid = match g {
        Some(g) => g.parse().map_err(|_| err())?,
        None => uid,
    };
    Ok(User { uid, gid })
}

/// `-e KEY=VALUE`; a bare `KEY` takes the caller's value, as docker does, and is dropped when
/// the caller has none.
pub fn parse_env(
    s: &OsStr,
    lookup: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Option<(OsString, OsString)>, SpecError> {
    let bytes = s.as_bytes();
    let (key, value) = match bytes.iter().position(|&b| b == b'=') {
        Some(i) => (
            OsString::from_vec(bytes[..i].to_vec()),
            Some(OsString::from_vec(bytes[i + 1..].to_vec())),
        ),
        None => (s.to_owned(), None),
    };
    if key.is_empty() {
        return Err(SpecError::Env(s.to_owned()));
    }
    Ok(match value {
        Some(v) => Some((key, v)),
        None => lookup(&key).map(|v| (key, v)),
    })
}

/// `-w DIR`.
pub fn parse_workdir(p: &Path) -> Result<PathBuf, SpecError> {
    if is_clean_absolute(p) {
        Ok(p.to_path_buf())
    } else {
        Err(SpecError::Workdir(p.to_path_buf()))
    }
}

/// `--network none|host`.
pub fn parse_network(s: &str) -> Result<Network, SpecError> {
    match s {
        "none" => Ok(Network::None),
        "host" => Ok(Network::Host),
        _ => Err(SpecError::Network(s.to_owned())),
    }
}

/// `--hostname`: a name sethostname(2) takes and a shell prompt shows sensibly.
pub fn parse_hostname(s: &str) -> Result<OsString, SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(OsString::from(s))
    } else {
        Err(SpecError::Hostname(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        let cases = [
            ("64m", Some(64 << 20)),
            ("1g", Some(1 << 30)),
            ("8192k", Some(8 << 20)),
            ("7340032", Some(7 << 20)),
            ("6MB", Some(6 << 20)),
            ("1m", None),
            ("", None),
            ("m", None),
            ("12x", None),
            ("-5m", None),
            ("99999999999999999999g", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_memory(s).ok(), want, "{s}");
        }
    }

    #[test]
    fn pids_and_cpus() {
        assert_eq!(parse_pids("10").unwrap(), Some(10));
        assert_eq!(parse_pids("-1").unwrap(), None);
        assert!(parse_pids("-2").is_err());
        assert!(parse_pids("lots").is_err());
        let q = parse_cpus("0.5", 2).unwrap();
        assert_eq!((q.quota_us, q.period_us), (50_000, 100_000));
        assert_eq!(parse_cpus("2", 2).unwrap().quota_us, 200_000);
        for bad in ["0", "-1", "3", "nan", "inf", "0.001", "x"] {
            assert!(parse_cpus(bad, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let v = parse_volume(OsStr::new("/src:/data:ro")).unwrap();
        assert_eq!(v.host, Path::new("/src"));
        assert_eq!(v.container, Path::new("/data"));
        assert!(v.read_only);
        assert!(!parse_volume(OsStr::new("/a:/b")).unwrap().read_only);
        assert!(!parse_volume(OsStr::new("/a:/b:rw")).unwrap().read_only);
        for bad in [
            "/a",
            "a:/b",
            "/a:b",
            "/a:/b:xx",
            "/a:/../etc",
            "/a:/",
            "/a:/b:ro:x",
        ] {
            assert!(parse_volume(OsStr::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_env_and_names() {
        assert_eq!(
            parse_user("1000").unwrap(),
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(parse_user("5:7").unwrap(), User { uid: 5, gid: 7 });
        assert!(parse_user("bob").is_err());
        assert!(parse_user("1:").is_err());
        let none = |_: &OsStr| None;
        let some = |_: &OsStr| Some(OsString::from("v"));
        assert_eq!(
            parse_env(OsStr::new("A=b=c"), none).unwrap(),
            Some(("A".into(), "b=c".into()))
        );
        assert_eq!(parse_env(OsStr::new("A"), none).unwrap(), None);
        assert_eq!(
            parse_env(OsStr::new("A"), some).unwrap(),
            Some(("A".into(), "v".into()))
        );
        assert!(parse_env(OsStr::new("=x"), none).is_err());
        assert!(parse_workdir(Path::new("rel")).is_err());
        assert!(parse_workdir(Path::new("/a/../b")).is_err());
        assert_eq!(parse_network("host").unwrap(), Network::Host);
        assert!(parse_network("bridge").is_err());
        assert!(parse_hostname("box-1.local").is_ok());
        assert!(parse_hostname("a b").is_err());
        assert!(parse_hostname("").is_err());
    }
}
