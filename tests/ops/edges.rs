//! Edge cases programs run into: renames the VFS must refuse, renames onto directories whose
//! lower entries are all whited out, open-but-unlinked files, names that are not UTF-8 or are
//! as long as a name may be, setgid directories, and partial timestamp updates.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::common;
use crate::harness::{assert_errno, assert_no_markers, lstat, names, read, targets, Env, Node};
use Node::*;

#[test]
fn rename_refusals_match_the_vfs() {
    if !common::can_mount("rename_refusals_match_the_vfs") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[File("d/sub/f", b"f"), File("file", b"x")],
                &[File("full/a", b"a"), Dir("emptydir")],
            ],
            &[],
        );
        let rn = |a: &str, b: &str| std::fs::rename(e.p(a), e.p(b));
        assert_errno(
            t,
            "dir into its own subdir",
            rn("d", "d/sub/x"),
            libc::EINVAL,
        );
        assert_errno(t, "file over dir", rn("file", "emptydir"), libc::EISDIR);
        assert_errno(t, "dir over file", rn("d", "file"), libc::ENOTDIR);
        assert_errno(
            t,
            "dir over non-empty lower dir",
            rn("d", "full"),
            libc::ENOTEMPTY,
        );
        assert_errno(t, "missing source", rn("nothing", "x"), libc::ENOENT);
        assert_eq!(names(t, &e.p("")), ["d", "emptydir", "file", "full"], "{t}");
        assert_eq!(names(t, &e.p("full")), ["a"], "{t}");
        // Same-name rename is a no-op that succeeds.
        rn("file", "file").unwrap_or_else(|err| panic!("{t}: rename onto itself: {err}"));
        assert_eq!(read(t, &e.p("file")), b"x", "{t}");
    }
}

/// A directory whose lower entries are all whited out is empty: a directory renamed over it
/// replaces it, and the hidden lower entries must not come back through the new one.
#[test]
fn rename_dir_over_dir_with_only_whited_out_entries() {
    if !common::can_mount("rename_dir_over_dir_with_only_whited_out_entries") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[Whiteout("target/a"), File("src/mine", b"m")],
                &[File("target/a", b"a"), File("target/b", b"b")],
            ],
            &[],
        );
        std::fs::remove_file(e.p("target/b")).expect("unlink target/b");
        assert_eq!(
            names(t, &e.p("target")),
            Vec::<String>::new(),
            "{t}: looks empty"
        );
        std::fs::rename(e.p("src"), e.p("target"))
            .unwrap_or_else(|err| panic!("{t}: rename over emptied dir: {err}"));
        assert_eq!(names(t, &e.p("target")), ["mine"], "{t}: mounted");
        e.remount();
        assert_eq!(names(t, &e.p("target")), ["mine"], "{t}: after remount");
        assert_eq!(names(t, &e.p("")), ["target"], "{t}: root");
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn unlinked_open_file_stays_usable() {
    if !common::can_mount("unlinked_open_file_stays_usable") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[&[File("f", b"lower data"), File("g", b"read only")]],
            &[],
        );
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(e.p("f"))
            .expect("open rw");
        let ro = std::fs::File::open(e.p("g")).expect("open ro");
        std::fs::remove_file(e.p("f")).expect("unlink f");
        std::fs::remove_file(e.p("g")).expect("unlink g");
        rw.write_all_at(b"LOWER", 0)
            .unwrap_or_else(|err| panic!("{t}: write after unlink: {err}"));
        let mut buf = [0u8; 10];
        rw.read_exact_at(&mut buf, 0).expect("read after unlink");
        assert_eq!(&buf, b"LOWER data", "{t}: rw fd");
        let mut buf = [0u8; 9];
        ro.read_exact_at(&mut buf, 0).expect("read ro after unlink");
        assert_eq!(&buf, b"read only", "{t}: ro fd");
        assert_eq!(
            rw.metadata().expect("fstat").nlink(),
            0,
            "{t}: nlink of unlinked"
        );
        assert_eq!(names(t, &e.p("")), Vec::<String>::new(), "{t}");
        assert_eq!(read(t, &e.lower(0, "f")), b"lower data", "{t}: lower");
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

#[test]
fn non_utf8_names_round_trip() {
    if !common::can_mount("non_utf8_names_round_trip") {
        return;
    }
    for t in targets() {
        let odd: &[u8] = b"caf\xe9 \xff\n.txt";
        let hidden: &[u8] = b"gone\xfe";
        let mut e = Env::build(t, &[&[Dir("d")], &[Dir("d")]], &[]);
        std::fs::write(e.lower(1, "d").join(os(odd)), b"odd").expect("fixture odd");
        std::fs::write(e.lower(1, "d").join(os(hidden)), b"h").expect("fixture hidden");
        let mut marker = b".wh.".to_vec();
        marker.extend_from_slice(hidden);
        match t.format {
            crate::harness::Format::Overlay => nix::sys::stat::mknod(
                &e.lower(0, "d").join(os(hidden)),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .expect("fixture whiteout"),
            crate::harness::Format::Aufs => {
                std::fs::write(e.lower(0, "d").join(os(&marker)), b"").expect("fixture .wh.")
            }
        }
        e.mount();
        let listing = |e: &Env| {
            let mut v: Vec<Vec<u8>> = std::fs::read_dir(e.p("d"))
                .expect("readdir")
                .map(|x| x.expect("entry").file_name().into_vec())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            listing(&e),
            [odd.to_vec()],
            "{t}: lower name, hidden one gone"
        );
        assert_eq!(read(t, &e.p("d").join(os(odd))), b"odd", "{t}");
        let created: &[u8] = b"new\x80\xc0";
        std::fs::write(e.p("d").join(os(created)), b"c").expect("create odd name");
        std::fs::remove_file(e.p("d").join(os(odd))).expect("unlink odd name");
        e.remount();
        assert_eq!(listing(&e), [created.to_vec()], "{t}: after remount");
        let upper_odd = e.upper("d").join(os(odd));
        assert!(
            crate::harness::is_char_whiteout(&upper_odd),
            "{t}: whiteout for the odd name"
        );
    }
}

#[test]
fn long_names_255_ok_256_enametoolong() {
    if !common::can_mount("long_names_255_ok_256_enametoolong") {
        return;
    }
    for t in targets() {
        let n255 = "L".repeat(255);
        let n256 = "L".repeat(256);
        let low255 = format!("d/{}", "l".repeat(255));
        let e = Env::new(t, &[&[File(&low255, b"low")]], &[]);
        assert_eq!(read(t, &e.p(&low255)), b"low", "{t}: lower 255-byte name");
        std::fs::write(e.p(&format!("d/{n255}")), b"up")
            .unwrap_or_else(|err| panic!("{t}: create 255-byte name: {err}"));
        assert_errno(
            t,
            "create 256-byte name",
            std::fs::write(e.p(&format!("d/{n256}")), b"x"),
            libc::ENAMETOOLONG,
        );
        std::fs::remove_file(e.p(&low255))
            .unwrap_or_else(|err| panic!("{t}: unlink 255-byte lower name: {err}"));
        let listed: Vec<String> = names(t, &e.p("d"));
        assert_eq!(listed, std::slice::from_ref(&n255), "{t}");
    }
}

#[test]
fn create_in_setgid_lower_dir_inherits_group() {
    if !common::can_mount("create_in_setgid_lower_dir_inherits_group") {
        return;
    }
    for t in targets() {
        let mut e = Env::build(t, &[&[Dir("shared")]], &[]);
        let dir = e.lower(0, "shared");
        nix::unistd::chown(&dir, None, Some(nix::unistd::Gid::from_raw(5000))).expect("chgrp");
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o2775)).expect("chmod g+s");
        e.mount();
        std::fs::write(e.p("shared/f"), b"f").expect("create");
        std::fs::create_dir(e.p("shared/sub")).expect("mkdir");
        let f = lstat(t, &e.p("shared/f"));
        assert_eq!(f.gid(), 5000, "{t}: file group from the setgid dir");
        let sub = lstat(t, &e.p("shared/sub"));
        assert_eq!(sub.gid(), 5000, "{t}: dir group from the setgid dir");
        assert_eq!(sub.mode() & 0o2000, 0o2000, "{t}: subdir inherits setgid");
        assert_eq!(
            lstat(t, &e.p("shared")).mode() & 0o7777,
            0o2775,
            "{t}: dir mode"
        );
        assert_eq!(
            lstat(t, &e.upper("shared/f")).gid(),
            5000,
            "{t}: upper group"
        );
    }
}

#[test]
fn utimensat_omit_and_now_on_lower_file() {
    if !common::can_mount("utimensat_omit_and_now_on_lower_file") {
        return;
    }
    for t in targets() {
        let mut e = Env::build(t, &[&[File("f", b"x")]], &[]);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &e.lower(0, "f"),
            &TimeSpec::new(1_000_000_000, 111),
            &TimeSpec::new(1_100_000_000, 222),
            UtimensatFlags::NoFollowSymlink,
        )
        .expect("fixture times");
        e.mount();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        utimensat(
            nix::fcntl::AT_FDCWD,
            &e.p("f"),
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::UTIME_NOW,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap_or_else(|err| panic!("{t}: utimensat OMIT/NOW: {err}"));
        let m = lstat(t, &e.p("f"));
        assert_eq!(
            (m.atime(), m.atime_nsec()),
            (1_000_000_000, 111),
            "{t}: atime kept"
        );
        assert!(m.mtime() >= before - 1, "{t}: mtime is now: {}", m.mtime());
        assert_eq!(read(t, &e.p("f")), b"x", "{t}");
    }
}

/// Several threads make their first write to the same lower file at once: copy-up must happen
/// once, and every write must land in the one upper copy.
#[test]
fn concurrent_first_writes_copy_up_once() {
    if !common::can_mount("concurrent_first_writes_copy_up_once") {
        return;
    }
    for t in targets() {
        let data = crate::harness::pattern(64 * 1024, 9);
        let e = Env::new(t, &[&[File("f", &data)]], &[]);
        let path = e.p("f");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .unwrap_or_else(|err| panic!("{t}: thread {i}: open: {err}"));
                    f.write_all_at(&[b'A' + i; 100], u64::from(i) * 8192)
                        .unwrap_or_else(|err| panic!("{t}: thread {i}: write: {err}"));
                });
            }
        });
        let mut want = data.clone();
        for i in 0..8usize {
            want[i * 8192..i * 8192 + 100].fill(b'A' + i as u8);
        }
        assert!(read(t, &path) == want, "{t}: a write was lost");
        assert!(read(t, &e.upper("f")) == want, "{t}: upper copy");
        assert!(read(t, &e.lower(0, "f")) == data, "{t}: lower untouched");
    }
}

#[test]
fn chmod_lower_dir_keeps_merged_listing() {
    if !common::can_mount("chmod_lower_dir_keeps_merged_listing") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[File("d/a", b"a"), Whiteout("d/c")],
                &[File("d/b", b"b"), File("d/c", b"c")],
            ],
            &[],
        );
        std::fs::set_permissions(e.p("d"), PermissionsExt::from_mode(0o710))
            .unwrap_or_else(|err| panic!("{t}: chmod dir: {err}"));
        assert_eq!(names(t, &e.p("d")), ["a", "b"], "{t}: mounted");
        e.remount();
        assert_eq!(names(t, &e.p("d")), ["a", "b"], "{t}: after remount");
        assert_eq!(lstat(t, &e.p("d")).mode() & 0o7777, 0o710, "{t}: mode");
        assert_eq!(read(t, &e.p("d/b")), b"b", "{t}");
    }
}

#[test]
fn create_in_lower_dir_updates_parent_mtime() {
    if !common::can_mount("create_in_lower_dir_updates_parent_mtime") {
        return;
    }
    for t in targets() {
        let mut e = Env::build(t, &[&[Dir("d"), Dir("e/x")]], &[]);
        for rel in ["d", "e"] {
            utimensat(
                nix::fcntl::AT_FDCWD,
                &e.lower(0, rel),
                &TimeSpec::new(981_173_106, 0),
                &TimeSpec::new(981_173_106, 0),
                UtimensatFlags::NoFollowSymlink,
            )
            .expect("fixture dir times");
        }
        e.mount();
        assert_eq!(lstat(t, &e.p("d")).mtime(), 981_173_106, "{t}: before");
        std::fs::write(e.p("d/new"), b"n").expect("create");
        std::fs::remove_dir(e.p("e/x")).expect("rmdir");
        for rel in ["d", "e"] {
            assert!(
                lstat(t, &e.p(rel)).mtime() > 981_173_106,
                "{t}: mtime of {rel} not updated by a change inside it"
            );
        }
    }
}
