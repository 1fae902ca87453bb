//! Stable inode numbers for merged objects.
//!
//! A merged object keeps one `st_ino` across lookups, copy-up and remounts, as overlayfs does
//! on a single filesystem: it is the inode number of the object's origin, the lower object it
//! was copied up from, or of the upper object when it never had one. The origin survives
//! copy-up in the private xattr `*.unionfs.ino` on the upper object. Layers on other
//! filesystems get their device's index in the high bits (like overlayfs's `xino`), so numbers
//! of different filesystems never collide.

use std::ffi::OsString;
use std::path::Path;

use crate::sys::xattr;
use crate::whiteout::XattrNs;

/// The private xattr (after `trusted.` or `user.`) holding an upper object's origin inode.
pub const ORIGIN_XATTR_SUFFIX: &str = "unionfs.ino";

/// FUSE reserves 1 for the root.
const ROOT_INO: u64 = 1;
const DEV_SHIFT: u32 = 48;

/// Maps (device, inode) of a layer object to the merged inode number.
#[derive(Debug, Clone)]
pub struct InoMapper {
    devs: Vec<u64>,
}

impl InoMapper {
    /// `devs`: the devices of the layers, upper first; the first one maps to itself.
    pub fn new(devs: impl Iterator<Item = u64>) -> Self {
        let mut v: Vec<u64> = Vec::new();
        for d in devs {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        InoMapper { devs: v }
    }

    pub fn map(&self, dev: u64, ino: u64) -> u64 {
        let idx = self
            .devs
            .iter()
            .position(|d| *d == dev)
            .unwrap_or(self.devs.len()) as u64;
        let mapped = if idx == 0 {
            ino
        } else {
            (idx << DEV_SHIFT) | (ino & ((1 << DEV_SHIFT) - 1))
        };
        if mapped == ROOT_INO {
            (0xffff << DEV_SHIFT) | ROOT_INO
        } else {
            mapped
        }
    }
}

fn origin_name(ns: XattrNs) -> OsString {
    let prefix = match ns {
        XattrNs::Trusted => "trusted.",
        XattrNs::User => "user.",
    };
    OsString::from(format!("{prefix}{ORIGIN_XATTR_SUFFIX}"))
}

/// The origin inode recorded on an upper object in either namespace, if any: for tools that
/// read an upper written by a daemon of another user.
pub fn origin_of(path: &Path) -> Option<u64> {
    [XattrNs::Trusted, XattrNs::User]
        .into_iter()
        .find_map(|ns| origin_in(path, ns))
}

/// The origin inode recorded on an upper object in namespace `ns`, if any. A mount reads only
/// the namespace it writes (as kernel overlayfs reads only `trusted.` or, with `userxattr`,
/// only `user.`): one system call per lookup of an upper object instead of two.
pub fn origin_in(path: &Path, ns: XattrNs) -> Option<u64> {
    let v = xattr::get(path, &origin_name(ns)).ok().flatten()?;
    let bytes: [u8; 8] = v.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Records `ino` as the origin of the upper object at `path`.
pub fn set_origin(path: &Path, ns: XattrNs, ino: u64) -> nix::Result<()> {
    xattr::set(path, &origin_name(ns), &ino.to_le_bytes(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_of_other_devices_do_not_collide() {
        let m = InoMapper::new([10, 20, 10].into_iter());
        assert_eq!(m.map(10, 42), 42);
        assert_eq!(m.map(20, 42), (1 << 48) | 42);
        assert_ne!(m.map(10, 1), 1, "1 is the FUSE root");
    }
}
