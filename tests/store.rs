//! Integration tests of the image store through the `unionfs` binary, against tools nobody
//! here wrote: images built with `umoci`, converted with `skopeo`, imported, mounted by name and
//! compared with `umoci unpack`; exports read back by both, and pulled and run by podman;
//! hostile archives refused with nothing added to the store or written outside it. Every test
//! uses its own `--root`.

mod common;
#[path = "store/fixture.rs"]
mod fixture;
#[path = "store/podman.rs"]
mod podman;

use std::path::Path;

use fixture::{tree, unionfs, unionfs_ok, Fixture};

#[test]
fn umoci_image_mounts_like_umoci_unpack_and_round_trips() {
    if !common::can_mount("umoci_image_mounts_like_umoci_unpack_and_round_trips") {
        return;
    }
    let f = Fixture::new();
    let layout = f.umoci_image();
    let out = unionfs_ok(
        &f,
        &["import", &format!("{}:t", layout.display()), "app:v1"],
    );
    assert_eq!(out.trim(), "app:v1");
    let reference = f.umoci_unpack(&layout, "t", "ref");

    let mnt = f.dir("mnt");
    let _m = f.mount_image("app:v1", &mnt);
    assert_eq!(
        tree(&mnt),
        tree(&reference),
        "merged tree differs from umoci unpack"
    );

    // Change things through the mount, then look at them as docker diff would.
    std::fs::write(mnt.join("etc/new.conf"), b"new\n").unwrap();
    std::fs::remove_file(mnt.join("bin/tool")).unwrap();
    std::fs::write(mnt.join("etc/motd"), b"changed\n").unwrap();
    std::fs::remove_dir_all(mnt.join("var/cache")).unwrap();
    let diff = unionfs_ok(&f, &["diff", mnt.to_str().unwrap()]);
    for line in [
        "A /etc/new.conf",
        "C /etc/motd",
        "D /bin/tool",
        "D /var/cache",
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "{line} missing in:\n{diff}"
        );
    }
    let merged_after = tree(&mnt);
    drop(_m);

    let out = unionfs_ok(&f, &["commit", mnt.to_str().unwrap(), "app:v2"]);
    assert_eq!(out.trim(), "app:v2");
    let layers = unionfs_ok(&f, &["layers", "app:v2", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&layers).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4, "{layers}");
    assert!(rows[0]["created_by"]
        .as_str()
        .unwrap()
        .contains("unionfs commit"));

    // The committed image mounts to the same tree, and exports to a layout umoci and skopeo read.
    let mnt2 = f.dir("mnt2");
    let m2 = f.mount_image("app:v2", &mnt2);
    assert_eq!(tree(&mnt2), merged_after);
    drop(m2);
    let exported = f.root.path().join("export");
    unionfs_ok(&f, &["export", "app:v2", exported.to_str().unwrap()]);
    let back = f.umoci_unpack(&exported, "v2", "back");
    assert_eq!(
        tree(&back),
        merged_after,
        "umoci unpack of the export differs"
    );
    f.run(
        "skopeo",
        &["inspect", &format!("oci:{}:v2", exported.display())],
    );

    // skopeo turns the export into a docker save archive; importing that gives the same tree.
    let archive = f.root.path().join("docker.tar");
    f.run(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:v2", exported.display()),
            &format!("docker-archive:{}:app:v3", archive.display()),
        ],
    );
    let out = unionfs_ok(&f, &["import", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), "app:v3");
    let flat = f.root.path().join("flat.tar");
    unionfs_ok(&f, &["export", "--flat", "app:v3", flat.to_str().unwrap()]);
    let unpacked = f.dir("flat");
    f.run(
        "tar",
        &[
            "-xpf",
            flat.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    assert_eq!(tree(&unpacked), merged_after, "flat export differs");

    // Shared layers are stored once; rmi refuses while a container uses the image.
    assert_eq!(
        stored_layers(&f),
        distinct_layers(&f, &["app:v1", "app:v2", "app:v3"])
    );
    assert_eq!(
        distinct_layers(&f, &["app:v1", "app:v2"]),
        4,
        "v2 is v1 plus one layer"
    );
    let err = unionfs(&f, &["rmi", "app:v1"]).unwrap_err();
    assert!(err.contains("used by container"), "{err}");
    unionfs_ok(&f, &["rm", mnt.to_str().unwrap()]);
    unionfs_ok(&f, &["rm", mnt2.to_str().unwrap()]);
    unionfs_ok(&f, &["rmi", "app:v1"]);
    let left = distinct_layers(&f, &["app:v2", "app:v3"]);
    assert_eq!(stored_layers(&f), left, "v2 still uses v1's layers");
    unionfs_ok(&f, &["rmi", "app:v2"]);
    unionfs_ok(&f, &["rmi", "app:v3"]);
    assert_eq!(stored_layers(&f), 0);
}

/// An exported image is a layout podman reads back (vfs driver, no mount program): same
/// layers as the export's config, and a container from it sees the top layer's file and not
/// the one its whiteout deletes.
#[test]
fn podman_pulls_and_runs_an_exported_image() {
    if !podman::tools_present("podman_pulls_and_runs_an_exported_image") {
        return;
    }
    let f = Fixture::new();
    let layout = podman::busybox_image(&f);
    unionfs_ok(
        &f,
        &["import", &format!("{}:t", layout.display()), "box:v1"],
    );
    let p = podman::Podman::new();
    let exported = p.path("export");
    unionfs_ok(&f, &["export", "box:v1", exported.to_str().unwrap()]);
    let diff_ids = podman::layout_diff_ids(&exported, "v1");
    assert_eq!(diff_ids.len(), 2, "{diff_ids:?}");

    let pulled = p.run(&["pull", "--quiet", &format!("oci:{}:v1", exported.display())]);
    let id = pulled
        .lines()
        .last()
        .expect("podman pull prints the id")
        .trim();
    let layers = p.run(&[
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        id,
    ]);
    let layers: Vec<String> = serde_json::from_str(layers.trim()).unwrap();
    assert_eq!(layers, diff_ids, "podman's layers differ from the export's");

    let run = |script: &str| p.run(&["run", "--rm", "--network=none", id, "/bin/sh", "-c", script]);
    assert_eq!(run("cat /etc/message"), "from layer two\n");
    assert_eq!(
        run("test -e /etc/old && echo present || echo deleted"),
        "deleted\n"
    );
    let containers = p.run(&["ps", "--all", "--quiet"]);
    assert_eq!(containers.trim(), "", "--rm left containers");
    p.run(&["rmi", id]);
    drop(p);
}

fn stored_layers(f: &Fixture) -> usize {
    std::fs::read_dir(f.store.join("layers")).unwrap().count()
}

/// How many different layers the named images use, per `unionfs images --format json`.
fn distinct_layers(f: &Fixture, names: &[&str]) -> usize {
    let images = unionfs_ok(f, &["images", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&images).unwrap();
    let mut ids = std::collections::HashSet::new();
    for img in v.as_array().unwrap() {
        if names.contains(&img["name"].as_str().unwrap()) {
            for l in img["layers"].as_array().unwrap() {
                ids.insert(l.as_str().unwrap().to_owned());
            }
        }
    }
    ids.len()
}

#[test]
fn which_and_inspect_explain_the_layers() {
    if !common::can_mount("which_and_inspect_explain_the_layers") {
        return;
    }
    let f = Fixture::new();
    let layout = f.umoci_image();
    unionfs_ok(&f, &["import", &format!("{}:t", layout.display()), "app"]);
    let which = unionfs_ok(&f, &["which", "app", "/etc/motd", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&which).unwrap();
    let roles: Vec<(u64, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, vec![(1, "provides"), (0, "shadowed")]);
    let which = unionfs_ok(&f, &["which", "app", "/bin/tool2", "--format", "json"]);
    assert!(which.contains("whites-out"), "{which}");
    assert!(unionfs(&f, &["which", "app", "/nope"])
        .unwrap_err()
        .contains("not found"));

    let inspect = unionfs_ok(&f, &["inspect", "app", "--format", "json"]);
    let layers: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let base = &layers[0];
    // The base's 64 KiB blob is deleted by layer 2 and its motd replaced by layer 1.
    assert_eq!(base["wasted"].as_u64().unwrap(), 65536 + 6);
    let marks: Vec<(String, String)> = layers[1]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["mark"].as_str().unwrap().into(),
                e["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        marks.contains(&("M".into(), "/etc/motd".into())),
        "{marks:?}"
    );
    assert!(
        marks.contains(&("D".into(), "/bin/tool2".into())),
        "{marks:?}"
    );
    assert!(
        marks.contains(&("A".into(), "/srv/added".into())),
        "{marks:?}"
    );
    let one = unionfs_ok(&f, &["inspect", "app", "--layer", "2", "/"]);
    assert!(
        one.contains("D  whiteout /big") || one.contains("/big"),
        "{one}"
    );
    assert!(unionfs(&f, &["inspect", "app", "--layer", "9"]).is_err());
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    if !common::can_mount("hostile_archives_are_refused_and_leave_nothing") {
        return;
    }
    let f = Fixture::new();
    for (name, bytes, want) in fixture::hostile_tars() {
        let path = f.root.path().join(format!("{name}.tar"));
        std::fs::write(&path, bytes).unwrap();
        let err = unionfs(&f, &["import", path.to_str().unwrap(), "bad"]).unwrap_err();
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        f.assert_store_empty(name);
    }
    assert!(
        !f.root.path().join("escaped").exists(),
        "something was written outside the store"
    );
}

#[test]
fn corrupt_layouts_are_refused() {
    if !common::can_mount("corrupt_layouts_are_refused") {
        return;
    }
    let f = Fixture::new();
    let layout = f.umoci_image();
    for (name, want) in [
        ("digest", "digest mismatch"),
        (
            "media-type",
            "unsupported media type application/vnd.example.weird",
        ),
        ("truncated", "truncated or corrupt"),
        ("tag", "no image tagged \"nope\""),
    ] {
        let copy = f.root.path().join(format!("layout-{name}"));
        f.run(
            "cp",
            &["-a", layout.to_str().unwrap(), copy.to_str().unwrap()],
        );
        let tag = fixture::corrupt_layout(&copy, name);
        let err =
            unionfs(&f, &["import", &format!("{}:{tag}", copy.display()), "bad"]).unwrap_err();
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        f.assert_store_empty(name);
    }
}

#[test]
fn whiteouts_convert_both_ways() {
    if !common::can_mount("whiteouts_convert_both_ways") {
        return;
    }
    fixture::whiteout_round_trip(Path::new("/"));
}

/// A base image for the rename tests: two directories to rename (one across parents), a file
/// with two hard links, built here and imported as a plain layer tar.
fn rename_base(f: &Fixture) {
    let src = f.dir("rename-base");
    for d in ["dir/sub", "a/dir/sub2", "b", "hl"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("dir/f1"), b"one").unwrap();
    std::fs::write(src.join("dir/sub/f2"), b"two").unwrap();
    std::fs::write(src.join("dir/sub/f3"), b"three").unwrap();
    std::os::unix::fs::symlink("f1", src.join("dir/link")).unwrap();
    std::fs::write(src.join("a/dir/g"), b"g").unwrap();
    std::fs::write(src.join("a/dir/sub2/h"), b"h").unwrap();
    std::fs::write(src.join("a/keep"), b"k").unwrap();
    std::fs::write(src.join("b/existing"), b"e").unwrap();
    std::fs::write(src.join("hl/x"), b"same").unwrap();
    std::fs::hard_link(src.join("hl/x"), src.join("hl/y")).unwrap();
    let tar = f.root.path().join("rename-base.tar");
    let bytes = unionfs::store::pack::pack_layer(&src, Vec::new()).unwrap();
    std::fs::write(&tar, bytes).unwrap();
    unionfs_ok(f, &["import", tar.to_str().unwrap(), "base"]);
}

/// The upper directory of the only container of the store.
fn container_upper(f: &Fixture) -> std::path::PathBuf {
    let out = unionfs_ok(f, &["containers", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["upper"].as_str().unwrap().into()
}

/// Names of a tar's entries, and every PAX key of any entry.
fn tar_names_and_pax_keys(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut keys = Vec::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                keys.push(x.unwrap().key().unwrap().to_owned());
            }
        }
    }
    (names, keys)
}

#[test]
fn commit_and_diff_of_renamed_directories_keep_their_contents() {
    if !common::can_mount("commit_and_diff_of_renamed_directories_keep_their_contents") {
        return;
    }
    let f = Fixture::new();
    rename_base(&f);
    let mnt = f.dir("mnt");
    let m = f.mount_image("base", &mnt);
    std::fs::rename(mnt.join("dir"), mnt.join("newdir")).unwrap();
    std::fs::rename(mnt.join("a/dir"), mnt.join("b/moved")).unwrap();
    std::fs::write(mnt.join("newdir/added"), b"added").unwrap();
    std::fs::remove_file(mnt.join("newdir/sub/f2")).unwrap();
    std::fs::write(mnt.join("hl/x"), b"changed").unwrap();

    // The upper holds what the test is about: redirects, and a copy-up through the index.
    let upper = container_upper(&f);
    for d in ["newdir", "b/moved"] {
        let names: Vec<String> = xattr::list(upper.join(d))
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with("overlay.redirect")),
            "{d}: no redirect in {names:?}"
        );
    }
    let hl = std::fs::symlink_metadata(upper.join("hl/x")).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::nlink(&hl) > 1,
        "hl/x not linked to the index"
    );

    let diff = unionfs_ok(&f, &["diff", mnt.to_str().unwrap()]);
    let lines: Vec<&str> = diff.lines().collect();
    for want in [
        "D /dir",
        "A /newdir",
        "A /newdir/f1",
        "A /newdir/link",
        "A /newdir/added",
        "A /newdir/sub",
        "A /newdir/sub/f3",
        "D /a/dir",
        "A /b/moved",
        "A /b/moved/g",
        "A /b/moved/sub2",
        "A /b/moved/sub2/h",
        "C /hl/x",
        "C /hl/y",
    ] {
        assert!(lines.contains(&want), "{want} missing in:\n{diff}");
    }
    assert!(!diff.contains("f2"), "a deleted file listed:\n{diff}");

    // What commit packs: the renamed directories opaque and complete, no private xattr.
    let lowers = vec![f
        .store
        .join("layers")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("root")];
    let bytes = unionfs::store::pack::pack_upper(&upper, &lowers, Vec::new()).unwrap();
    let (names, keys) = tar_names_and_pax_keys(&bytes);
    for want in [
        ".wh.dir",
        "newdir/.wh..wh..opq",
        "newdir/f1",
        "newdir/sub/f3",
        "b/moved/sub2/h",
        "a/.wh.dir",
        "hl/x",
        "hl/y",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not packed: {names:?}"
        );
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("unionfs.") || k.contains("overlay.")),
        "private xattrs packed: {keys:?}"
    );

    let merged_after = tree(&mnt);
    drop(m);
    unionfs_ok(&f, &["commit", mnt.to_str().unwrap(), "app:v2"]);
    let mnt2 = f.dir("mnt2");
    let m2 = f.mount_image("app:v2", &mnt2);
    assert_eq!(tree(&mnt2), merged_after, "committed image differs");
    drop(m2);
}
