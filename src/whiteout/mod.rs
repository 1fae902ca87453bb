//! How deletions, opaque directories and directory redirects are encoded on disk.
//!
//! Two formats are read in every layer:
//! - overlay: a whiteout is a character device 0/0; a directory is opaque when its
//!   `trusted.overlay.opaque` (or `user.overlay.opaque`) xattr is `y`; a renamed directory
//!   carries `trusted.overlay.redirect` with the path it came from
//!   (see the kernel's Documentation/filesystems/overlayfs.rst).
//! - AUFS/OCI: a whiteout is a file named `.wh.<name>`; a directory is opaque when it contains
//!   `.wh..wh..opq` (OCI image spec, "Representing Changes").
//!
//! Only the overlay format is written (in the upper), so that kernel overlayfs mounting the same
//! upper sees the same tree. Nothing outside this module knows these encodings: callers ask
//! "is this a whiteout", "is this directory opaque", "make a whiteout here".

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{mknod, FileStat, Mode, SFlag};

use crate::sys::xattr;

/// Prefix of AUFS/OCI whiteout file names.
pub const AUFS_PREFIX: &[u8] = b".wh.";
/// Name of the AUFS/OCI opaque-directory marker.
pub const AUFS_OPAQUE: &[u8] = b".wh..wh..opq";

/// The xattr namespace overlay markers live in: `trusted.` needs CAP_SYS_ADMIN, so an
/// unprivileged daemon falls back to `user.` as overlayfs's `userxattr` option does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

impl XattrNs {
    /// The namespace this process can write: `trusted` as root, `user` otherwise.
    pub fn for_current_user() -> Self {
        if nix::unistd::geteuid().is_root() {
            XattrNs::Trusted
        } else {
            XattrNs::User
        }
    }

    fn name(self, key: &str) -> OsString {
        let ns = match self {
            XattrNs::Trusted => "trusted.overlay.",
            XattrNs::User => "user.overlay.",
        };
        OsString::from(format!("{ns}{key}"))
    }
}

/// Whether a `stat` result is an overlay-format whiteout (character device 0/0).
pub fn is_overlay_whiteout(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Whether `name` is an AUFS/OCI marker (a whiteout or the opaque marker). Markers never show
/// in the merged view.
pub fn is_aufs_marker(name: &OsStr) -> bool {
    name.as_bytes().starts_with(AUFS_PREFIX)
}

/// For an AUFS/OCI whiteout file name `.wh.<name>`, the name it hides.
pub fn aufs_hidden_name(marker: &OsStr) -> Option<&OsStr> {
    let b = marker.as_bytes();
    if b == AUFS_OPAQUE || !b.starts_with(AUFS_PREFIX) || b.len() == AUFS_PREFIX.len() {
        return None;
    }
    Some(OsStr::from_bytes(&b[AUFS_PREFIX.len()..]))
}

/// The AUFS/OCI whiteout file name that hides `name`.
pub fn aufs_whiteout_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(OsStr::from_bytes(AUFS_PREFIX));
    s.push(name);
    s
}

/// Whether the directory at `dir` is opaque in either format.
pub fn is_opaque_dir<T: xattr::Target + ?Sized>(dir: &T) -> bool {
    for ns in [XattrNs::Trusted, XattrNs::User] {
        if let Ok(Some(v)) = xattr::get(dir, &ns.name("opaque")) {
            if v == b"y" {
                return true;
            }
        }
    }
    is_aufs_opaque(dir)
}

/// Whether the root directory of a layer at `root` hides the layers below it.
///
/// Only the AUFS marker counts there: kernel overlayfs ignores the opaque xattr on the root of
/// an upper or lower layer (the merged root always shows every layer), while an OCI layer may
/// carry `.wh..wh..opq` at its root to replace everything beneath it.
pub fn is_opaque_root(root: &Path) -> bool {
    is_aufs_opaque(root)
}

fn is_aufs_opaque<T: xattr::Target + ?Sized>(dir: &T) -> bool {
    let (at, rel) = dir.at();
    let marker = rel.join(OsStr::from_bytes(AUFS_OPAQUE));
    nix::sys::stat::fstatat(at, &marker, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

/// The redirect recorded on a renamed directory, if any: either a bare name (renamed within
/// the same parent) or an absolute path from the layer root starting with `/`.
pub fn redirect_of<T: xattr::Target + ?Sized>(dir: &T) -> Option<Vec<u8>> {
    for ns in [XattrNs::Trusted, XattrNs::User] {
        if let Ok(Some(v)) = xattr::get(dir, &ns.name("redirect")) {
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

/// Writes an overlay whiteout (character device 0/0) at `path`.
pub fn make_whiteout(path: &Path) -> nix::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0)
}

/// Marks the directory at `dir` opaque.
pub fn set_opaque(dir: &Path, ns: XattrNs) -> nix::Result<()> {
    xattr::set(dir, &ns.name("opaque"), b"y", 0)
}

/// Records where a renamed directory came from (see [`redirect_of`]).
pub fn set_redirect(dir: &Path, ns: XattrNs, redirect: &[u8]) -> nix::Result<()> {
    xattr::set(dir, &ns.name("redirect"), redirect, 0)
}

/// Whether an xattr name belongs to the union filesystem itself and must never be shown,
/// copied up, or set by users: the overlay markers of both namespaces and unionfs's own.
pub fn is_private_xattr(name: &OsStr) -> bool {
    const PRIVATE: [&[u8]; 4] = [
        b"trusted.overlay.",
        b"user.overlay.",
        b"trusted.unionfs.",
        b"user.unionfs.",
    ];
    let b = name.as_bytes();
    PRIVATE.iter().any(|p| b.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_names_round_trip() {
        let cases: [(&[u8], Option<&[u8]>); 5] = [
            (b".wh.foo", Some(b"foo")),
            (b".wh..wh..opq", None),
            (b".wh.", None),
            (b"foo", None),
            (b".wh.\xff\n", Some(b"\xff\n")),
        ];
        for (marker, hidden) in cases {
            let got = aufs_hidden_name(OsStr::from_bytes(marker)).map(OsStr::as_bytes);
            assert_eq!(got, hidden, "marker {:?}", OsStr::from_bytes(marker));
            if let Some(h) = hidden {
                assert_eq!(aufs_whiteout_name(OsStr::from_bytes(h)).as_bytes(), marker);
            }
        }
    }

    #[test]
    fn private_xattrs_are_recognised() {
        for (name, private) in [
            ("trusted.overlay.opaque", true),
            ("user.overlay.redirect", true),
            ("trusted.unionfs.ino", true),
            ("user.mime_type", false),
            ("security.capability", false),
        ] {
            assert_eq!(is_private_xattr(OsStr::new(name)), private, "{name}");
        }
    }
}
