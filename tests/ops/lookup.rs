//! The merged view: lookup, getattr and readdir over upper and lowers, whiteouts and opaque
//! directories of both formats, and the inode numbers readdir reports.

use std::os::unix::ffi::OsStrExt;

use std::os::unix::fs::MetadataExt;

use crate::common;
use crate::harness::{
    assert_errno, assert_no_markers, lstat, names, read, targets, Env, Format, Node,
};
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
fn opaque_marker_on_a_layer_root() {
    if !common::can_mount("opaque_marker_on_a_layer_root") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[Opaque(""), File("top", b"t")],
                &[File("bottom", b"b"), File("d/x", b"x")],
            ],
            &[Opaque(""), File("up", b"u")],
        );
        // Kernel overlayfs ignores the opaque xattr on the root of a lower or the upper layer;
        // an OCI layer's `.wh..wh..opq` at its root replaces everything beneath it.
        let want: &[&str] = match t.format {
            Format::Overlay => &["bottom", "d", "top", "up"],
            Format::Aufs => &["top", "up"],
        };
        assert_eq!(names(t, &e.p("")), want, "{t}: root");
        if t.format == Format::Overlay {
            assert_eq!(
                read(t, &e.p("d/x")),
                b"x",
                "{t}: lower1 below an opaque root"
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
                seen.push(name.to_string_lossy().into_owned());
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
            }
            seen.sort();
            let want: &[&str] = if dir == "d" {
                &[".", "..", "a", "b", "l", "sub", "u"]
            } else {
                &[".", "..", "d"]
            };
            assert_eq!(seen, want, "{t}: entries of {dir:?}, with . and ..");
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

/// Kernel overlayfs cannot count the subdirectories of a merged directory, so it reports
/// nlink 1 (which find(1) and fts read as "unknown"); a directory from one layer keeps its own.
#[test]
fn merged_dir_reports_nlink_one() {
    if !common::can_mount("merged_dir_reports_nlink_one") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[&[Dir("d/s1")], &[Dir("d/s2"), Dir("d/s3"), Dir("low/s")]],
            &[],
        );
        assert_eq!(lstat(t, &e.p("")).nlink(), 1, "{t}: merged root");
        assert_eq!(lstat(t, &e.p("d")).nlink(), 1, "{t}: merged d");
        assert_eq!(lstat(t, &e.p("low")).nlink(), 3, "{t}: single-layer dir");
        assert_eq!(lstat(t, &e.p("d/s1")).nlink(), 2, "{t}: leaf dir");
    }
}

/// Enough entries that readdir needs several calls, with whiteouts among them: nothing twice,
/// nothing hidden shown, and telldir/seekdir resume where they left off.
#[test]
fn readdir_large_merged_dir_no_duplicates_and_seekdir() {
    if !common::can_mount("readdir_large_merged_dir_no_duplicates_and_seekdir") {
        return;
    }
    for t in targets() {
        let lower1: Vec<String> = (0..600)
            .map(|i| format!("big/entry-with-long-name-{i:04}"))
            .collect();
        let wh: Vec<String> = (0..600)
            .step_by(3)
            .map(|i| format!("big/entry-with-long-name-{i:04}"))
            .collect();
        let lower0: Vec<String> = (600..900)
            .map(|i| format!("big/entry-with-long-name-{i:04}"))
            .collect();
        let n1: Vec<Node> = lower1.iter().map(|p| File(p, b"1")).collect();
        let mut n0: Vec<Node> = lower0.iter().map(|p| File(p, b"0")).collect();
        n0.extend(wh.iter().map(|p| Whiteout(p)));
        let e = Env::new(t, &[&n0, &n1], &[]);
        for i in 900..1000 {
            std::fs::write(e.p(&format!("big/entry-with-long-name-{i:04}")), b"u").expect("create");
        }
        let mut want: Vec<String> = (0..1000)
            .filter(|i| *i >= 600 || i % 3 != 0)
            .map(|i| format!("entry-with-long-name-{i:04}"))
            .collect();
        want.sort();
        assert_eq!(names(t, &e.p("big")), want, "{t}: merged listing");
        let (first, rest, resumed) = read_with_seekdir(&e.p("big"), 250);
        assert_eq!(first.len(), 250, "{t}: first part");
        assert_eq!(
            rest, resumed,
            "{t}: seekdir(telldir()) resumes at the same entry"
        );
        let mut all: Vec<String> = first
            .into_iter()
            .chain(rest)
            .filter(|n| n != "." && n != "..")
            .collect();
        all.sort();
        assert_eq!(all, want, "{t}: entries read in two parts");
    }
}

/// Reads `n` entries, remembers telldir, reads the rest, seeks back and reads the rest again.
fn read_with_seekdir(dir: &std::path::Path, n: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: plain libc dirent calls on a stream we open and close here.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir {dir:?}");
        let next = |d: *mut libc::DIR| -> Option<String> {
            let ent = libc::readdir(d);
            if ent.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr());
            Some(name.to_string_lossy().into_owned())
        };
        let mut first = Vec::new();
        while first.len() < n {
            match next(d) {
                Some(s) if s == "." || s == ".." => {}
                Some(s) => first.push(s),
                None => break,
            }
        }
        let pos = libc::telldir(d);
        let mut rest = Vec::new();
        while let Some(s) = next(d) {
            rest.push(s);
        }
        libc::seekdir(d, pos);
        let mut resumed = Vec::new();
        while let Some(s) = next(d) {
            resumed.push(s);
        }
        libc::closedir(d);
        (first, rest, resumed)
    }
}

#[test]
fn dir_fd_opened_before_copy_up_sees_new_entries_after_rewind() {
    if !common::can_mount("dir_fd_opened_before_copy_up_sees_new_entries_after_rewind") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("low/a", b"a")]], &[]);
        let mut d = nix::dir::Dir::open(
            &e.p("low"),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .expect("opendir");
        let list = |d: &mut nix::dir::Dir| {
            let mut v: Vec<String> = d
                .iter()
                .map(|ent| {
                    ent.expect("readdir")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .filter(|n| n != "." && n != "..")
                .collect();
            v.sort();
            v
        };
        assert_eq!(list(&mut d), ["a"], "{t}: before");
        std::fs::write(e.p("low/b"), b"b").expect("create low/b (copies low up)");
        std::fs::remove_file(e.p("low/a")).expect("unlink low/a");
        // Each Dir::iter rewinds the stream when it is done, so this reads from the start.
        assert_eq!(list(&mut d), ["b"], "{t}: same fd after rewind");
    }
}

/// Names removed while a listing is being read stay removed: the listing's later buffers, read
/// with attributes (the kernel asks for them again once the removals have looked names up), do
/// not hand the kernel an entry for a name that is gone, which it would otherwise keep, with
/// its attributes, as if the file were there.
#[test]
fn names_removed_during_a_listing_stay_removed() {
    if !common::can_mount("names_removed_during_a_listing_stay_removed") {
        return;
    }
    let files: Vec<String> = (0..3000).map(|i| format!("d/file{i:05}")).collect();
    let upper: Vec<Node> = files.iter().map(|f| File(f, b"")).collect();
    for t in targets() {
        let e = Env::new(t, &[&[Dir("d")]], &upper);
        let mut listing = std::fs::read_dir(e.p("d")).expect("opendir");
        let seen: Vec<String> = (&mut listing)
            .take(5)
            .map(|d| format!("d/{}", d.expect("entry").file_name().to_string_lossy()))
            .collect();
        let removed: Vec<&String> = files.iter().filter(|f| !seen.contains(f)).collect();
        for f in &removed {
            std::fs::remove_file(e.p(f)).unwrap_or_else(|err| panic!("{t}: unlink {f}: {err}"));
        }
        for d in listing {
            d.expect("entry after the removals");
        }
        let back: Vec<&&String> = removed
            .iter()
            .filter(|f| std::fs::symlink_metadata(e.p(f)).is_ok())
            .collect();
        assert!(
            back.is_empty(),
            "{t}: {} removed names back after the listing, e.g. {:?}",
            back.len(),
            back.first()
        );
    }
}
