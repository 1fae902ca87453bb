//! Names: create, mkdir, mknod, symlink, link, unlink, rmdir and rename over lower entries,
//! including what each leaves in the upper layer (a whiteout only where a lower entry exists).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use nix::sys::stat::Mode;

use crate::common;
use crate::harness::{
    assert_errno, assert_nix_errno, assert_no_markers, is_char_whiteout, lstat, names, read,
    targets, Env, Kind, Node, Target,
};
use Node::*;

fn upper_names(t: Target, e: &Env, rel: &str) -> Vec<String> {
    names(t, &e.upper(rel))
}

fn assert_gone(t: Target, e: &Env, rel: &str) {
    assert_errno(
        t,
        &format!("lstat {rel}"),
        std::fs::symlink_metadata(e.p(rel)),
        libc::ENOENT,
    );
}

#[test]
fn create_file_in_lower_dir() {
    if !common::can_mount("create_file_in_lower_dir") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/a", b"a")], &[File("d/b", b"b")]], &[]);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(e.p("d/new"))
            .unwrap_or_else(|err| panic!("{t}: create: {err}"));
        f.write_all(b"fresh").expect("write");
        drop(f);
        assert_eq!(names(t, &e.p("d")), ["a", "b", "new"], "{t}");
        assert_eq!(read(t, &e.p("d/new")), b"fresh", "{t}");
        assert_eq!(read(t, &e.upper("d/new")), b"fresh", "{t}: upper");
        assert!(!e.lower(0, "d/new").exists(), "{t}: written into a lower");
        assert!(lstat(t, &e.p("d/new")).is_file(), "{t}");
    }
}

#[test]
fn mkdir_in_lower_dir_and_nested() {
    if !common::can_mount("mkdir_in_lower_dir_and_nested") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/a", b"a")]], &[]);
        std::fs::create_dir(e.p("d/sub")).unwrap_or_else(|err| panic!("{t}: mkdir: {err}"));
        std::fs::create_dir(e.p("d/sub/deeper")).expect("mkdir nested");
        std::fs::write(e.p("d/sub/deeper/f"), b"x").expect("write nested");
        assert_eq!(names(t, &e.p("d")), ["a", "sub"], "{t}");
        assert_eq!(names(t, &e.p("d/sub")), ["deeper"], "{t}");
        assert!(lstat(t, &e.p("d/sub")).is_dir(), "{t}");
        assert_errno(
            t,
            "mkdir existing",
            std::fs::create_dir(e.p("d/a")),
            libc::EEXIST,
        );
        assert_errno(
            t,
            "mkdir lower dir",
            std::fs::create_dir(e.p("d")),
            libc::EEXIST,
        );
        assert!(e.upper("d/sub/deeper/f").is_file(), "{t}: upper");
    }
}

#[test]
fn mkdir_over_whiteout_is_empty() {
    if !common::can_mount("mkdir_over_whiteout_is_empty") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[&[Whiteout("z")], &[File("z/inner", b"i"), Dir("z/sub")]],
            &[],
        );
        assert_gone(t, &e, "z");
        std::fs::create_dir(e.p("z")).unwrap_or_else(|err| panic!("{t}: mkdir: {err}"));
        assert_eq!(
            names(t, &e.p("z")),
            Vec::<String>::new(),
            "{t}: new z is empty"
        );
        assert_gone(t, &e, "z/inner");
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn rmdir_then_mkdir_lower_dir_is_empty() {
    if !common::can_mount("rmdir_then_mkdir_lower_dir_is_empty") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(t, &[&[File("d/a", b"a")]], &[]);
        std::fs::remove_file(e.p("d/a")).expect("unlink d/a");
        std::fs::remove_dir(e.p("d")).unwrap_or_else(|err| panic!("{t}: rmdir: {err}"));
        std::fs::create_dir(e.p("d")).unwrap_or_else(|err| panic!("{t}: mkdir: {err}"));
        assert_eq!(
            names(t, &e.p("d")),
            Vec::<String>::new(),
            "{t}: recreated d"
        );
        e.remount();
        assert_eq!(
            names(t, &e.p("d")),
            Vec::<String>::new(),
            "{t}: after remount"
        );
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn mknod_fifo_in_lower_dir() {
    if !common::can_mount("mknod_fifo_in_lower_dir") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/a", b"a")]], &[]);
        nix::unistd::mkfifo(&e.p("d/fifo"), Mode::from_bits_truncate(0o640))
            .unwrap_or_else(|err| panic!("{t}: mkfifo: {err}"));
        let m = lstat(t, &e.p("d/fifo"));
        assert!(m.file_type().is_fifo(), "{t}: type {:?}", m.file_type());
        assert_eq!(m.mode() & 0o7777, 0o640 & !umask(), "{t}: mode");
        assert!(
            lstat(t, &e.upper("d/fifo")).file_type().is_fifo(),
            "{t}: upper"
        );
        assert_eq!(names(t, &e.p("d")), ["a", "fifo"], "{t}");
    }
}

fn umask() -> u32 {
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits()
}

#[test]
fn symlink_and_readlink() {
    if !common::can_mount("symlink_and_readlink") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[&[File("d/target", b"T"), Symlink("d/lowlink", "target")]],
            &[],
        );
        let rl = |rel: &str| {
            std::fs::read_link(e.p(rel)).unwrap_or_else(|err| panic!("{t}: readlink {rel}: {err}"))
        };
        assert_eq!(rl("d/lowlink"), std::path::Path::new("target"), "{t}");
        assert!(lstat(t, &e.p("d/lowlink")).file_type().is_symlink(), "{t}");
        assert_eq!(read(t, &e.p("d/lowlink")), b"T", "{t}: follow lower link");
        std::os::unix::fs::symlink("../d/target", e.p("d/newlink"))
            .unwrap_or_else(|err| panic!("{t}: symlink: {err}"));
        assert_eq!(rl("d/newlink"), std::path::Path::new("../d/target"), "{t}");
        assert_eq!(
            lstat(t, &e.p("d/newlink")).len(),
            "../d/target".len() as u64,
            "{t}: symlink size"
        );
        assert_eq!(read(t, &e.p("d/newlink")), b"T", "{t}: follow new link");
        assert_errno(
            t,
            "symlink over existing",
            std::os::unix::fs::symlink("x", e.p("d/lowlink")),
            libc::EEXIST,
        );
        assert_errno(
            t,
            "readlink of a file",
            std::fs::read_link(e.p("d/target")),
            libc::EINVAL,
        );
    }
}

#[test]
fn link_lower_file_shares_inode() {
    if !common::can_mount("link_lower_file_shares_inode") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/a", b"orig")]], &[]);
        let ino = lstat(t, &e.p("d/a")).ino();
        std::fs::hard_link(e.p("d/a"), e.p("d/b")).unwrap_or_else(|err| panic!("{t}: link: {err}"));
        let (a, b) = (lstat(t, &e.p("d/a")), lstat(t, &e.p("d/b")));
        assert_eq!(a.ino(), b.ino(), "{t}: names of one inode");
        assert_eq!(a.ino(), ino, "{t}: ino kept across link copy-up");
        assert_eq!((a.nlink(), b.nlink()), (2, 2), "{t}: nlink");
        std::fs::write(e.p("d/b"), b"changed").expect("write through b");
        assert_eq!(read(t, &e.p("d/a")), b"changed", "{t}: seen through a");
        assert_eq!(read(t, &e.lower(0, "d/a")), b"orig", "{t}: lower");
        assert_errno(
            t,
            "link over existing",
            std::fs::hard_link(e.p("d/a"), e.p("d/b")),
            libc::EEXIST,
        );
    }
}

#[test]
fn unlink_lower_file_leaves_whiteout_in_upper() {
    if !common::can_mount("unlink_lower_file_leaves_whiteout_in_upper") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[File("d/a", b"a"), File("d/keep", b"k")],
                &[File("top", b"t")],
            ],
            &[],
        );
        std::fs::remove_file(e.p("d/a")).unwrap_or_else(|err| panic!("{t}: unlink: {err}"));
        std::fs::remove_file(e.p("top")).unwrap_or_else(|err| panic!("{t}: unlink top: {err}"));
        assert_gone(t, &e, "d/a");
        assert_gone(t, &e, "top");
        assert_eq!(names(t, &e.p("d")), ["keep"], "{t}");
        assert!(
            is_char_whiteout(&e.upper("d/a")),
            "{t}: upper d/a not a whiteout"
        );
        assert!(
            is_char_whiteout(&e.upper("top")),
            "{t}: upper top not a whiteout"
        );
        assert_eq!(
            upper_names(t, &e, "d"),
            ["a"],
            "{t}: upper d holds only the whiteout"
        );
        assert_eq!(read(t, &e.lower(0, "d/a")), b"a", "{t}: lower");
        e.remount();
        assert_gone(t, &e, "d/a");
        assert_eq!(names(t, &e.p("")), ["d"], "{t}: after remount");
        assert_errno(
            t,
            "unlink again",
            std::fs::remove_file(e.p("d/a")),
            libc::ENOENT,
        );
    }
}

#[test]
fn unlink_upper_only_file_leaves_no_whiteout() {
    if !common::can_mount("unlink_upper_only_file_leaves_no_whiteout") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/a", b"a")]], &[File("old", b"o")]);
        std::fs::write(e.p("d/new"), b"n").expect("create d/new");
        std::fs::create_dir(e.p("fresh")).expect("mkdir fresh");
        std::fs::write(e.p("fresh/f"), b"f").expect("create fresh/f");
        for rel in ["d/new", "fresh/f", "old"] {
            std::fs::remove_file(e.p(rel)).unwrap_or_else(|err| panic!("{t}: unlink {rel}: {err}"));
            assert_gone(t, &e, rel);
            assert!(
                std::fs::symlink_metadata(e.upper(rel)).is_err(),
                "{t}: upper still has an entry for upper-only {rel}"
            );
        }
        std::fs::remove_dir(e.p("fresh")).unwrap_or_else(|err| panic!("{t}: rmdir: {err}"));
        assert!(
            std::fs::symlink_metadata(e.upper("fresh")).is_err(),
            "{t}: upper still has an entry for upper-only dir"
        );
        assert_eq!(names(t, &e.p("")), ["d"], "{t}");
        assert_eq!(names(t, &e.p("d")), ["a"], "{t}");
    }
}

/// A directory only the upper holds is removed by the upper's own rmdir; one that holds
/// nothing but markers (an upper written by docker's aufs driver) looks empty and is removed
/// too, and one with a real entry is not. Kernel overlayfs shows such markers as entries, so
/// this runs on unionfs only.
#[test]
fn rmdir_upper_only_dir_holding_only_markers() {
    if !common::can_mount("rmdir_upper_only_dir_holding_only_markers") {
        return;
    }
    for t in targets().into_iter().filter(|t| t.kind == Kind::Unionfs) {
        let mut e = Env::build(
            t,
            &[&[File("l", b"l")]],
            &[Dir("marked"), File("full/f", b"f")],
        );
        std::fs::write(e.upper("marked/.wh.gone"), b"").expect("marker in the upper");
        e.mount();
        assert_eq!(names(t, &e.p("marked")), Vec::<String>::new(), "{t}");
        assert_errno(
            t,
            "rmdir full",
            std::fs::remove_dir(e.p("full")),
            libc::ENOTEMPTY,
        );
        std::fs::remove_dir(e.p("marked")).unwrap_or_else(|err| panic!("{t}: rmdir: {err}"));
        assert!(
            std::fs::symlink_metadata(e.upper("marked")).is_err(),
            "{t}: upper still has the removed directory"
        );
        assert_eq!(names(t, &e.p("")), ["full", "l"], "{t}");
        e.remount();
        assert_eq!(names(t, &e.p("")), ["full", "l"], "{t}: after remount");
    }
}

/// A removed directory still held open (a descriptor, a working directory) answers fstat and
/// stat("."): a directory only the upper held as deleted (no links), a merged one as before
/// (it answered ENOENT, as nothing is left to read its attributes from).
#[test]
fn removed_directory_held_open_still_has_attributes() {
    if !common::can_mount("removed_directory_held_open_still_has_attributes") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("low/f", b"f")]], &[]);
        std::fs::create_dir(e.p("new")).expect("mkdir");
        let new = std::fs::File::open(e.p("new")).expect("open new");
        let low = std::fs::File::open(e.p("low")).expect("open low");
        std::fs::remove_dir(e.p("new")).expect("rmdir new");
        std::fs::remove_file(e.p("low/f")).expect("unlink low/f");
        std::fs::remove_dir(e.p("low")).expect("rmdir low");
        for (what, f, nlink) in [("upper-only", &new, 0), ("merged", &low, 1)] {
            let m = f
                .metadata()
                .unwrap_or_else(|err| panic!("{t}: fstat of removed {what} dir: {err}"));
            assert!(m.is_dir(), "{t}: {what}: a directory");
            assert_eq!(m.nlink(), nlink, "{t}: {what}: nlink");
            let fd = std::os::fd::AsRawFd::as_raw_fd(f);
            let dot = std::fs::metadata(format!("/proc/self/fd/{fd}/."))
                .unwrap_or_else(|err| panic!("{t}: stat . of removed {what} dir: {err}"));
            assert_eq!(dot.ino(), m.ino(), "{t}: {what}: same inode through .");
        }
        // Changed through its descriptor: only what is kept of it changes.
        new.set_permissions(std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|err| panic!("{t}: fchmod of removed dir: {err}"));
        let m = new.metadata().expect("fstat after fchmod");
        assert_eq!(m.mode() & 0o7777, 0o700, "{t}: mode after fchmod");
        // Replaced by a rename: the same.
        std::fs::create_dir(e.p("from")).expect("mkdir from");
        std::fs::create_dir(e.p("to")).expect("mkdir to");
        let to = std::fs::File::open(e.p("to")).expect("open to");
        std::fs::rename(e.p("from"), e.p("to")).expect("rename over to");
        let m = to
            .metadata()
            .unwrap_or_else(|err| panic!("{t}: fstat of renamed-over dir: {err}"));
        assert!(m.is_dir() && m.nlink() == 0, "{t}: renamed-over dir");
        assert_eq!(names(t, &e.p("")), ["to"], "{t}");
    }
}

#[test]
fn rmdir_lower_dir_leaves_whiteout_in_upper() {
    if !common::can_mount("rmdir_lower_dir_leaves_whiteout_in_upper") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(t, &[&[Dir("p/empty")], &[Dir("p/also")]], &[]);
        std::fs::remove_dir(e.p("p/empty")).unwrap_or_else(|err| panic!("{t}: rmdir: {err}"));
        std::fs::remove_dir(e.p("p/also")).unwrap_or_else(|err| panic!("{t}: rmdir 2: {err}"));
        assert_eq!(names(t, &e.p("p")), Vec::<String>::new(), "{t}");
        assert!(is_char_whiteout(&e.upper("p/empty")), "{t}: upper p/empty");
        assert!(is_char_whiteout(&e.upper("p/also")), "{t}: upper p/also");
        e.remount();
        assert_gone(t, &e, "p/empty");
        assert_gone(t, &e, "p/also");
    }
}

#[test]
fn rmdir_merged_dir_with_all_lower_entries_whited_out() {
    if !common::can_mount("rmdir_merged_dir_with_all_lower_entries_whited_out") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                // d: its only lower entry is hidden by a whiteout in the layer above.
                &[Whiteout("d/a"), Dir("e")],
                &[File("d/a", b"a"), File("e/b", b"b"), File("e/c", b"c")],
            ],
            &[],
        );
        assert_eq!(
            names(t, &e.p("d")),
            Vec::<String>::new(),
            "{t}: d looks empty"
        );
        std::fs::remove_dir(e.p("d")).unwrap_or_else(|err| panic!("{t}: rmdir d: {err}"));
        // e: emptied through the mount, leaving upper whiteouts inside.
        std::fs::remove_file(e.p("e/b")).expect("unlink e/b");
        std::fs::remove_file(e.p("e/c")).expect("unlink e/c");
        std::fs::remove_dir(e.p("e")).unwrap_or_else(|err| panic!("{t}: rmdir e: {err}"));
        assert_eq!(names(t, &e.p("")), Vec::<String>::new(), "{t}: root");
        assert!(is_char_whiteout(&e.upper("d")), "{t}: upper d");
        assert!(is_char_whiteout(&e.upper("e")), "{t}: upper e");
        e.remount();
        assert_eq!(
            names(t, &e.p("")),
            Vec::<String>::new(),
            "{t}: after remount"
        );
    }
}

#[test]
fn rmdir_nonempty_merged_dir_enotempty() {
    if !common::can_mount("rmdir_nonempty_merged_dir_enotempty") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[Dir("m"), Whiteout("m/x")],
                &[File("m/x", b"x"), File("m/y", b"y"), File("l/z", b"z")],
            ],
            &[Dir("m")],
        );
        assert_errno(t, "rmdir m", std::fs::remove_dir(e.p("m")), libc::ENOTEMPTY);
        assert_errno(t, "rmdir l", std::fs::remove_dir(e.p("l")), libc::ENOTEMPTY);
        std::fs::create_dir(e.p("n")).expect("mkdir n");
        std::fs::write(e.p("n/f"), b"f").expect("write n/f");
        assert_errno(t, "rmdir n", std::fs::remove_dir(e.p("n")), libc::ENOTEMPTY);
        assert_eq!(names(t, &e.p("m")), ["y"], "{t}");
        assert_eq!(names(t, &e.p("l")), ["z"], "{t}");
        assert_errno(
            t,
            "rmdir a file",
            std::fs::remove_dir(e.p("m/y")),
            libc::ENOTDIR,
        );
        assert_errno(
            t,
            "unlink a dir",
            std::fs::remove_file(e.p("l")),
            libc::EISDIR,
        );
    }
}

/// A large directory (whose emptiness unionfs lists before taking its namespace lock) is
/// removed only once every entry is gone, however it went.
#[test]
fn rmdir_large_lower_dir_only_once_empty() {
    if !common::can_mount("rmdir_large_lower_dir_only_once_empty") {
        return;
    }
    let files: Vec<String> = (0..1000).map(|i| format!("big/f{i:04}")).collect();
    let layer: Vec<Node> = files.iter().map(|f| File(f, b"x")).collect();
    for t in targets() {
        let mut e = Env::new(t, &[&layer], &[]);
        assert_errno(
            t,
            "rmdir big",
            std::fs::remove_dir(e.p("big")),
            libc::ENOTEMPTY,
        );
        for f in &files[1..] {
            std::fs::remove_file(e.p(f)).unwrap_or_else(|err| panic!("{t}: unlink {f}: {err}"));
        }
        let one_left = std::fs::remove_dir(e.p("big"));
        assert_errno(t, "rmdir big, one left", one_left, libc::ENOTEMPTY);
        std::fs::remove_file(e.p(&files[0])).expect("unlink the last");
        std::fs::write(e.p("big/new"), b"n").expect("create in big");
        let new_one = std::fs::remove_dir(e.p("big"));
        assert_errno(t, "rmdir big, a new name", new_one, libc::ENOTEMPTY);
        std::fs::remove_file(e.p("big/new")).expect("unlink big/new");
        std::fs::remove_dir(e.p("big")).unwrap_or_else(|err| panic!("{t}: rmdir: {err}"));
        assert!(is_char_whiteout(&e.upper("big")), "{t}: upper big");
        e.remount();
        assert_gone(t, &e, "big");
    }
}

#[test]
fn rename_lower_file_replaces_and_whites_out_old_name() {
    if !common::can_mount("rename_lower_file_replaces_and_whites_out_old_name") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[File("a", b"A"), File("d/c", b"C")],
                &[File("b", b"B"), Dir("o")],
            ],
            &[],
        );
        let ino_a = lstat(t, &e.p("a")).ino();
        std::fs::rename(e.p("a"), e.p("o/a2")).unwrap_or_else(|err| panic!("{t}: rename: {err}"));
        std::fs::rename(e.p("d/c"), e.p("b")).unwrap_or_else(|err| panic!("{t}: replace: {err}"));
        let check = |e: &Env, when: &str| {
            assert_eq!(read(t, &e.p("o/a2")), b"A", "{t}: {when}: moved");
            assert_eq!(read(t, &e.p("b")), b"C", "{t}: {when}: replaced");
            assert_gone(t, e, "a");
            assert_gone(t, e, "d/c");
            assert_eq!(names(t, &e.p("")), ["b", "d", "o"], "{t}: {when}: root");
            assert_eq!(names(t, &e.p("d")), Vec::<String>::new(), "{t}: {when}: d");
            assert_eq!(
                lstat(t, &e.p("o/a2")).ino(),
                ino_a,
                "{t}: {when}: ino follows"
            );
        };
        check(&e, "mounted");
        assert!(is_char_whiteout(&e.upper("a")), "{t}: upper a");
        assert!(is_char_whiteout(&e.upper("d/c")), "{t}: upper d/c");
        e.remount();
        check(&e, "after remount");
        assert_eq!(read(t, &e.lower(0, "a")), b"A", "{t}: lower a");
        assert_eq!(read(t, &e.lower(1, "b")), b"B", "{t}: lower b");
    }
}

#[test]
fn rename_lower_dir_no_exdev() {
    if !common::can_mount("rename_lower_dir_no_exdev") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[File("d/x", b"x"), File("d/sub/y", b"y"), Dir("p")],
                &[File("d/w", b"w"), Whiteout("d/gone")],
                &[File("d/gone", b"g")],
            ],
            &[],
        );
        let ino_d = lstat(t, &e.p("d")).ino();
        let ino_x = lstat(t, &e.p("d/x")).ino();
        std::fs::rename(e.p("d"), e.p("p/moved"))
            .unwrap_or_else(|err| panic!("{t}: rename lower dir: {err}"));
        std::fs::write(e.p("p/moved/new"), b"n").expect("create in renamed dir");
        let check = |e: &Env, when: &str| {
            assert_gone(t, e, "d");
            assert_eq!(names(t, &e.p("")), ["p"], "{t}: {when}: root");
            assert_eq!(
                names(t, &e.p("p/moved")),
                ["new", "sub", "w", "x"],
                "{t}: {when}: renamed dir keeps its lower entries"
            );
            assert_eq!(read(t, &e.p("p/moved/sub/y")), b"y", "{t}: {when}");
            assert_eq!(read(t, &e.p("p/moved/w")), b"w", "{t}: {when}");
            assert_gone(t, e, "p/moved/gone");
            assert_eq!(
                lstat(t, &e.p("p/moved")).ino(),
                ino_d,
                "{t}: {when}: dir ino"
            );
            assert_eq!(
                lstat(t, &e.p("p/moved/x")).ino(),
                ino_x,
                "{t}: {when}: x ino"
            );
            assert_no_markers(t, &e.p(""));
        };
        check(&e, "mounted");
        assert!(is_char_whiteout(&e.upper("d")), "{t}: upper d");
        e.remount();
        check(&e, "after remount");
        // The old name is free again and starts empty.
        std::fs::create_dir(e.p("d")).expect("mkdir old name");
        assert_eq!(names(t, &e.p("d")), Vec::<String>::new(), "{t}: new d");
        // And the renamed dir can move again.
        std::fs::rename(e.p("p/moved"), e.p("back"))
            .unwrap_or_else(|err| panic!("{t}: second rename: {err}"));
        assert_eq!(names(t, &e.p("back")), ["new", "sub", "w", "x"], "{t}");
        e.remount();
        assert_eq!(
            names(t, &e.p("back")),
            ["new", "sub", "w", "x"],
            "{t}: final"
        );
        assert_eq!(names(t, &e.p("")), ["back", "d", "p"], "{t}: final root");
    }
}

#[test]
fn rename_noreplace_existing_eexist() {
    if !common::can_mount("rename_noreplace_existing_eexist") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[File("a", b"A"), Whiteout("hidden")],
                &[File("b", b"B"), File("hidden", b"H")],
            ],
            &[],
        );
        let rn = |from: &str, to: &str| {
            renameat2(
                AT_FDCWD,
                &e.p(from),
                AT_FDCWD,
                &e.p(to),
                RenameFlags::RENAME_NOREPLACE,
            )
        };
        assert_nix_errno(t, "NOREPLACE onto lower b", rn("a", "b"), libc::EEXIST);
        assert_eq!(read(t, &e.p("a")), b"A", "{t}: a intact");
        assert_eq!(read(t, &e.p("b")), b"B", "{t}: b intact");
        rn("a", "hidden").unwrap_or_else(|err| panic!("{t}: NOREPLACE onto whiteout: {err}"));
        assert_eq!(read(t, &e.p("hidden")), b"A", "{t}");
        rn("hidden", "c").unwrap_or_else(|err| panic!("{t}: NOREPLACE onto free name: {err}"));
        assert_eq!(names(t, &e.p("")), ["b", "c"], "{t}");
    }
}

#[test]
fn rename_exchange_swaps_lower_and_upper_entries() {
    if !common::can_mount("rename_exchange_swaps_lower_and_upper_entries") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[&[File("a", b"A"), File("d/in_d", b"1")], &[File("b", b"B")]],
            &[],
        );
        std::fs::write(e.p("u"), b"U").expect("create u");
        std::fs::create_dir(e.p("nd")).expect("mkdir nd");
        let ex = |x: &str, y: &str| {
            renameat2(
                AT_FDCWD,
                &e.p(x),
                AT_FDCWD,
                &e.p(y),
                RenameFlags::RENAME_EXCHANGE,
            )
        };
        ex("a", "b").unwrap_or_else(|err| panic!("{t}: exchange two lower files: {err}"));
        ex("a", "u").unwrap_or_else(|err| panic!("{t}: exchange lower and upper: {err}"));
        ex("d", "nd").unwrap_or_else(|err| panic!("{t}: exchange dirs: {err}"));
        let check = |e: &Env, when: &str| {
            assert_eq!(read(t, &e.p("a")), b"U", "{t}: {when}: a");
            assert_eq!(read(t, &e.p("b")), b"A", "{t}: {when}: b");
            assert_eq!(read(t, &e.p("u")), b"B", "{t}: {when}: u");
            assert_eq!(names(t, &e.p("nd")), ["in_d"], "{t}: {when}: nd");
            assert_eq!(names(t, &e.p("d")), Vec::<String>::new(), "{t}: {when}: d");
        };
        check(&e, "mounted");
        assert_nix_errno(t, "exchange with missing", ex("a", "missing"), libc::ENOENT);
        e.remount();
        check(&e, "after remount");
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn rename_opaque_lower_dir_keeps_hiding_below() {
    if !common::can_mount("rename_opaque_lower_dir_keeps_hiding_below") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[Opaque("d"), File("d/top", b"t")],
                &[File("d/below", b"b")],
            ],
            &[],
        );
        std::fs::rename(e.p("d"), e.p("e")).unwrap_or_else(|err| panic!("{t}: rename: {err}"));
        assert_eq!(names(t, &e.p("e")), ["top"], "{t}: mounted");
        e.remount();
        assert_eq!(names(t, &e.p("e")), ["top"], "{t}: after remount");
        assert_eq!(names(t, &e.p("")), ["e"], "{t}: root");
        assert_no_markers(t, &e.p(""));
    }
}

/// A directory renamed onto a whited-out name must not merge with the hidden lower directory.
#[test]
fn rename_dir_over_whiteout() {
    if !common::can_mount("rename_dir_over_whiteout") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(
            t,
            &[
                &[Whiteout("x"), File("src/mine", b"m")],
                &[File("x/hidden", b"h")],
            ],
            &[],
        );
        std::fs::rename(e.p("src"), e.p("x")).unwrap_or_else(|err| panic!("{t}: rename: {err}"));
        assert_eq!(names(t, &e.p("x")), ["mine"], "{t}: mounted");
        assert_gone(t, &e, "x/hidden");
        e.remount();
        assert_eq!(names(t, &e.p("x")), ["mine"], "{t}: after remount");
        assert_eq!(names(t, &e.p("")), ["x"], "{t}: root");
        // The same through the mount: rmdir a lower dir, then rename another onto its name.
        std::fs::create_dir(e.p("y")).expect("mkdir y");
        std::fs::rename(e.p("x"), e.p("y2")).expect("rename x");
        std::fs::rename(e.p("y"), e.p("x")).expect("rename y onto the old name");
        assert_eq!(
            names(t, &e.p("x")),
            Vec::<String>::new(),
            "{t}: x is the empty y"
        );
        assert_eq!(names(t, &e.p("y2")), ["mine"], "{t}: y2");
    }
}

#[test]
fn unlink_then_recreate_lower_name() {
    if !common::can_mount("unlink_then_recreate_lower_name") {
        return;
    }
    for t in targets() {
        let mut e = Env::new(t, &[&[File("d/f", b"lower"), Dir("d/sub")]], &[]);
        std::fs::remove_file(e.p("d/f")).expect("unlink");
        std::fs::write(e.p("d/f"), b"again").unwrap_or_else(|err| panic!("{t}: recreate: {err}"));
        std::fs::remove_dir(e.p("d/sub")).expect("rmdir");
        std::fs::write(e.p("d/sub"), b"now a file").expect("file over a removed dir");
        e.remount();
        assert_eq!(read(t, &e.p("d/f")), b"again", "{t}");
        assert_eq!(read(t, &e.p("d/sub")), b"now a file", "{t}");
        assert_eq!(names(t, &e.p("d")), ["f", "sub"], "{t}");
        assert!(
            e.upper("d/f").is_file(),
            "{t}: whiteout replaced by the file"
        );
    }
}

#[test]
fn change_through_descriptor_of_renamed_over_lower_directory_is_refused() {
    if !common::can_mount("change_through_descriptor_of_renamed_over_lower_directory_is_refused") {
        return;
    }
    // Kernel overlayfs (6.18) is not the reference here: it copies the old directory up to
    // its old name, over the directory renamed there, whose contents then leave the merged
    // tree. The change has nowhere to go; unionfs refuses it and loses nothing.
    for t in targets().into_iter().filter(|t| t.kind == Kind::Unionfs) {
        let mut e = Env::new(t, &[&[Dir("e"), File("m/f", b"f")]], &[]);
        let old = std::fs::File::open(e.p("e")).expect("open e");
        std::fs::rename(e.p("m"), e.p("e")).expect("rename m over e");
        let r = old.set_permissions(std::fs::Permissions::from_mode(0o700));
        assert_errno(t, "fchmod of the replaced directory", r, libc::EROFS);
        let r = xattr::FileExt::set_xattr(&old, "user.k", b"v");
        assert_errno(t, "fsetxattr of the replaced directory", r, libc::EROFS);
        drop(old);
        e.remount();
        assert_eq!(
            names(t, &e.p("e")),
            ["f"],
            "{t}: the directory renamed there"
        );
        assert_eq!(read(t, &e.p("e/f")), b"f", "{t}");
        assert_eq!(lstat(t, &e.p("e")).mode() & 0o7777, 0o755, "{t}: its mode");
    }
}
