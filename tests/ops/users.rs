//! Permissions as seen by an unprivileged user: access(2) honours the modes of lower files,
//! new files belong to the caller, and the sticky bit and write permission are enforced.
//! The uid change happens only in a forked child, which makes raw syscalls on data prepared
//! before the fork and reports each errno through a pipe.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{chown, Gid, Uid};

use crate::common;
use crate::harness::{lstat, names, read, targets, Env, Node, Target};
use Node::*;

const OTHER: u32 = 1000;

/// One system call for the child to make.
#[derive(Clone, Copy, Debug)]
enum Op<'a> {
    Access(&'a Path, i32),
    /// open(O_CREAT | O_EXCL | O_WRONLY, 0644)
    Create(&'a Path),
    /// open(O_WRONLY)
    OpenWrite(&'a Path),
    Mkdir(&'a Path),
    Unlink(&'a Path),
    /// open(O_WRONLY | O_APPEND), write one byte
    Append(&'a Path),
    /// truncate(path, 1)
    Truncate(&'a Path),
    /// open(O_WRONLY | O_TRUNC)
    OpenTrunc(&'a Path),
}

/// Runs `ops` as uid:gid OTHER:OTHER in a forked child; the errno of each (0 for success).
fn run_as_other_user(ops: &[Op]) -> Vec<i32> {
    let prepared: Vec<(Op, CString)> = ops
        .iter()
        .map(|op| {
            let p = match *op {
                Op::Access(p, _) | Op::Create(p) | Op::OpenWrite(p) | Op::Mkdir(p) => p,
                Op::Unlink(p) | Op::Append(p) | Op::Truncate(p) | Op::OpenTrunc(p) => p,
            };
            (*op, CString::new(p.as_os_str().as_bytes()).expect("no NUL"))
        })
        .collect();
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child only makes raw syscalls on data prepared before fork, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: async-signal-safe syscalls only, on memory prepared before the fork.
        unsafe {
            libc::close(pipe[0]);
            let ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(OTHER, OTHER, OTHER) == 0
                && libc::setresuid(OTHER, OTHER, OTHER) == 0;
            if !ok {
                libc::_exit(2);
            }
            for (op, c) in &prepared {
                let p = c.as_ptr();
                let r = match *op {
                    Op::Access(_, m) => libc::access(p, m),
                    Op::Create(_) => {
                        libc::open(p, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644)
                    }
                    Op::OpenWrite(_) => libc::open(p, libc::O_WRONLY),
                    Op::Mkdir(_) => libc::mkdir(p, 0o755),
                    Op::Unlink(_) => libc::unlink(p),
                    Op::Append(_) => {
                        let fd = libc::open(p, libc::O_WRONLY | libc::O_APPEND);
                        if fd >= 0 && libc::write(fd, b"+".as_ptr().cast(), 1) != 1 {
                            libc::close(fd);
                            -1
                        } else {
                            fd
                        }
                    }
                    Op::Truncate(_) => libc::truncate(p, 1),
                    Op::OpenTrunc(_) => libc::open(p, libc::O_WRONLY | libc::O_TRUNC),
                };
                let err: i32 = if r >= 0 { 0 } else { *libc::__errno_location() };
                let no_fd = matches!(
                    op,
                    Op::Access(..) | Op::Mkdir(_) | Op::Unlink(_) | Op::Truncate(_)
                );
                if r > 0 && !no_fd {
                    libc::close(r);
                }
                libc::write(pipe[1], (&err as *const i32).cast(), 4);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    // SAFETY: the read end is ours; `buf` has 4 bytes.
    while unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), 4) } == 4 {
        out.push(i32::from_ne_bytes(buf));
    }
    let mut status = 0;
    // SAFETY: closing the read end; reaping our own child.
    unsafe {
        libc::close(pipe[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (2: could not change uid)"
    );
    assert_eq!(out.len(), ops.len(), "the child answered every call");
    out
}

fn check(t: Target, ops: &[(Op, i32)]) {
    let got = run_as_other_user(&ops.iter().map(|(op, _)| *op).collect::<Vec<_>>());
    for ((op, want), got) in ops.iter().zip(got) {
        assert_eq!(
            got,
            *want,
            "{t}: {op:?} as uid {OTHER}: expected {}, got {}",
            std::io::Error::from_raw_os_error(*want),
            std::io::Error::from_raw_os_error(got)
        );
    }
}

/// Sets modes (and owners) in lower 0 and lets OTHER reach the mount.
fn prepare(e: &Env, modes: &[(&str, u32)], owned_by_other: &[&str]) {
    // The temporary directory is 0700; OTHER must be able to reach the mountpoint.
    std::fs::set_permissions(e.s.dir.path(), PermissionsExt::from_mode(0o755))
        .expect("open up the stack directory");
    for (rel, mode) in modes {
        std::fs::set_permissions(e.lower(0, rel), PermissionsExt::from_mode(*mode))
            .expect("fixture mode");
    }
    for rel in owned_by_other {
        let (u, g) = (Uid::from_raw(OTHER), Gid::from_raw(OTHER));
        chown(&e.lower(0, rel), Some(u), Some(g)).expect("fixture chown");
    }
}

#[test]
fn access_honours_modes_for_other_uid() {
    if !common::can_mount("access_honours_modes_for_other_uid") {
        return;
    }
    for t in targets() {
        let mut e = Env::build(
            t,
            &[&[
                File("d/secret", b"s"),
                File("d/public", b"p"),
                File("d/mine", b"m"),
                Dir("closed"),
            ]],
            &[],
        );
        let modes = [
            ("", 0o755),
            ("d", 0o755),
            ("d/secret", 0o600),
            ("d/public", 0o644),
            ("d/mine", 0o600),
            ("closed", 0o700),
        ];
        prepare(&e, &modes, &["d/mine"]);
        e.mount();
        let (r, w, x) = (libc::R_OK, libc::W_OK, libc::X_OK);
        let (secret, public, mine, closed, d) = (
            e.p("d/secret"),
            e.p("d/public"),
            e.p("d/mine"),
            e.p("closed"),
            e.p("d"),
        );
        check(
            t,
            &[
                (Op::Access(&secret, r), libc::EACCES),
                (Op::Access(&secret, libc::F_OK), 0),
                (Op::Access(&public, r), 0),
                (Op::Access(&public, w), libc::EACCES),
                (Op::Access(&mine, r | w), 0),
                (Op::Access(&mine, x), libc::EACCES),
                (Op::Access(&closed, x), libc::EACCES),
                (Op::Access(&d, r | x), 0),
                (Op::Access(&d, w), libc::EACCES),
            ],
        );
        // Root still reads everything.
        assert_eq!(read(t, &secret), b"s", "{t}");
    }
}

#[test]
fn other_uid_creates_files_it_owns_and_is_refused_elsewhere() {
    if !common::can_mount("other_uid_creates_files_it_owns_and_is_refused_elsewhere") {
        return;
    }
    for t in targets() {
        let mut e = Env::build(
            t,
            &[&[
                Dir("tmp"),
                File("tmp/roots", b"r"),
                File("ro/file", b"f"),
                File("home/old", b"o"),
            ]],
            &[],
        );
        let modes = [
            ("", 0o755),
            ("tmp", 0o1777),
            ("tmp/roots", 0o644),
            ("ro", 0o755),
            ("ro/file", 0o644),
            ("home", 0o755),
        ];
        prepare(&e, &modes, &["home", "home/old"]);
        e.mount();
        let (tmp_new, tmp_dir, roots) = (e.p("tmp/new"), e.p("tmp/dir"), e.p("tmp/roots"));
        let (ro_new, ro_file) = (e.p("ro/new"), e.p("ro/file"));
        let (home_new, home_old) = (e.p("home/new"), e.p("home/old"));
        check(
            t,
            &[
                (Op::Create(&tmp_new), 0),
                (Op::Mkdir(&tmp_dir), 0),
                (Op::Unlink(&roots), libc::EPERM),
                (Op::Create(&ro_new), libc::EACCES),
                (Op::Mkdir(&ro_new), libc::EACCES),
                (Op::OpenWrite(&ro_file), libc::EACCES),
                (Op::Unlink(&ro_file), libc::EACCES),
                (Op::Create(&home_new), 0),
                (Op::OpenWrite(&home_old), 0),
                (Op::Unlink(&home_old), 0),
            ],
        );
        for rel in ["tmp/new", "tmp/dir", "home/new"] {
            let m = lstat(t, &e.p(rel));
            assert_eq!((m.uid(), m.gid()), (OTHER, OTHER), "{t}: owner of {rel}");
            let u = lstat(t, &e.upper(rel));
            assert_eq!(
                (u.uid(), u.gid()),
                (OTHER, OTHER),
                "{t}: upper owner of {rel}"
            );
        }
        assert_eq!(
            lstat(t, &e.p("tmp/new")).mode() & 0o7777,
            0o644,
            "{t}: mode"
        );
        assert_eq!(
            lstat(t, &e.p("tmp")).mode() & 0o7777,
            0o1777,
            "{t}: sticky dir"
        );
        assert_eq!(names(t, &e.p("home")), ["new"], "{t}: home");
        assert_eq!(names(t, &e.p("ro")), ["file"], "{t}: ro");
        assert_eq!(read(t, &roots), b"r", "{t}: root's file in the sticky dir");
    }
}

/// A write, a truncate and an open with O_TRUNC by a user without CAP_FSETID clear the
/// set-user-ID bit, and the set-group-ID bit of a group-executable file, in the merged view and
/// in the upper. The kernel checks an inode once and then trusts it until its mode gains a
/// set-id bit, so a file written before `chmod u+s` loses the bit at its next write.
#[test]
fn writes_by_other_uid_clear_setid_bits() {
    if !common::can_mount("writes_by_other_uid_clear_setid_bits") {
        return;
    }
    let files = ["w/suid", "w/sgid", "t/suid", "o/suid", "n/plain"];
    for t in targets() {
        let nodes: Vec<Node> = files.iter().map(|&f| File(f, b"data")).collect();
        let mut e = Env::build(t, &[&nodes], &[]);
        let modes = [
            ("", 0o755),
            ("w", 0o755),
            ("t", 0o755),
            ("o", 0o755),
            ("n", 0o755),
            ("w/suid", 0o4777),
            ("w/sgid", 0o2777),
            ("t/suid", 0o4777),
            ("o/suid", 0o4777),
            ("n/plain", 0o666),
        ];
        prepare(&e, &modes, &[]);
        e.mount();
        let p: Vec<_> = files.iter().map(|f| e.p(f)).collect();
        check(
            t,
            &[
                (Op::Append(&p[0]), 0),
                (Op::Append(&p[1]), 0),
                (Op::Truncate(&p[2]), 0),
                (Op::OpenTrunc(&p[3]), 0),
                (Op::Append(&p[4]), 0),
            ],
        );
        std::fs::set_permissions(&p[4], PermissionsExt::from_mode(0o4777)).expect("chmod u+s");
        check(t, &[(Op::Append(&p[4]), 0)]);
        for f in files {
            let (merged, upper) = (lstat(t, &e.p(f)).mode(), lstat(t, &e.upper(f)).mode());
            assert_eq!(merged & 0o7777, 0o777, "{t}: mode of {f} after the writes");
            assert_eq!(upper & 0o7777, 0o777, "{t}: upper mode of {f}");
        }
    }
}
