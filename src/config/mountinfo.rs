//! Reading the mount table (`/proc/self/mountinfo`, proc(5)): which filesystem, if any, is
//! mounted exactly on a path. Pure parsing over the table's bytes, which the caller reads;
//! mount points keep their raw bytes after `\ooo` unescaping.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, as far as we need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse.unionfs` or `overlay`.
    pub fstype: String,
}

/// The top-most mount whose mount point is exactly `path`, from the contents of
/// `/proc/self/mountinfo` (proc(5): field 5 is the mount point with `\ooo` octal escapes; the
/// filesystem type follows the ` - ` separator).
pub fn find_mount(mountinfo: &[u8], path: &Path) -> Option<MountEntry> {
    let want = path.as_os_str().as_bytes();
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(parse_mountinfo_line)
        .rev()
        .find(|e| e.mount_point.as_os_str().as_bytes() == want)
}

fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let mount_point = fields.get(4)?;
    let sep = fields.iter().position(|f| *f == b"-")?;
    let fstype = fields.get(sep + 1)?;
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape_octal(mount_point))),
        fstype: String::from_utf8_lossy(&unescape_octal(fstype)).into_owned(),
    })
}

fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let digits = s.get(i + 1..i + 4);
        if s[i] == b'\\' {
            if let Some(d) = digits.filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c))) {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn mountinfo_lookup() {
        let info = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            45 27 0:39 / /tmp/a\\134b rw - overlay overlay rw,lowerdir=/x\n\
            46 45 0:40 / /tmp/a\\134b rw shared:3 master:1 - fuse.unionfs unionfs rw\n";
        assert_eq!(
            find_mount(info, Path::new("/tmp/a\\b")),
            Some(MountEntry {
                mount_point: p("/tmp/a\\b"),
                fstype: "fuse.unionfs".into()
            })
        );
        assert_eq!(find_mount(info, Path::new("/proc")).unwrap().fstype, "proc");
        assert_eq!(find_mount(info, Path::new("/tmp")), None);
    }
}
