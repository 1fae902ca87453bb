//! Process-level calls used to detach the daemon (fork, setsid, redirecting standard streams).
//!
//! Detaching follows the classic daemon(7) "SysV" sequence: fork, `setsid` in the child, fork
//! again so the daemon is not a session leader and can never reacquire a controlling terminal,
//! `chdir("/")` so it pins no directory of the caller, and standard streams released so that no
//! daemon holds the caller's terminal or pipes. fork(2) is only sound in a single-threaded
//! process, so [`fork`] refuses to run when any other thread exists instead of trusting callers.
//! Signal masks are set here too: termination signals are blocked before any thread starts, so
//! that one thread can take them with sigwait(3) and every later thread inherits the mask.
//! Allocator tuning that must precede threads ([`tune_malloc`]) lives here as well, and
//! [`wait_exit`], which sleeps until a child exits instead of polling for it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

/// Why a process-level step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot count the threads of this process")]
    CountThreads(#[source] io::Error),
    #[error("refusing to fork: {0} threads are running")]
    Threaded(usize),
    #[error("fork failed")]
    Fork(#[source] Errno),
    #[error("setsid failed")]
    Setsid(#[source] Errno),
    #[error("cannot change directory to /")]
    Chdir(#[source] Errno),
    #[error("cannot open /dev/null")]
    DevNull(#[source] io::Error),
    #[error("cannot redirect the standard streams")]
    Redirect(#[source] Errno),
    #[error("cannot block signals")]
    Sigmask(#[source] Errno),
}

/// Which side of a [`fork`] we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The original process; the child has this pid.
    Parent(Pid),
    /// The new process.
    Child,
}

/// The number of threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    std::fs::read_dir("/proc/self/task")?.try_fold(0, |n, e| e.map(|_| n + 1))
}

/// Forks, provided this process has a single thread.
pub fn fork() -> Result<Fork, Error> {
    let threads = thread_count().map_err(Error::CountThreads)?;
    if threads != 1 {
        return Err(Error::Threaded(threads));
    }
    // SAFETY: the process has exactly one thread (checked just above, and this thread cannot
    // start another in between), so no lock or allocator state can be held by a thread that
    // would vanish in the child; the child may run arbitrary code, as after any fork of a
    // single-threaded program.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(ForkResult::Child) => Ok(Fork::Child),
        Err(e) => Err(Error::Fork(e)),
    }
}

/// Starts a new session with this process as its leader, leaving the caller's terminal.
pub fn setsid() -> Result<(), Error> {
    nix::unistd::setsid().map(drop).map_err(Error::Setsid)
}

/// Ends this process at once, without running exit handlers or flushing stdio buffers: for a
/// forked child, whose buffers are copies of its parent's.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) only ends the process; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Releases the caller's terminal and pipes: changes directory to `/`, points stdin at
/// `/dev/null` and stdout and stderr at `log`.
pub fn detach_stdio(log: &File) -> Result<(), Error> {
    nix::unistd::chdir("/").map_err(Error::Chdir)?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Error::DevNull)?;
    nix::unistd::dup2_stdin(null.as_fd()).map_err(Error::Redirect)?;
    nix::unistd::dup2_stdout(log.as_fd()).map_err(Error::Redirect)?;
    nix::unistd::dup2_stderr(log.as_fd()).map_err(Error::Redirect)?;
    Ok(())
}

/// Blocks `signals` in the calling thread (and so in every thread it starts afterwards) and
/// returns them as a set for [`SigSet::wait`].
pub fn block_signals(signals: &[Signal]) -> Result<SigSet, Error> {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    set.thread_block().map_err(Error::Sigmask)?;
    Ok(set)
}

/// Allocations of at least this size get their own mapping, whatever was freed before: above
/// the largest request or reply body (1 MiB), below fuser's 16 MiB read buffers.
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

/// How much free memory the top of the heap keeps before it is given back. Fixing the mmap
/// threshold also fixes this one, at 128 KiB unless set: the heap then shrank and grew again
/// around buffers of a few hundred KiB, 126 brk calls where 9 were made before for the same
/// reads and walks. Twice the mmap threshold, as glibc sets it when it moves that threshold
/// itself.
const TRIM_THRESHOLD: libc::c_int = 2 * MMAP_THRESHOLD;

/// Tunes glibc malloc for the daemon. Call before any thread starts. Has no effect on other
/// allocators.
///
/// - One arena for every thread. The daemon's allocations are small and short-lived, and its
///   threads few; per-thread arenas (glibc's default) each keep their own free lists, which
///   grew a walked 60k-entry stack's daemon by a sixth with nothing gained.
/// - A fixed mmap threshold. glibc raises the threshold to the size of any mapped block that
///   is freed, and the first such block is the 16 MiB buffer that read the kernel's INIT.
///   Every `/dev/fuse` thread's zeroed 16 MiB read buffer then came from the heap and was
///   cleared with memset: 4096 page faults per thread, competing with the first requests
///   after the mount. A mapping the kernel hands out is already zero, and only the pages a
///   request touches are ever faulted in.
/// - A trim threshold to go with it (`TRIM_THRESHOLD`).
pub fn tune_malloc() {
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX takes any positive value,
    // M_MMAP_THRESHOLD any value up to HEAP_MAX_SIZE / 2 (32 MiB), M_TRIM_THRESHOLD any.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Grows this process's descriptor table now to hold `count` descriptors (at most
/// RLIMIT_NOFILE), by placing a descriptor at the last slot, which is returned. Call before any
/// thread starts. The kernel grows the table by doubling when a descriptor is allocated past
/// its end, never shrinks it, and in a process with several threads each growth first waits
/// for an RCU grace period, during which every other thread that opens a file waits as well:
/// about 10 ms here, in the middle of serving requests. A fork sizes the child's table to the
/// highest descriptor open, so the returned one is to be held across a fork and then dropped.
pub fn reserve_fds(count: u64) -> Option<OwnedFd> {
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    use nix::sys::resource::{getrlimit, Resource};
    use std::os::fd::FromRawFd;
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(count, |(soft, _)| soft);
    let last = i32::try_from(count.min(limit).saturating_sub(1)).ok()?;
    // Only tuning: a table that cannot grow now grows later, as it would have anyway.
    let root = open(
        "/",
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let dup = fcntl(&root, FcntlArg::F_DUPFD_CLOEXEC(last)).ok()?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Waits up to `timeout` for child `pid` to exit and reaps it; `Ok(false)` if it still runs.
/// Sleeps on a pidfd (pidfd_open(2), Linux 5.3), which becomes readable when the process
/// exits, so the caller wakes at the exit rather than at the next tick of a polling loop.
pub fn wait_exit(pid: Pid, timeout: std::time::Duration) -> nix::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nix and
    // libc's wrapper do not cover it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: on success the syscall returned a descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok(false),
            Ok(_) => break,
        }
    }
    match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
        WaitStatus::StillAlive => Ok(false),
        _ => Ok(true),
    }
}

/// Moves the calling thread to the SCHED_IDLE policy (sched(7)); nix does not wrap
/// sched_setscheduler.
pub fn sched_idle() -> nix::Result<()> {
    let policy = libc::SCHED_IDLE;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    nix::errno::Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_threads() {
        let before = thread_count().unwrap();
        assert!(before >= 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count().unwrap() > before.min(1));
        drop(tx);
        t.join().unwrap().unwrap_err();
    }

    #[test]
    fn refuses_to_fork_with_threads() {
        // The test harness runs tests on threads, so this process is never single-threaded.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(matches!(fork(), Err(Error::Threaded(n)) if n > 1));
        drop(tx);
        t.join().unwrap().unwrap_err();
    }

    #[test]
    fn reserving_descriptors_grows_the_table() {
        use std::os::fd::AsRawFd;
        let fd_size = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
            line["FDSize:".len()..].trim().parse::<u64>().unwrap()
        };
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .0;
        let want = (1u64 << 14).min(limit);
        let held = reserve_fds(want).expect("reserved");
        assert_eq!(held.as_raw_fd() as u64, want - 1);
        assert!(fd_size() >= want, "table of {} slots", fd_size());
    }

    #[test]
    fn waits_for_a_child_to_exit_and_reaps_it() {
        use std::time::Duration;
        let pid = |c: &std::process::Child| Pid::from_raw(c.id() as i32);
        let mut slow = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        assert!(!wait_exit(pid(&slow), Duration::from_millis(30)).unwrap());
        // Reaped by `wait_exit`, not by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let quick = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        assert!(wait_exit(pid(&quick), Duration::from_secs(5)).unwrap());
        // Reaped: the pid is no longer a child to wait for.
        let again =
            nix::sys::wait::waitpid(pid(&quick), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        assert_eq!(again, Err(Errno::ECHILD));
        slow.kill().unwrap();
        slow.wait().unwrap();
    }
}
