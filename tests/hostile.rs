//! Hostile layers: symlinks that point out of the layer (`/etc/passwd`, `../../..`), names with
//! newlines and non-UTF-8 bytes, 255-byte names, a 4,000-level tree (deeper than `PATH_MAX`),
//! special files and setuid binaries.
//!
//! The daemon must never follow a link out of a layer or the upper on its own account (the
//! host target of a symlink stays untouched by lchown, utimes, xattrs and copy-up of the link),
//! must never panic (it is alive after each test), and must give the same results and the same
//! permission errors as kernel overlayfs over copies of the same layers.

mod common;
#[path = "crash/daemon.rs"]
mod daemon;

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Stack;

const LIMIT: Duration = Duration::from_secs(120);

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Ok` or the errno of the failing call, so results of both targets can be compared.
type Res = Result<(), i32>;

fn res(rc: libc::c_int) -> Res {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn assert_alive(mnt: &Path) {
    let pid = daemon::daemon_pid(mnt);
    assert!(daemon::is_alive(pid), "daemon died");
}

/// Everything about a host file that an escape could change.
fn fingerprint(p: &Path) -> (u32, u32, u32, i64, i64, Vec<u8>, Vec<OsString>) {
    let m = std::fs::metadata(p).unwrap();
    let xattrs = xattr::list(p).map(|l| l.collect()).unwrap_or_default();
    let content = std::fs::read(p).unwrap();
    (
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec(),
        content,
        xattrs,
    )
}

/// Operations on symlinks that must act on the link itself, never on its target.
fn nofollow_ops(mnt: &Path, link: &str) -> Vec<(String, Res)> {
    let p = cstr(&mnt.join(link));
    let mut out = Vec::new();
    // SAFETY: plain system calls on NUL-terminated paths that outlive the calls.
    unsafe {
        out.push(("lchown".into(), res(libc::lchown(p.as_ptr(), 1000, 1000))));
        let times = [libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        }; 2];
        let r = libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
        out.push(("utimensat nofollow".into(), res(r)));
        let name = c"trusted.qa";
        let r = libc::lsetxattr(p.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0);
        out.push(("lsetxattr".into(), res(r)));
        let r = libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), 0o600, libc::AT_SYMLINK_NOFOLLOW);
        out.push(("fchmodat nofollow".into(), res(r)));
        let to = cstr(&mnt.join(format!("{link}.hard")));
        out.push(("link".into(), res(libc::link(p.as_ptr(), to.as_ptr()))));
        let to = cstr(&mnt.join(format!("{link}.renamed")));
        out.push(("rename".into(), res(libc::rename(p.as_ptr(), to.as_ptr()))));
    }
    out
}

/// Builds the escaping symlinks in `lower` and the host files they name in `host`.
fn escaping_links(lower: &Path, host: &Path) {
    std::fs::create_dir_all(host.join("dir")).unwrap();
    std::fs::write(host.join("target"), b"host file").unwrap();
    std::fs::write(host.join("dir/f"), b"host dir file").unwrap();
    let links: [(&str, PathBuf); 4] = [
        ("passwd", "/etc/passwd".into()),
        ("up", "../../../../../../../../../../etc/passwd".into()),
        ("abs", host.join("target")),
        ("absdir", host.join("dir")),
    ];
    for (name, target) in links {
        std::os::unix::fs::symlink(target, lower.join(name)).unwrap();
    }
    std::fs::create_dir(lower.join("d")).unwrap();
    std::fs::write(lower.join("d/f"), b"lower").unwrap();
}

#[test]
fn symlinks_out_of_the_layer_are_never_followed_by_the_daemon() {
    if !common::can_mount("symlinks_out_of_the_layer_are_never_followed_by_the_daemon") {
        return;
    }
    let mut results = Vec::new();
    for overlay in [true, false] {
        let s = Stack::new(1);
        let host = s.dir.path().join("host");
        escaping_links(&s.lowers[0], &host);
        let passwd_before = fingerprint(Path::new("/etc/passwd"));
        let target_before = fingerprint(&host.join("target"));
        let dir_before = fingerprint(&host.join("dir/f"));
        let m = if overlay {
            s.mount_overlay()
        } else {
            s.mount_unionfs()
        };
        let mut r = Vec::new();
        for link in ["passwd", "up", "abs", "absdir"] {
            r.extend(
                nofollow_ops(&s.mnt, link)
                    .into_iter()
                    .map(|(op, x)| (format!("{link}: {op}"), x)),
            );
        }
        // A directory fd kept across a rename of its directory, and a symlink to a host
        // directory put in its old place: the copy-up through the fd must land in the
        // renamed directory, never through the symlink.
        let dirfd = std::fs::File::open(s.mnt.join("d")).unwrap();
        std::fs::rename(s.mnt.join("d"), s.mnt.join("d2")).unwrap();
        std::os::unix::fs::symlink(host.join("dir"), s.mnt.join("d")).unwrap();
        // SAFETY: openat on a live directory fd with a static NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dirfd.as_raw_fd(),
                c"f".as_ptr(),
                libc::O_WRONLY | libc::O_APPEND,
            )
        };
        let stale = if fd < 0 {
            Err(errno())
        } else {
            // SAFETY: fd was just returned by openat and is owned here only.
            let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            std::io::Write::write_all(&mut &f, b"+appended").map_err(|e| e.raw_os_error().unwrap())
        };
        r.push(("openat through a renamed dir fd".into(), stale));
        drop(dirfd);
        let d2 = std::fs::read(s.mnt.join("d2/f")).unwrap();
        r.push((format!("d2/f = {}", String::from_utf8_lossy(&d2)), Ok(())));
        if !overlay {
            assert_alive(&s.mnt);
        }
        drop(m);
        let label = if overlay { "overlayfs" } else { "unionfs" };
        assert!(
            fingerprint(Path::new("/etc/passwd")) == passwd_before,
            "{label}: /etc/passwd changed"
        );
        assert!(
            fingerprint(&host.join("target")) == target_before,
            "{label}: host target changed"
        );
        assert!(
            fingerprint(&host.join("dir/f")) == dir_before,
            "{label}: host dir file changed"
        );
        assert!(!host.join("f").exists() && !host.join("dir/d").exists());
        results.push(r);
    }
    assert_eq!(
        results[1], results[0],
        "unionfs (right) differs from overlayfs (left)"
    );
}

/// Names that tools and lossy conversions get wrong.
fn odd_names() -> Vec<OsString> {
    vec![
        OsString::from("new\nline"),
        OsString::from_vec(vec![b'b', 0xff, 0xfe, b'x']),
        OsString::from_vec(vec![0xc3, 0x28]),
        OsString::from("a".repeat(255)),
        OsString::from(format!("{}\u{e9}", "b".repeat(253))),
        OsString::from("back\\slash:colon,comma"),
        OsString::from(" leading space"),
        OsString::from(".wh"),
    ]
}

fn listing(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fn odd_name_ops(mnt: &Path) -> Vec<(String, Res)> {
    let mut out = Vec::new();
    let io = |r: std::io::Result<()>| r.map_err(|e| e.raw_os_error().unwrap_or(-1));
    for (i, n) in odd_names().iter().enumerate() {
        let p = mnt.join("odd").join(n);
        out.push((format!("{i} read"), io(std::fs::read(&p).map(drop))));
        out.push((
            format!("{i} append"),
            io(std::fs::OpenOptions::new().append(true).open(&p).map(drop)),
        ));
        let mut to = n.clone();
        to.push("2");
        out.push((
            format!("{i} rename +2"),
            io(std::fs::rename(&p, mnt.join("odd").join(&to))),
        ));
        let mut created = OsString::from("c");
        created.push(n);
        out.push((
            format!("{i} create c+name"),
            io(std::fs::write(mnt.join("odd").join(&created), b"c")),
        ));
    }
    let too_long = mnt.join("odd").join("z".repeat(256));
    out.push(("256-byte name".into(), io(std::fs::write(too_long, b"x"))));
    out.push(("listing".into(), Ok(())));
    for n in listing(&mnt.join("odd")) {
        out.push((format!("{:?}", n), Ok(())));
    }
    out
}

#[test]
fn odd_and_long_names_match_overlayfs() {
    if !common::can_mount("odd_and_long_names_match_overlayfs") {
        return;
    }
    let mut results = Vec::new();
    for overlay in [true, false] {
        let s = Stack::new(1);
        let odd = s.lowers[0].join("odd");
        std::fs::create_dir(&odd).unwrap();
        for n in odd_names() {
            std::fs::write(odd.join(&n), n.as_bytes()).unwrap();
        }
        let m = if overlay {
            s.mount_overlay()
        } else {
            s.mount_unionfs()
        };
        assert_eq!(listing(&s.mnt.join("odd")), {
            let mut v = odd_names();
            v.sort();
            v
        });
        results.push(odd_name_ops(&s.mnt));
        if !overlay {
            assert_alive(&s.mnt);
        }
        drop(m);
    }
    assert_eq!(
        results[1], results[0],
        "unionfs (right) differs from overlayfs (left)"
    );
}

const DEPTH: usize = 4000;

/// Creates `DEPTH` nested directories `d` under `root` (relative to directory fds: the path
/// is longer than PATH_MAX) with a file `leaf` at the bottom.
fn build_deep(root: &Path) {
    let mut fd = std::fs::File::open(root).unwrap();
    for _ in 0..DEPTH {
        // SAFETY: mkdirat/openat on a live directory fd with a static name.
        let next = unsafe {
            assert_eq!(libc::mkdirat(fd.as_raw_fd(), c"d".as_ptr(), 0o755), 0);
            libc::openat(
                fd.as_raw_fd(),
                c"d".as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY,
            )
        };
        assert!(next >= 0, "openat: {}", errno());
        // SAFETY: `next` was just returned by openat.
        fd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(next) });
    }
    // SAFETY: as above.
    let leaf = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c"leaf".as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert!(leaf >= 0);
    // SAFETY: `leaf` was just returned by openat.
    let leaf = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(leaf) });
    std::io::Write::write_all(&mut &leaf, b"deep").unwrap();
}

/// Walks down the deep tree in the mount and reads, writes and creates at the bottom.
fn deep_ops(mnt: &Path) -> Vec<(String, Res)> {
    let mut fd = std::fs::File::open(mnt).unwrap();
    let mut out = Vec::new();
    for level in 0..DEPTH {
        // SAFETY: openat on a live directory fd with a static name.
        let next = unsafe { libc::openat(fd.as_raw_fd(), c"d".as_ptr(), libc::O_DIRECTORY) };
        if next < 0 {
            out.push((format!("walk stopped at level {level}"), Err(errno())));
            return out;
        }
        // SAFETY: `next` was just returned by openat.
        fd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(next) });
    }
    let open = |name: &std::ffi::CStr, flags: i32| -> Result<std::fs::File, i32> {
        // SAFETY: openat on a live directory fd with a NUL-terminated name.
        let f = unsafe { libc::openat(fd.as_raw_fd(), name.as_ptr(), flags, 0o644) };
        if f < 0 {
            Err(errno())
        } else {
            // SAFETY: `f` was just returned by openat.
            Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(f) }))
        }
    };
    let read = open(c"leaf", libc::O_RDONLY).map(|f| std::io::read_to_string(f).unwrap());
    out.push((format!("read leaf {read:?}"), Ok(())));
    let append = open(c"leaf", libc::O_WRONLY | libc::O_APPEND)
        .and_then(|f| std::io::Write::write_all(&mut &f, b"+up").map_err(|_| -1));
    out.push(("append to leaf (copy-up of 4000 dirs)".into(), append));
    let create = open(c"new", libc::O_CREAT | libc::O_WRONLY).map(drop);
    out.push(("create at the bottom".into(), create));
    let read = open(c"leaf", libc::O_RDONLY).map(|f| std::io::read_to_string(f).unwrap());
    out.push((format!("read leaf again {read:?}"), Ok(())));
    // SAFETY: renameat/unlinkat on a live directory fd with NUL-terminated names.
    let rc = |r: i32| if r == 0 { Ok(()) } else { Err(errno()) };
    let renamed = rc(unsafe {
        libc::renameat(
            fd.as_raw_fd(),
            c"new".as_ptr(),
            fd.as_raw_fd(),
            c"moved".as_ptr(),
        )
    });
    out.push(("rename at the bottom".into(), renamed));
    // SAFETY: as above.
    let unlinked = rc(unsafe { libc::unlinkat(fd.as_raw_fd(), c"leaf".as_ptr(), 0) });
    out.push(("unlink the copied-up leaf".into(), unlinked));
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    out.push((format!("bottom lists {names:?}"), Ok(())));
    out
}

/// Kernel overlayfs walks all 4,000 levels (relative to directory fds), reads, copies up all
/// ancestors, creates, renames, unlinks and lists at the bottom, where the path is twice
/// PATH_MAX; unionfs must do the same and stay alive.
#[test]
fn tree_4000_levels_deep_matches_overlayfs() {
    if !common::can_mount("tree_4000_levels_deep_matches_overlayfs") {
        return;
    }
    let mut results = Vec::new();
    for overlay in [true, false] {
        let s = Stack::new(1);
        build_deep(&s.lowers[0]);
        let m = if overlay {
            s.mount_overlay()
        } else {
            s.mount_unionfs()
        };
        let mnt = s.mnt.clone();
        results.push(daemon::within("deep tree", LIMIT, move || deep_ops(&mnt)));
        if !overlay {
            assert_alive(&s.mnt);
        }
        drop(m);
    }
    assert_eq!(
        results[1], results[0],
        "unionfs (left) vs overlayfs (right)"
    );
}

/// Special files, setuid/setgid objects and permission probes by uid 1000.
fn special_lower(lower: &Path) {
    let mk = |name: &str, mode: u32, dev: u64| {
        let p = cstr(&lower.join(name));
        // SAFETY: mknod on a NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(p.as_ptr(), mode, dev) },
            0,
            "mknod {name}"
        );
    };
    mk("fifo", libc::S_IFIFO | 0o644, 0);
    mk("null", libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    mk("loop", libc::S_IFBLK | 0o660, libc::makedev(7, 0));
    drop(std::os::unix::net::UnixListener::bind(lower.join("sock")).unwrap());
    let files: [(&str, u32, u32); 8] = [
        ("suid", 0o4755, 0),
        ("sgid", 0o2755, 0),
        ("private", 0o600, 0),
        ("public", 0o644, 0),
        ("groupw", 0o664, 1000),
        ("owned", 0o400, 1000),
        ("exec-only", 0o711, 0),
        ("world-w", 0o666, 0),
    ];
    for (name, mode, uid) in files {
        let p = lower.join(name);
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for (name, mode) in [("dir700", 0o700), ("dir711", 0o711), ("sticky", 0o1777)] {
        let d = lower.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f"), b"x").unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

const PROBES: &[&str] = &[
    "fifo",
    "null",
    "loop",
    "sock",
    "suid",
    "sgid",
    "private",
    "public",
    "groupw",
    "owned",
    "exec-only",
    "world-w",
    "dir700",
    "dir700/f",
    "dir711",
    "dir711/f",
    "sticky",
    "sticky/f",
];

/// errno (0 for success) of access(R), access(W), access(X) and open(O_RDONLY|O_NONBLOCK) on
/// every probe, as uid/gid 1000 in a forked child.
fn probe_as_1000(mnt: &Path) -> Vec<(String, [i32; 4])> {
    let paths: Vec<CString> = PROBES.iter().map(|p| cstr(&mnt.join(p))).collect();
    let mut buf = vec![[0i32; 4]; PROBES.len()];
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only makes async-signal-safe calls (setgroups, setresgid, setresuid,
    // access, open, close, write, _exit) on memory allocated before the fork.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            drop(r);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(1000, 1000, 1000) != 0
                || libc::setresuid(1000, 1000, 1000) != 0
            {
                libc::_exit(2);
            }
            for (i, p) in paths.iter().enumerate() {
                for (j, mode) in [libc::R_OK, libc::W_OK, libc::X_OK].iter().enumerate() {
                    buf[i][j] = if libc::access(p.as_ptr(), *mode) == 0 {
                        0
                    } else {
                        *libc::__errno_location()
                    };
                }
                let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
                buf[i][3] = if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    *libc::__errno_location()
                };
            }
            let bytes = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 16);
            libc::write(w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut data).unwrap();
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                st,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "probe child"
            );
            assert_eq!(data.len(), PROBES.len() * 16);
            PROBES
                .iter()
                .zip(data.chunks(16))
                .map(|(p, c)| {
                    let v: Vec<i32> = c
                        .chunks(4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .collect();
                    (p.to_string(), [v[0], v[1], v[2], v[3]])
                })
                .collect()
        }
    }
}

fn special_ops(mnt: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in PROBES {
        let m = std::fs::symlink_metadata(mnt.join(p)).unwrap();
        out.push((
            format!("stat {p}"),
            format!("{:o} {} {} {:x}", m.mode(), m.uid(), m.gid(), m.rdev()),
        ));
    }
    // Copy-up of special files, and the setuid bit across chown and write (as root).
    for p in ["fifo", "null", "sock", "loop"] {
        let r = std::fs::set_permissions(mnt.join(p), std::fs::Permissions::from_mode(0o640));
        let m = std::fs::symlink_metadata(mnt.join(p)).unwrap();
        out.push((
            format!("chmod {p}"),
            format!("{:?} {:o}", r.map_err(|e| e.raw_os_error()), m.mode()),
        ));
    }
    std::os::unix::fs::chown(mnt.join("suid"), Some(1000), None).unwrap();
    let m = std::fs::metadata(mnt.join("suid")).unwrap();
    out.push((
        "suid after chown".into(),
        format!("{:o} {}", m.mode(), m.uid()),
    ));
    std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("sgid"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"#"))
        .unwrap();
    let m = std::fs::metadata(mnt.join("sgid")).unwrap();
    out.push(("sgid after root write".into(), format!("{:o}", m.mode())));
    out
}

#[test]
fn special_files_setuid_and_permissions_match_overlayfs() {
    if !common::can_mount("special_files_setuid_and_permissions_match_overlayfs") {
        return;
    }
    let mut results = Vec::new();
    for overlay in [true, false] {
        let s = Stack::new(1);
        // uid 1000 must be able to reach the mountpoint.
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        special_lower(&s.lowers[0]);
        let m = if overlay {
            s.mount_overlay()
        } else {
            s.mount_unionfs()
        };
        let probes = probe_as_1000(&s.mnt);
        let ops = special_ops(&s.mnt);
        let after = probe_as_1000(&s.mnt);
        if !overlay {
            assert_alive(&s.mnt);
        }
        drop(m);
        results.push((probes, ops, after));
    }
    let (o, u) = (&results[0], &results[1]);
    for (a, b) in o.0.iter().zip(&u.0) {
        assert_eq!(
            b, a,
            "uid 1000 access/open errnos [R, W, X, open]: unionfs (left) vs overlayfs (right)"
        );
    }
    assert_eq!(
        u.1, o.1,
        "special files and setuid: unionfs (left) vs overlayfs (right)"
    );
    for (a, b) in o.2.iter().zip(&u.2) {
        assert_eq!(
            b, a,
            "uid 1000 after copy-ups: unionfs (left) vs overlayfs (right)"
        );
    }
}

/// Found by `cargo fuzz run layer_index_load`: a 45-byte saved index whose entry count is
/// huge makes `LayerIndex::load` panic (capacity overflow in bincode's `Vec::with_capacity`)
/// instead of returning an error; a count just small enough to allocate aborts the process.
#[test]
fn corrupt_layer_index_is_an_error() {
    use unionfs::layer_index::index::LayerIndex;
    let dir = tempfile::tempdir().unwrap();
    let id = [0u8; 32];
    // The fuzzer's input: format varint 10, 32 identity bytes, then 0xfd (a u64 follows)
    // and a length of about 5.9e18 entries (45 bytes).
    let mut bytes = b"\n\n-".to_vec();
    bytes.extend_from_slice(&[b'{'; 28]);
    bytes.extend_from_slice(&[0xfd, b'-', 0xfd]);
    bytes.extend_from_slice(&[b'R'; 11]);
    std::fs::write(dir.path().join(format!("{}.idx", "00".repeat(32))), &bytes).unwrap();
    let r = std::panic::catch_unwind(|| LayerIndex::load(dir.path(), &id).is_err());
    assert!(matches!(r, Ok(true)), "corrupt index: panicked or accepted");
}
