//! The initial layers every differential case starts from, written identically into each
//! target's `Stack`.
//!
//! Three lower layers (`lower0` is the top-most and plays the part of an "upper-ish" layer that
//! carries whiteouts and an opaque directory). The same tree can be written with overlay-format
//! markers (character device 0/0, `trusted.overlay.opaque=y`) or with AUFS/OCI markers
//! (`.wh.<name>`, `.wh..wh..opq`): kernel overlayfs reads only the former, unionfs both.
//!
//! What the layers hold, so that the operations in `ops.rs` hit every interesting case:
//! - `d1`: merged (lower2 + lower1), with a nested `d1/sub`; `d2`: merged (lower2 + lower0), with
//!   `d2/sub` owned by 1000:1000 mode 0700; `m`: merged across all three, with a whiteout
//!   `m/wo` in lower0 and a file `m/both` in lower1 hiding lower2's.
//! - whiteouts in lower0 for a file (`gone`) and a directory (`gonedir`); `opq` opaque in lower0
//!   (hides `opq/old` from lower2).
//! - hard links inside lower2: `hl1`/`hl2` (nlink 2), `h3a`/`h3b`/`d1/h3c` (nlink 3).
//! - `big` (> 1 MiB), `suid` (4755), `priv` (0600, 1000:1000), `exe` (0755), `c` (1000:1000),
//!   `fifo`, symlinks `ln -> a`, `dl -> d1`, `dang -> nowhere`, user xattrs on `xa` and `b`,
//!   empty directories `e` and `e2`.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chown, mkfifo, Gid, Uid};

use crate::common::Stack;

/// How whiteouts and opaque directories are encoded in the lower layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Character device 0/0 and `trusted.overlay.opaque=y`: what kernel overlayfs reads.
    Overlay,
    /// `.wh.<name>` files and a `.wh..wh..opq` file inside opaque directories.
    Aufs,
}

/// Deterministic content: `len` bytes derived from `seed` (text-like so diffs stay readable).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            b"abcdefghijklmnopqrstuvwxyz0123456789\n"[(state >> 33) as usize % 37]
        })
        .collect()
}

/// One thing in one layer.
enum Item {
    Dir(usize, &'static str, u32),
    File(usize, &'static str, &'static [u8], u32),
    BigFile(usize, &'static str, usize),
    Link(usize, &'static str, &'static str),
    Symlink(usize, &'static str, &'static str),
    Fifo(usize, &'static str),
    Owner(usize, &'static str, u32, u32),
    Xattr(usize, &'static str, &'static str, &'static [u8]),
    Whiteout(usize, &'static str),
    Opaque(usize, &'static str),
}

/// The layers, bottom (lower2) first so that each layer's parents exist before their children.
fn items() -> Vec<Item> {
    use Item::*;
    vec![
        // lower2: the base image.
        Dir(2, "d1", 0o755),
        File(2, "d1/x", b"x from lower2\n", 0o644),
        Dir(2, "d1/sub", 0o755),
        File(2, "d1/sub/deep", b"deep\n", 0o644),
        Dir(2, "d2", 0o755),
        Dir(2, "d2/sub", 0o700),
        File(2, "d2/sub/y", b"y\n", 0o644),
        Owner(2, "d2/sub/y", 1000, 1000),
        Owner(2, "d2/sub", 1000, 1000),
        File(2, "a", b"a from lower2\n", 0o644),
        BigFile(2, "big", (3 << 19) + 123),
        File(2, "hl1", b"two links\n", 0o644),
        Link(2, "hl1", "hl2"),
        File(2, "h3a", b"three links\n", 0o640),
        Link(2, "h3a", "h3b"),
        Link(2, "h3a", "d1/h3c"),
        File(2, "gone", b"whited out by lower0\n", 0o644),
        Dir(2, "gonedir", 0o755),
        File(2, "gonedir/f", b"in a whited-out dir\n", 0o644),
        Dir(2, "opq", 0o755),
        File(2, "opq/old", b"hidden by the opaque lower0/opq\n", 0o644),
        File(2, "suid", b"#!/bin/sh\necho suid\n", 0o4755),
        File(2, "priv", b"secret\n", 0o600),
        Owner(2, "priv", 1000, 1000),
        File(2, "exe", b"exe\n", 0o755),
        Fifo(2, "fifo"),
        Symlink(2, "ln", "a"),
        Symlink(2, "dl", "d1"),
        Symlink(2, "dang", "nowhere"),
        File(2, "xa", b"has xattrs\n", 0o644),
        Xattr(2, "xa", "user.one", b"1"),
        Xattr(2, "xa", "user.two", b"two"),
        Dir(2, "m", 0o755),
        File(2, "m/l2file", b"l2\n", 0o644),
        File(2, "m/both", b"both from lower2\n", 0o644),
        File(2, "m/wo", b"whited out by lower0\n", 0o644),
        Dir(2, "e", 0o755),
        // lower1: merges into d1 and m.
        Dir(1, "m", 0o755),
        File(1, "m/l1file", b"l1\n", 0o644),
        File(1, "m/both", b"both from lower1\n", 0o644),
        Dir(1, "m/msub", 0o755),
        File(1, "m/msub/z", b"z\n", 0o644),
        Dir(1, "d1", 0o755),
        File(1, "d1/y1", b"y1\n", 0o644),
        File(1, "b", b"b from lower1\n", 0o644),
        Xattr(1, "b", "user.b", b"bee"),
        Dir(1, "e2", 0o755),
        // lower0: the "upper-ish" layer with whiteouts and an opaque dir.
        Whiteout(0, "gone"),
        Whiteout(0, "gonedir"),
        Dir(0, "m", 0o755),
        Whiteout(0, "m/wo"),
        Dir(0, "opq", 0o755),
        Opaque(0, "opq"),
        File(0, "opq/new", b"new in opaque lower0/opq\n", 0o644),
        File(0, "c", b"c from lower0\n", 0o644),
        Owner(0, "c", 1000, 1000),
        Dir(0, "d2", 0o755),
        File(0, "d2/l0", b"l0\n", 0o644),
    ]
}

/// Writes the fixture into `stack`'s lower layers (which must be exactly three).
pub fn write_layers(stack: &Stack, format: Format) {
    assert_eq!(stack.lowers.len(), 3, "the fixture has three lower layers");
    for item in items() {
        write_item(stack, format, &item);
    }
}

fn write_item(stack: &Stack, format: Format, item: &Item) {
    let at = |layer: usize, p: &str| stack.lowers[layer].join(p);
    match *item {
        Item::Dir(l, p, mode) => {
            let path = at(l, p);
            std::fs::create_dir_all(&path).expect("fixture dir");
            set_mode(&path, mode);
        }
        Item::File(l, p, data, mode) => {
            let path = at(l, p);
            std::fs::write(&path, data).expect("fixture file");
            set_mode(&path, mode);
        }
        Item::BigFile(l, p, len) => {
            std::fs::write(at(l, p), content(0xb16, len)).expect("fixture big file")
        }
        Item::Link(l, old, new) => {
            std::fs::hard_link(at(l, old), at(l, new)).expect("fixture link")
        }
        Item::Symlink(l, p, target) => symlink(target, at(l, p)).expect("fixture symlink"),
        Item::Fifo(l, p) => {
            mkfifo(&at(l, p), Mode::from_bits_truncate(0o644)).expect("fixture fifo")
        }
        Item::Owner(l, p, uid, gid) => chown(
            &at(l, p),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .expect("fixture chown"),
        Item::Xattr(l, p, name, value) => xattr::set(at(l, p), name, value).expect("fixture xattr"),
        Item::Whiteout(l, p) => write_whiteout(&at(l, p), format),
        Item::Opaque(l, p) => write_opaque(&at(l, p), format),
    }
}

fn set_mode(path: &Path, mode: u32) {
    // `set_permissions` is chmod(2): not subject to the umask, so 4755 stays 4755.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("fixture chmod");
}

fn write_whiteout(path: &Path, format: Format) {
    match format {
        Format::Overlay => {
            mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).expect("fixture whiteout (mknod 0/0)")
        }
        Format::Aufs => {
            let name = path.file_name().expect("whiteout has a name");
            let mut marker = std::ffi::OsString::from(".wh.");
            marker.push(name);
            std::fs::write(path.with_file_name(marker), b"").expect("fixture .wh. file");
        }
    }
}

fn write_opaque(dir: &Path, format: Format) {
    match format {
        Format::Overlay => {
            // trusted.* needs root, which every mounting test has.
            xattr::set(dir, "trusted.overlay.opaque", b"y").expect("fixture opaque xattr");
        }
        Format::Aufs => {
            std::fs::write(dir.join(".wh..wh..opq"), b"").expect("fixture .wh..wh..opq")
        }
    }
}
