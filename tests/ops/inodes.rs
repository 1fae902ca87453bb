//! Inode numbers and hard links: st_ino must not change across copy-up or remount, an fd
//! opened before a copy-up must keep its identity and see the new data, and the names of a
//! hard-linked lower file must stay one inode after one of them is written.

use std::os::unix::fs::{FileExt, MetadataExt};

use crate::common;
use crate::harness::{lstat, names, read, targets, Env, Node};
use Node::*;

#[test]
fn ino_stable_across_copy_up_and_remount() {
    if !common::can_mount("ino_stable_across_copy_up_and_remount") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[
                    File("d/chmod_me", b"c"),
                    File("d/write_me", b"w"),
                    Dir("d/sub"),
                ],
                &[File("d/low1", b"l"), Symlink("link", "d/low1")],
            ],
            &[],
        );
        let rels = [
            "",
            "d",
            "d/chmod_me",
            "d/write_me",
            "d/sub",
            "d/low1",
            "link",
        ];
        let before: Vec<u64> = rels.iter().map(|r| lstat(t, &e.p(r)).ino()).collect();
        let mut distinct = before.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            before.len(),
            "{t}: inode numbers not unique: {before:?}"
        );
        let check = |e: &Env, when: &str| {
            for (r, want) in rels.iter().zip(&before) {
                assert_eq!(lstat(t, &e.p(r)).ino(), *want, "{t}: {when}: ino of {r:?}");
            }
        };
        check(&e, "before any change");
        std::fs::set_permissions(
            e.p("d/chmod_me"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::OpenOptions::new()
            .write(true)
            .open(e.p("d/write_me"))
            .and_then(|f| f.write_all_at(b"W", 1))
            .expect("write");
        std::fs::write(e.p("d/sub/new"), b"n").expect("create in sub (copies sub and d up)");
        std::os::unix::fs::lchown(e.p("link"), Some(7), None).expect("lchown link");
        check(&e, "after copy-up");
        assert_eq!(
            std::fs::read_link(e.p("link")).expect("readlink after lchown"),
            std::path::Path::new("d/low1"),
            "{t}: symlink target kept by copy-up"
        );
        assert_eq!(
            lstat(t, &e.p("link")).uid(),
            7,
            "{t}: lchown applied to the link"
        );
        let new_ino = lstat(t, &e.p("d/sub/new")).ino();
        e.remount();
        check(&e, "after remount");
        assert_eq!(
            lstat(t, &e.p("d/sub/new")).ino(),
            new_ino,
            "{t}: new file after remount"
        );
        assert_eq!(read(t, &e.p("d/write_me")), b"wW", "{t}");
    }
}

#[test]
fn fd_opened_before_copy_up_keeps_ino_and_sees_new_data() {
    if !common::can_mount("fd_opened_before_copy_up_keeps_ino_and_sees_new_data") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("f", b"old data")]], &[]);
        let ro = std::fs::File::open(e.p("f")).expect("open read-only");
        let ino = ro.metadata().expect("fstat").ino();
        let mut buf = [0u8; 8];
        ro.read_exact_at(&mut buf, 0).expect("read before");
        assert_eq!(&buf, b"old data", "{t}");
        // Opened before the copy-up too, but first read after it.
        let unread = std::fs::File::open(e.p("f")).expect("open read-only, unread");
        std::fs::OpenOptions::new()
            .write(true)
            .open(e.p("f"))
            .and_then(|f| f.write_all_at(b"NEW", 0))
            .expect("write through another fd");
        assert!(e.upper("f").is_file(), "{t}: the write copied f up");
        let st = ro.metadata().expect("fstat after copy-up");
        assert_eq!(st.ino(), ino, "{t}: fstat ino of the old fd");
        assert_eq!(lstat(t, &e.p("f")).ino(), ino, "{t}: stat ino by path");
        assert_eq!(st.len(), 8, "{t}: fstat size");
        // Kernel overlayfs reopens the upper file under a read-only fd once copy-up happened.
        unread.read_exact_at(&mut buf, 0).expect("first read after");
        assert_eq!(
            &buf, b"NEW data",
            "{t}: unread old fd reads the copied-up data"
        );
        ro.read_exact_at(&mut buf, 0).expect("read after");
        assert_eq!(&buf, b"NEW data", "{t}: old fd reads the copied-up data");
    }
}

#[test]
fn hardlinked_lower_file_stays_one_inode_after_copy_up() {
    if !common::can_mount("hardlinked_lower_file_stays_one_inode_after_copy_up") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[&[File("a", b"shared"), Link("d/b", "a"), File("other", b"o")]],
            &[],
        );
        let (a, b) = (lstat(t, &e.p("a")), lstat(t, &e.p("d/b")));
        assert_eq!(a.ino(), b.ino(), "{t}: two names, one inode");
        assert_eq!((a.nlink(), b.nlink()), (2, 2), "{t}: nlink before");
        std::fs::OpenOptions::new()
            .write(true)
            .open(e.p("d/b"))
            .and_then(|f| f.write_all_at(b"SH", 0))
            .expect("write through d/b");
        let check = |e: &Env, when: &str| {
            assert_eq!(
                read(t, &e.p("a")),
                b"SHared",
                "{t}: {when}: a sees the write"
            );
            assert_eq!(read(t, &e.p("d/b")), b"SHared", "{t}: {when}: d/b");
            let (a2, b2) = (lstat(t, &e.p("a")), lstat(t, &e.p("d/b")));
            assert_eq!(a2.ino(), a.ino(), "{t}: {when}: ino of a");
            assert_eq!(b2.ino(), a.ino(), "{t}: {when}: ino of d/b");
            assert_eq!((a2.nlink(), b2.nlink()), (2, 2), "{t}: {when}: nlink");
        };
        check(&e, "after write");
        e.remount();
        check(&e, "after remount");
        // chmod through one name shows on the other.
        std::fs::set_permissions(
            e.p("a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod a");
        assert_eq!(
            lstat(t, &e.p("d/b")).mode() & 0o7777,
            0o600,
            "{t}: mode shared"
        );
        std::fs::remove_file(e.p("d/b")).expect("unlink d/b");
        let a3 = lstat(t, &e.p("a"));
        assert_eq!(a3.nlink(), 1, "{t}: nlink after unlinking one name");
        assert_eq!(a3.ino(), a.ino(), "{t}: ino after unlink");
        assert_eq!(read(t, &e.p("a")), b"SHared", "{t}");
        assert_eq!(names(t, &e.p("d")), Vec::<String>::new(), "{t}");
        assert_eq!(read(t, &e.lower(0, "a")), b"shared", "{t}: lower");
        assert_eq!(
            lstat(t, &e.lower(0, "a")).nlink(),
            2,
            "{t}: lower links intact"
        );
    }
}

#[test]
fn hardlinked_lower_file_unlink_before_copy_up() {
    if !common::can_mount("hardlinked_lower_file_unlink_before_copy_up") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("a", b"x"), Link("b", "a")]], &[]);
        std::fs::remove_file(e.p("b")).expect("unlink b");
        let a = lstat(t, &e.p("a"));
        assert_eq!(a.nlink(), 1, "{t}: nlink of the remaining name");
        assert_eq!(read(t, &e.p("a")), b"x", "{t}");
    }
}

/// A hard-linked lower file copied up through one name, that name looked up last and then
/// removed: a file opened through the other name still has its attributes and can be changed
/// (the node kept its lower object; it answered ENOENT to fstat and fchmod before).
#[test]
fn hardlink_open_through_other_name_after_copied_up_name_is_removed() {
    use std::os::unix::fs::PermissionsExt;
    if !common::can_mount("hardlink_open_through_other_name_after_copied_up_name_is_removed") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("a", b"shared"), Link("b", "a")]], &[]);
        std::fs::OpenOptions::new()
            .append(true)
            .open(e.p("a"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
            .expect("append through a");
        lstat(t, &e.p("b"));
        let f = std::fs::File::open(e.p("b")).expect("open b");
        // The last lookup goes through the copied-up name.
        assert_eq!(lstat(t, &e.p("a")).nlink(), 2, "{t}: nlink of a");
        std::fs::remove_file(e.p("a")).expect("unlink a");
        let m = f
            .metadata()
            .unwrap_or_else(|err| panic!("{t}: fstat b: {err}"));
        assert_eq!((m.nlink(), m.len()), (1, 7), "{t}: fstat b");
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|err| panic!("{t}: fchmod b: {err}"));
        let b = lstat(t, &e.p("b"));
        assert_eq!((b.mode() & 0o7777, b.nlink()), (0o600, 1), "{t}: stat b");
        assert_eq!(read(t, &e.p("b")), b"shared+", "{t}: data of b");
        assert_eq!(names(t, &e.p("")), ["b"], "{t}");
    }
}

/// An open hard-linked file whose names are removed one by one reports the names left in the
/// merged view, not the links its copy has in the upper (the index entry and upper names:
/// it reported one too many).
#[test]
fn open_hardlink_reports_merged_names_left_after_unlinks() {
    use std::os::unix::fs::PermissionsExt;
    if !common::can_mount("open_hardlink_reports_merged_names_left_after_unlinks") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[&[File("a", b"x"), Link("b", "a"), Link("c", "a")]],
            &[],
        );
        // b is copied up (linked to the index); a and c stay lower names of it.
        std::fs::set_permissions(e.p("b"), std::fs::Permissions::from_mode(0o640))
            .expect("chmod b");
        e.remount();
        let f = std::fs::File::open(e.p("b")).expect("open b");
        let nlink = |when: &str| {
            f.metadata()
                .unwrap_or_else(|err| panic!("{t}: fstat {when}: {err}"))
                .nlink()
        };
        assert_eq!(nlink("at first"), 3, "{t}");
        std::fs::remove_file(e.p("b")).expect("unlink b");
        assert_eq!(nlink("after unlinking b"), 2, "{t}");
        std::fs::remove_file(e.p("c")).expect("unlink c");
        assert_eq!(nlink("after unlinking c"), 1, "{t}");
        std::fs::remove_file(e.p("a")).expect("unlink a");
        assert_eq!(nlink("after unlinking a"), 0, "{t}");
        assert_eq!(
            names(t, &e.p("")),
            Vec::<String>::new(),
            "{t}: no names left"
        );
    }
}
