//! Metadata: mode, owner, timestamps and xattrs of lower files (and what copy-up keeps), the
//! private xattrs that must stay hidden, statfs, and the read-only mount.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{chown, Gid, Uid};

use crate::common;
use crate::harness::{
    assert_errno, assert_no_private_xattrs, lstat, names, read, targets, Env, Kind, Node, Target,
};
use Node::*;

/// mtime 2001-02-03 04:05:06.123456789 and atime a day earlier, odd nanoseconds on purpose.
const MTIME: (i64, i64) = (981_173_106, 123_456_789);
const ATIME: (i64, i64) = (981_086_706, 987_654_321);

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> nix::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &TimeSpec::new(atime.0, atime.1),
        &TimeSpec::new(mtime.0, mtime.1),
        UtimensatFlags::NoFollowSymlink,
    )
}

/// A lower file `d/f` owned by 1234:5678, mode 0640, with MTIME and a user xattr.
fn env_with_rich_lower_file(t: Target) -> Env {
    let mut e = Env::build(t, &[&[File("d/f", b"content"), File("d/g", b"g")]], &[]);
    for rel in ["d/f", "d/g"] {
        let p = e.lower(0, rel);
        chown(&p, Some(Uid::from_raw(1234)), Some(Gid::from_raw(5678))).expect("chown fixture");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        xattr::set(&p, "user.test.colour", b"blue").expect("fixture xattr");
        set_times(&p, ATIME, MTIME).expect("fixture times");
    }
    e.mount();
    e
}

fn mtime_of(m: &std::fs::Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn chmod_lower_file_copy_up_keeps_owner_mtime_xattrs() {
    if !common::can_mount("chmod_lower_file_copy_up_keeps_owner_mtime_xattrs") {
        return;
    }
    for t in targets() {
        let mut e = env_with_rich_lower_file(t);
        std::fs::set_permissions(e.p("d/f"), std::fs::Permissions::from_mode(0o604))
            .unwrap_or_else(|err| panic!("{t}: chmod: {err}"));
        for (where_, p) in [("mount", e.p("d/f")), ("upper", e.upper("d/f"))] {
            let m = lstat(t, &p);
            assert_eq!(m.mode() & 0o7777, 0o604, "{t}: {where_}: mode");
            assert_eq!((m.uid(), m.gid()), (1234, 5678), "{t}: {where_}: owner");
            assert_eq!(mtime_of(&m), MTIME, "{t}: {where_}: mtime");
            assert_eq!(
                xattr::get(&p, "user.test.colour").expect("getxattr"),
                Some(b"blue".to_vec()),
                "{t}: {where_}: user xattr"
            );
        }
        assert_eq!(read(t, &e.p("d/f")), b"content", "{t}");
        let low = lstat(t, &e.lower(0, "d/f"));
        assert_eq!(low.mode() & 0o7777, 0o640, "{t}: lower mode");
        e.remount();
        let m = lstat(t, &e.p("d/f"));
        assert_eq!(
            (m.mode() & 0o7777, m.uid()),
            (0o604, 1234),
            "{t}: after remount"
        );
        assert_eq!(mtime_of(&m), MTIME, "{t}: mtime after remount");
        assert_no_private_xattrs(t, &e.p("d/f"));
        assert_no_private_xattrs(t, &e.p("d"));
    }
}

#[test]
fn chown_lower_file_copy_up_keeps_mode_and_mtime() {
    if !common::can_mount("chown_lower_file_copy_up_keeps_mode_and_mtime") {
        return;
    }
    for t in targets() {
        let e = env_with_rich_lower_file(t);
        chown(&e.p("d/f"), Some(Uid::from_raw(42)), None)
            .unwrap_or_else(|err| panic!("{t}: chown uid: {err}"));
        chown(&e.p("d/g"), None, Some(Gid::from_raw(43)))
            .unwrap_or_else(|err| panic!("{t}: chown gid: {err}"));
        let f = lstat(t, &e.p("d/f"));
        assert_eq!((f.uid(), f.gid()), (42, 5678), "{t}: f owner");
        let g = lstat(t, &e.p("d/g"));
        assert_eq!((g.uid(), g.gid()), (1234, 43), "{t}: g owner");
        for m in [&f, &g] {
            assert_eq!(m.mode() & 0o7777, 0o640, "{t}: mode kept");
            assert_eq!(mtime_of(m), MTIME, "{t}: mtime kept");
        }
        assert_eq!(lstat(t, &e.upper("d/f")).uid(), 42, "{t}: upper f");
        assert_eq!(lstat(t, &e.lower(0, "d/f")).uid(), 1234, "{t}: lower f");
    }
}

#[test]
fn utimensat_nanosecond_mtime_preserved() {
    if !common::can_mount("utimensat_nanosecond_mtime_preserved") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(t, &[&[File("f", b"x"), Dir("dir")]], &[]);
        let want_m = (1_600_000_000, 1);
        let want_a = (1_500_000_000, 999_999_999);
        for rel in ["f", "dir"] {
            set_times(&e.p(rel), want_a, want_m)
                .unwrap_or_else(|err| panic!("{t}: utimensat {rel}: {err}"));
        }
        std::fs::write(e.p("new"), b"n").expect("create");
        set_times(&e.p("new"), want_a, (1_234_567_890, 500_000_001)).expect("utimensat new");
        e.remount();
        for rel in ["f", "dir"] {
            let m = lstat(t, &e.p(rel));
            assert_eq!(mtime_of(&m), want_m, "{t}: {rel}: mtime");
            assert_eq!((m.atime(), m.atime_nsec()), want_a, "{t}: {rel}: atime");
        }
        let n = lstat(t, &e.p("new"));
        assert_eq!(mtime_of(&n), (1_234_567_890, 500_000_001), "{t}: new file");
        assert_eq!(read(t, &e.lower(0, "f")), b"x", "{t}");
    }
}

#[test]
fn user_xattr_set_get_list_remove() {
    if !common::can_mount("user_xattr_set_get_list_remove") {
        return;
    }
    for t in targets() {
        let mut e = env_with_rich_lower_file(t);
        let sorted_user = |p: &Path| {
            let mut v: Vec<String> = xattr::list(p)
                .unwrap_or_else(|err| panic!("{t}: listxattr {p:?}: {err}"))
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| n.starts_with("user."))
                .collect();
            v.sort();
            v
        };
        let f = e.p("d/f");
        assert_eq!(
            sorted_user(&f),
            ["user.test.colour"],
            "{t}: lower xattr listed"
        );
        xattr::set(&f, "user.test.size", b"large").unwrap_or_else(|err| panic!("{t}: set: {err}"));
        xattr::set(&f, "user.test.colour", b"red").expect("replace");
        assert_eq!(
            sorted_user(&f),
            ["user.test.colour", "user.test.size"],
            "{t}"
        );
        assert_eq!(
            xattr::get(&f, "user.test.colour").expect("get"),
            Some(b"red".to_vec())
        );
        xattr::remove(&f, "user.test.size").unwrap_or_else(|err| panic!("{t}: remove: {err}"));
        assert_errno(
            t,
            "remove missing",
            xattr::remove(&f, "user.test.size"),
            libc::ENODATA,
        );
        assert_eq!(
            xattr::get(&f, "user.test.size").expect("get"),
            None,
            "{t}: removed"
        );
        // On a lower directory, removing a lower xattr copies the dir up.
        let d = e.p("d");
        xattr::set(&d, "user.dir", b"1").unwrap_or_else(|err| panic!("{t}: set on dir: {err}"));
        xattr::remove(e.p("d/g"), "user.test.colour")
            .unwrap_or_else(|err| panic!("{t}: remove lower xattr: {err}"));
        e.remount();
        assert_eq!(
            sorted_user(&e.p("d/f")),
            ["user.test.colour"],
            "{t}: remount f"
        );
        assert_eq!(
            sorted_user(&e.p("d/g")),
            Vec::<String>::new(),
            "{t}: remount g"
        );
        assert_eq!(sorted_user(&e.p("d")), ["user.dir"], "{t}: remount d");
        assert_eq!(
            xattr::get(e.lower(0, "d/g"), "user.test.colour").expect("lower get"),
            Some(b"blue".to_vec()),
            "{t}: lower xattr untouched"
        );
    }
}

/// SELinux labels on a host without SELinux. A label an object has is read and listed as on
/// overlayfs, and one set through the mount is kept. Asked for the label of an object without
/// one, overlayfs answers "no such attribute" and unionfs "not supported", so that `ls -l`
/// stops asking for every file.
#[test]
fn selinux_label_read_where_present_unsupported_where_absent() {
    if !common::can_mount("selinux_label_read_where_present_unsupported_where_absent") {
        return;
    }
    const NAME: &str = "security.selinux";
    let get = |p: &Path| {
        xattr::get(p, NAME)
            .and_then(|v| v.ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODATA)))
    };
    for t in targets() {
        let mut e = Env::build(t, &[&[File("labelled", b"l"), File("plain", b"p")]], &[]);
        xattr::set(e.lower(0, "labelled"), NAME, b"system_u:object_r:etc_t:s0")
            .expect("label a lower file (needs root)");
        e.mount();
        let labelled = e.p("labelled");
        assert_eq!(
            get(&labelled).unwrap_or_else(|err| panic!("{t}: read a lower label: {err}")),
            b"system_u:object_r:etc_t:s0",
            "{t}"
        );
        let listed = xattr::list(&labelled).expect("listxattr");
        assert!(
            listed.into_iter().any(|n| n == NAME),
            "{t}: lower label not listed"
        );
        let absent = match t.kind {
            Kind::Kernel => libc::ENODATA,
            Kind::Unionfs => libc::EOPNOTSUPP,
        };
        assert_errno(
            t,
            "label of an unlabelled lower file",
            get(&e.p("plain")),
            absent,
        );
        std::fs::write(e.p("new"), b"n").expect("create");
        assert_errno(t, "label of a new file", get(&e.p("new")), absent);
        xattr::set(e.p("plain"), NAME, b"system_u:object_r:bin_t:s0")
            .unwrap_or_else(|err| panic!("{t}: set a label: {err}"));
        e.remount();
        assert_eq!(
            get(&e.p("plain")).unwrap_or_else(|err| panic!("{t}: read a set label: {err}")),
            b"system_u:object_r:bin_t:s0",
            "{t}: label set through the mount"
        );
    }
}

#[test]
fn private_xattrs_never_visible_through_mount() {
    if !common::can_mount("private_xattrs_never_visible_through_mount") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[&[
                Opaque("op"),
                File("op/a", b"a"),
                File("mv/x", b"x"),
                File("f", b"f"),
            ]],
            &[],
        );
        // Make the filesystem write its own markers: redirect, opaque, origin, impure.
        std::fs::rename(e.p("mv"), e.p("moved")).expect("rename dir");
        std::fs::remove_file(e.p("op/a")).expect("unlink");
        std::fs::remove_dir(e.p("op")).expect("rmdir");
        std::fs::create_dir(e.p("op")).expect("mkdir over whiteout");
        std::fs::write(e.p("f"), b"copied").expect("copy up f");
        e.remount();
        for rel in ["", "op", "moved", "moved/x", "f"] {
            let p = e.p(rel);
            assert_no_private_xattrs(t, &p);
            for name in [
                "trusted.overlay.opaque",
                "trusted.overlay.redirect",
                "trusted.overlay.origin",
            ] {
                assert_errno(
                    t,
                    &format!("getxattr {name} on {rel:?}"),
                    xattr::get(&p, name).and_then(|v| match v {
                        None => Err(std::io::Error::from_raw_os_error(libc::ENODATA)),
                        Some(v) => Ok(v),
                    }),
                    libc::ENODATA,
                );
            }
        }
        assert_eq!(names(t, &e.p("op")), Vec::<String>::new(), "{t}");
        assert_eq!(names(t, &e.p("moved")), ["x"], "{t}");
    }
}

/// Kernel overlayfs (6.7 and later) escapes `trusted.overlay.*` names a user sets through the
/// mount (stored as `trusted.overlay.overlay.*`, for nesting), so the set may succeed; what must
/// never happen is that it acts as the filesystem's own marker.
#[test]
fn private_xattr_cannot_be_forged_through_mount() {
    if !common::can_mount("private_xattr_cannot_be_forged_through_mount") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(t, &[&[File("d/a", b"a")], &[File("d/b", b"b")]], &[]);
        let d = e.p("d");
        // Whatever the answer (kernel: success), the directory must not become opaque.
        let _ = xattr::set(&d, "trusted.overlay.opaque", b"y");
        let _ = xattr::set(&d, "user.overlay.opaque", b"y");
        assert_eq!(names(t, &d), ["a", "b"], "{t}: mounted");
        e.remount();
        assert_eq!(names(t, &e.p("d")), ["a", "b"], "{t}: after remount");
        assert_eq!(
            xattr::get(e.lower(0, "d"), "trusted.overlay.opaque").expect("lower getxattr"),
            None,
            "{t}: lower dir marked"
        );
    }
}

#[test]
fn statfs_reports_upper_filesystem() {
    if !common::can_mount("statfs_reports_upper_filesystem") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("f", b"x")]], &[]);
        let got = nix::sys::statvfs::statvfs(&e.p(""))
            .unwrap_or_else(|err| panic!("{t}: statvfs: {err}"));
        let upper = nix::sys::statvfs::statvfs(&e.s.upper).expect("statvfs upper");
        assert!(got.block_size() > 0, "{t}: f_bsize");
        assert!(got.blocks() > 0, "{t}: f_blocks");
        assert!(got.name_max() >= 255, "{t}: f_namemax {}", got.name_max());
        assert_eq!(
            got.blocks(),
            upper.blocks(),
            "{t}: f_blocks as the upper fs"
        );
        assert_eq!(
            got.block_size(),
            upper.block_size(),
            "{t}: f_bsize as the upper fs"
        );
        let f = std::fs::File::open(e.p("f")).expect("open");
        nix::sys::statvfs::fstatvfs(&f).unwrap_or_else(|err| panic!("{t}: fstatvfs: {err}"));
    }
}

#[test]
fn readonly_mount_reads_and_rejects_writes_erofs() {
    if !common::can_mount("readonly_mount_reads_and_rejects_writes_erofs") {
        return;
    }
    for t in targets() {
        let e = Env::new_ro(
            t,
            &[
                &[File("d/a", b"A"), Whiteout("d/b")],
                &[File("d/b", b"B"), File("d/c", b"C")],
            ],
        );
        assert_eq!(names(t, &e.p("d")), ["a", "c"], "{t}: merged listing");
        assert_eq!(read(t, &e.p("d/c")), b"C", "{t}: read");
        let erofs = |what: &str, r: std::io::Result<()>| assert_errno(t, what, r, libc::EROFS);
        erofs("create", std::fs::File::create(e.p("d/new")).map(drop));
        erofs(
            "open for write",
            OpenOptions::new().write(true).open(e.p("d/a")).map(drop),
        );
        erofs("mkdir", std::fs::create_dir(e.p("d/sub")));
        erofs("unlink", std::fs::remove_file(e.p("d/a")));
        erofs("rmdir", std::fs::remove_dir(e.p("d")));
        erofs("rename", std::fs::rename(e.p("d/a"), e.p("d/z")));
        erofs(
            "chmod",
            std::fs::set_permissions(e.p("d/a"), std::fs::Permissions::from_mode(0o600)),
        );
        erofs("setxattr", xattr::set(e.p("d/a"), "user.x", b"1"));
        erofs("symlink", std::os::unix::fs::symlink("a", e.p("d/l")));
        erofs("link", std::fs::hard_link(e.p("d/a"), e.p("d/hl")));
        erofs(
            "mkfifo",
            nix::unistd::mkfifo(&e.p("d/p"), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(Into::into),
        );
        erofs("removexattr", xattr::remove(e.p("d/a"), "user.x"));
        erofs(
            "chown",
            chown(&e.p("d/a"), Some(Uid::from_raw(1)), None).map_err(Into::into),
        );
        erofs(
            "truncate",
            nix::unistd::truncate(&e.p("d/a"), 0).map_err(Into::into),
        );
        erofs(
            "utimensat",
            set_times(&e.p("d/a"), ATIME, MTIME).map_err(Into::into),
        );
        assert_eq!(read(t, &e.p("d/a")), b"A", "{t}: unchanged");
        assert_eq!(read(t, &e.lower(0, "d/a")), b"A", "{t}: lower unchanged");
    }
}

/// The flags field of `lsattr` for `p` (`-d`: a directory itself, not its entries).
fn lsattr(t: Target, p: &Path) -> String {
    let out = std::process::Command::new("lsattr")
        .arg("-d")
        .arg(p)
        .output()
        .expect("run lsattr");
    assert!(
        out.status.success(),
        "{t}: lsattr {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("lsattr output");
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn inode_flags_read_from_lower_and_set_after_copy_up() {
    if !common::can_mount("inode_flags_read_from_lower_and_set_after_copy_up") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("f", b"data"), Dir("d")]], &[]);
        // lsattr reads the flags of the object behind a name.
        assert_eq!(lsattr(t, &e.p("f")), lsattr(t, &e.lower(0, "f")), "{t}: f");
        assert_eq!(lsattr(t, &e.p("d")), lsattr(t, &e.lower(0, "d")), "{t}: d");
        // chattr copies the file up and sets the flag on the upper copy only.
        let st = std::process::Command::new("chattr")
            .arg("+d")
            .arg(e.p("f"))
            .status()
            .expect("run chattr");
        assert!(st.success(), "{t}: chattr +d");
        assert!(
            lsattr(t, &e.p("f")).contains('d'),
            "{t}: flag through mount"
        );
        assert!(lsattr(t, &e.upper("f")).contains('d'), "{t}: flag on upper");
        assert!(
            !lsattr(t, &e.lower(0, "f")).contains('d'),
            "{t}: lower unchanged"
        );
        assert_eq!(read(t, &e.p("f")), b"data", "{t}: data after chattr");
        // Any other ioctl is not for a file: a terminal query fails with ENOTTY.
        let out = std::process::Command::new("stty")
            .arg("-F")
            .arg(e.p("f"))
            .output()
            .expect("run stty");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Inappropriate ioctl"),
            "{t}: stty on a file: {err}"
        );
    }
}

/// The xattrs of a file unlinked while open are read and changed through its descriptor, as
/// on any file system (they answered ENOENT: no name was left to find the file by).
#[test]
fn xattrs_of_a_file_unlinked_while_open() {
    use xattr::FileExt;
    if !common::can_mount("xattrs_of_a_file_unlinked_while_open") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("low", b"l")]], &[]);
        std::fs::write(e.p("new"), b"n").expect("create");
        // A new file, and a lower one copied up by its open for writing.
        for name in ["new", "low"] {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.p(name))
                .expect("open");
            f.set_xattr("user.test.k", b"v1")
                .expect("set before unlink");
            std::fs::remove_file(e.p(name)).expect("unlink");
            let get = |k: &str| {
                f.get_xattr(k)
                    .unwrap_or_else(|err| panic!("{t}: {name}: get {k} after unlink: {err}"))
            };
            assert_eq!(get("user.test.k"), Some(b"v1".to_vec()), "{t}: {name}");
            f.set_xattr("user.test.k2", b"v2")
                .unwrap_or_else(|err| panic!("{t}: {name}: set after unlink: {err}"));
            let listed = test_xattrs(t, name, &f);
            assert_eq!(listed, ["user.test.k", "user.test.k2"], "{t}: {name}");
            f.remove_xattr("user.test.k")
                .unwrap_or_else(|err| panic!("{t}: {name}: remove after unlink: {err}"));
            assert_eq!(get("user.test.k"), None, "{t}: {name}: removed");
        }
        assert_eq!(names(t, &e.p("")), Vec::<String>::new(), "{t}");
    }
}

#[test]
fn xattrs_of_a_directory_removed_while_open() {
    use xattr::FileExt;
    if !common::can_mount("xattrs_of_a_directory_removed_while_open") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[Dir("low")]], &[]);
        xattr::set(e.lower(0, "low"), "user.test.low", b"l").expect("lower xattr");
        std::fs::create_dir(e.p("new")).expect("mkdir");
        xattr::set(e.p("new"), "user.test.k", b"v1").expect("set before rmdir");
        let new = std::fs::File::open(e.p("new")).expect("open new");
        let low = std::fs::File::open(e.p("low")).expect("open low");
        std::fs::remove_dir(e.p("new")).expect("rmdir new");
        std::fs::remove_dir(e.p("low")).expect("rmdir low");
        // One from the upper: its xattrs stay readable and changeable, as on its inode.
        let get = |k: &str| {
            new.get_xattr(k)
                .unwrap_or_else(|err| panic!("{t}: get {k} after rmdir: {err}"))
        };
        assert_eq!(get("user.test.k"), Some(b"v1".to_vec()), "{t}");
        new.set_xattr("user.test.k2", b"v2")
            .unwrap_or_else(|err| panic!("{t}: set after rmdir: {err}"));
        assert_eq!(
            test_xattrs(t, "new", &new),
            ["user.test.k", "user.test.k2"],
            "{t}"
        );
        new.remove_xattr("user.test.k")
            .unwrap_or_else(|err| panic!("{t}: remove after rmdir: {err}"));
        assert_eq!(get("user.test.k"), None, "{t}: removed");
        // One only the lower held: readable; no name is left to copy it up to for a change.
        assert_eq!(
            low.get_xattr("user.test.low")
                .expect("get lower after rmdir"),
            Some(b"l".to_vec()),
            "{t}"
        );
        assert_eq!(test_xattrs(t, "low", &low), ["user.test.low"], "{t}");
        assert!(
            low.set_xattr("user.test.k", b"v").is_err(),
            "{t}: set on a removed lower directory"
        );
        assert_errno(
            t,
            "remove missing",
            low.remove_xattr("user.test.none"),
            libc::ENODATA,
        );
        assert_eq!(names(t, &e.p("")), Vec::<String>::new(), "{t}");
    }
}

/// The sorted `user.test.*` xattr names of the open file `f`.
fn test_xattrs(t: Target, what: &str, f: &std::fs::File) -> Vec<String> {
    use xattr::FileExt;
    let mut names: Vec<String> = f
        .list_xattr()
        .unwrap_or_else(|err| panic!("{t}: {what}: list: {err}"))
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("user.test."))
        .collect();
    names.sort();
    names
}
