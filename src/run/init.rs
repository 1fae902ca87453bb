//! The container's init (pid 1 of its pid namespace) and the start of COMMAND under it.
//!
//! Init is a forked copy of the launcher, never an exec'd program: it enters its v1 cgroups
//! itself, builds the root ([`rootfs::enter`]) and allocates the terminal while the launcher
//! puts it in its v2 cgroup, waits for that, enters a new cgroup namespace, forks COMMAND and
//! then only reaps children and forwards signals, like tini. It exits with COMMAND's status
//! (128+N when a signal N killed it), and its exit tears the pid namespace down, killing
//! whatever COMMAND left behind. Init makes itself non-dumpable so that the container cannot
//! open `/proc/1/{root,exe,fd}`, which would lead back to the host.
//!
//! Failures are written to the report pipe as `CODE\nmessage` (125 setup, 126 cannot execute,
//! 127 not found); the pipe is close-on-exec, so an empty report means COMMAND started.
//! COMMAND's process drops privileges in the order capabilities(7) requires: bounding set while
//! still root, then uid and gid, then the remaining sets, then `no_new_privs`.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::run::cgroup::Cgroup;
use crate::run::rootfs::{self, Plan};
use crate::run::spec::User;
use crate::run::tty;
use crate::sys::caps::DOCKER_DEFAULT;
use crate::sys::ns::{self, Linux, Syscalls};
use crate::sys::process::{self, Fork};

/// Exit status for a failure of ours (docker's convention).
pub const SETUP_FAILED: i32 = 125;
/// COMMAND exists but cannot be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// COMMAND was not found.
pub const NOT_FOUND: i32 = 127;

/// The signals init (and the launcher) pass on to COMMAND.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The default PATH of a container (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How COMMAND is started.
#[derive(Debug, Clone)]
pub struct Command {
    pub argv: Vec<OsString>,
    /// The complete environment.
    pub env: Vec<(OsString, OsString)>,
    pub workdir: PathBuf,
    pub user: Option<User>,
    pub tty: bool,
    pub interactive: bool,
}

/// The descriptors init inherits from the launcher.
pub struct Channels {
    /// Readable once the launcher has placed init in its cgroup.
    pub go: OwnedFd,
    /// Where failures are reported (close-on-exec).
    pub report: OwnedFd,
    /// The socket the terminal's master is sent over (with `-t`).
    pub console: Option<OwnedFd>,
}

/// Init's whole life; never returns.
pub fn main(plan: &Plan<'_>, cmd: &Command, cg: &Cgroup, ch: Channels) -> ! {
    let mut report = File::from(ch.report);
    let code = match init(plan, cmd, cg, ch.go, ch.console, &mut report) {
        Ok(code) => code,
        Err((code, msg)) => {
            let _ = write!(report, "{code}\n{msg}");
            code
        }
    };
    process::exit_now(code)
}

type Failure = (i32, String);

fn setup_err(what: &str, e: impl std::fmt::Display) -> Failure {
    (SETUP_FAILED, format!("{what}: {e}"))
}

fn init(
    plan: &Plan<'_>,
    cmd: &Command,
    cg: &Cgroup,
    go: OwnedFd,
    console: Option<OwnedFd>,
    report: &mut File,
) -> Result<i32, Failure> {
    // Leave the caller's session: a ^C on the caller's terminal reaches COMMAND once, through
    // the launcher, not a second time directly.
    let _ = nix::unistd::setsid();
    let sys = Linux;
    // First, while the host's /sys/fs/cgroup is in sight: what the root costs is charged to
    // the container.
    cg.enter(&sys)
        .map_err(|e| (SETUP_FAILED, error_chain(&e)))?;
    rootfs::enter(&sys, plan).map_err(|e| (SETUP_FAILED, error_chain(&e)))?;
    sys.set_undumpable()
        .map_err(|e| setup_err("cannot make init undumpable", e))?;
    let _ = nix::sys::prctl::set_name(c"unionfs-init");
    let slave = match console {
        Some(sock) => Some(hand_over_terminal(&sock).map_err(|e| setup_err("terminal", e))?),
        None => None,
    };
    // The root was built while the launcher moved init into its v2 groups (such a move can
    // wait for an RCU grace period, see `Cgroup::enter`); COMMAND must start inside them.
    let mut byte = [0u8; 1];
    match File::from(go).read(&mut byte) {
        Ok(1) => {}
        // The launcher gave up (and reports why itself).
        _ => process::exit_now(SETUP_FAILED),
    }
    // A cgroup namespace is rooted at its creator's group: made only now, COMMAND's
    // /proc/self/cgroup shows `/`.
    sys.unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| setup_err("cannot create the cgroup namespace", e))?;
    let child = match process::fork().map_err(|e| setup_err("cannot start the command", e))? {
        Fork::Child => exec_command(&sys, cmd, slave.as_deref(), report),
        Fork::Parent(pid) => pid,
    };
    // Only COMMAND's copy of the report pipe may stay open (until its execve).
    drop(std::mem::replace(report, File::from(devnull())));
    Ok(reap_and_forward(child))
}

/// Opens the container's terminal, sends its master to the launcher and waits until the
/// launcher has set the window size. Returns the slave's path.
fn hand_over_terminal(sock: &OwnedFd) -> io::Result<String> {
    let (master, slave) = tty::open_pty()?;
    tty::send_fd(sock.as_fd(), master.as_fd())?;
    drop(master);
    let mut ack = [0u8; 1];
    File::from(sock.try_clone()?).read_exact(&mut ack)?;
    Ok(slave)
}

fn devnull() -> OwnedFd {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .or_else(|_| nix::unistd::dup(io::stderr().as_fd()))
        .expect("/dev/null or stderr can be opened")
}

/// Waits for signals (blocked since before the fork, so none is lost): forwards the
/// forwardable ones to COMMAND, reaps every child on SIGCHLD, returns once COMMAND is gone.
fn reap_and_forward(child: Pid) -> i32 {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(child, sig);
            continue;
        }
        while let Ok(status) = nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            match status {
                WaitStatus::StillAlive => break,
                WaitStatus::Exited(pid, code) if pid == child => return code,
                WaitStatus::Signaled(pid, sig, _) if pid == child => return 128 + sig as i32,
                _ => {}
            }
        }
    }
}

/// The forked COMMAND process: terminal, privileges, directory, then execve. Never returns.
fn exec_command(sys: &dyn Syscalls, cmd: &Command, slave: Option<&str>, report: &mut File) -> ! {
    let failure = match prepare(sys, cmd, slave) {
        Ok(()) => exec(cmd),
        Err(f) => f,
    };
    let _ = write!(report, "{}\n{}", failure.0, failure.1);
    process::exit_now(failure.0)
}

fn prepare(sys: &dyn Syscalls, cmd: &Command, slave: Option<&str>) -> Result<(), Failure> {
    nix::unistd::setsid().map_err(|e| setup_err("setsid", e))?;
    if let Some(path) = slave {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| setup_err(&format!("cannot open {path}"), e))?;
        crate::sys::tty::set_controlling(&tty).map_err(|e| setup_err("TIOCSCTTY", e))?;
        redirect(&tty, true).map_err(|e| setup_err("cannot use the terminal", e))?;
    } else if !cmd.interactive {
        let null = File::open("/dev/null").map_err(|e| setup_err("/dev/null", e))?;
        nix::unistd::dup2_stdin(null.as_fd()).map_err(|e| setup_err("stdin", e))?;
    }
    sys.drop_bounding_caps(DOCKER_DEFAULT)
        .map_err(|e| setup_err("cannot drop capabilities", e))?;
    if let Some(u) = cmd.user {
        sys.set_ids(u.uid, u.gid)
            .map_err(|e| setup_err(&format!("cannot switch to user {}:{}", u.uid, u.gid), e))?;
    }
    sys.set_caps(DOCKER_DEFAULT)
        .map_err(|e| setup_err("cannot set capabilities", e))?;
    sys.set_no_new_privs()
        .map_err(|e| setup_err("cannot set no_new_privs", e))?;
    sys.chdir(&cmd.workdir).map_err(|e| {
        setup_err(
            &format!(
                "cannot change to the working directory {}",
                cmd.workdir.display()
            ),
            e,
        )
    })?;
    ns::cloexec_from(3).map_err(|e| setup_err("close_range", e))?;
    ns::reset_signals().map_err(|e| setup_err("cannot reset signals", e))?;
    Ok(())
}

fn redirect(tty: &File, all: bool) -> nix::Result<()> {
    nix::unistd::dup2_stdin(tty.as_fd())?;
    if all {
        nix::unistd::dup2_stdout(tty.as_fd())?;
        nix::unistd::dup2_stderr(tty.as_fd())?;
    }
    Ok(())
}

/// Finds COMMAND as execvp(3) would, in the container's PATH, and executes it. Returns only
/// on failure: 127 when nothing of that name exists, 126 when it cannot be executed.
fn exec(cmd: &Command) -> Failure {
    let Some(name) = cmd.argv.first() else {
        return (SETUP_FAILED, "no command given".into());
    };
    let to_c = |s: &OsStr| CString::new(s.as_bytes()).ok();
    let argv: Option<Vec<CString>> = cmd.argv.iter().map(|a| to_c(a)).collect();
    let env: Option<Vec<CString>> = cmd
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            to_c(&kv)
        })
        .collect();
    let (Some(argv), Some(env)) = (argv, env) else {
        return (
            SETUP_FAILED,
            "an argument or variable contains a NUL byte".into(),
        );
    };
    let path = cmd
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(OsStr::new(DEFAULT_PATH), |(_, v)| v.as_os_str());
    let shown = Path::new(name).display().to_string();
    let candidates = candidates(name, path);
    let mut denied = None;
    for c in &candidates {
        let Some(file) = to_c(c.as_os_str()) else {
            continue;
        };
        let err = nix::unistd::execve(&file, &argv, &env).unwrap_err();
        match err {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {}
            nix::errno::Errno::EACCES => denied = Some(err),
            e => return (CANNOT_EXECUTE, format!("cannot execute {shown}: {e}")),
        }
    }
    match denied {
        Some(e) => (CANNOT_EXECUTE, format!("cannot execute {shown}: {e}")),
        None if candidates.len() == 1 && name.as_bytes().contains(&b'/') => (
            NOT_FOUND,
            format!("{shown}: no such file or directory in the image"),
        ),
        None => (
            NOT_FOUND,
            format!("{shown}: executable file not found in $PATH"),
        ),
    }
}

/// The paths execvp(3) tries: `name` itself if it has a slash, else `dir/name` for each PATH
/// entry (an empty entry means the current directory).
pub fn candidates(name: &OsStr, path: &OsStr) -> Vec<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(name)];
    }
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
            Path::new(OsStr::from_bytes(dir)).join(name)
        })
        .collect()
}

/// An error and its sources on one line, as `anyhow`'s `{:#}` would show it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_search_candidates() {
        let c = candidates(OsStr::new("ls"), OsStr::new("/bin:/usr/bin::"));
        let want: Vec<PathBuf> = ["/bin/ls", "/usr/bin/ls", "./ls", "./ls"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(c, want);
        assert_eq!(
            candidates(OsStr::new("./x"), OsStr::new("/bin")),
            [PathBuf::from("./x")]
        );
    }

    #[test]
    fn error_chains_are_one_line() {
        let e = rootfs::Error::Hostname(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            error_chain(&e),
            "cannot set the hostname: Operation not permitted (os error 1)"
        );
    }
}
