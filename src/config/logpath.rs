//! Where a detached daemon logs: the log directory for the calling user and a flat, distinct
//! file name per mountpoint. Pure path computation; nothing here creates or opens a file.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The directory for log files of detached daemons: `/run/unionfs` for root,
/// `$XDG_RUNTIME_DIR/unionfs` for other users, `/tmp/unionfs-<uid>` when that is unset.
pub fn default_log_dir(is_root: bool, xdg_runtime_dir: Option<&OsStr>, uid: u32) -> PathBuf {
    if is_root {
        return PathBuf::from("/run/unionfs");
    }
    match xdg_runtime_dir.filter(|d| !d.is_empty()) {
        Some(d) => Path::new(d).join("unionfs"),
        None => PathBuf::from(format!("/tmp/unionfs-{uid}")),
    }
}

/// The log file name for a mountpoint, escaped like systemd-escape(1) `--path`: slashes become
/// `-`, and bytes other than ASCII letters, digits, `_`, `.` and `:` become `\xNN`, so each
/// mountpoint gets a distinct, flat name (`/mnt/a-b` → `mnt-a\x2db.log`).
pub fn log_file_name(mountpoint: &Path) -> OsString {
    let bytes = mountpoint.as_os_str().as_bytes();
    let trimmed: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut out = Vec::new();
    if trimmed.is_empty() {
        out.push(b'-');
    }
    for (i, comp) in trimmed.iter().enumerate() {
        if i > 0 {
            out.push(b'-');
        }
        for (j, &b) in comp.iter().enumerate() {
            let plain = b.is_ascii_alphanumeric()
                || b == b'_'
                || b == b':'
                || (b == b'.' && (i, j) != (0, 0));
            if plain {
                out.push(b);
            } else {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        }
    }
    out.extend_from_slice(b".log");
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn log_locations() {
        assert_eq!(
            default_log_dir(true, Some(OsStr::new("/run/user/5")), 0),
            p("/run/unionfs")
        );
        assert_eq!(
            default_log_dir(false, Some(OsStr::new("/run/user/5")), 5),
            p("/run/user/5/unionfs")
        );
        assert_eq!(default_log_dir(false, None, 5), p("/tmp/unionfs-5"));
        assert_eq!(
            default_log_dir(false, Some(OsStr::new("")), 5),
            p("/tmp/unionfs-5")
        );
        let names: &[(&str, &str)] = &[
            ("/", "-.log"),
            ("/mnt/merged", "mnt-merged.log"),
            ("/mnt//a-b/", "mnt-a\\x2db.log"),
            ("/srv/.hidden/x y", "srv-.hidden-x\\x20y.log"),
            ("/.dot", "\\x2edot.log"),
        ];
        for (mnt, want) in names {
            assert_eq!(log_file_name(Path::new(mnt)), OsStr::new(want), "{mnt}");
        }
    }
}
