//! The invocation contract, checked on one mount program: the fake containers/storage store
//! of `invoke.rs` is filled with 128 layers holding AUFS whiteouts and an opaque marker, then
//! mounted read-write and read-only exactly as containers/storage does, looked at the way
//! `podman diff` and `tar` look (readdir, then lstat each name), changed, and unmounted with
//! `fusermount3 -u` and `umount2(MNT_DETACH)`.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::invoke::{
    mount_entry, processes_serving, run_mount_program, wait_until, walk, FakeStore, Seen,
};

/// Lower layers in the contract test: as many as containers/storage stacks.
const LAYERS: usize = 128;
/// The mtime given to `keep/a` in the bottom layer, to the nanosecond.
pub const MTIME: (i64, i64) = (1_000_000_000, 123_456_789);

/// Writes `text` to `path`, creating its parent directories.
pub fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directories");
    }
    std::fs::write(path, text).expect("write a fixture file");
}

/// Fills the fake store: a file per layer, AUFS whiteouts and an opaque marker in the top
/// layer over files and directories of the bottom one, and a file replacing a directory.
fn populate(store: &FakeStore) {
    for (i, diff) in store.diffs.iter().enumerate() {
        write(&diff.join(format!("f{i:03}")), &format!("layer {i}\n"));
    }
    let (top, bottom) = (&store.diffs[0], &store.diffs[LAYERS - 1]);
    for p in [
        "gone",
        "opq/old",
        "opq/sub/x",
        "keep/a",
        "keep/b",
        "dir2file/y",
        "file2dir",
    ] {
        write(&bottom.join(p), "bottom\n");
    }
    write(&store.diffs[LAYERS / 2].join("keep/c"), "middle\n");
    for p in [".wh.gone", "opq/.wh..wh..opq", "keep/.wh.b"] {
        write(&top.join(p), "");
    }
    write(&top.join("opq/new"), "top\n");
    write(&top.join("dir2file"), "now a file\n");
    write(&top.join("file2dir/z"), "now a dir\n");
    let t = nix::sys::time::TimeSpec::new(MTIME.0, MTIME.1);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &bottom.join("keep/a"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("set the fixture mtime");
}

/// What the contract test records of one mount program, to compare programs.
#[derive(Debug, PartialEq, Eq)]
pub struct Observed {
    /// Path, kind, mode and size of every entry, as readdir + lstat show them.
    pub tree: Vec<(String, char, u32, u64)>,
}

/// Mounts the fake store with `prog` as containers/storage would, checks the mount program
/// contract, and returns what a container tool sees. `ours` adds the checks fuse-overlayfs is
/// not held to (internal xattr names are unionfs's own).
pub fn exercise(prog: &Path, ours: bool) -> Observed {
    let store = FakeStore::new(LAYERS);
    populate(&store);
    let got = run_mount_program(prog, &store.options(true), &store.merged, &store.home);
    let guard = crate::common::MountGuard {
        mnt: store.merged.clone(),
    };
    let who = prog.display();
    assert!(got.status.success(), "{who} failed: {}", got.stderr);
    assert!(
        got.mounted_at_exit,
        "{who} exited before the mount was live"
    );
    let (fstype, opts) = mount_entry(&store.merged).expect("mounted");
    assert!(fstype.starts_with("fuse"), "{who}: fstype {fstype}");
    for o in ["allow_other", "default_permissions"] {
        assert!(opts.contains(o), "{who}: mount options {opts} lack {o}");
    }

    let seen = walk(&store.merged);
    check_listing(&store.merged, &seen, &who.to_string());
    if ours {
        for s in &seen {
            check_no_internal_xattrs(&store.merged.join(&s.path));
        }
    }
    check_copy_up(&store, &who.to_string());
    if ours {
        // fuse-overlayfs 1.10 fails this one: after `rm -r file2dir; mkdir file2dir` the
        // listing is empty but a lookup of file2dir/z still finds the lower file.
        check_deletions(&store.merged, &who.to_string());
    }
    let observed = Observed {
        tree: seen
            .iter()
            .map(|s| (s.path.clone(), s.kind, s.mode, s.size))
            .collect(),
    };

    // containers/storage unmounts with `fusermount3 -u`; the daemon must then exit by itself.
    unmount_and_wait(&store.merged, true);
    std::mem::forget(guard);

    // A mount with only lowerdir is read-only; umount2(MNT_DETACH) also ends the daemon.
    let got = run_mount_program(prog, &store.options(false), &store.merged, &store.home);
    assert!(
        got.status.success(),
        "{who} (read-only) failed: {}",
        got.stderr
    );
    let guard = crate::common::MountGuard {
        mnt: store.merged.clone(),
    };
    let err = std::fs::write(store.merged.join("new"), "x").expect_err("read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{who}: {err}");
    assert_eq!(
        walk(&store.merged).len(),
        seen.len(),
        "{who}: the read-only mount shows another tree"
    );
    unmount_and_wait(&store.merged, false);
    std::mem::forget(guard);
    observed
}

fn check_listing(root: &Path, seen: &[Seen], who: &str) {
    let names: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    let mut want: Vec<String> = (0..LAYERS).map(|i| format!("f{i:03}")).collect();
    want.extend(
        [
            "dir2file",
            "file2dir",
            "file2dir/z",
            "keep",
            "keep/a",
            "keep/c",
            "opq",
            "opq/new",
        ]
        .map(String::from),
    );
    want.sort();
    assert_eq!(names, want, "{who}: merged listing");
    assert!(
        seen.iter().all(|s| !s.zero_d_ino),
        "{who}: readdir returned d_ino 0 for {:?}",
        seen.iter().filter(|s| s.zero_d_ino).collect::<Vec<_>>()
    );
    // Lookups right after a listing must still honour whiteouts and opaque directories.
    for hidden in [
        "gone",
        "opq/old",
        "opq/sub",
        "keep/b",
        "dir2file/y",
        ".wh.gone",
    ] {
        let r = std::fs::symlink_metadata(root.join(hidden));
        assert!(
            r.as_ref().is_err_and(|e| matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR)
            )),
            "{who}: {hidden} should not exist: {r:?}"
        );
    }
}

fn check_no_internal_xattrs(path: &Path) {
    let names = xattr::list(path).unwrap_or_else(|e| panic!("listxattr {path:?}: {e}"));
    for n in names {
        let n = n.to_string_lossy();
        assert!(
            !(n.starts_with("trusted.overlay.")
                || n.starts_with("user.overlay.")
                || n.contains("unionfs")
                || n.contains("fuse-overlayfs")),
            "internal xattr {n} shows on {path:?}"
        );
    }
}

/// A metadata-only change copies the file up; its mtime must survive to the nanosecond, or
/// `podman diff` reports it changed in every later layer.
fn check_copy_up(store: &FakeStore, who: &str) {
    let a = store.merged.join("keep/a");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let m = std::fs::symlink_metadata(&a).expect("stat after chmod");
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        MTIME,
        "{who}: mtime after copy-up"
    );
    let up = std::fs::symlink_metadata(store.upper.join("keep/a")).expect("copied up");
    assert_eq!((up.mtime(), up.mtime_nsec()), MTIME, "{who}: upper mtime");
    assert_eq!(
        std::fs::read_to_string(&a).expect("read"),
        "bottom\n",
        "{who}: content after copy-up"
    );
}

/// Deleting lower files and re-creating a deleted directory (whiteouts and an opaque marker in
/// the upper layer) shows in lookups at once, with no internal xattr on the new directory.
fn check_deletions(root: &Path, who: &str) {
    std::fs::remove_file(root.join("keep/c")).expect("delete a lower file");
    std::fs::remove_dir_all(root.join("file2dir")).expect("delete a merged directory");
    std::fs::create_dir(root.join("file2dir")).expect("re-create it");
    let listed: Vec<_> = std::fs::read_dir(root.join("file2dir"))
        .expect("list the new directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        listed.is_empty(),
        "{who}: re-created directory shows {listed:?}"
    );
    for gone in ["keep/c", "file2dir/z"] {
        let r = std::fs::symlink_metadata(root.join(gone));
        assert!(
            r.is_err(),
            "{who}: {gone} still there after deletion: {r:?}"
        );
    }
    check_no_internal_xattrs(&root.join("file2dir"));
}

/// Unmounts as containers/storage does (`fusermount3 -u`, or `umount2(MNT_DETACH)`) and waits
/// for the daemon to exit by itself.
pub fn unmount_and_wait(target: &Path, fusermount: bool) {
    if fusermount {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(target)
            .status()
            .expect("run fusermount3");
        assert!(st.success(), "fusermount3 -u {} failed", target.display());
    } else {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).expect("umount2");
    }
    assert!(!crate::common::is_mountpoint(target));
    wait_until(&format!("the daemon of {} exits", target.display()), || {
        processes_serving(target).is_empty()
    });
}

/// Mounts with `prog` as containers/storage would, returns the tree, unmounts.
pub fn mount_and_walk(prog: &Path, opts: &OsStr, target: &Path, cwd: &Path) -> Vec<Seen> {
    let got = run_mount_program(prog, opts, target, cwd);
    assert!(got.status.success(), "{}: {}", prog.display(), got.stderr);
    let seen = walk(target);
    unmount_and_wait(target, true);
    seen
}

/// One logged call of the wrapper script.
pub struct Call {
    pub argv: Vec<String>,
    pub cwd: String,
    pub fds: Vec<String>,
}

impl Call {
    /// The first mount call (`PROG -o ...`) in the wrapper's log.
    pub fn parse(log: &str) -> Call {
        let record = log
            .split("argv ")
            .find(|r| r.split(' ').nth(1) == Some("-o"))
            .unwrap_or_else(|| panic!("no mount call in the wrapper log:\n{log}"));
        let mut lines = record.lines();
        let argv = lines
            .next()
            .expect("argv line")
            .split(' ')
            .map(String::from);
        let field = |key: &str| {
            record
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key:?} in the wrapper log:\n{log}"))
                .to_string()
        };
        Call {
            argv: argv.collect(),
            cwd: field("cwd "),
            fds: (0..3).map(|i| field(&format!("fd{i} "))).collect(),
        }
    }
}
