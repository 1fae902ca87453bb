//! Terminal ioctls that nix offers only as `unsafe` macro-generated functions: taking a
//! controlling terminal, and reading and setting a window size (tty_ioctl(4)).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// A terminal's window size.
pub type WinSize = libc::winsize;

/// Makes the terminal open on `fd` the controlling terminal of this session (TIOCSCTTY). The
/// caller must be a session leader without one.
pub fn set_controlling(fd: impl AsFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal), no pointer.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSCTTY, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The window size of the terminal on `fd` (TIOCGWINSZ).
pub fn window_size(fd: impl AsFd) -> io::Result<WinSize> {
    // SAFETY: winsize is plain old data; all zeroes is a valid value.
    let mut ws: WinSize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ws)
}

/// Sets the window size of the terminal on `fd` (TIOCSWINSZ); the kernel then sends SIGWINCH
/// to the terminal's foreground process group.
pub fn set_window_size(fd: impl AsFd, ws: &WinSize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize from `ws`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a descriptor that recvmsg(2) just installed through SCM_RIGHTS.
pub fn own_received(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed `fd` in this process for this one message; nothing else in
    // the process knows its number, so this is its only owner.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
