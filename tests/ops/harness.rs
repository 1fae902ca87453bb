//! Targets and fixtures for the operation tests: every test runs once per [`Target`] (kernel
//! overlayfs as the reference, then unionfs over overlay-format and over AUFS-format lowers), on
//! a stack built from a short, format-independent description ([`Node`]). The two unionfs
//! targets also differ in transport: overlay-format stacks are served over io_uring where the
//! kernel offers it, AUFS-format ones over `/dev/fuse` (`-o noio_uring`).
//!
//! `UNIONFS_OPS_TARGETS` (comma-separated `kernel`, `unionfs-overlay`, `unionfs-aufs`, or
//! `unionfs` for both unionfs targets) selects targets; unset means all of them.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{mknod, Mode, SFlag};

use crate::common::{MountGuard, Stack};

/// Which filesystem mounts the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    Unionfs,
}

/// How whiteouts and opaque directories are written in the lower layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Character device 0/0; `trusted.overlay.opaque=y`.
    Overlay,
    /// Empty file `.wh.<name>`; empty file `.wh..wh..opq` inside an opaque directory.
    Aufs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub format: Format,
}

impl Target {
    fn label(self) -> &'static str {
        match (self.kind, self.format) {
            (Kind::Kernel, _) => "kernel",
            (Kind::Unionfs, Format::Overlay) => "unionfs-overlay",
            (Kind::Unionfs, Format::Aufs) => "unionfs-aufs",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The targets to run, kernel first: it validates the expectations the others must meet.
pub fn targets() -> Vec<Target> {
    let all = [
        Target {
            kind: Kind::Kernel,
            format: Format::Overlay,
        },
        Target {
            kind: Kind::Unionfs,
            format: Format::Overlay,
        },
        Target {
            kind: Kind::Unionfs,
            format: Format::Aufs,
        },
    ];
    let Ok(sel) = std::env::var("UNIONFS_OPS_TARGETS") else {
        return all.to_vec();
    };
    let words: Vec<&str> = sel.split(',').map(str::trim).collect();
    let chosen: Vec<Target> = all
        .into_iter()
        .filter(|t| {
            words.contains(&t.label()) || (t.kind == Kind::Unionfs && words.contains(&"unionfs"))
        })
        .collect();
    assert!(
        !chosen.is_empty(),
        "UNIONFS_OPS_TARGETS={sel:?} selects no target (kernel, unionfs-overlay, unionfs-aufs, unionfs)"
    );
    chosen
}

/// One entry of a layer, paths relative to the layer root; parents are created as needed.
#[derive(Clone, Copy, Debug)]
pub enum Node<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// Hides the name in the layers below.
    Whiteout(&'a str),
    /// A directory hiding everything below it.
    Opaque(&'a str),
    /// `Symlink(path, target)`.
    Symlink(&'a str, &'a str),
    /// `Link(new, existing)`: a hard link.
    Link(&'a str, &'a str),
}

fn parent_of(p: &Path) -> &Path {
    p.parent().expect("fixture path has a parent")
}

/// Writes `nodes` under `root` with the given marker format.
pub fn build_layer(root: &Path, nodes: &[Node], format: Format) {
    for node in nodes {
        match *node {
            Node::Dir(p) => std::fs::create_dir_all(root.join(p)).expect("fixture dir"),
            Node::File(p, data) => {
                let path = root.join(p);
                std::fs::create_dir_all(parent_of(&path)).expect("fixture parent");
                std::fs::write(&path, data).expect("fixture file");
            }
            Node::Whiteout(p) => {
                let path = root.join(p);
                std::fs::create_dir_all(parent_of(&path)).expect("fixture parent");
                match format {
                    Format::Overlay => {
                        mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0).expect("fixture whiteout")
                    }
                    Format::Aufs => {
                        let mut name = OsString::from(".wh.");
                        name.push(path.file_name().expect("whiteout name"));
                        std::fs::write(parent_of(&path).join(name), b"").expect("fixture .wh.")
                    }
                }
            }
            Node::Opaque(p) => {
                let path = root.join(p);
                std::fs::create_dir_all(&path).expect("fixture opaque dir");
                match format {
                    Format::Overlay => xattr::set(&path, "trusted.overlay.opaque", b"y")
                        .expect("fixture opaque xattr"),
                    Format::Aufs => {
                        std::fs::write(path.join(".wh..wh..opq"), b"").expect("fixture .opq")
                    }
                }
            }
            Node::Symlink(p, target) => {
                let path = root.join(p);
                std::fs::create_dir_all(parent_of(&path)).expect("fixture parent");
                std::os::unix::fs::symlink(target, &path).expect("fixture symlink");
            }
            Node::Link(new, existing) => {
                let path = root.join(new);
                std::fs::create_dir_all(parent_of(&path)).expect("fixture parent");
                std::fs::hard_link(root.join(existing), &path).expect("fixture link");
            }
        }
    }
}

/// A stack for one target, mounted or not. The mount is released before the directory.
pub struct Env {
    mount: Option<MountGuard>,
    pub t: Target,
    pub s: Stack,
    readonly: bool,
}

impl Env {
    /// Builds the stack: `lowers` top-most first, in the target's format; `upper` always in
    /// overlay format (the only format the filesystems write). Not mounted yet.
    pub fn build(t: Target, lowers: &[&[Node]], upper: &[Node]) -> Env {
        let mut s = Stack::new(lowers.len());
        // One unionfs target per transport, so that the suite covers both: the overlay-format
        // stacks are served over io_uring where the kernel offers it, the AUFS-format ones over
        // /dev/fuse.
        s.dev_fuse_only = t.format == Format::Aufs;
        for (dir, nodes) in s.lowers.iter().zip(lowers) {
            build_layer(dir, nodes, t.format);
        }
        build_layer(&s.upper, upper, Format::Overlay);
        Env {
            mount: None,
            t,
            s,
            readonly: false,
        }
    }

    /// Builds and mounts read-write.
    pub fn new(t: Target, lowers: &[&[Node]], upper: &[Node]) -> Env {
        let mut e = Env::build(t, lowers, upper);
        e.mount();
        e
    }

    /// Builds and mounts read-only, with the lowers only.
    pub fn new_ro(t: Target, lowers: &[&[Node]]) -> Env {
        let mut e = Env::build(t, lowers, &[]);
        e.readonly = true;
        e.mount();
        e
    }

    pub fn mount(&mut self) {
        assert!(self.mount.is_none(), "{}: already mounted", self.t);
        let guard = match (self.t.kind, self.readonly) {
            (Kind::Kernel, false) => self.s.mount_overlay(),
            (Kind::Kernel, true) => mount_overlay_ro(&self.s),
            (Kind::Unionfs, false) => self.s.mount_unionfs(),
            (Kind::Unionfs, true) => self.s.mount_unionfs_ro(),
        };
        self.mount = Some(guard);
    }

    pub fn unmount(&mut self) {
        if let Some(g) = self.mount.take() {
            g.unmount();
        }
        assert!(
            !crate::common::is_mountpoint(&self.s.mnt),
            "{}: still mounted after unmount",
            self.t
        );
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// A path through the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.s.mnt.clone()
        } else {
            self.s.mnt.join(rel)
        }
    }

    /// A path in the upper layer.
    pub fn upper(&self, rel: &str) -> PathBuf {
        self.s.upper.join(rel)
    }

    /// A path in lower layer `i` (0 = top-most).
    pub fn lower(&self, i: usize, rel: &str) -> PathBuf {
        self.s.lowers[i].join(rel)
    }
}

/// Kernel overlayfs without an upper: a read-only mount of the lowers.
fn mount_overlay_ro(s: &Stack) -> MountGuard {
    let mut opts = OsString::from("lowerdir=");
    opts.push(s.lowerdir());
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(&opts)
        .arg(&s.mnt)
        .output()
        .expect("run mount -t overlay");
    assert!(
        out.status.success(),
        "overlay ro mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard { mnt: s.mnt.clone() }
}

/// The errno of a failed call; panics (naming `what`) when it succeeded.
pub fn errno_of<T: fmt::Debug>(t: Target, what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{t}: {what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{t}: {what}: not an OS error: {e}")),
    }
}

/// Asserts that `r` failed with `want`.
pub fn assert_errno<T: fmt::Debug>(t: Target, what: &str, r: io::Result<T>, want: i32) {
    let got = errno_of(t, what, r);
    assert_eq!(
        got,
        want,
        "{t}: {what}: expected {}, got {}",
        io::Error::from_raw_os_error(want),
        io::Error::from_raw_os_error(got)
    );
}

/// Like [`assert_errno`] for nix results.
pub fn assert_nix_errno<T: fmt::Debug>(t: Target, what: &str, r: nix::Result<T>, want: i32) {
    assert_errno(t, what, r.map_err(io::Error::from), want)
}

/// Sorted names in a directory (through `readdir`, without `.` and `..`).
pub fn names(t: Target, dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{t}: readdir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 test name")
        })
        .collect();
    v.sort();
    v
}

pub fn read(t: Target, p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{t}: read {}: {e}", p.display()))
}

pub fn lstat(t: Target, p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{t}: lstat {}: {e}", p.display()))
}

/// Whether `p` is an overlay whiteout (character device 0/0) in a layer.
pub fn is_char_whiteout(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Asserts that no entry below `dir` (through the mount) is a whiteout marker of either format
/// or carries one of the filesystems' private xattrs.
pub fn assert_no_markers(t: Target, dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{t}: readdir {dir:?}: {e}")) {
        let e = e.expect("dir entry");
        let path = e.path();
        let name = e.file_name();
        assert!(
            !name.to_string_lossy().starts_with(".wh."),
            "{t}: marker {path:?} is visible"
        );
        assert!(
            !is_char_whiteout(&path),
            "{t}: whiteout {path:?} is visible"
        );
        assert_no_private_xattrs(t, &path);
        if lstat(t, &path).is_dir() {
            assert_no_markers(t, &path);
        }
    }
}

/// The union's own xattr prefixes, which must never be seen through the mount.
pub const PRIVATE_PREFIXES: [&str; 4] = [
    "trusted.overlay.",
    "user.overlay.",
    "trusted.unionfs.",
    "user.unionfs.",
];

pub fn assert_no_private_xattrs(t: Target, p: &Path) {
    let list = xattr::list(p).unwrap_or_else(|e| panic!("{t}: listxattr {p:?}: {e}"));
    for name in list {
        let n = name.to_string_lossy();
        assert!(
            !PRIVATE_PREFIXES.iter().any(|pre| n.starts_with(pre)),
            "{t}: private xattr {n} visible on {p:?}"
        );
    }
}

/// Deterministic pseudo-random bytes (xorshift), so large fixtures need no data files.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}
