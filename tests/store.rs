//! Integration tests of the image store through the `unionfs` binary, against tools nobody
//! here wrote: images built with `umoci`, converted with `skopeo`, imported, mounted by name and
//! compared with `umoci unpack`; exports read back by both; hostile archives refused with
//! nothing added to the store or written outside it. Every test uses its own `--root`.

mod common;
#[path = "store/fixture.rs"]
mod fixture;

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
