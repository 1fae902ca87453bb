//! The FUSE-over-io_uring transport: per-CPU queues served by threads pinned to their CPU
//! (let loose while a read waits for the disk, see [`before_blocking_io`]).
//!
//! Over `/dev/fuse` every request wakes a daemon thread on whichever CPU it sleeps on, and
//! the reply wakes the caller back; on a VM each such cross-CPU wake-up costs tens of
//! microseconds, which dominates metadata walks. Over io_uring the kernel puts a request on
//! the queue of the CPU that made it, so the thread serving it (pinned to that CPU) runs
//! where the caller just went to sleep, and replying and fetching the next request is one
//! system call.
//!
//! Only requests go this way. INIT, FORGET and INTERRUPT stay on `/dev/fuse`, served by
//! fuser's threads, as does everything the kernel sends before every queue has an entry; the
//! two paths call the same operations. Once the queues serve, those threads only drop
//! references, and they pace themselves so that the kernel hands forgets over in batches
//! (see [`pace_forgets`]). The kernel offers io_uring only when the `fuse` module's
//! `enable_uring` parameter is set; otherwise nothing here starts.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CpuSet;

use super::core::UnionFs;
use crate::sys::fuse_ring::RingEntry;

/// Entries (each with its thread) per CPU queue: a second lets one slow request (a large
/// copy-up) not hold up every other request from its CPU.
const ENTRIES_PER_QUEUE: usize = 2;

/// The largest request or reply body: what `adapter::init` sets as `max_write`, and at least
/// the kernel's minimum read buffer.
pub(super) const MAX_PAYLOAD: u32 = 1 << 20;

/// How long a queue keeps retrying registration while the kernel finishes INIT.
const REGISTER_PATIENCE: Duration = Duration::from_secs(5);

/// How long a `/dev/fuse` thread waits after taking a FORGET off the connection, once the
/// queues serve every request (see [`pace_forgets`]).
const FORGET_PAUSE: Duration = Duration::from_millis(1);

/// Whether the kernel will offer io_uring to a new connection.
pub(super) fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y")
}

/// The kernel's queue count: one per possible CPU (`/sys/devices/system/cpu/possible`, e.g.
/// "0-1" or "0,2-3").
fn possible_cpus() -> usize {
    let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/possible") else {
        return std::thread::available_parallelism().map_or(1, |n| n.get());
    };
    let mut last = 0;
    for part in s.trim().split(',') {
        let hi = part
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<usize>().ok());
        last = last.max(hi.unwrap_or(0));
    }
    last + 1
}

/// Starts the queue threads for connection `dev`. They register once the kernel has
/// processed INIT and serve until the connection ends.
pub(super) fn start(fs: Arc<UnionFs>, dev: Arc<OwnedFd>) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for cpu in 0..possible_cpus() {
        for n in 0..ENTRIES_PER_QUEUE {
            let (fs, dev) = (fs.clone(), dev.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("unionfs-q{cpu}.{n}"))
                .spawn(move || serve_queue(&fs, dev, cpu));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::warn!(cpu, error = %e, "cannot start an io_uring queue thread"),
            }
        }
    }
    threads
}

/// Where a queue thread may run: pinned to its CPU while it serves, loose (anywhere the
/// process may run) while it waits for the disk. See [`before_blocking_io`].
struct Pinning {
    home: CpuSet,
    wide: CpuSet,
    loose: Cell<bool>,
    /// Waits for the disk to sit out pinned: the last loose one ended on this CPU, so the
    /// interrupts arrive here, and letting the thread loose would only cost system calls.
    stay: Cell<u8>,
}

/// How many waits for the disk a queue thread sits out pinned after one that, loose, ended
/// on its own CPU anyway (then it tries again, in case the interrupts moved).
const STAY_PINNED: u8 = 15;

thread_local! {
    /// The pinning of the queue thread this is, if it is one (and pinned).
    static PINNING: std::cell::OnceCell<Pinning> = const { std::cell::OnceCell::new() };
}

fn set_affinity(set: &CpuSet) -> nix::Result<()> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set)
}

/// Pins the calling queue thread to `cpu`; remembers where it may run otherwise.
fn pin(cpu: usize) {
    let Ok(wide) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return;
    };
    let mut home = CpuSet::new();
    // A CPU that is possible but offline refuses; its queue then runs unpinned.
    if home.set(cpu).is_err() || set_affinity(&home).is_err() {
        return;
    }
    PINNING.with(|p| {
        let _ = p.set(Pinning {
            home,
            wide,
            loose: Cell::new(false),
            stay: Cell::new(0),
        });
    });
}

/// Called by an operation about to wait for the disk (a READ of data not in the page cache).
/// On a queue thread it lifts the pinning until the reply is delivered.
///
/// The caller sleeps on its CPU while the queue thread sleeps on the disk; the disk's
/// interrupt may arrive on another CPU. A pinned thread must then be woken across CPUs (on a
/// VM, a halted vCPU woken by an IPI), and it wakes the caller where it slept, so the next
/// read pays the same. Unpinned, the thread is woken where the interrupt arrived, as a
/// process reading a file on the disk directly would be, and the caller it wakes follows it
/// there. Measured on 4 KiB random reads of a cold lower file, 2 vCPUs, one virtio-blk
/// interrupt: see ARCHITECTURE.md, "Transports".
pub(super) fn before_blocking_io() {
    PINNING.with(|p| {
        let Some(p) = p.get() else {
            return;
        };
        if p.loose.get() {
            return;
        }
        if p.stay.get() > 0 {
            p.stay.set(p.stay.get() - 1);
        } else if set_affinity(&p.wide).is_ok() {
            p.loose.set(true);
        }
    });
}

/// Whether the calling queue thread was let loose by [`before_blocking_io`] (and so must be
/// pinned again once its reply is delivered).
fn loose() -> bool {
    PINNING.with(|p| p.get().is_some_and(|p| p.loose.get()))
}

/// Pins the calling queue thread to its CPU again.
fn repin() {
    PINNING.with(|p| {
        let Some(p) = p.get() else {
            return;
        };
        let here = nix::sched::sched_getcpu().and_then(|c| p.home.is_set(c));
        if here == Ok(true) {
            p.stay.set(STAY_PINNED);
        }
        if let Err(e) = set_affinity(&p.home) {
            tracing::debug!(error = %e, "queue thread stays unpinned");
        }
        p.loose.set(false);
    });
}

fn serve_queue(fs: &UnionFs, dev: Arc<OwnedFd>, cpu: usize) {
    pin(cpu);
    // SCHED_IDLE, so that the CPU looks idle to the scheduler while this thread serves: the
    // caller woken by the reply then stays on this CPU instead of moving to the other, idle
    // one, which would send its next request to another queue and cost a cross-CPU wake-up
    // per request again. That halves `ls -lR` on a two-CPU VM. A normal thread woken on a
    // CPU running only SCHED_IDLE threads preempts them, and with busy loops on every CPU
    // the queues were measured to keep up (see ARCHITECTURE.md, "Transports").
    if let Err(e) = crate::sys::process::sched_idle() {
        tracing::debug!(cpu, error = %e, "queue thread keeps the normal policy");
    }
    let mut entry = match RingEntry::new(dev, cpu as u16, MAX_PAYLOAD as usize) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(cpu, error = %e, "cannot set up an io_uring queue; serving over /dev/fuse");
            return;
        }
    };
    let started = Instant::now();
    let mut out = Vec::with_capacity(MAX_PAYLOAD as usize);
    loop {
        // After a wait for the disk, the reply goes out first and the thread goes home after,
        // so that the caller is woken where the thread is.
        let served = if loose() {
            entry.serve_next_then(repin)
        } else {
            entry.serve_next()
        };
        match served {
            Ok(()) => {
                if !fs.uring_serving.load(Ordering::Relaxed) {
                    fs.uring_serving.store(true, Ordering::Relaxed);
                }
                let (header, op_in, rest) = entry.request();
                let unique = u64::from_ne_bytes(header[8..16].try_into().unwrap());
                let error = super::wire::serve(fs, header, op_in, rest, &mut out);
                entry.reply(unique, error, &out);
            }
            // The kernel has not processed INIT yet.
            Err(Errno::EAGAIN) if !entry.registered() && started.elapsed() < REGISTER_PATIENCE => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            // The connection ended (unmount) or was aborted.
            Err(Errno::ENOTCONN | Errno::ECONNABORTED | Errno::ECANCELED | Errno::ENODEV) => break,
            Err(e) => {
                tracing::error!(cpu, error = %e, registered = entry.registered(), "io_uring queue failed");
                break;
            }
        }
    }
}

/// Called by a `/dev/fuse` thread before it drops the references of FORGET (or of one node of
/// BATCH_FORGET) request `unique`. Once the queues serve, such a thread is woken for every
/// inode the kernel evicts, one by one: an `rm -rf` of 1000 files woke it 1000 times, a
/// third of the daemon's wake-ups, each competing for the CPUs with the caller and the
/// queues. Nobody waits for a forget, so after each one taken off the connection the thread
/// pauses, and the kernel queues the next ones to hand over in one BATCH_FORGET. fuser passes
/// each node of a batch on separately, with the batch's request id: the pause is taken once
/// per request. INTERRUPT, the only other request left on `/dev/fuse`, waits at most
/// [`FORGET_PAUSE`] more. Measured on `rm -rf` of a 1000-entry lower directory, 9 interleaved
/// rounds: 108 → 85 ms median (kernel overlayfs 45 ms); pauses of 0.2 and 3 ms gave 100 and
/// 89 ms against 108 without.
pub(super) fn pace_forgets(fs: &UnionFs, unique: u64) {
    thread_local!(static LAST: Cell<u64> = const { Cell::new(0) });
    if LAST.replace(unique) != unique && fs.uring_serving.load(Ordering::Relaxed) {
        std::thread::sleep(FORGET_PAUSE);
    }
}

/// Waits a little for the queue threads to see the end of the connection, which the kernel
/// signals to each of them once it has torn the queues down.
pub(super) fn join(threads: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}
