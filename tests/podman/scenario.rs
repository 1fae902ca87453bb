//! The steps of the podman tests, kept out of `tests/podman.rs` so that each test there reads
//! as a list of steps: images built with buildah and podman over unionfs, containers run,
//! changed, diffed, committed and exported, each result compared with what it must hold.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::contract::{write, MTIME};
use crate::engine::{busybox_rootfs, fuse_mounts_below, Engine};
use crate::invoke::walk;

/// `podman import` of a tar of `rootfs`.
pub fn import_rootfs(eng: &Engine, rootfs: &Path, name: &str) {
    let tar = eng.dir.path().join("rootfs.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar of the rootfs failed");
    eng.podman(&[OsStr::new("import"), tar.as_os_str(), OsStr::new(name)]);
}

/// The tree under /data of `image`, read from the host through `podman mount`: path to `d`,
/// `l:target` or `f:content`.
pub fn data_tree(eng: &Engine, image: &str) -> BTreeMap<String, String> {
    tree_below(eng, image, "data")
}

fn tree_below(eng: &Engine, image: &str, dir: &str) -> BTreeMap<String, String> {
    let ctr = eng.podman(&["create", "--network=none", image, "true"]);
    let ctr = ctr.trim();
    let merged = PathBuf::from(eng.podman(&["mount", ctr]).trim());
    let root = merged.join(dir);
    let mut tree = BTreeMap::new();
    for s in walk(&root) {
        let p = root.join(&s.path);
        let v = match s.kind {
            'd' => "d".to_string(),
            'l' => format!("l:{}", std::fs::read_link(&p).expect("readlink").display()),
            _ => format!("f:{}", std::fs::read_to_string(&p).expect("read")),
        };
        tree.insert(s.path, v);
    }
    eng.podman(&["umount", ctr]);
    eng.podman(&["rm", ctr]);
    tree
}

fn tree_of(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// The image's first layer: busybox and a /data tree, copied with `buildah from scratch`.
const BASE_DATA: &[(&str, &str)] = &[
    ("keep/a", "a\n"),
    ("keep/b", "b\n"),
    ("keep/c", "c\n"),
    ("gone/c", "c\n"),
    ("opq/sub/d", "d\n"),
    ("opq/e", "e\n"),
    ("repl/f", "f\n"),
    ("fileToDir", "file\n"),
    ("stamp", "stamp\n"),
];

/// Builds `name`: a base layer copied in with `buildah from scratch` + `buildah copy`, then a
/// layer edited from the host through `buildah mount` (so that containers/storage computes
/// its whiteouts by comparing the read-write mount with the parent's read-only one).
pub fn layered_image(eng: &Engine, name: &str) {
    let rootfs = eng.dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    for (p, text) in BASE_DATA {
        write(&rootfs.join("data").join(p), text);
    }
    std::os::unix::fs::symlink("keep/a", rootfs.join("data/link")).expect("symlink");
    let t = nix::sys::time::TimeSpec::new(MTIME.0, MTIME.1);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &rootfs.join("data/stamp"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("set the stamp's mtime");
    let ctr = eng.buildah(&["from", "scratch"]);
    let ctr = ctr.trim();
    eng.buildah(&[
        OsStr::new("copy"),
        OsStr::new(ctr),
        rootfs.as_os_str(),
        OsStr::new("/"),
    ]);
    eng.buildah(&["commit", "--quiet", ctr, "localhost/base:1"]);
    eng.buildah(&["rm", ctr]);

    let ctr = eng.buildah(&["from", "localhost/base:1"]);
    let ctr = ctr.trim();
    let mnt = PathBuf::from(eng.buildah(&["mount", ctr]).trim());
    let data = mnt.join("data");
    std::fs::remove_file(data.join("keep/b")).expect("delete a lower file");
    std::fs::remove_dir_all(data.join("gone")).expect("delete a lower directory");
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("keep/a"))
        .expect("open a lower file for append");
    std::io::Write::write_all(&mut a, b"more\n").expect("append");
    drop(a);
    std::fs::remove_dir_all(data.join("opq")).expect("delete a lower tree");
    write(&data.join("opq/n"), "n\n");
    std::fs::remove_dir_all(data.join("repl")).expect("delete a lower dir");
    write(&data.join("repl"), "now a file\n");
    std::fs::remove_file(data.join("fileToDir")).expect("delete a lower file");
    write(&data.join("fileToDir/x"), "x\n");
    write(&data.join("added"), "added\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.join("stamp"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod a lower file");
    eng.buildah(&["umount", ctr]);
    eng.buildah(&["commit", "--quiet", ctr, name]);
    eng.buildah(&["rm", ctr]);
}

/// What /data of [`layered_image`] holds.
fn layered_tree() -> BTreeMap<String, String> {
    tree_of(&[
        ("added", "f:added\n"),
        ("fileToDir", "d"),
        ("fileToDir/x", "f:x\n"),
        ("keep", "d"),
        ("keep/a", "f:a\nmore\n"),
        ("keep/c", "f:c\n"),
        ("link", "l:keep/a"),
        ("opq", "d"),
        ("opq/n", "f:n\n"),
        ("repl", "f:now a file\n"),
        ("stamp", "f:stamp\n"),
    ])
}

/// The layered image shows exactly the edits, and the copied-up file kept its mtime.
pub fn check_layered_image(eng: &Engine, image: &str) {
    assert_eq!(data_tree(eng, image), layered_tree());
    let out = eng.podman(&[
        "run",
        "--rm",
        "--network=none",
        image,
        "stat",
        "-c",
        "%a %Y",
        "/data/stamp",
    ]);
    assert_eq!(out.trim(), format!("600 {}", MTIME.0));
    // containers/storage stores layers with AUFS whiteouts when a mount program is used.
    let whiteouts = find_named(&eng.root.join("overlay"), ".wh.b");
    assert!(
        !whiteouts.is_empty(),
        "no AUFS whiteout for data/keep/b in the store's layers"
    );
}

fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name() == name {
            found.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) && !p.ends_with("merged") {
            found.extend(find_named(&p, name));
        }
    }
    found
}

/// A container writes over the lower layers; `podman diff` lists exactly that; the commit
/// shows it.
pub fn run_write_diff_commit(eng: &Engine, image: &str) {
    let script = "echo hi > /data/new && rm /data/keep/a && rm -r /data/fileToDir && \
                  mkdir /data/fileToDir && echo z > /data/fileToDir/z && chmod 640 /data/repl && \
                  ls /data/keep && cat /data/added";
    let out = eng.podman(&[
        "run",
        "--name",
        "writer",
        "--network=none",
        image,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out, "c\nadded\n");
    let diff = eng.podman(&["diff", "writer"]);
    let got: Vec<&str> = diff.lines().filter(|l| l.contains(" /data")).collect();
    let mut got = got;
    got.sort();
    let mut want = vec![
        "A /data/fileToDir/z",
        "A /data/new",
        "C /data",
        "C /data/fileToDir",
        "C /data/keep",
        "C /data/repl",
        "D /data/fileToDir/x",
        "D /data/keep/a",
    ];
    want.sort();
    assert_eq!(got, want, "podman diff:\n{diff}");
    eng.podman(&["commit", "--quiet", "writer", "localhost/committed:1"]);
    let mut tree = layered_tree();
    tree.remove("keep/a");
    tree.remove("fileToDir/x");
    tree.insert("fileToDir/z".into(), "f:z\n".into());
    tree.insert("new".into(), "f:hi\n".into());
    assert_eq!(data_tree(eng, "localhost/committed:1"), tree);
    let out = eng.podman(&[
        "run",
        "--rm",
        "--network=none",
        "localhost/committed:1",
        "sh",
        "-c",
        "stat -c %a /data/repl; cat /data/new",
    ]);
    assert_eq!(out, "640\nhi\n");
}

/// `podman export` holds the merged tree; a stopped container restarts over its own upper.
pub fn export_and_restart(eng: &Engine, image: &str) {
    let tar = eng.dir.path().join("export.tar");
    eng.podman(&[
        OsStr::new("export"),
        OsStr::new("-o"),
        tar.as_os_str(),
        OsStr::new("writer"),
    ]);
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .expect("run tar -t");
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .filter(|l| l.starts_with("data"))
        .collect();
    for present in [
        "data/new",
        "data/fileToDir/z",
        "data/keep/c",
        "data/added",
        "data/link",
    ] {
        assert!(
            names.contains(&present),
            "{present} missing from export: {names:?}"
        );
    }
    for absent in [
        "data/keep/a",
        "data/keep/b",
        "data/gone",
        "data/opq/e",
        "data/fileToDir/x",
    ] {
        assert!(!names.contains(&absent), "{absent} in export: {names:?}");
    }

    let count = "echo run >> /data/runs && wc -l < /data/runs";
    let out = eng.podman(&[
        "run",
        "--name",
        "again",
        "--network=none",
        image,
        "sh",
        "-c",
        count,
    ]);
    assert_eq!(out.trim(), "1");
    let out = eng.podman(&["start", "--attach", "again"]);
    assert_eq!(
        out.trim(),
        "2",
        "the restarted container lost its upper layer"
    );
}

/// A non-root user sees permissions enforced; two containers run at once, each on its own
/// mount, and leave nothing mounted once removed.
pub fn non_root_and_concurrent(eng: &Engine, image: &str) {
    let script = "id -u; echo mine > /tmp/f && stat -c %u /tmp/f; cat /tmp/f; \
                  (echo x > /data/keep/c) 2>/dev/null || echo denied; cat /data/keep/c";
    let out = eng.podman(&[
        "run",
        "--rm",
        "--network=none",
        "--user",
        "1000:1000",
        image,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out, "1000\n1000\nmine\ndenied\nc\n");

    let before = fuse_mounts_below(eng.dir.path()).len();
    for name in ["one", "two"] {
        eng.podman(&[
            "run",
            "-d",
            "--name",
            name,
            "--network=none",
            image,
            "sleep",
            "120",
        ]);
    }
    assert_eq!(fuse_mounts_below(eng.dir.path()).len(), before + 2);
    for name in ["one", "two"] {
        eng.podman(&[
            "exec",
            name,
            "sh",
            "-c",
            &format!("echo {name} > /data/who"),
        ]);
    }
    for name in ["one", "two"] {
        let out = eng.podman(&["exec", name, "cat", "/data/who"]);
        assert_eq!(out.trim(), name);
    }
    eng.podman(&["rm", "--force", "--time", "0", "one", "two"]);
    assert_eq!(fuse_mounts_below(eng.dir.path()).len(), before);
}

/// A multi-stage build that edits the lower layers in each stage, with one `RUN` after each
/// `FROM`/`COPY` (runc never has to create a missing bind-mount target then).
pub fn multi_stage_build(eng: &Engine, base: &str, name: &str) {
    let ctx = eng.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("create the build context");
    let containerfile = format!(
        "FROM {base} AS edit\n\
         RUN echo again >> /data/keep/a && rm /data/keep/c && rm -r /data/opq && \
             mkdir /data/opq && echo o > /data/opq/o && mkdir -p /data/edit/deep && \
             echo e > /data/edit/deep/e && mv /data/added /data/moved && rm /data/link && \
             ln -s moved /data/link\n\
         FROM {base}\n\
         COPY --from=edit /data /data2\n\
         RUN rm -r /data/fileToDir && echo back > /data/fileToDir && rm /data/repl && \
             mkdir /data/repl && echo r > /data/repl/r && rm -r /data2/edit/deep && \
             echo top > /data2/edit/top\n"
    );
    std::fs::write(ctx.join("Containerfile"), containerfile).expect("write the Containerfile");
    eng.podman(&[
        OsStr::new("build"),
        OsStr::new("--quiet"),
        OsStr::new("--network=none"),
        OsStr::new("-t"),
        OsStr::new(name),
        ctx.as_os_str(),
    ]);
    let mut want = layered_tree();
    want.insert("fileToDir".into(), "f:back\n".into());
    want.remove("fileToDir/x");
    want.insert("repl".into(), "d".into());
    want.insert("repl/r".into(), "f:r\n".into());
    let edited = [
        ("edit", "d"),
        ("edit/top", "f:top\n"),
        ("fileToDir", "d"),
        ("fileToDir/x", "f:x\n"),
        ("keep", "d"),
        ("keep/a", "f:a\nmore\nagain\n"),
        ("link", "l:moved"),
        ("moved", "f:added\n"),
        ("opq", "d"),
        ("opq/o", "f:o\n"),
        ("repl", "f:now a file\n"),
        ("stamp", "f:stamp\n"),
    ];
    assert_eq!(
        tree_below(eng, name, "data2"),
        tree_of(&edited),
        "/data2 (copied from the edit stage)"
    );
    assert_eq!(data_tree(eng, name), want, "/data of the final stage");
}

/// A build whose stages run several `RUN`s in a row, then `podman run` of the result: needs
/// runc to create `/run/.containerenv`, which buildah whites out after each `RUN`.
pub fn several_runs_build(eng: &Engine, base: &str) {
    let ctx = eng.dir.path().join("ctx-runs");
    std::fs::create_dir_all(&ctx).expect("create the build context");
    let containerfile = format!(
        "FROM {base}\n\
         RUN echo one >> /data/keep/a\n\
         RUN rm /data/keep/c && mkdir /data/keep/c && echo in > /data/keep/c/in\n\
         RUN rm -r /data/keep/c && echo file > /data/keep/c\n"
    );
    std::fs::write(ctx.join("Containerfile"), containerfile).expect("write the Containerfile");
    eng.podman(&[
        OsStr::new("build"),
        OsStr::new("--quiet"),
        OsStr::new("--network=none"),
        OsStr::new("-t"),
        OsStr::new("localhost/runs:1"),
        ctx.as_os_str(),
    ]);
    let out = eng.podman(&[
        "run",
        "--rm",
        "--network=none",
        "localhost/runs:1",
        "cat",
        "/data/keep/a",
        "/data/keep/c",
    ]);
    assert_eq!(out, "a\nmore\none\nfile\n");
}
