//! Printing trees and files the way `find -printf '%M %s %P'` and `cat` would, and reading the
//! mount table, using only the standard library.
//!
//! Everything here only reads: it must never follow a symlink or write, so that it can be
//! pointed at a live mount or at a layer without changing what it shows.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::host::{Context, Result};

/// Prints every entry below `root`, sorted by name, one line each: mode, size (or device
/// numbers), path relative to `root`, and a symlink's target.
pub fn tree(root: &Path) -> Result<()> {
    println!("{}/", root.display());
    walk(root, Path::new(""))
}

fn walk(root: &Path, rel: &Path) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .context(|| format!("list {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .context(|| format!("list {}", dir.display()))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).context(|| format!("stat {}", path.display()))?;
        println!("  {}", describe(&rel, &meta, &path));
        if meta.is_dir() {
            walk(root, &rel)?;
        }
    }
    Ok(())
}

/// One line of [`tree`]: `drwxr-xr-x      - etc`, `crw-r--r--    0/0 etc/motd`, ...
fn describe(rel: &Path, meta: &fs::Metadata, path: &Path) -> String {
    let ft = meta.file_type();
    let size = if ft.is_char_device() || ft.is_block_device() {
        let (major, minor) = dev_numbers(meta.rdev());
        format!("{major}/{minor}")
    } else if ft.is_dir() {
        "-".to_string()
    } else {
        meta.len().to_string()
    };
    let mut line = format!("{} {size:>6} {}", mode_string(meta), rel.display());
    if ft.is_char_device() && meta.rdev() == 0 {
        line.push_str("  (overlay whiteout)");
    } else if ft.is_symlink() {
        if let Ok(target) = fs::read_link(path) {
            line.push_str(&format!(" -> {}", target.display()));
        }
    }
    line
}

/// `ls -l`-style type and permission letters.
fn mode_string(meta: &fs::Metadata) -> String {
    let ft = meta.file_type();
    let kind = match () {
        _ if ft.is_dir() => 'd',
        _ if ft.is_symlink() => 'l',
        _ if ft.is_char_device() => 'c',
        _ if ft.is_block_device() => 'b',
        _ if ft.is_fifo() => 'p',
        _ if ft.is_socket() => 's',
        _ => '-',
    };
    let mode = meta.mode();
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Major and minor numbers of a `dev_t`, in glibc's encoding (`gnu_dev_major`/`gnu_dev_minor`).
fn dev_numbers(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// Prints a file's content under its path, as `cat` would.
pub fn cat(path: &Path) -> Result<()> {
    let text = fs::read(path).context(|| format!("read {}", path.display()))?;
    println!("--- {}", path.display());
    print!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

/// The mount points in `/proc/self/mountinfo`, with the kernel's octal escapes undone.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

/// Whether `path` (absolute, without symlinks) is currently a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash as `\ooo` (proc(5)).
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let byte = b.get(i + 1..i + 4).and_then(octal_byte);
        match byte {
            Some(byte) if b[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte three octal digits stand for, if they are octal digits and fit in a byte.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    if !digits.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u8::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain\x"), r"/plain\x");
        assert_eq!(unescape_mountinfo(r"/big\777"), r"/big\777");
    }

    #[test]
    fn describe_prints_mode_size_and_path() {
        let dir = std::env::temp_dir().join(format!("xtask-show-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/file"), "12345").unwrap();
        std::os::unix::fs::symlink("file", dir.join("sub/link")).unwrap();
        let line = |rel: &str| {
            let p = dir.join(rel);
            describe(Path::new(rel), &fs::symlink_metadata(&p).unwrap(), &p)
        };
        assert!(line("sub").starts_with('d'), "{}", line("sub"));
        assert!(
            line("sub/file").ends_with("     5 sub/file"),
            "{}",
            line("sub/file")
        );
        assert!(
            line("sub/link").starts_with("lrwxrwxrwx"),
            "{}",
            line("sub/link")
        );
        assert!(
            line("sub/link").ends_with("sub/link -> file"),
            "{}",
            line("sub/link")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn whiteout_device_is_0_0_and_others_decode() {
        assert_eq!(dev_numbers(0), (0, 0));
        // /dev/fuse is 10:229.
        assert_eq!(dev_numbers((10 << 8) | 229), (10, 229));
    }
}
