//! The example layer stack the demo mounts, written as data and laid out on disk by the demo
//! itself, so that the demo needs no image, download or fixture file.
//!
//! Three lower layers, top-most first like a container image: `top` uses overlay whiteouts
//! (a character device 0/0), `mid` uses AUFS/OCI whiteouts (`.wh.<name>` and an opaque
//! `.wh..wh..opq`), `base` is a plain tree. The expected merged view is written beside them in
//! [`EXPECTED_PRESENT`] and [`EXPECTED_ABSENT`], so the demo can check what it shows.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::host::{self, Context, Result};

/// One thing to create in a layer; paths are relative to the layer's root.
pub enum Entry {
    Dir(&'static str),
    File(&'static str, &'static str),
    Executable(&'static str, &'static str),
    /// A hard link at the first path to the (earlier) second one.
    HardLink(&'static str, &'static str),
    /// Overlay whiteout: a character device 0/0 (kernel Documentation/filesystems/overlayfs.rst,
    /// "whiteouts and opaque directories").
    CharDevWhiteout(&'static str),
}

/// A lower layer: its directory name under `target/demo/` and its entries.
pub struct Layer {
    pub name: &'static str,
    pub about: &'static str,
    pub entries: &'static [Entry],
}

use Entry::*;

/// The lower layers, top-most first (the order of `--lower`).
pub const LAYERS: &[Layer] = &[
    Layer {
        name: "top",
        about: "overlay format: char device 0/0 hides usr/share/doc/readme; os-release changed",
        entries: &[
            File(
                "etc/os-release",
                "NAME=\"unionfs demo\"\nVERSION=\"2 (top)\"\n",
            ),
            CharDevWhiteout("usr/share/doc/readme"),
        ],
    },
    Layer {
        name: "mid",
        about: "AUFS/OCI format: etc/.wh.motd hides etc/motd; var/cache is opaque",
        entries: &[
            File("etc/.wh.motd", ""),
            File("var/cache/.wh..wh..opq", ""),
            File("var/cache/fresh", "cache entry from mid\n"),
            File(
                "usr/share/doc/changelog",
                "2: mid layer added a changelog\n",
            ),
        ],
    },
    Layer {
        name: "base",
        about: "plain tree; home/user/notes.link is a hard link to notes.txt",
        entries: &[
            File(
                "etc/os-release",
                "NAME=\"unionfs demo\"\nVERSION=\"1 (base)\"\n",
            ),
            File("etc/motd", "welcome (from base, hidden by mid)\n"),
            File("etc/hostname", "demo\n"),
            Executable(
                "bin/hello",
                "#!/bin/sh\necho \"hello from the base layer\"\n",
            ),
            File("usr/share/doc/readme", "readme from base (hidden by top)\n"),
            File("home/user/notes.txt", "first line, from base\n"),
            HardLink("home/user/notes.link", "home/user/notes.txt"),
            Dir("var/cache/junk/old"),
            File(
                "var/cache/junk/stale.tmp",
                "stale (hidden: mid made var/cache opaque)\n",
            ),
        ],
    },
];

/// Paths the merged view must show.
pub const EXPECTED_PRESENT: &[&str] = &[
    "etc/os-release",
    "etc/hostname",
    "bin/hello",
    "usr/share/doc/changelog",
    "home/user/notes.txt",
    "home/user/notes.link",
    "var/cache/fresh",
];

/// Paths the merged view must not show: whiteouts, opaque directories and the markers
/// themselves never appear.
pub const EXPECTED_ABSENT: &[&str] = &[
    "etc/motd",
    "etc/.wh.motd",
    "usr/share/doc/readme",
    "var/cache/junk",
    "var/cache/.wh..wh..opq",
];

/// Creates every layer of [`LAYERS`] under `root`.
pub fn create(root: &Path) -> Result<()> {
    for layer in LAYERS {
        let dir = root.join(layer.name);
        println!("layer {:<5} {}", layer.name, layer.about);
        fs::create_dir_all(&dir).context(|| format!("create {}", dir.display()))?;
        for entry in layer.entries {
            create_entry(&dir, entry)?;
        }
    }
    Ok(())
}

fn create_entry(layer: &Path, entry: &Entry) -> Result<()> {
    let rel = match entry {
        Dir(p) | File(p, _) | Executable(p, _) | HardLink(p, _) | CharDevWhiteout(p) => p,
    };
    let path = layer.join(rel);
    let parent = path.parent().expect("entries are below the layer root");
    fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))?;
    match entry {
        Dir(_) => fs::create_dir_all(&path).context(|| format!("create {}", path.display())),
        File(_, text) => fs::write(&path, text).context(|| format!("write {}", path.display())),
        Executable(_, text) => {
            fs::write(&path, text).context(|| format!("write {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .context(|| format!("chmod 755 {}", path.display()))
        }
        HardLink(_, target) => {
            let target = layer.join(target);
            fs::hard_link(&target, &path)
                .context(|| format!("link {} to {}", path.display(), target.display()))
        }
        CharDevWhiteout(_) => {
            // std has no mknod; the command keeps xtask free of libc.
            let mut cmd = Command::new("mknod");
            cmd.arg(&path).args(["c", "0", "0"]);
            host::run(&mut cmd)
        }
    }
}
