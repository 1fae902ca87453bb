//! The container's control group: finding the hierarchies, creating one group per hierarchy,
//! writing the limits, telling whether the OOM killer struck, and removing the groups again.
//!
//! Machines differ: a pure cgroup v2 host, a v1 host, or a hybrid where the v2 hierarchy has
//! only some controllers (this project's CI has memory, pids and cpu only under v1). So every
//! controller is placed on its own: under v2 when the v2 group we live in offers it
//! (`cgroup.controllers`), otherwise under the v1 hierarchy that carries it
//! (Documentation/admin-guide/cgroup-v2.rst, "Controllers" and "Deprecated v1 core features").
//! Groups are created below the caller's own group in each hierarchy, so that limits set on the
//! caller still apply. Detection is pure text parsing of `/proc/self/cgroup` and
//! `/proc/self/mountinfo`; every write goes through [`Syscalls`] so that it is unit-tested.
//! This module must never remove a group it did not create.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::run::spec::Limits;
use crate::sys::ns::Syscalls;

/// The controllers a container uses: memory and pids always (OOM reports, fork bombs), cpu for
/// `--cpus`.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Why a control group step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup hierarchy offers the {0} controller needed for the requested limit")]
    Missing(&'static str),
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable controllers in {path}")]
    Enable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {file} to {value}")]
    Limit {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot move process {pid} into {path}")]
    Join {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move into {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy and the caller's group in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// Controllers bound to it (v1: from the mount options; v2: filled in from
    /// `cgroup.controllers` by the caller).
    pub controllers: BTreeSet<String>,
    /// Directory of the caller's own group (mountpoint joined with its path).
    pub own_dir: PathBuf,
}

/// Parses the mounted hierarchies from `/proc/self/mountinfo` and the caller's group in each
/// from `/proc/self/cgroup`. v2 controllers are left empty.
pub fn hierarchies(proc_cgroup: &str, mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(root), Some(mnt)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let fstype = fields.get(dash + 1).copied().unwrap_or("");
        let superopts = fields.get(dash + 3).copied().unwrap_or("");
        let (version, controllers): (Version, BTreeSet<String>) = match fstype {
            "cgroup2" => (Version::V2, BTreeSet::new()),
            "cgroup" => (
                Version::V1,
                superopts
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("name="))
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => continue,
        };
        if version == Version::V1 && controllers.is_empty() {
            continue;
        }
        let Some(path) = own_path(proc_cgroup, version, &controllers) else {
            continue;
        };
        let rel = path.strip_prefix(root).unwrap_or(path);
        let own_dir = Path::new(&unescape(mnt)).join(rel.trim_start_matches('/'));
        out.push(Hierarchy {
            version,
            controllers,
            own_dir,
        });
    }
    out
}

/// The caller's path in a hierarchy: the `0::` line for v2, the line whose controller list
/// equals `controllers` for v1.
fn own_path<'a>(
    proc_cgroup: &'a str,
    version: Version,
    controllers: &BTreeSet<String>,
) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (id, ctl, path) = (it.next()?, it.next()?, it.next()?);
        let matches = match version {
            Version::V2 => id == "0" && ctl.is_empty(),
            Version::V1 => {
                let set: BTreeSet<String> = ctl
                    .split(',')
                    .filter(|c| !c.starts_with("name="))
                    .map(str::to_owned)
                    .collect();
                !set.is_empty() && &set == controllers
            }
        };
        matches.then_some(path)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
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

/// Where each controller goes: the v2 hierarchy if it offers it, else the v1 hierarchy that
/// carries it. Returns the chosen hierarchies with only the used controllers kept.
pub fn place(hier: &[Hierarchy], limits: &Limits) -> Result<Vec<Hierarchy>, Error> {
    let mut chosen: Vec<Hierarchy> = Vec::new();
    for ctl in CONTROLLERS {
        let v2 = hier
            .iter()
            .find(|h| h.version == Version::V2 && h.controllers.contains(ctl));
        let found = v2.or_else(|| {
            hier.iter()
                .find(|h| h.version == Version::V1 && h.controllers.contains(ctl))
        });
        let Some(h) = found else {
            let needed = match ctl {
                "memory" => limits.memory.is_some(),
                "pids" => limits.pids.is_some(),
                _ => limits.cpu.is_some(),
            };
            if needed {
                return Err(Error::Missing(ctl));
            }
            continue;
        };
        match chosen.iter_mut().find(|c| c.own_dir == h.own_dir) {
            Some(c) if c.version == Version::V2 => {
                c.controllers.insert(ctl.to_owned());
            }
            Some(_) => {}
            None => {
                let mut h = h.clone();
                if h.version == Version::V2 {
                    h.controllers = BTreeSet::from([ctl.to_owned()]);
                }
                chosen.push(h);
            }
        }
    }
    Ok(chosen)
}

/// The container's groups, one per chosen hierarchy; created by [`Cgroup::create`], removed by
/// [`Cgroup::remove`].
#[derive(Debug)]
pub struct Cgroup {
    groups: Vec<Hierarchy>,
}

impl Cgroup {
    /// Detects the hierarchies of this machine and places the controllers.
    pub fn detect(limits: &Limits) -> Result<Vec<Hierarchy>, Error> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| Error::Read {
                path: p.into(),
                source,
            })
        };
        let mut hier = hierarchies(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?);
        for h in hier.iter_mut().filter(|h| h.version == Version::V2) {
            // A missing file (no controllers delegated) just means none.
            let text =
                std::fs::read_to_string(h.own_dir.join("cgroup.controllers")).unwrap_or_default();
            h.controllers = text.split_whitespace().map(str::to_owned).collect();
        }
        place(&hier, limits)
    }

    /// Creates `name` below the caller's group in each hierarchy and writes the limits.
    pub fn create(
        sys: &dyn Syscalls,
        placed: Vec<Hierarchy>,
        name: &str,
        limits: &Limits,
    ) -> Result<Cgroup, Error> {
        let mut cg = Cgroup { groups: Vec::new() };
        for h in placed {
            if h.version == Version::V2 {
                let ctl = h.controllers.iter().map(|c| format!("+{c}"));
                let ctl = ctl.collect::<Vec<_>>().join(" ");
                let path = h.own_dir.join("cgroup.subtree_control");
                sys.write_file(&path, ctl.as_bytes())
                    .map_err(|source| Error::Enable { path, source })?;
            }
            let dir = h.own_dir.join(name);
            sys.mkdir_all(&dir, 0o755).map_err(|source| Error::Create {
                path: dir.clone(),
                source,
            })?;
            cg.groups.push(Hierarchy { own_dir: dir, ..h });
        }
        // Once created, the groups are removed by the caller's guard, even if a limit fails.
        for h in &cg.groups {
            for (file, value) in limit_writes(h, limits) {
                let file = h.own_dir.join(file);
                let optional = file.ends_with("memory.swap.max")
                    || file.ends_with("memory.memsw.limit_in_bytes");
                if optional && !sys.exists(&file) {
                    continue;
                }
                sys.write_file(&file, value.as_bytes())
                    .map_err(|source| Error::Limit {
                        file,
                        value,
                        source,
                    })?;
            }
        }
        Ok(cg)
    }

    /// An empty handle, for a launcher that has not created groups yet.
    pub fn none() -> Cgroup {
        Cgroup { groups: Vec::new() }
    }

    /// Moves the calling process into every v1 group; see [`Cgroup::join`] for the v2 ones.
    /// The caller must have a single thread: this moves the calling thread.
    ///
    /// Moving a whole process (`cgroup.procs`), or any thread but the caller, takes the
    /// kernel's global threadgroup lock, whose first writer waits for an RCU grace period:
    /// 5–28 ms measured on a 2-CPU machine. The caller moving itself through v1's `tasks` file
    /// (id `0`) skips that lock (`cgroup_procs_write_start` in `kernel/cgroup`) and took
    /// 0.3–0.5 ms there. v2 has no such file outside threaded subtrees.
    pub fn enter(&self, sys: &dyn Syscalls) -> Result<(), Error> {
        for h in self.groups.iter().filter(|h| h.version == Version::V1) {
            let path = h.own_dir.join("tasks");
            sys.write_file(&path, b"0")
                .map_err(|source| Error::Enter { path, source })?;
        }
        Ok(())
    }

    /// Moves process `pid` into every v2 group; the process enters the v1 groups itself
    /// ([`Cgroup::enter`]).
    pub fn join(&self, sys: &dyn Syscalls, pid: i32) -> Result<(), Error> {
        for h in self.groups.iter().filter(|h| h.version == Version::V2) {
            let path = h.own_dir.join("cgroup.procs");
            sys.write_file(&path, pid.to_string().as_bytes())
                .map_err(|source| Error::Join { pid, path, source })?;
        }
        Ok(())
    }

    /// The group directories, for logs and tests.
    pub fn dirs(&self) -> impl Iterator<Item = (&Path, Version)> {
        self.groups.iter().map(|h| (h.own_dir.as_path(), h.version))
    }

    /// How many processes the OOM killer killed in the memory group (v2 `memory.events`, v1
    /// `memory.oom_control`, both `oom_kill N`); `None` without a memory group.
    pub fn oom_kills(&self) -> Option<u64> {
        let h = self
            .groups
            .iter()
            .find(|h| h.controllers.contains("memory"))?;
        let file = match h.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let text = std::fs::read_to_string(h.own_dir.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Removes the groups. A group still holding processes (only possible if something
    /// outlived the pid namespace) has them killed first. Returns the first failure, after
    /// trying every group.
    pub fn remove(&mut self, sys: &dyn Syscalls) -> io::Result<()> {
        let mut first = None;
        for h in self.groups.drain(..) {
            if let Err(e) = remove_dir(sys, &h.own_dir) {
                tracing::warn!(path = %h.own_dir.display(), %e, "cannot remove cgroup");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn remove_dir(sys: &dyn Syscalls, dir: &Path) -> io::Result<()> {
    let mut last = None;
    for attempt in 0..100 {
        match sys.rmdir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if attempt == 10 {
                    kill_members(dir);
                }
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
}

fn kill_members(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The files and values that set `limits` in group `h` (only for the controllers it carries).
fn limit_writes(h: &Hierarchy, limits: &Limits) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    let has = |c: &str| h.controllers.contains(c);
    if let (true, Some(m)) = (has("memory"), limits.memory) {
        match h.version {
            Version::V2 => {
                w.push(("memory.max", m.to_string()));
                w.push(("memory.swap.max", "0".to_owned()));
            }
            Version::V1 => {
                w.push(("memory.limit_in_bytes", m.to_string()));
                w.push(("memory.memsw.limit_in_bytes", m.to_string()));
            }
        }
    }
    if let (true, Some(p)) = (has("pids"), limits.pids) {
        w.push(("pids.max", p.to_string()));
    }
    if let (true, Some(c)) = (has("cpu"), limits.cpu) {
        match h.version {
            Version::V2 => w.push(("cpu.max", format!("{} {}", c.quota_us, c.period_us))),
            Version::V1 => {
                w.push(("cpu.cfs_period_us", c.period_us.to_string()));
                w.push(("cpu.cfs_quota_us", c.quota_us.to_string()));
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::fake::Fake;
    use crate::run::spec::CpuQuota;

    // This project's CI: memory, pids and cpu only as v1, an empty v2 beside them.
    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/sandbox/a1\n\
        1:cpu:/\n2:cpuacct:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_CGROUP: &str = "0::/user.slice/session-1.scope\n";
    const V2_MOUNTS: &str = "40 1 0:40 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";

    fn limits() -> Limits {
        Limits {
            memory: Some(64 << 20),
            pids: Some(20),
            cpu: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
        }
    }

    #[test]
    fn hybrid_host_uses_v1_for_every_controller() {
        let mut h = hierarchies(HYBRID_CGROUP, HYBRID_MOUNTS);
        h.iter_mut()
            .filter(|h| h.version == Version::V2)
            .for_each(|h| h.controllers = BTreeSet::from(["hugetlb".to_owned()]));
        let placed = place(&h, &limits()).unwrap();
        let dirs: Vec<_> = placed
            .iter()
            .map(|h| (h.own_dir.clone(), h.version))
            .collect();
        assert_eq!(
            dirs,
            [
                ("/sys/fs/cgroup/memory/sandbox/a1".into(), Version::V1),
                ("/sys/fs/cgroup/pids".into(), Version::V1),
                ("/sys/fs/cgroup/cpu".into(), Version::V1),
            ]
        );
    }

    #[test]
    fn pure_v2_host_uses_one_group() {
        let mut h = hierarchies(V2_CGROUP, V2_MOUNTS);
        assert_eq!(h.len(), 1);
        assert_eq!(
            h[0].own_dir,
            Path::new("/sys/fs/cgroup/user.slice/session-1.scope")
        );
        h[0].controllers = ["cpu", "memory", "pids", "io"].map(String::from).into();
        let placed = place(&h, &limits()).unwrap();
        assert_eq!(placed.len(), 1);
        assert_eq!(
            placed[0].controllers,
            ["cpu", "memory", "pids"].map(String::from).into()
        );
    }

    #[test]
    fn a_limit_without_its_controller_is_refused() {
        let h = hierarchies(V2_CGROUP, V2_MOUNTS);
        assert!(matches!(
            place(&h, &limits()),
            Err(Error::Missing("memory"))
        ));
        // No limit asked: nothing is needed.
        assert!(place(&h, &Limits::default()).unwrap().is_empty());
    }

    #[test]
    fn create_writes_limits_per_version() {
        let fake = Fake::default();
        let mut h = hierarchies(V2_CGROUP, V2_MOUNTS);
        h[0].controllers = ["cpu", "memory", "pids"].map(String::from).into();
        let placed = place(&h, &limits()).unwrap();
        let cg = Cgroup::create(&fake, placed, "c1", &limits()).unwrap();
        cg.enter(&fake).unwrap();
        cg.join(&fake, 42).unwrap();
        let d = "/sys/fs/cgroup/user.slice/session-1.scope";
        assert_eq!(
            fake.calls(),
            [
                format!("write {d}/cgroup.subtree_control +cpu +memory +pids"),
                format!("mkdir {d}/c1"),
                format!("write {d}/c1/memory.max 67108864"),
                format!("write {d}/c1/memory.swap.max 0"),
                format!("write {d}/c1/pids.max 20"),
                format!("write {d}/c1/cpu.max 50000 100000"),
                format!("write {d}/c1/cgroup.procs 42"),
            ]
        );

        let fake = Fake::default();
        let placed = place(&hierarchies(HYBRID_CGROUP, HYBRID_MOUNTS), &limits()).unwrap();
        let mut cg = Cgroup::create(&fake, placed, "c1", &limits()).unwrap();
        let created = fake.calls().len();
        cg.join(&fake, 42).unwrap();
        cg.enter(&fake).unwrap();
        // v1 groups are entered by the process itself, as a thread (see `Cgroup::enter`).
        assert_eq!(
            fake.calls()[created..],
            [
                "write /sys/fs/cgroup/memory/sandbox/a1/c1/tasks 0",
                "write /sys/fs/cgroup/pids/c1/tasks 0",
                "write /sys/fs/cgroup/cpu/c1/tasks 0",
            ]
        );
        cg.remove(&fake).unwrap();
        let calls = fake.calls();
        assert!(calls.contains(
            &"write /sys/fs/cgroup/memory/sandbox/a1/c1/memory.limit_in_bytes 67108864".into()
        ));
        assert!(calls.contains(&"write /sys/fs/cgroup/cpu/c1/cpu.cfs_quota_us 50000".into()));
        assert!(calls.contains(&"rmdir /sys/fs/cgroup/pids/c1".into()));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
