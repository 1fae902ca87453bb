//! `unionfs run` end to end: real commands from a real root filesystem (a static busybox, from
//! Debian's busybox-static, with its applets as links), each isolation property checked from
//! inside the container, and every run followed by a check that nothing was left behind (mount,
//! cgroup, daemon, layer directory).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "hostname", "id", "mount", "sleep", "grep", "head", "tail", "wc",
    "ip", "readlink", "stty", "tty", "kill", "touch", "seq", "env", "pwd", "true",
];

/// A test image (one lower layer holding busybox) and a state directory for read/write layers.
struct Image {
    dir: tempfile::TempDir,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-run-")
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().join("image");
        for d in ["bin", "etc", "tmp", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is installed (cargo xtask test installs it)");
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        std::fs::write(root.join("etc/issue"), "from the image\n").unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        Image { dir }
    }

    fn lower(&self) -> PathBuf {
        self.dir.path().join("image")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self, opts: &[&str], command: &[&str]) -> Command {
        let mut c = Command::new(common::unionfs_bin());
        c.arg("run")
            .arg("--state-dir")
            .arg(self.state())
            .arg("--lower")
            .arg(self.lower())
            .args(opts)
            .arg("--")
            .args(command)
            .stdin(Stdio::null());
        c
    }

    /// Runs `sh -c script` with `opts` and checks that nothing is left behind.
    fn sh(&self, opts: &[&str], script: &str) -> Output {
        let out = self.cmd(opts, &["/bin/sh", "-c", script]).output().unwrap();
        self.assert_clean();
        out
    }

    /// No mount below our directory, no process started with it on its command line, no
    /// layer left (unless kept), no cgroup of a kept layer's id.
    fn assert_clean(&self) {
        let ours = self.dir.path().to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(&ours), "mount left behind:\n{info}");
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let is_daemon = String::from_utf8_lossy(&cmdline).contains(&ours)
                && std::fs::read_to_string(p.path().join("stat"))
                    .is_ok_and(|s| !s.contains(") Z "));
            assert!(!is_daemon, "process {:?} left behind", p.file_name());
        }
        for kept in std::fs::read_dir(self.state()).unwrap().flatten() {
            let id = kept.file_name().to_string_lossy().into_owned();
            assert_eq!(
                cgroups_named(&format!("unionfs-{id}")),
                Vec::<PathBuf>::new()
            );
        }
    }
}

fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) && depth < 4 {
                if e.file_name() == name {
                    found.push(e.path());
                }
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    found
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pid_hostname_mounts_and_network_seen_from_inside() {
    if !common::can_mount("pid_hostname_mounts_and_network_seen_from_inside") {
        return;
    }
    let img = Image::new();
    let script = "echo pid=$$; cat /proc/1/comm; hostname; cat /etc/issue; \
        ls /proc | grep -c '^[0-9]'; echo cg; cat /proc/self/cgroup; echo end; cat /proc/mounts; \
        ip -o link; ip -o addr show lo";
    let out = img.sh(&["--rm", "--hostname", "box1"], script);
    let text = stdout(&out);
    assert!(out.status.success(), "{}{}", text, stderr(&out));
    assert!(
        text.contains("pid=2\nunionfs-init\nbox1\nfrom the image\n"),
        "{text}"
    );
    // init, sh, ls, grep: only the container's processes are visible.
    assert!(text.contains("\n4\n") || text.contains("\n3\n"), "{text}");
    let cgroups = text
        .split("cg\n")
        .nth(1)
        .and_then(|t| t.split("end\n").next());
    let cgroups = cgroups.unwrap_or_else(|| panic!("no cgroup listing in {text}"));
    assert!(cgroups.lines().count() > 0);
    for line in cgroups.lines() {
        assert!(line.ends_with(":/"), "cgroup namespace not rooted: {line}");
    }
    for want in [
        "unionfs / fuse.unionfs rw",
        "proc /proc proc rw,nosuid,nodev,noexec",
        "tmpfs /dev tmpfs",
        "devpts /dev/pts devpts",
        "tmpfs /dev/shm tmpfs",
        "sysfs /sys sysfs ro",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    let links: Vec<&str> = text.lines().filter(|l| l.contains("link/")).collect();
    assert_eq!(links.len(), 1, "only loopback expected: {links:?}");
    assert!(
        links[0].contains("lo:") && links[0].contains("UP"),
        "{links:?}"
    );
    assert!(text.contains("inet 127.0.0.1/8"), "{text}");
}

#[test]
fn no_way_back_to_the_host() {
    if !common::can_mount("no_way_back_to_the_host") {
        return;
    }
    let img = Image::new();
    let script = "ls /proc/1/root/ 2>&1 | head -1; echo --; ls /../..; echo --; \
        ls /proc/self/fd; echo --; mount -t tmpfs none /tmp 2>&1 || echo mount-refused; \
        grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls /dev";
    let out = img.sh(&["--rm"], script);
    let text = stdout(&out);
    let parts: Vec<&str> = text.split("--\n").collect();
    assert!(parts[0].contains("Permission denied"), "{text}");
    let root: Vec<&str> = parts[1].lines().collect();
    assert_eq!(root, ["bin", "data", "dev", "etc", "proc", "sys", "tmp"]);
    // 0, 1, 2, and the directory ls itself is reading.
    assert_eq!(parts[2].lines().count(), 4, "{text}");
    assert!(parts[3].contains("mount-refused"), "{text}");
    // docker's default capability set, in both the effective and the bounding set.
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
    assert!(text.contains("CapBnd:\t00000000a80425fb"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
    ] {
        assert!(text.lines().any(|l| l == dev), "no /dev/{dev} in {text}");
    }
}

#[test]
fn exit_statuses_follow_docker() {
    if !common::can_mount("exit_statuses_follow_docker") {
        return;
    }
    let img = Image::new();
    let code = |o: &Output| o.status.code();
    assert_eq!(code(&img.sh(&["--rm"], "exit 7")), Some(7));
    assert_eq!(code(&img.sh(&["--rm"], "kill -9 $$")), Some(137));
    let run = |opts: &[&str], cmd: &[&str]| {
        let o = img.cmd(opts, cmd).output().unwrap();
        img.assert_clean();
        o
    };
    let o = run(&["--rm"], &["/no/such"]);
    assert_eq!(code(&o), Some(127), "{}", stderr(&o));
    let o = run(&["--rm"], &["nosuchcommand"]);
    assert_eq!(code(&o), Some(127));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = run(&["--rm"], &["/etc/issue"]);
    assert_eq!(code(&o), Some(126), "{}", stderr(&o));
    for bad in [
        &["--rm", "--memory", "lots"][..],
        &["--rm", "--pids-limit", "-5"],
        &["--rm", "--cpus", "0"],
        &["--rm", "-v", "relative:/x"],
        &["--rm", "--network", "bridge"],
    ] {
        let o = run(bad, &["/bin/true"]);
        assert_eq!(code(&o), Some(125), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("unionfs: invalid"), "{}", stderr(&o));
    }
    // Init builds the root while the launcher moves it into its cgroup, so it can fail before
    // the launcher is done; its own message must still be the one reported.
    let vol = format!("{}:/etc/issue/sub", img.dir.path().display());
    let o = run(&["--rm", "-v", &vol], &["/bin/true"]);
    assert_eq!(code(&o), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("container setup failed") && stderr(&o).contains("Not a directory"),
        "{}",
        stderr(&o)
    );
    let mut c = Command::new(common::unionfs_bin());
    c.args(["run", "--rm", "--lower"])
        .arg(img.dir.path().join("missing"))
        .args(["--", "/bin/true"]);
    let o = c.output().unwrap();
    assert_eq!(code(&o), Some(125));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let o = img
        .cmd(&["--rm"], &["/bin/true"])
        .uid(65534)
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(125));
    assert!(
        stderr(&o).contains("must be started as root"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pids_and_memory_limits_bite_inside() {
    if !common::can_mount("pids_and_memory_limits_bite_inside") {
        return;
    }
    let img = Image::new();
    let o = img.sh(
        &["--rm", "--pids-limit", "6", "--cpus", "0.5"],
        "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait",
    );
    assert!(stderr(&o).contains("can't fork"), "{}", stderr(&o));
    let o = img.sh(
        &["--rm", "--memory", "16m"],
        "head -c 100000000 /dev/zero | tail -c 60000000",
    );
    assert!(stderr(&o).contains("out of memory"), "{}", stderr(&o));
    // The pipeline's status is tail's: killed by SIGKILL.
    assert_eq!(o.status.code(), Some(137));
}

#[test]
fn volumes_env_workdir_user_and_read_only_root() {
    if !common::can_mount("volumes_env_workdir_user_and_read_only_root") {
        return;
    }
    let img = Image::new();
    let rw = img.dir.path().join("rw");
    let ro = img.dir.path().join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("f"), "host file\n").unwrap();
    let v_rw = format!("{}:/mnt/rw", rw.display());
    let v_ro = format!("{}:/mnt/ro:ro", ro.display());
    let script = "echo $GREETING; pwd; id -u; id -g; cat /mnt/ro/f; \
        touch /mnt/ro/x 2>/dev/null || echo ro-refused; echo hi > /mnt/rw/out; \
        touch /newfile 2>/dev/null || echo root-ro";
    let opts = [
        "--rm",
        "-e",
        "GREETING=hello",
        "-w",
        "/data/sub",
        "-u",
        "0:7",
        "-v",
        &v_rw,
        "-v",
        &v_ro,
        "--read-only",
    ];
    let o = img.sh(&opts, script);
    assert_eq!(
        stdout(&o),
        "hello\n/data/sub\n0\n7\nhost file\nro-refused\nroot-ro\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "hi\n");
    let o = img.sh(
        &["--rm", "-u", "1000"],
        "id -u; cat /proc/self/status | grep CapEff",
    );
    assert_eq!(stdout(&o), "1000\nCapEff:\t0000000000000000\n");
}

#[test]
fn read_write_layer_is_kept_and_reused() {
    if !common::can_mount("read_write_layer_is_kept_and_reused") {
        return;
    }
    let img = Image::new();
    let o = img.sh(&[], "echo written > /tmp/note; rm /etc/issue");
    let err = stderr(&o);
    let kept = err
        .split("kept in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no kept path in {err}"));
    assert_eq!(
        std::fs::read_to_string(Path::new(kept).join("upper/tmp/note")).unwrap(),
        "written\n"
    );
    let o = img.sh(&["--upper", kept], "cat /tmp/note; cat /etc/issue 2>&1");
    assert_eq!(stdout(&o).lines().next(), Some("written"));
    assert!(stdout(&o).contains("No such file"), "{}", stdout(&o));
    // The image itself is untouched.
    assert!(img.lower().join("etc/issue").exists());
}

#[test]
fn signals_reach_the_command_and_sigterm_tears_down() {
    if !common::can_mount("signals_reach_the_command_and_sigterm_tears_down") {
        return;
    }
    let img = Image::new();
    let out = img.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let v = format!("{}:/out", out.display());
    let script = "trap 'echo usr1 >> /out/log' USR1; trap 'echo term >> /out/log; exit 3' TERM; \
        echo ready > /out/ready; while true; do sleep 0.05; done";
    let mut child = img
        .cmd(&["--rm", "-v", &v], &["/bin/sh", "-c", script])
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    while !out.join("ready").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    while !std::fs::read_to_string(out.join("log")).is_ok_and(|s| s.contains("usr1")) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(
        std::fs::read_to_string(out.join("log")).unwrap(),
        "usr1\nterm\n"
    );
    img.assert_clean();
    assert_eq!(std::fs::read_dir(img.state()).unwrap().count(), 0);
}

#[test]
fn tty_is_allocated_inside_with_the_callers_size() {
    if !common::can_mount("tty_is_allocated_inside_with_the_callers_size") {
        return;
    }
    let img = Image::new();
    let inner = format!(
        "stty rows 33 cols 91; {} run --rm -t --state-dir {} --lower {} -- /bin/sh -c \
         'tty; stty size; test -t 0 && echo stdin-tty; exit 4'",
        common::unionfs_bin().display(),
        img.state().display(),
        img.lower().display()
    );
    let o = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    img.assert_clean();
    let text = stdout(&o).replace('\r', "");
    assert!(
        text.contains("/dev/pts/0\n33 91\nstdin-tty\n"),
        "{text}{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(4));
}

#[test]
fn usage_errors_of_run_exit_125() {
    // Nothing is mounted or started: clap refuses these before `run` does anything.
    let unionfs = |args: &[&str]| {
        Command::new(common::unionfs_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for (args, want) in [
        (
            &["run", "--memory"][..],
            "a value is required for '--memory",
        ),
        (
            &["run", "--no-such-flag", "--lower", "/", "--", "/bin/true"],
            "unexpected argument '--no-such-flag'",
        ),
        (
            &["run", "--lower", "/"],
            "required arguments were not provided",
        ),
        (&["--root", "/nonexistent", "run", "--bogus"], "'--bogus'"),
    ] {
        let o = unionfs(args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
    let o = unionfs(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("Exit status"), "{}", stdout(&o));
    // Other commands keep clap's usage status.
    let o = unionfs(&["images", "--bogus"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_state_dir_that_is_a_file_is_refused_and_kept() {
    if !common::can_mount("a_state_dir_that_is_a_file_is_refused_and_kept") {
        return;
    }
    let img = Image::new();
    let file = img.dir.path().join("not-a-dir");
    std::fs::write(&file, b"keep me").unwrap();
    let o = Command::new(common::unionfs_bin())
        .args(["run", "--state-dir"])
        .arg(&file)
        .arg("--lower")
        .arg(img.lower())
        .args(["--", "/bin/true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&*file.to_string_lossy()) && err.contains("Not a directory"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    img.assert_clean();
}
