//! Helpers for tests/store.rs: a private store root, running `unionfs --root`, building a
//! three-layer image with umoci, comparable tree listings, hostile archives, corrupted layouts.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::common;

pub struct Fixture {
    pub root: tempfile::TempDir,
    pub store: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let root = tempfile::Builder::new()
            .prefix("unionfs-store-")
            .tempdir()
            .unwrap();
        let store = root.path().join("store");
        Fixture { root, store }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn run(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Three layers: a base; one replacing /etc/motd, adding /srv/added and deleting
    /// /bin/tool2; one deleting /big.
    pub fn umoci_image(&self) -> PathBuf {
        let layout = self.root.path().join("oci");
        let l = layout.to_str().unwrap();
        let bundle = self.root.path().join("bundle");
        let b = bundle.to_str().unwrap();
        let image = format!("{l}:t");
        self.run("umoci", &["init", "--layout", l]);
        self.run("umoci", &["new", "--image", &image]);
        self.run("umoci", &["unpack", "--image", &image, b]);
        let r = bundle.join("rootfs");
        for d in ["etc", "bin", "var/cache/x", "srv"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("etc/motd"), b"hello\n").unwrap();
        std::fs::write(r.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        std::fs::write(r.join("bin/tool2"), b"").unwrap();
        std::fs::write(r.join("var/cache/x/data"), b"cached").unwrap();
        std::fs::write(r.join("big"), vec![7u8; 65536]).unwrap();
        std::os::unix::fs::symlink("tool", r.join("bin/sh")).unwrap();
        std::fs::hard_link(r.join("bin/tool"), r.join("bin/tool-link")).unwrap();
        std::os::unix::fs::chown(r.join("srv"), Some(1000), Some(1000)).unwrap();
        self.run(
            "umoci",
            &["repack", "--refresh-bundle", "--image", &image, b],
        );
        std::fs::write(r.join("etc/motd"), b"welcome\n").unwrap();
        std::fs::write(r.join("srv/added"), b"added").unwrap();
        std::fs::remove_file(r.join("bin/tool2")).unwrap();
        self.run(
            "umoci",
            &["repack", "--refresh-bundle", "--image", &image, b],
        );
        std::fs::remove_file(r.join("big")).unwrap();
        self.run(
            "umoci",
            &["repack", "--refresh-bundle", "--image", &image, b],
        );
        self.run(
            "umoci",
            &["config", "--image", &image, "--config.env", "APP=1"],
        );
        layout
    }

    /// `umoci unpack`s `layout:tag` and returns its rootfs.
    pub fn umoci_unpack(&self, layout: &Path, tag: &str, name: &str) -> PathBuf {
        let dest = self.root.path().join(name);
        self.run(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:{tag}", layout.display()),
                dest.to_str().unwrap(),
            ],
        );
        dest.join("rootfs")
    }

    pub fn mount_image(&self, name: &str, mnt: &Path) -> common::MountGuard {
        let log = self.root.path().join("unionfs.log");
        let args = [
            "mount",
            name,
            mnt.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ];
        unionfs(self, &args).unwrap_or_else(|e| panic!("mount {name}: {e}"));
        common::MountGuard {
            mnt: mnt.to_owned(),
        }
    }

    /// No layer, no image and no staging left in the store.
    pub fn assert_store_empty(&self, case: &str) {
        let layers = std::fs::read_dir(self.store.join("layers"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(layers, 0, "{case}: a layer was added");
        let tmp = std::fs::read_dir(self.store.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(tmp, 0, "{case}: staging left behind");
        if let Ok(index) = std::fs::read_to_string(self.store.join("images.json")) {
            assert!(!index.contains("bad:latest"), "{case}: an image was added");
        }
        let mut escaped = Vec::new();
        walk(self.root.path(), &mut |p| {
            if p.file_name().is_some_and(|n| n == "escaped") {
                escaped.push(p.to_owned());
            }
        });
        assert!(escaped.is_empty(), "{case}: wrote {escaped:?}");
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        }
    }
}

/// Runs `unionfs --root STORE ARGS`: stdout, or stderr on failure.
pub fn unionfs(f: &Fixture, args: &[&str]) -> Result<String, String> {
    let out = Command::new(common::unionfs_bin())
        .arg("--root")
        .arg(&f.store)
        .args(args)
        .output()
        .expect("run unionfs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn unionfs_ok(f: &Fixture, args: &[&str]) -> String {
    unionfs(f, args).unwrap_or_else(|e| panic!("unionfs {args:?}: {e}"))
}

/// One line per entry under `root`: path, type, mode, owner, size, content hash, link target.
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, &mut |p| {
        let m = std::fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap();
        let ft = m.file_type();
        let detail = if ft.is_symlink() {
            format!("-> {}", std::fs::read_link(p).unwrap().display())
        } else if ft.is_file() {
            let mut h = Sha256::new();
            h.update(std::fs::read(p).unwrap());
            format!("{} {:x}", m.len(), h.finalize())
        } else {
            String::new()
        };
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            '?'
        };
        out.push(format!(
            "{} {kind} {:o} {}:{} {detail}",
            String::from_utf8_lossy(rel.as_os_str().as_bytes()),
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ));
    });
    out.sort();
    out
}

fn raw_entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8], size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    if kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    {
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = entries.concat();
    v.extend_from_slice(&[0; 1024]);
    v
}

/// Archives that must be refused, and a piece of the message that must name why and where.
pub fn hostile_tars() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    use tar::EntryType::{Char, Directory, Link, Regular, Symlink};
    let file = |n: &[u8]| raw_entry(n, Regular, b"", b"x", 1);
    let ok = raw_entry(b"ok/", Directory, b"", b"", 0);
    let mut truncated = archive(std::slice::from_ref(&ok));
    truncated.truncate(512);
    truncated.extend(raw_entry(b"ok/big", Regular, b"", &[1; 512], 10_000));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&archive(&[
        ok.clone(),
        raw_entry(b"ok/f", Regular, b"", &[5; 4000], 4000),
    ]))
    .unwrap();
    let mut corrupt_gz = gz.finish().unwrap();
    corrupt_gz.truncate(corrupt_gz.len() / 2);
    vec![
        (
            "dotdot",
            archive(&[ok.clone(), file(b"../escaped")]),
            "entry ../escaped: path leaves the layer",
        ),
        (
            "absolute",
            archive(&[file(b"/tmp/escaped")]),
            "entry /tmp/escaped: absolute path",
        ),
        (
            "symlink",
            archive(&[
                ok.clone(),
                raw_entry(b"ok/escaped", Symlink, b"../../escaped", b"", 0),
            ]),
            "entry ok/escaped: symlink points outside the layer",
        ),
        (
            "symlink-parent",
            archive(&[raw_entry(b"l", Symlink, b"/", b"", 0), file(b"l/escaped")]),
            "entry l/escaped: a parent is not a directory",
        ),
        (
            "hardlink",
            archive(&[raw_entry(b"h", Link, b"../escaped", b"", 0)]),
            "entry h: hard link points outside the layer",
        ),
        (
            "hardlink-missing",
            archive(&[raw_entry(b"h", Link, b"nothere", b"", 0)]),
            "entry h: hard link target is not a file of this layer",
        ),
        (
            "device",
            archive(&[raw_entry(b"null", Char, b"", b"", 0)]),
            "entry null: device nodes",
        ),
        (
            "duplicate",
            archive(&[file(b"f"), file(b"f")]),
            "entry f: duplicate entry",
        ),
        (
            "truncated",
            truncated,
            "truncated or corrupt archive (after entry ok/big)",
        ),
        ("corrupt-gzip", corrupt_gz, "truncated or corrupt"),
    ]
}

fn sha256_hex(b: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b);
    format!("{:x}", h.finalize())
}

/// Breaks an umoci layout in the way `how` names; returns the tag to import.
pub fn corrupt_layout(layout: &Path, how: &str) -> &'static str {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&mdigest)).unwrap()).unwrap();
    let layer0 = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    match how {
        "digest" => {
            // A valid gzip tar, but not the blob the manifest names.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&archive(&[])).unwrap();
            std::fs::write(&layer0, gz.finish().unwrap()).unwrap();
        }
        "truncated" => {
            let b = std::fs::read(&layer0).unwrap();
            std::fs::write(&layer0, &b[..b.len() / 2]).unwrap();
        }
        "media-type" => {
            manifest["layers"][1]["mediaType"] = "application/vnd.example.weird".into();
            let bytes = serde_json::to_vec(&manifest).unwrap();
            let hex = sha256_hex(&bytes);
            std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
            index["manifests"][0]["digest"] = format!("sha256:{hex}").into();
            index["manifests"][0]["size"] = bytes.len().into();
            std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        }
        "tag" => return "nope",
        _ => unreachable!("unknown corruption {how}"),
    }
    "t"
}

/// Packs a tree with overlay whiteouts into OCI form and unpacks it back, through the library.
pub fn whiteout_round_trip(_: &Path) {
    use unionfs::store::{pack, unpack};
    use unionfs::whiteout::{self, XattrNs};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::write(src.join("d/sub/f"), b"f").unwrap();
    whiteout::make_whiteout(&src.join("gone")).unwrap();
    whiteout::set_opaque(&src.join("d"), XattrNs::Trusted).unwrap();

    let bytes = pack::pack_layer(&src, Vec::new()).unwrap();
    let mut names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "".to_owned() + ".wh.gone",
            "d/".into(),
            "d/.wh..wh..opq".into(),
            "d/sub/".into(),
            "d/sub/f".into()
        ]
    );
    let mut tar_bytes = Vec::new();
    tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .for_each(|e| {
            let e = e.unwrap();
            assert!(
                e.header().entry_type() != tar::EntryType::Char,
                "a device in OCI form"
            );
        });
    tar_bytes.extend_from_slice(&bytes);

    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let u = unpack::unpack(&tar_bytes[..], &dest, "round-trip", &[]).unwrap();
    assert_eq!(u.stats.whiteouts, 1);
    assert_eq!(u.stats.opaque_dirs, 1);
    let gone = std::fs::symlink_metadata(dest.join("gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&gone.file_type()) && gone.rdev() == 0);
    assert!(whiteout::is_opaque_dir(&dest.join("d")));
    assert!(!dest.join(".wh.gone").exists() && !dest.join("d/.wh..wh..opq").exists());
    // Packing the unpacked layer gives the same archive: the diffID is stable.
    assert_eq!(pack::pack_layer(&dest, Vec::new()).unwrap(), bytes);
}
