//! The merged view: lookup, getattr and readdir over upper and lowers, whiteouts and opaque
//! directories of both formats, and the inode numbers readdir reports.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use crate::common;
use crate::harness::{assert_errno, assert_no_markers, lstat, names, read, targets, Env, Node};
use Node::*;

#[test]
fn readdir_merges_upper_over_lowers() {
    if !common::can_mount("readdir_merges_upper_over_lowers") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[File("a", b"lower0"), File("c", b"c0"), File("d/x", b"x0")],
                &[
                    File("a", b"lower1"),
                    File("b", b"b1"),
                    File("d/y", b"y1"),
                    File("d/x", b"x1"),
                ],
            ],
            &[File("a", b"upper"), File("u", b"u"), File("d/z", b"z")],
        );
        assert_eq!(names(t, &e.p("")), ["a", "b", "c", "d", "u"], "{t}: root");
        assert_eq!(names(t, &e.p("d")), ["x", "y", "z"], "{t}: merged d");
        assert_eq!(read(t, &e.p("a")), b"upper", "{t}: upper wins");
        assert_eq!(read(t, &e.p("b")), b"b1", "{t}: lower1 only");
        assert_eq!(read(t, &e.p("c")), b"c0", "{t}: lower0 only");
        assert_eq!(read(t, &e.p("d/x")), b"x0", "{t}: top-most lower wins");
        assert_eq!(read(t, &e.p("d/y")), b"y1", "{t}: d/y");
        assert_eq!(lstat(t, &e.p("b")).len(), 2, "{t}: size of b");
        assert!(lstat(t, &e.p("d")).is_dir(), "{t}: d is a dir");
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn whiteouts_hide_lower_names_in_any_layer() {
    if !common::can_mount("whiteouts_hide_lower_names_in_any_layer") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                // lower0: hides y (from lower2), brings back x (hidden in lower1).
                &[Whiteout("y"), File("x", b"x0"), Whiteout("dir/f")],
                // lower1: hides x, the whole of z, and one entry of dir.
                &[
                    Whiteout("x"),
                    Whiteout("z"),
                    Whiteout("dir/g"),
                    File("k", b"k1"),
                ],
                &[
                    File("x", b"x2"),
                    File("y", b"y2"),
                    File("z/inner", b"i"),
                    File("dir/f", b"f"),
                    File("dir/g", b"g"),
                    File("dir/h", b"h"),
                    File("w", b"w2"),
                ],
            ],
            &[],
        );
        assert_eq!(names(t, &e.p("")), ["dir", "k", "w", "x"], "{t}: root");
        assert_eq!(names(t, &e.p("dir")), ["h"], "{t}: dir");
        assert_eq!(
            read(t, &e.p("x")),
            b"x0",
            "{t}: x re-created above its whiteout"
        );
        for gone in ["y", "z", "z/inner", "dir/f", "dir/g"] {
            assert_errno(
                t,
                &format!("lstat {gone}"),
                std::fs::symlink_metadata(e.p(gone)),
                libc::ENOENT,
            );
        }
        for marker in [".wh.y", ".wh.x", ".wh.z", "dir/.wh.f", ".wh..wh..opq"] {
            assert_errno(
                t,
                &format!("lstat marker {marker}"),
                std::fs::symlink_metadata(e.p(marker)),
                libc::ENOENT,
            );
        }
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn whiteout_in_upper_hides_lower_names() {
    if !common::can_mount("whiteout_in_upper_hides_lower_names") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[&[File("a", b"a"), File("b", b"b"), File("d/c", b"c")]],
            &[Whiteout("a"), Whiteout("d/c")],
        );
        assert_eq!(names(t, &e.p("")), ["b", "d"], "{t}: root");
        assert_eq!(names(t, &e.p("d")), Vec::<String>::new(), "{t}: d");
        assert_errno(
            t,
            "lstat a",
            std::fs::symlink_metadata(e.p("a")),
            libc::ENOENT,
        );
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn opaque_dir_hides_everything_below() {
    if !common::can_mount("opaque_dir_hides_everything_below") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[Opaque("d"), File("d/top", b"t"), File("e/mid", b"m")],
                &[
                    File("d/a", b"a"),
                    File("d/sub/b", b"b"),
                    Opaque("e"),
                    File("e/mid1", b"m1"),
                ],
                &[File("e/deep", b"x"), File("d/deep", b"x")],
            ],
            &[],
        );
        assert_eq!(names(t, &e.p("d")), ["top"], "{t}: opaque d in lower0");
        // e is opaque in lower1: lower0 and lower1 merge, lower2 is hidden.
        assert_eq!(
            names(t, &e.p("e")),
            ["mid", "mid1"],
            "{t}: opaque e in lower1"
        );
        for gone in ["d/a", "d/sub", "d/deep", "e/deep", "d/.wh..wh..opq"] {
            assert_errno(
                t,
                &format!("lstat {gone}"),
                std::fs::symlink_metadata(e.p(gone)),
                libc::ENOENT,
            );
        }
        assert_no_markers(t, &e.p(""));
    }
}

#[test]
fn readdir_d_ino_nonzero_and_equals_st_ino() {
    if !common::can_mount("readdir_d_ino_nonzero_and_equals_st_ino") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[File("d/a", b"a"), Symlink("d/l", "a"), Whiteout("d/w")],
                &[File("d/b", b"b"), Dir("d/sub"), File("d/w", b"w")],
            ],
            &[],
        );
        // Created through the mount, so d is copied up the way the filesystem does it. (A
        // hand-made upper `d` without an origin xattr would make kernel overlayfs report the
        // upper inode in d_ino but the lower one in st_ino.)
        std::fs::write(e.p("d/u"), b"u").expect("create d/u");
        for dir in ["", "d"] {
            let path = e.p(dir);
            let dir_ino = lstat(t, &path).ino();
            let mut d = nix::dir::Dir::open(
                &path,
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap_or_else(|err| panic!("{t}: opendir {path:?}: {err}"));
            let mut seen = Vec::new();
            for ent in d.iter() {
                let ent = ent.unwrap_or_else(|err| panic!("{t}: readdir {path:?}: {err}"));
                let name = std::ffi::OsStr::from_bytes(ent.file_name().to_bytes()).to_owned();
                assert_ne!(ent.ino(), 0, "{t}: d_ino of {name:?} in {path:?} is 0");
                if name == ".." {
                    continue;
                }
                let want = if name == "." {
                    dir_ino
                } else {
                    lstat(t, &path.join(&name)).ino()
                };
                assert_eq!(
                    ent.ino(),
                    want,
                    "{t}: d_ino vs st_ino of {name:?} in {dir:?}"
                );
                seen.push(name.to_string_lossy().into_owned());
            }
            seen.sort();
            if dir == "d" {
                assert_eq!(seen, [".", "a", "b", "l", "sub", "u"], "{t}: entries of d");
            }
        }
    }
}

#[test]
fn lookup_ino_stable_across_repeated_lookups() {
    if !common::can_mount("lookup_ino_stable_across_repeated_lookups") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[&[File("d/a", b"a")], &[File("d/b", b"b"), Dir("e")]],
            &[],
        );
        for rel in ["d", "d/a", "d/b", "e"] {
            let first = lstat(t, &e.p(rel));
            let again = lstat(t, &e.p(&format!("./{rel}")));
            let third = lstat(t, &e.p(rel));
            assert_eq!(first.ino(), third.ino(), "{t}: ino of {rel} changed");
            assert_eq!(first.ino(), again.ino(), "{t}: ino of {rel} via ./");
            assert_eq!(first.dev(), third.dev(), "{t}: dev of {rel} changed");
        }
        let a = lstat(t, &e.p("d/a")).ino();
        let b = lstat(t, &e.p("d/b")).ino();
        let d = lstat(t, &e.p("d")).ino();
        assert!(
            a != b && a != d && b != d,
            "{t}: distinct files share an ino"
        );
    }
}
