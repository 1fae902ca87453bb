//! `unionfs run`: a command in a container whose root is a union of image layers.
//!
//! The launcher ([`run`]) owns the container's lifetime and everything that must be undone:
//! 1. checks its input ([`spec`]), prepares the read/write layer directory (`upper/`, `work/`,
//!    `merged/`) and starts the FUSE daemon that mounts the union on `merged/` in the host's
//!    mount namespace (`daemon`);
//! 2. creates the cgroup ([`cgroup`]), enters a new pid namespace for its next child and forks
//!    init, which enters its v1 groups and builds the root ([`rootfs`]) in its own mount, uts,
//!    ipc and net namespaces while the launcher places it in its v2 group; once let go, init
//!    enters a new cgroup namespace and starts COMMAND ([`init`]);
//! 3. forwards signals to init, relays the terminal ([`tty`]), waits for init;
//! 4. tears down in reverse through guards, so that every path (COMMAND's exit, a signal, an
//!    error) removes the cgroup, unmounts the union, stops the daemon, and with `--rm` removes
//!    the layer.
//!
//! Exit statuses follow docker: COMMAND's own (128+N after signal N), 125 for our failures,
//! 126 when COMMAND cannot be executed, 127 when it does not exist. This module must never
//! leave a mount, a cgroup or a process behind on a path it controls.

pub mod cgroup;
mod daemon;
pub mod init;
pub mod rootfs;
pub mod spec;
pub mod tty;

#[cfg(test)]
mod fake;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::{ConfigError, MountConfig};
use crate::sys::ns::{Linux, Syscalls};
use crate::sys::process::{self, Fork};

pub use self::spec::{Limits, Network, SpecError, User, Volume};

/// Where fresh read/write layers go by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/unionfs/containers";

/// How long COMMAND has to exit after a forwarded SIGTERM/SIGINT/SIGHUP/SIGQUIT before it is
/// killed, as `docker stop` waits.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why `unionfs run` failed; [`Error::exit_code`] gives the status to exit with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unionfs run must be started as root (effective uid {0})")]
    NotRoot(u32),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("bad layer stack")]
    Layers(#[source] ConfigError),
    #[error("cannot prepare the read/write layer {path}")]
    LayerDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Daemon(#[from] daemon::Error),
    #[error("cannot set up the cgroup")]
    Cgroup(#[from] cgroup::Error),
    #[error("cannot create the pid namespace")]
    PidNamespace(#[source] io::Error),
    #[error("cannot start the container's init")]
    Fork(#[source] process::Error),
    #[error("cannot create a pipe or socket")]
    Pipe(#[source] nix::errno::Errno),
    #[error("cannot take signals")]
    Signals(#[source] nix::errno::Errno),
    #[error("cannot wait for the container")]
    Wait(#[source] nix::errno::Errno),
    #[error("cannot set up the terminal")]
    Tty(#[source] io::Error),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("{0}")]
    CannotExecute(String),
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    /// docker's statuses: 126 cannot execute, 127 not found, 125 anything of ours.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::CannotExecute(_) => 126,
            Error::NotFound(_) => 127,
            _ => 125,
        }
    }
}

/// The read/write layer of a container.
#[derive(Debug, Clone)]
pub enum LayerDir {
    /// A new directory below `parent`, removed afterwards if `remove`.
    Fresh { parent: PathBuf, remove: bool },
    /// An existing layer directory (made by an earlier run), kept.
    Reuse(PathBuf),
}

/// Everything `unionfs run` needs, already parsed ([`spec`]).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Image layers, top-most first.
    pub lowers: Vec<PathBuf>,
    pub layer: LayerDir,
    pub command: Vec<OsString>,
    pub interactive: bool,
    pub tty: bool,
    /// Defaults to the first 12 characters of the container id.
    pub hostname: Option<OsString>,
    /// Added to the default environment (PATH, HOSTNAME, HOME, TERM with `tty`).
    pub env: Vec<(OsString, OsString)>,
    pub workdir: PathBuf,
    pub user: Option<User>,
    pub volumes: Vec<Volume>,
    pub network: Network,
    pub limits: Limits,
    pub read_only: bool,
}

/// How a finished run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// COMMAND's exit status, or 128+N when signal N killed it.
    pub status: i32,
    /// The OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// The read/write layer directory, when it was kept.
    pub kept: Option<PathBuf>,
    /// The container's id (name of its layer directory and cgroups).
    pub id: String,
}

/// Runs the container described by `cfg` to completion.
pub fn run(cfg: &RunConfig) -> Result<Outcome, Error> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Err(Error::NotRoot(uid.as_raw()));
    }
    let sys = Linux;
    let id = new_id();
    let mut layer = LayerGuard::prepare(&cfg.layer, &id)?;
    let mount_cfg = MountConfig {
        lowers: cfg.lowers.clone(),
        upper: Some(layer.dir.join("upper")),
        work: Some(layer.dir.join("work")),
        volatile: false,
        no_io_uring: false,
    };
    let merged = layer.dir.join("merged");
    let validated = mount_cfg.validate(&merged).map_err(Error::Layers)?;
    let merged = validated.mountpoint.clone();
    for v in &cfg.volumes {
        if !v.host.exists() {
            return Err(Error::Spec(SpecError::Volume(v.host.clone())));
        }
    }
    let placed = cgroup::Cgroup::detect(&cfg.limits)?;
    let daemon = daemon::Daemon::start(&validated, &layer.dir.join("unionfs.log"))?;
    // The daemon has the layer roots open now; this process needs them no more.
    drop(validated);
    tracing::debug!(id, pid = ?daemon.pid(), merged = %merged.display(), "union mounted");
    let mut cg = CgroupGuard(cgroup::Cgroup::none());
    cg.0 = cgroup::Cgroup::create(&sys, placed, &format!("unionfs-{id}"), &cfg.limits)?;
    let hostname = cfg
        .hostname
        .clone()
        .unwrap_or_else(|| OsString::from(&id[..12]));
    let status = start_and_wait(cfg, &sys, &cg.0, &merged, &hostname)?;
    let oom_killed = cg.0.oom_kills().is_some_and(|n| n > 0);
    drop(cg);
    drop(daemon);
    layer.remove = matches!(cfg.layer, LayerDir::Fresh { remove: true, .. });
    let kept = (!layer.remove).then(|| layer.dir.clone());
    drop(layer);
    Ok(Outcome {
        status,
        oom_killed,
        kept,
        id,
    })
}

/// Forks init into a new pid namespace, lets it run, and returns COMMAND's status.
fn start_and_wait(
    cfg: &RunConfig,
    sys: &dyn Syscalls,
    cg: &cgroup::Cgroup,
    root: &Path,
    hostname: &OsString,
) -> Result<i32, Error> {
    let mut blocked = SigSet::empty();
    for s in init::FORWARDED {
        blocked.add(s);
    }
    blocked.add(Signal::SIGCHLD);
    // Blocked before the fork, so init inherits the mask and sees every signal with sigwait.
    let old_mask = blocked.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
    let old_mask = old_mask.map_err(Error::Signals)?;
    let result = start_and_wait_blocked(cfg, sys, cg, root, hostname, &blocked);
    let _ = old_mask.thread_set_mask();
    result
}

fn start_and_wait_blocked(
    cfg: &RunConfig,
    sys: &dyn Syscalls,
    cg: &cgroup::Cgroup,
    root: &Path,
    hostname: &OsString,
    blocked: &SigSet,
) -> Result<i32, Error> {
    use nix::fcntl::OFlag;
    let (go_rd, go_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
    let (rep_rd, rep_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
    let console = if cfg.tty {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let pair = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        );
        Some(pair.map_err(Error::Pipe)?)
    } else {
        None
    };
    // Only the next child enters the new pid namespace. The launcher returns to its own for
    // later children right after the fork: threads cannot be created while its children's pid
    // namespace differs from its own (clone(2), EINVAL with CLONE_THREAD).
    let own_pid_ns = File::open("/proc/self/ns/pid").map_err(Error::PidNamespace)?;
    sys.unshare(CloneFlags::CLONE_NEWPID)
        .map_err(Error::PidNamespace)?;
    let plan = rootfs::Plan {
        root,
        hostname,
        volumes: &cfg.volumes,
        workdir: &cfg.workdir,
        read_only: cfg.read_only,
        network: cfg.network,
    };
    let command = init_command(cfg, hostname);
    let (console_launcher, console_init) = match console {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let pid = match process::fork().map_err(Error::Fork)? {
        Fork::Child => {
            drop((go_wr, rep_rd, console_launcher));
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let ch = init::Channels {
                go: go_rd,
                report: rep_wr,
                console: console_init,
            };
            init::main(&plan, &command, cg, ch)
        }
        Fork::Parent(pid) => pid,
    };
    drop((go_rd, rep_wr, console_init));
    let mut init_guard = InitGuard(Some(pid));
    sys.setns(own_pid_ns.as_fd(), CloneFlags::CLONE_NEWPID)
        .map_err(Error::PidNamespace)?;
    // Init builds the root meanwhile and may fail doing so; its report then says why.
    let started = cg
        .join(sys, pid.as_raw())
        .map_err(Error::from)
        .and_then(|()| {
            File::from(go_wr)
                .write_all(b"g")
                .map_err(|e| Error::Setup(format!("init died before starting: {e}")))
        });
    if let Err(e) = started {
        drop(init_guard);
        let mut report = Vec::new();
        let _ = File::from(rep_rd).read_to_end(&mut report);
        return Err(parse_report(&report).map_or(e, report_error));
    }
    let mut terminal = None;
    if let Some(sock) = console_launcher {
        terminal = attach_terminal(&sock, cfg.interactive)?;
    }
    let status = wait_forwarding(pid, blocked, terminal.as_ref().map(|t| &t.master))?;
    init_guard.0 = None;
    if let Some(t) = terminal {
        t.finish();
    }
    let mut report = Vec::new();
    let _ = File::from(rep_rd).read_to_end(&mut report);
    match parse_report(&report) {
        None => Ok(status),
        Some(report) => Err(report_error(report)),
    }
}

/// The error for init's report `(code, message)`.
fn report_error((code, msg): (i32, String)) -> Error {
    match code {
        init::CANNOT_EXECUTE => Error::CannotExecute(msg),
        init::NOT_FOUND => Error::NotFound(msg),
        _ => Error::Setup(msg),
    }
}

/// `CODE\nmessage` from init, or `None` when COMMAND started.
fn parse_report(report: &[u8]) -> Option<(i32, String)> {
    if report.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(report);
    let (code, msg) = text.split_once('\n').unwrap_or(("125", &text));
    Some((code.parse().unwrap_or(init::SETUP_FAILED), msg.to_owned()))
}

/// The command with its complete environment: docker's defaults, then `-e`.
fn init_command(cfg: &RunConfig, hostname: &OsString) -> init::Command {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), init::DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname.clone()),
        (
            "HOME".into(),
            if cfg.user.is_some_and(|u| u.uid != 0) {
                "/"
            } else {
                "/root"
            }
            .into(),
        ),
    ];
    if cfg.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    for (k, v) in &cfg.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    init::Command {
        argv: cfg.command.clone(),
        env,
        workdir: cfg.workdir.clone(),
        user: cfg.user,
        tty: cfg.tty,
        interactive: cfg.interactive,
    }
}

/// The launcher's side of `-t`.
struct Terminal {
    master: OwnedFd,
    relay: std::thread::JoinHandle<()>,
    _raw: tty::RawMode,
}

impl Terminal {
    /// Waits for the output relay to drain (it ends when the container's terminal closes).
    fn finish(self) {
        let _ = self.relay.join();
    }
}

/// Receives the terminal's master from init, sizes it, acknowledges and starts relaying.
/// `None` if init exited first (its report says why).
fn attach_terminal(sock: &OwnedFd, interactive: bool) -> Result<Option<Terminal>, Error> {
    let Some(master) = tty::recv_fd(sock.as_fd()).map_err(Error::Tty)? else {
        return Ok(None);
    };
    tty::copy_size(io::stdin().as_fd(), master.as_fd());
    let raw = if interactive {
        tty::RawMode::enter()
    } else {
        tty::RawMode::none()
    };
    File::from(sock.try_clone().map_err(Error::Tty)?)
        .write_all(b"a")
        .map_err(Error::Tty)?;
    let relay_fd = master.try_clone().map_err(Error::Tty)?;
    let relay = tty::relay(relay_fd, interactive).map_err(Error::Tty)?;
    Ok(Some(Terminal {
        master,
        relay,
        _raw: raw,
    }))
}

/// Takes the blocked signals through a signalfd: forwards them to init, resizes the terminal on
/// SIGWINCH, and returns init's status once it exits. After a forwarded stop signal, init is
/// killed if it has not exited within [`STOP_GRACE`].
fn wait_forwarding(init: Pid, blocked: &SigSet, master: Option<&OwnedFd>) -> Result<i32, Error> {
    let sfd = SignalFd::new(blocked).map_err(Error::Signals)?;
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        if let Some(code) = reap(init)? {
            return Ok(code);
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    tracing::warn!("the container did not stop in time; killing it");
                    let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
                    deadline = None;
                    continue;
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(Error::Signals(e)),
        }
        let Ok(Some(info)) = sfd.read_signal() else {
            continue;
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        match (sig, master) {
            (Signal::SIGCHLD, _) => {}
            (Signal::SIGWINCH, Some(m)) => tty::copy_size(io::stdin().as_fd(), m.as_fd()),
            _ => {
                tracing::debug!(?sig, "forwarding");
                let _ = nix::sys::signal::kill(init, sig);
                let stops = [
                    Signal::SIGTERM,
                    Signal::SIGINT,
                    Signal::SIGHUP,
                    Signal::SIGQUIT,
                ];
                if stops.contains(&sig) && deadline.is_none() {
                    deadline = Some(std::time::Instant::now() + STOP_GRACE);
                }
            }
        }
    }
}

/// Init's status if it has exited.
fn reap(init: Pid) -> Result<Option<i32>, Error> {
    match nix::sys::wait::waitpid(init, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(128 + sig as i32)),
        Ok(_) => Ok(None),
        Err(e) => Err(Error::Wait(e)),
    }
}

/// 16 hex digits from the kernel's random pool.
fn new_id() -> String {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id())).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The read/write layer directory; removed on drop when `remove` (and only if nothing is
/// mounted on its `merged/` any more).
struct LayerGuard {
    dir: PathBuf,
    remove: bool,
}

impl LayerGuard {
    fn prepare(layer: &LayerDir, id: &str) -> Result<LayerGuard, Error> {
        let (dir, fresh) = match layer {
            LayerDir::Fresh { parent, .. } => (parent.join(id), true),
            LayerDir::Reuse(dir) => (dir.clone(), false),
        };
        let err = |source| Error::LayerDir {
            path: dir.clone(),
            source,
        };
        if fresh {
            let parent = dir.parent().expect("joined an id");
            // create_dir_all reports EEXIST for a state directory that is a file: say what
            // is wrong with it instead.
            if std::fs::metadata(parent).is_ok_and(|m| !m.is_dir()) {
                return Err(Error::LayerDir {
                    path: parent.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
                });
            }
            std::fs::create_dir_all(parent).map_err(err)?;
            std::fs::create_dir(&dir).map_err(err)?;
        }
        // A fresh layer is removed on failure; kept only once COMMAND ran (see `run`).
        let guard = LayerGuard { dir, remove: fresh };
        for sub in ["upper", "work", "merged"] {
            let p = guard.dir.join(sub);
            if let Err(source) = std::fs::create_dir_all(&p) {
                return Err(Error::LayerDir { path: p, source });
            }
        }
        let mut guard = guard;
        guard.dir = std::fs::canonicalize(&guard.dir).map_err(|source| Error::LayerDir {
            path: guard.dir.clone(),
            source,
        })?;
        Ok(guard)
    }
}

impl Drop for LayerGuard {
    fn drop(&mut self) {
        if !self.remove {
            return;
        }
        let merged = self.dir.join("merged");
        let table = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
        if crate::config::find_mount(&table, &merged).is_some() {
            tracing::error!(path = %self.dir.display(), "still mounted; not removing the layer");
            return;
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(path = %self.dir.display(), %err, "cannot remove the layer");
        }
    }
}

/// Removes the container's cgroups on drop.
struct CgroupGuard(cgroup::Cgroup);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.0.remove(&Linux);
    }
}

/// Kills and reaps init on drop unless it was already waited for, so that an error in the
/// launcher never leaves a container running.
struct InitGuard(Option<Pid>);

impl Drop for InitGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_map_to_docker_statuses() {
        assert_eq!(parse_report(b""), None);
        assert_eq!(
            parse_report(b"127\nx: not found"),
            Some((127, "x: not found".into()))
        );
        assert_eq!(parse_report(b"garbage"), Some((125, "garbage".into())));
        assert_eq!(Error::NotFound(String::new()).exit_code(), 127);
        assert_eq!(Error::CannotExecute(String::new()).exit_code(), 126);
        assert_eq!(Error::NotRoot(1000).exit_code(), 125);
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let cfg = RunConfig {
            lowers: vec![],
            layer: LayerDir::Reuse("/x".into()),
            command: vec!["sh".into()],
            interactive: false,
            tty: true,
            hostname: None,
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "1".into())],
            workdir: "/".into(),
            user: Some(User { uid: 5, gid: 5 }),
            volumes: vec![],
            network: Network::None,
            limits: Limits::default(),
            read_only: false,
        };
        let c = init_command(&cfg, &"h".into());
        let env: Vec<String> = c
            .env
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        assert_eq!(
            env,
            ["HOSTNAME=h", "HOME=/", "TERM=xterm", "PATH=/bin", "A=1"]
        );
    }

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
