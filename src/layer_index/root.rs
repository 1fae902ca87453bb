//! Short names for objects inside a layer, however deep they are.
//!
//! The daemon names an object by its path inside a layer and hands that name to ordinary
//! system calls. Two things would make such a name too long: the layer's own path (which the
//! caller of the mount never sees) and depth (a tree may be thousands of levels deep, deeper
//! than PATH_MAX). [`LayerRoot`] removes the first by holding the layer root open and naming it
//! `/proc/self/fd/N`. [`LayerPath`] removes the second: when a path would not fit, the
//! directories leading to it are opened a chunk at a time, each chunk relative to the last, and
//! the name handed out is the short rest relative to the last descriptor, which the
//! [`LayerPath`] keeps open for as long as the name is used.
//!
//! Paths within the limit, which is every path of an ordinary tree, cost nothing extra.
//!
//! A `/proc/self/fd/N/...` name costs the kernel a walk through procfs on every call (about
//! 4 µs here, more than the lookup it leads to), so a [`LayerPath`] also keeps its directory
//! descriptor and the part of the name relative to it: the calls made on every request
//! ([`LayerPath::lstat`], and the `*at` calls through [`LayerPath::at`]) start from there.

use std::ffi::OsStr;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};

/// Longest name handed to a system call, kept well under PATH_MAX (4096 with its NUL).
const NAME_MAX_LEN: usize = 3072;

/// A layer root addressed through a descriptor held open on it: `/proc/self/fd/N/<rel>`.
#[derive(Debug, Clone)]
pub struct LayerRoot {
    fd: Arc<OwnedFd>,
    base: PathBuf,
}

impl LayerRoot {
    /// The root open at `fd`, a directory opened by its canonical path (as mount validation
    /// does), so that it is not resolved a second time.
    pub fn held(fd: Arc<OwnedFd>) -> LayerRoot {
        LayerRoot {
            base: fd_path(&fd),
            fd,
        }
    }

    pub fn open(root: &Path) -> nix::Result<LayerRoot> {
        // A root that is a symlink is refused (ENOTDIR) rather than followed: callers name
        // roots by canonical paths, and a layer must not change under a swapped link.
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LayerRoot {
            base: fd_path(&fd),
            fd: Arc::new(fd),
        })
    }

    /// The root's canonical path, as the kernel names the held directory.
    pub fn canonical(&self) -> std::io::Result<PathBuf> {
        std::fs::read_link(&self.base)
    }

    /// The attributes of the root itself, through its descriptor.
    pub fn stat(&self) -> nix::Result<FileStat> {
        fstat(&*self.fd)
    }

    /// The type of the file system the layer is on (`statfs`'s `f_type`).
    pub fn fs_type(&self) -> nix::Result<nix::sys::statfs::FsType> {
        nix::sys::statfs::fstatfs(self.fd.as_fd()).map(|s| s.filesystem_type())
    }

    /// The attributes of the entry `name` directly in the root, not following a symlink: one
    /// lookup from the held descriptor, where a path would walk from `/` again.
    pub fn stat_entry(&self, name: &OsStr) -> nix::Result<FileStat> {
        fstatat(&*self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    /// The name of `rel` below the root; the root itself is `…/N/.`, so that the descriptor's
    /// link is followed even by calls that do not follow a final symlink.
    pub fn join(&self, rel: &Path) -> LayerPath {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if self.base.as_os_str().len() + 1 + rel.as_os_str().len() <= NAME_MAX_LEN {
            return LayerPath::under(&self.fd, &self.base, rel.as_os_str().as_bytes());
        }
        self.join_deep(rel)
            .unwrap_or_else(|_| LayerPath::under(&self.fd, &self.base, rel.as_os_str().as_bytes()))
    }

    /// Opens the directories above `rel` in chunks that each fit, and names `rel`'s remaining
    /// tail relative to the last one.
    ///
    /// Where a chunk does not resolve (a missing directory, say), the name handed out is that
    /// chunk plus one more component: resolving it fails exactly as resolving the whole path
    /// would, so the caller's system call reports the error itself. On any other failure (no
    /// descriptors left) the caller gets the long name, which fails with ENAMETOOLONG rather
    /// than touch the wrong object.
    fn join_deep(&self, rel: &Path) -> nix::Result<LayerPath> {
        let bytes = rel.as_os_str().as_bytes();
        let mut anchor = Arc::clone(&self.fd);
        let mut start = 0;
        loop {
            let rest = &bytes[start..];
            let base = fd_path(&anchor);
            if base.as_os_str().len() + 1 + rest.len() <= NAME_MAX_LEN {
                return Ok(LayerPath::under(&anchor, &base, rest));
            }
            // The longest run of whole components that fits; a component is at most 255 bytes,
            // so each step makes progress.
            let room = NAME_MAX_LEN - base.as_os_str().len() - 1;
            let cut = rest[..room.min(rest.len())]
                .iter()
                .rposition(|&b| b == b'/')
                .ok_or(Errno::ENAMETOOLONG)?;
            let dir = base.join(OsStr::from_bytes(&rest[..cut]));
            match open_dir(&dir) {
                Ok(fd) => anchor = Arc::new(fd),
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES | Errno::ELOOP) => {
                    let next = rest[cut + 1..].split(|&b| b == b'/').next().unwrap_or(b".");
                    let mut failing = rest[..cut].to_vec();
                    failing.push(b'/');
                    failing.extend_from_slice(next);
                    return Ok(LayerPath::under(&anchor, &base, &failing));
                }
                Err(e) => return Err(e),
            }
            start += cut + 1;
        }
    }
}

/// A name for a system call on an object inside a layer, valid while this value lives.
#[derive(Debug, Clone)]
pub struct LayerPath {
    /// The whole name, `/proc/self/fd/N/<rel>`, for calls that take a path.
    path: PathBuf,
    /// Where `<rel>` starts in `path`.
    rel: usize,
    /// The directory `<rel>` is relative to (`N` above); none for a name that is absolute.
    anchor: Option<Arc<OwnedFd>>,
}

impl LayerPath {
    /// `rel` below the directory `anchor`, whose `/proc/self/fd` name is `base`.
    fn under(anchor: &Arc<OwnedFd>, base: &Path, rel: &[u8]) -> LayerPath {
        let mut path = base.as_os_str().as_bytes().to_vec();
        path.push(b'/');
        let start = path.len();
        path.extend_from_slice(rel);
        LayerPath {
            path: PathBuf::from(OsStr::from_bytes(&path)),
            rel: start,
            anchor: Some(Arc::clone(anchor)),
        }
    }

    /// The directory to start from and the name relative to it, for `*at` system calls.
    pub fn at(&self) -> (BorrowedFd<'_>, &Path) {
        match &self.anchor {
            Some(fd) => {
                let rel = &self.path.as_os_str().as_bytes()[self.rel..];
                (fd.as_fd(), Path::new(OsStr::from_bytes(rel)))
            }
            None => (nix::fcntl::AT_FDCWD, &self.path),
        }
    }

    /// The attributes of the object named, not following a final symlink.
    pub fn lstat(&self) -> nix::Result<FileStat> {
        let (dir, rel) = self.at();
        fstatat(dir, rel, AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    /// The name of `name` inside the directory this names.
    pub fn child(&self, name: &OsStr) -> LayerPath {
        let mut path = self.path.as_os_str().as_bytes().to_vec();
        if self.anchor.is_some() && &path[self.rel..] == b"." {
            // The root is named `…/N/.`: its children are `…/N/name`.
            path.pop();
        } else {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        LayerPath {
            path: PathBuf::from(OsStr::from_bytes(&path)),
            rel: self.rel,
            anchor: self.anchor.clone(),
        }
    }
}

impl From<PathBuf> for LayerPath {
    /// A name that needs no anchor (one outside any layer, in the work directory say).
    fn from(path: PathBuf) -> LayerPath {
        LayerPath {
            path,
            rel: 0,
            anchor: None,
        }
    }
}

impl crate::sys::xattr::Target for LayerPath {
    fn at(&self) -> (BorrowedFd<'_>, &Path) {
        LayerPath::at(self)
    }

    fn whole(&self) -> &Path {
        &self.path
    }
}

impl Deref for LayerPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for LayerPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_paths_resolve_through_anchors() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = LayerRoot::open(d.path()).expect("root");
        let mut rel = PathBuf::new();
        for i in 0..1500 {
            rel.push(format!("d{}", i % 10));
            let p = root.join(&rel);
            nix::unistd::mkdir(&*p, Mode::from_bits_truncate(0o755)).expect("mkdir");
        }
        assert!(rel.as_os_str().len() > 4096);
        let leaf = rel.join("leaf");
        let p = root.join(&leaf);
        assert!(p.as_os_str().len() <= NAME_MAX_LEN);
        std::fs::write(&p, b"deep").expect("write");
        assert_eq!(std::fs::read(&*root.join(&leaf)).expect("read"), b"deep");
        // A missing directory early in a deep path is reported as missing, as the kernel
        // would for the whole path, and nothing is created on the way.
        let missing = Path::new("d0/nope").join(&rel);
        let err = std::fs::create_dir(&*root.join(&missing)).expect_err("missing");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let through_file = rel.join("leaf").join(&rel);
        let err = std::fs::read(&*root.join(&through_file)).expect_err("not a dir");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
        assert!(!d.path().join("d0/nope").exists());
        // Deep or not, the at-form names the same object as the whole name.
        assert!(root.join(&leaf).lstat().expect("lstat deep").st_size == 4);
        assert!(root.join(&through_file).lstat().is_err());
    }

    #[test]
    fn children_and_at_forms() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("a")).expect("mkdir");
        std::fs::write(d.path().join("a/f"), b"12345").expect("write");
        let root = LayerRoot::open(d.path()).expect("root");
        let top = root.join(Path::new(""));
        assert_eq!(top.at().1, Path::new("."));
        assert!(top.lstat().expect("root").st_mode & libc::S_IFDIR != 0);
        let a = top.child(OsStr::new("a"));
        assert_eq!(a.at().1, Path::new("a"));
        assert_eq!(&*a, &*root.join(Path::new("a")));
        let f = a.child(OsStr::new("f"));
        assert_eq!(f.at().1, Path::new("a/f"));
        assert_eq!(f.lstat().expect("f").st_size, 5);
        assert_eq!(std::fs::read(&*f).expect("read whole name"), b"12345");
        let outside = LayerPath::from(d.path().join("a/f"));
        assert_eq!(outside.lstat().expect("absolute").st_size, 5);
        assert_eq!(
            a.child(OsStr::new("missing")).lstat().unwrap_err(),
            Errno::ENOENT
        );
    }

    #[test]
    fn xattrs_through_the_at_form() {
        use crate::sys::xattr;
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("a")).expect("mkdir");
        let file = d.path().join("a/f");
        std::fs::write(&file, b"").expect("write");
        std::os::unix::fs::symlink("f", d.path().join("a/l")).expect("symlink");
        // Longer than the first buffer `get` tries, so it must grow it.
        let long = vec![b'v'; 300];
        xattr::set(&file, OsStr::new("user.long"), &long, 0).expect("set");
        xattr::set(&file, OsStr::new("user.short"), b"y", 0).expect("set");
        let root = LayerRoot::open(d.path()).expect("root");
        let f = root.join(Path::new("a/f"));
        assert_eq!(
            xattr::get(&f, OsStr::new("user.long")),
            Ok(Some(long.clone()))
        );
        assert_eq!(
            xattr::get(&f, OsStr::new("user.short")),
            Ok(Some(b"y".to_vec()))
        );
        assert_eq!(xattr::get(&f, OsStr::new("user.none")), Ok(None));
        let mut names = xattr::list(&f).expect("list");
        names.sort();
        assert_eq!(names, [OsStr::new("user.long"), OsStr::new("user.short")]);
        assert_eq!(names, {
            let mut n = xattr::list(&file).expect("list by path");
            n.sort();
            n
        });
        // A symlink's own attributes are read, never its target's.
        let l = root.join(Path::new("a/l"));
        assert_eq!(xattr::get(&l, OsStr::new("user.short")), Ok(None));
        assert_eq!(
            xattr::list(&l).expect("list link"),
            Vec::<std::ffi::OsString>::new()
        );
        assert_eq!(
            xattr::get(&root.join(Path::new("a/missing")), OsStr::new("user.short")),
            Err(Errno::ENOENT)
        );
    }
}
