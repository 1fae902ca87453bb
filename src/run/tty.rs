//! The container's terminal (`-t`): allocated inside the container, relayed outside.
//!
//! The pseudo-terminal is opened by init from the container's own devpts instance, so that
//! `tty` and `/dev/pts/0` inside name a terminal that exists there; its master side is passed
//! to the launcher over a Unix socket (SCM_RIGHTS, unix(7)), as runc's console socket does.
//! The launcher puts its own terminal in raw mode (restored on drop), copies bytes both ways
//! on two threads, and copies its window size to the master at start and on every SIGWINCH,
//! which makes the kernel signal the container's foreground process group (tty_ioctl(4)).

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

use crate::sys::tty as systty;

/// Opens a new terminal pair in the current root's `/dev/ptmx`; returns the master and the
/// path of the slave.
pub fn open_pty() -> io::Result<(OwnedFd, String)> {
    // posix_openpt(3) accepts no other flags; close-on-exec is set right after.
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY)?;
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let slave = nix::pty::ptsname_r(&master)?;
    let fd: OwnedFd = master.into();
    Ok((fd, slave))
}

/// Sends `fd` over the Unix socket `sock` with one byte of payload.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"t")];
    nix::sys::socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives a descriptor sent by [`send_fd`]; `None` when the peer closed without sending.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut buf = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                return Ok(Some(systty::own_received(fd)));
            }
        }
    }
    Ok(None)
}

/// Copies the window size of `from` (the launcher's terminal) to `to` (the master); does
/// nothing when `from` is not a terminal.
pub fn copy_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    if let Ok(ws) = systty::window_size(from) {
        if let Err(err) = systty::set_window_size(to, &ws) {
            tracing::debug!(%err, "cannot set the container's window size");
        }
    }
}

/// The launcher's terminal in raw mode while the container runs; restored on drop.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Leaves the terminal as it is.
    pub fn none() -> RawMode {
        RawMode { saved: None }
    }

    /// Raw mode on stdin if it is a terminal.
    pub fn enter() -> RawMode {
        let stdin = io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return RawMode { saved: None };
        }
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Starts the copy threads: master → stdout always, stdin → master when `stdin` is set. The
/// returned handle finishes once the container's side of the terminal is closed.
pub fn relay(master: OwnedFd, stdin: bool) -> io::Result<JoinHandle<()>> {
    let out_master = File::from(master.try_clone()?);
    if stdin {
        let mut in_master = File::from(master);
        std::thread::Builder::new()
            .name("tty-in".into())
            .spawn(move || {
                let _ = copy(&mut io::stdin().lock(), &mut in_master);
            })?;
    }
    std::thread::Builder::new()
        .name("tty-out".into())
        .spawn(move || {
            let mut m = out_master;
            // EIO once every slave descriptor is closed: the normal end.
            let _ = copy(&mut m, &mut io::stdout().lock());
        })
}

/// Like io::copy but flushing after every read, so that interactive output shows at once.
fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
