//! unionfs as the `mount_program` of containers/storage (podman, buildah, CRI-O), the role
//! fuse-overlayfs plays today.
//!
//! Two kinds of tests. The contract tests invoke the binary exactly as containers/storage 1.43
//! does (see `podman/invoke.rs`) over a store-like directory of 128 layers with AUFS whiteouts,
//! under both of its names, and compare what a container tool would see with the real
//! fuse-overlayfs when it is installed. The podman tests run podman and buildah against a
//! private store whose overlay driver uses unionfs, from importing a busybox image through
//! builds, runs, commits, diffs and exports, and end with nothing mounted.

mod common;

#[path = "podman/contract.rs"]
mod contract;
#[path = "podman/engine.rs"]
mod engine;
#[path = "podman/invoke.rs"]
mod invoke;
#[path = "podman/scenario.rs"]
mod scenario;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use engine::{busybox_rootfs, find_command, Engine};
use invoke::{mount_entry, processes_serving, run_mount_program, wait_until, FakeStore};

fn can_run_podman(test: &str) -> bool {
    common::can_mount(test) && engine::tools_present(test)
}

/// `fuse-overlayfs` as a symlink to the unionfs binary, in `dir`.
fn fuse_overlayfs_link(dir: &Path) -> PathBuf {
    let link = dir.join("fuse-overlayfs");
    std::os::unix::fs::symlink(common::unionfs_bin(), &link).expect("symlink fuse-overlayfs");
    link
}

// ---------------------------------------------------------------------------------------------
// The invocation contract, without podman.

#[test]
fn containers_storage_invocation_under_both_names() {
    if !common::can_mount("containers_storage_invocation_under_both_names") {
        return;
    }
    let links = tempfile::tempdir().expect("temporary directory");
    let seen_as_unionfs = contract::exercise(&common::unionfs_bin(), true);
    let seen_as_link = contract::exercise(&fuse_overlayfs_link(links.path()), true);
    assert_eq!(seen_as_unionfs, seen_as_link);
    match find_command("fuse-overlayfs") {
        Some(real) => {
            // What a container tool sees must not change when unionfs replaces fuse-overlayfs.
            let seen_as_reference = contract::exercise(&real, false);
            assert_eq!(
                seen_as_unionfs, seen_as_reference,
                "unionfs and fuse-overlayfs differ for the same invocation"
            );
        }
        None => eprintln!("fuse-overlayfs is not installed: no reference comparison"),
    }
}

#[test]
fn mount_program_failures_exit_non_zero_with_the_reason() {
    if !common::can_mount("mount_program_failures_exit_non_zero_with_the_reason") {
        return;
    }
    let store = FakeStore::new(2);
    let prog = common::unionfs_bin();
    let cases: &[(&str, &str)] = &[
        ("lowerdir=l/NOSUCHLAYER", "NOSUCHLAYER"),
        ("lowerdir=LOWERS,uidmapping=0:100000:65536", "uidmapping"),
        ("lowerdir=LOWERS,gidmapping=0:100000:65536", "gidmapping"),
        ("lowerdir=LOWERS,squash_to_uid=0", "squash_to_uid"),
        ("lowerdir=LOWERS,squash_to_gid=0", "squash_to_gid"),
        ("lowerdir=LOWERS,xattr_permissions=1", "xattr_permissions"),
        (
            "lowerdir=LOWERS,context=\"system_u:object_r:container_file_t:s0\"",
            "context",
        ),
    ];
    let lowers = store.options(false);
    let lowers = lowers.to_string_lossy().replacen("lowerdir=", "", 1);
    for (opts, needle) in cases {
        let opts = OsString::from(opts.replace("LOWERS", &lowers));
        let got = run_mount_program(&prog, &opts, &store.merged, &store.home);
        assert!(!got.status.success(), "{opts:?} was accepted");
        assert!(!got.mounted_at_exit, "{opts:?} left a mount");
        assert!(
            got.stderr.contains(needle),
            "{opts:?}: stderr should name {needle:?}: {}",
            got.stderr
        );
    }
}

#[test]
fn version_line_for_podman_info() {
    let links = tempfile::tempdir().expect("temporary directory");
    for prog in [common::unionfs_bin(), fuse_overlayfs_link(links.path())] {
        let out = std::process::Command::new(&prog)
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().next(),
            Some(format!("unionfs {}", env!("CARGO_PKG_VERSION")).as_str()),
            "{}",
            prog.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Podman and buildah.

/// A shell wrapper that logs how it was called (argv, cwd, where fds 0-2 point) and then runs
/// unionfs with the same arguments and descriptors.
fn logging_wrapper(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("mount-program.sh");
    let log = dir.join("mount-program.log");
    let text = format!(
        "#!/bin/sh\n\
         {{ printf 'argv'; for a in \"$0\" \"$@\"; do printf ' %s' \"$a\"; done; echo;\n\
           echo \"cwd $(pwd)\";\n\
           for fd in 0 1 2; do echo \"fd$fd $(readlink /proc/$$/fd/$fd)\"; done; }} >> '{}'\n\
         exec '{}' \"$@\"\n",
        log.display(),
        common::unionfs_bin().display()
    );
    std::fs::write(&script, text).expect("write the wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the wrapper");
    (script, log)
}

#[test]
fn podman_invokes_the_mount_program_as_documented() {
    if !can_run_podman("podman_invokes_the_mount_program_as_documented") {
        return;
    }
    let scratch = tempfile::tempdir().expect("temporary directory");
    let (wrapper, log) = logging_wrapper(scratch.path());
    let eng = Engine::new(&wrapper);
    let rootfs = scratch.path().join("rootfs");
    busybox_rootfs(&rootfs);
    scenario::import_rootfs(&eng, &rootfs, "localhost/bb:base");

    let info = eng.podman(&["info", "--format", "{{json .Store.GraphOptions}}"]);
    assert!(info.contains("unionfs"), "podman info: {info}");

    let ctr = eng.podman(&["create", "--name", "probe", "localhost/bb:base", "true"]);
    let merged = PathBuf::from(eng.podman(&["mount", ctr.trim()]).trim());
    let logged = std::fs::read_to_string(&log).expect("the wrapper ran");
    let call = contract::Call::parse(&logged);
    assert_eq!(call.argv.len(), 4, "argv: {:?}", call.argv);
    assert_eq!(call.argv[0], wrapper.to_string_lossy());
    assert_eq!(call.argv[1], "-o");
    assert_eq!(Path::new(&call.argv[3]), merged);
    assert_eq!(Path::new(&call.cwd), eng.root.join("overlay"));
    assert_eq!(call.fds[0], "/dev/null");
    assert!(call.fds[2].starts_with("pipe:"), "stderr: {}", call.fds[2]);
    for opt in ["lowerdir=", ",upperdir=", ",workdir="] {
        assert!(call.argv[2].contains(opt), "options: {}", call.argv[2]);
    }
    let (fstype, super_opts) = mount_entry(&merged).expect("podman mount mounted it");
    assert!(fstype.starts_with("fuse"), "{fstype}");
    for o in ["allow_other", "default_permissions"] {
        assert!(super_opts.contains(o), "{super_opts}");
    }
    eng.podman(&["umount", ctr.trim()]);
    assert!(!common::is_mountpoint(&merged));
    wait_until("the daemon exits after podman umount", || {
        processes_serving(&merged).is_empty()
    });

    // The same invocation again, by hand: unionfs and fuse-overlayfs must show the same tree.
    // (containers/storage removes merged/ after unmounting and makes it again before a mount.)
    std::fs::create_dir_all(&merged).expect("recreate merged/");
    let opts = OsString::from(&call.argv[2]);
    let cwd = PathBuf::from(&call.cwd);
    let mut progs = vec![common::unionfs_bin()];
    progs.extend(find_command("fuse-overlayfs"));
    let trees: Vec<_> = progs
        .iter()
        .map(|p| contract::mount_and_walk(p, &opts, &merged, &cwd))
        .collect();
    if let [ours, reference] = &trees[..] {
        assert_eq!(ours, reference, "unionfs and fuse-overlayfs differ");
    }
    std::fs::remove_dir(&merged).expect("remove merged/ again");

    // An id-mapped container needs uidmapping=, which unionfs refuses with a clear reason.
    let out = eng.try_run(
        "podman",
        &[
            "run",
            "--rm",
            "--network=none",
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "localhost/bb:base",
            "true",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an id-mapped run succeeded");
    assert!(
        err.contains("mount option \"uidmapping\" is not supported"),
        "stderr: {err}"
    );
    eng.finish();
}

#[test]
fn buildah_layers_then_podman_run_commit_diff_export() {
    if !can_run_podman("buildah_layers_then_podman_run_commit_diff_export") {
        return;
    }
    let eng = Engine::new(&common::unionfs_bin());
    scenario::layered_image(&eng, "localhost/layered:1");
    scenario::check_layered_image(&eng, "localhost/layered:1");
    scenario::run_write_diff_commit(&eng, "localhost/layered:1");
    scenario::export_and_restart(&eng, "localhost/layered:1");
    scenario::non_root_and_concurrent(&eng, "localhost/layered:1");
    eng.finish();
}

#[test]
fn multi_stage_build_over_lower_layers() {
    if !can_run_podman("multi_stage_build_over_lower_layers") {
        return;
    }
    let eng = Engine::new(&common::unionfs_bin());
    scenario::layered_image(&eng, "localhost/layered:1");
    scenario::multi_stage_build(&eng, "localhost/layered:1", "localhost/built:1");
    eng.finish();
}

#[test]
fn build_with_several_runs_then_run_the_result() {
    let name = "build_with_several_runs_then_run_the_result";
    if !can_run_podman(name) {
        return;
    }
    let eng = Engine::new(&common::unionfs_bin());
    scenario::layered_image(&eng, "localhost/layered:1");
    scenario::several_runs_build(&eng, "localhost/layered:1");
    eng.finish();
}

#[test]
fn runc_creates_missing_bind_mount_targets() {
    let name = "runc_creates_missing_bind_mount_targets";
    if !can_run_podman(name) {
        return;
    }
    // The syscall runc makes, first on a bare mount.
    let store = FakeStore::new(1);
    let got = run_mount_program(
        &common::unionfs_bin(),
        &store.options(true),
        &store.merged,
        &store.home,
    );
    assert!(got.status.success(), "{}", got.stderr);
    let guard = common::MountGuard {
        mnt: store.merged.clone(),
    };
    let created = create_read_only(&store.merged.join("hosts"));
    assert!(
        created.is_ok(),
        "open(O_CREAT|O_RDONLY) of a new file: {created:?}"
    );
    drop(created);
    contract::unmount_and_wait(&store.merged, true);
    std::mem::forget(guard);

    // Then through podman: an image without /etc/hosts or /run/.containerenv.
    let eng = Engine::new(&common::unionfs_bin());
    let rootfs = eng.dir.path().join("bare-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("create bin/");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("link sh");
    scenario::import_rootfs(&eng, &rootfs, "localhost/bare:1");
    let out = eng.podman(&[
        "run",
        "--rm",
        "--network=none",
        "localhost/bare:1",
        "sh",
        "-c",
        "echo ok",
    ]);
    assert_eq!(out.trim(), "ok");
    eng.finish();
}

/// `open(path, O_CREAT | O_RDONLY, 0755)`, as runc's `createIfNotExists` makes a missing
/// bind-mount target (std's `OpenOptions` refuses to create without write access).
fn create_read_only(path: &Path) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(
        path,
        OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o755),
    )
}
