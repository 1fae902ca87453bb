//! The `unionfs` command line, run as a user would run it.
//!
//! Every bad input must be refused before anything is mounted, with a non-zero exit status and
//! a message naming the culprit; those tests need neither root nor `/dev/fuse`. The tests that
//! mount for real (detaching, `umount`, signals) go through `common::can_mount`. Every run has a
//! time limit, so a daemon that keeps the caller's stdout/stderr pipes open fails the test
//! instead of hanging it.

mod common;

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{is_mountpoint, unionfs_bin, MountGuard, Stack};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `cmd` with piped stdout/stderr and returns once both pipes are closed and the process
/// has exited; panics after [`LIMIT`] (e.g. a detached daemon still holding a pipe).
fn output_within_limit(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null());
    let desc = format!("{cmd:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.expect("run unionfs"),
        Err(_) => panic!("{desc} did not return within {LIMIT:?} (pipes held open?)"),
    }
}

fn unionfs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(unionfs_bin());
    cmd.args(args);
    output_within_limit(cmd)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the run failed, that stderr holds every one of `needles`, and that `mnt` is not
/// a mountpoint afterwards.
fn assert_refused(label: &str, out: &Output, needles: &[&str], mnt: &Path) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "{label}: expected failure, got success\nstderr: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "{label}: stderr should mention {n:?}\nstderr: {err}"
        );
    }
    assert!(
        !is_mountpoint(mnt),
        "{label}: {} got mounted",
        mnt.display()
    );
}

fn os(p: &Path) -> OsString {
    p.as_os_str().to_owned()
}

fn cat(parts: &[&OsStr]) -> OsString {
    parts.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Informational commands.

#[test]
fn version_prints_a_version_line() {
    let out = unionfs(["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("unionfs {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_shows_examples_and_log_location() {
    let out = unionfs(["--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "Examples:",
        "unionfs mount --lower",
        "/run/unionfs/",
        "umount",
    ] {
        assert!(text.contains(want), "--help lacks {want:?}:\n{text}");
    }
    let out = unionfs(["mount", "--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "--log-file",
        "/run/unionfs/<mountpoint-escaped>.log",
        "XDG_RUNTIME_DIR",
        "lowerdir=",
        "--foreground",
        "Examples:",
    ] {
        assert!(text.contains(want), "mount --help lacks {want:?}:\n{text}");
    }
}

#[test]
fn no_arguments_prints_usage_and_fails() {
    let out = unionfs::<[&str; 0], &str>([]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Usage"), "{}", stderr(&out));
}

#[test]
fn completions_for_bash() {
    let out = unionfs(["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("_unionfs") && text.contains("umount"),
        "{text}"
    );
    let out = unionfs(["completions", "no-such-shell"]);
    assert!(!out.status.success());
}

#[test]
fn man_page_is_roff() {
    let out = unionfs(["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(".TH unionfs"), "{text}");
    assert!(text.contains("unionfs\\-mount(1)"), "{text}");
    let out = unionfs(["man", "mount"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(".TH unionfs-mount"), "{text}");
    assert!(
        text.contains("\\-\\-lower") && text.contains("lowerdir="),
        "{text}"
    );
    // Every command has its own page, named in the main page's SUBCOMMANDS.
    let main = stdout(&unionfs(["man"]));
    for (cmd, option) in [
        ("run", "\\-\\-memory"),
        ("import", "SOURCE"),
        ("images", "\\-\\-format"),
        ("rmi", "NAME"),
        ("layers", "\\-\\-format"),
        ("commit", "\\-\\-from"),
        ("export", "\\-\\-flat"),
        ("diff", "\\-\\-from"),
        ("which", "PATH"),
        ("inspect", "\\-\\-layer"),
        ("containers", "\\-\\-format"),
        ("rm", "CONTAINER"),
    ] {
        assert!(
            main.contains(&format!("unionfs\\-{cmd}(1)")),
            "{cmd}: {main}"
        );
        let out = unionfs(["man", cmd]);
        assert!(out.status.success(), "man {cmd}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!(".TH unionfs-{cmd} 1")),
            "{cmd}: {text}"
        );
        assert!(text.contains(option), "man {cmd} lacks {option}: {text}");
    }
    assert!(!unionfs(["man", "nope"]).status.success());
}

// ---------------------------------------------------------------------------------------------
// Bad input: refused before anything is mounted.

#[test]
fn missing_or_non_directory_paths_are_named() {
    let s = Stack::new(2);
    let file = s.dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let nope = s.dir.path().join("nope");
    let (l0, l1) = (os(&s.lowers[0]), os(&s.lowers[1]));
    let lowers_with = |p: &Path| cat(&[&l0, OsStr::new(":"), p.as_os_str()]);
    let (upper, work, mnt) = (os(&s.upper), os(&s.work), os(&s.mnt));
    let n = os(&nope);
    let f = os(&file);
    type Case = (&'static str, Vec<OsString>, String);
    let cases: Vec<Case> = vec![
        (
            "missing lower",
            vec!["--lower".into(), lowers_with(&nope), mnt.clone()],
            format!("lower layer 2 {} does not exist", nope.display()),
        ),
        (
            "lower is a file",
            vec!["--lower".into(), lowers_with(&file), mnt.clone()],
            format!("lower layer 2 {} is not a directory", file.display()),
        ),
        (
            "missing upper",
            vec![
                "--lower".into(),
                l1.clone(),
                "--upper".into(),
                n.clone(),
                "--work".into(),
                work.clone(),
                mnt.clone(),
            ],
            format!("upper directory {} does not exist", nope.display()),
        ),
        (
            "upper is a file",
            vec![
                "--lower".into(),
                l1.clone(),
                "--upper".into(),
                f.clone(),
                "--work".into(),
                work.clone(),
                mnt.clone(),
            ],
            format!("upper directory {} is not a directory", file.display()),
        ),
        (
            "missing work",
            vec![
                "--lower".into(),
                l1.clone(),
                "--upper".into(),
                upper.clone(),
                "--work".into(),
                n.clone(),
                mnt.clone(),
            ],
            format!("work directory {} does not exist", nope.display()),
        ),
        (
            "work is a file",
            vec![
                "--lower".into(),
                l1.clone(),
                "--upper".into(),
                upper.clone(),
                "--work".into(),
                f.clone(),
                mnt.clone(),
            ],
            format!("work directory {} is not a directory", file.display()),
        ),
        (
            "missing mountpoint",
            vec!["--lower".into(), l1.clone(), n.clone()],
            format!("mountpoint {} does not exist", nope.display()),
        ),
        (
            "mountpoint is a file",
            vec!["--lower".into(), l1.clone(), f.clone()],
            format!("mountpoint {} is not a directory", file.display()),
        ),
    ];
    for (label, args, want) in cases {
        let out = unionfs(std::iter::once(OsString::from("mount")).chain(args));
        assert_refused(label, &out, &[&want], &s.mnt);
    }
}

#[test]
fn upper_and_work_must_come_together() {
    let s = Stack::new(1);
    let l = os(&s.lowers[0]);
    let out = unionfs([
        "mount".as_ref(),
        "--lower".as_ref(),
        l.as_os_str(),
        "--upper".as_ref(),
        s.upper.as_os_str(),
        s.mnt.as_os_str(),
    ]);
    assert_refused("--upper alone", &out, &["--work"], &s.mnt);
    let out = unionfs([
        "mount".as_ref(),
        "--lower".as_ref(),
        l.as_os_str(),
        "--work".as_ref(),
        s.work.as_os_str(),
        s.mnt.as_os_str(),
    ]);
    assert_refused("--work alone", &out, &["--upper"], &s.mnt);
    let opt = cat(&[
        OsStr::new("lowerdir="),
        &l,
        OsStr::new(",upperdir="),
        s.upper.as_os_str(),
    ]);
    let out = unionfs([
        "mount".as_ref(),
        "-o".as_ref(),
        opt.as_os_str(),
        s.mnt.as_os_str(),
    ]);
    assert_refused("upperdir alone", &out, &["needs a work directory"], &s.mnt);
    let opt = cat(&[
        OsStr::new("lowerdir="),
        &l,
        OsStr::new(",workdir="),
        s.work.as_os_str(),
    ]);
    let out = unionfs([
        "mount".as_ref(),
        "-o".as_ref(),
        opt.as_os_str(),
        s.mnt.as_os_str(),
    ]);
    assert_refused("workdir alone", &out, &["needs an upper directory"], &s.mnt);
}

/// Builds `mount --lower L --upper U --work W MNT` with the given paths.
fn mount_args(
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
) -> Vec<OsString> {
    let mut lower = OsString::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            lower.push(":");
        }
        lower.push(l);
    }
    let mut args: Vec<OsString> = vec!["mount".into(), "--lower".into(), lower];
    if let Some(u) = upper {
        args.extend(["--upper".into(), os(u)]);
    }
    if let Some(w) = work {
        args.extend(["--work".into(), os(w)]);
    }
    args.push(os(mnt));
    args
}

#[test]
fn upper_and_work_on_different_filesystems() {
    let s = Stack::new(1);
    let shm = Path::new("/dev/shm");
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    if !shm.is_dir() || dev(shm) == dev(&s.upper) {
        eprintln!("skipping upper_and_work_on_different_filesystems: no second filesystem");
        return;
    }
    let work = tempfile::tempdir_in(shm).unwrap();
    let out = unionfs(mount_args(
        &[&s.lowers[0]],
        Some(&s.upper),
        Some(work.path()),
        &s.mnt,
    ));
    assert_refused(
        "cross-device",
        &out,
        &["different filesystems", &s.upper.display().to_string()],
        &s.mnt,
    );
}

#[test]
fn nested_and_repeated_layers_are_refused() {
    let s = Stack::new(2);
    let d = s.dir.path();
    for sub in ["upper/w", "work/u", "lower0/sub", "lower1/mnt2", "mnt/l"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let (l0, l1) = (s.lowers[0].as_path(), s.lowers[1].as_path());
    let j = |p: &str| d.join(p);
    let (upw, wku, l0sub, l1mnt, mntl) = (
        j("upper/w"),
        j("work/u"),
        j("lower0/sub"),
        j("lower1/mnt2"),
        j("mnt/l"),
    );
    let dd = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, Vec<OsString>, Vec<String>)> = vec![
        (
            "work inside upper",
            mount_args(&[l0], Some(&s.upper), Some(&upw), &s.mnt),
            vec![format!(
                "work directory {} is inside upper directory {}",
                dd(&upw),
                dd(&s.upper)
            )],
        ),
        (
            "upper inside work",
            mount_args(&[l0], Some(&wku), Some(&s.work), &s.mnt),
            vec![format!(
                "upper directory {} is inside work directory {}",
                dd(&wku),
                dd(&s.work)
            )],
        ),
        (
            "lower listed twice",
            mount_args(&[l0, l1, l0], None, None, &s.mnt),
            vec![format!(
                "{} is used twice, as lower layer 1 and as lower layer 3",
                dd(l0)
            )],
        ),
        (
            "upper is also a lower",
            mount_args(&[l0, &s.upper], Some(&s.upper), Some(&s.work), &s.mnt),
            vec![
                format!("{} is used twice", dd(&s.upper)),
                "upper directory".into(),
            ],
        ),
        (
            "lower inside lower",
            mount_args(&[l0, &l0sub], None, None, &s.mnt),
            vec![format!(
                "lower layer 2 {} is inside lower layer 1 {}",
                dd(&l0sub),
                dd(l0)
            )],
        ),
        (
            "mountpoint inside a layer",
            mount_args(&[l0, l1], None, None, &l1mnt),
            vec![format!(
                "mountpoint {} is inside lower layer 2 {}",
                dd(&l1mnt),
                dd(l1)
            )],
        ),
        (
            "layer inside the mountpoint",
            mount_args(&[&mntl], None, None, &s.mnt),
            vec![format!(
                "lower layer 1 {} is inside mountpoint {}",
                dd(&mntl),
                dd(&s.mnt)
            )],
        ),
        (
            "mountpoint is the upper",
            mount_args(&[l0], Some(&s.upper), Some(&s.work), &s.upper),
            vec![format!(
                "{} is used twice, as upper directory and as mountpoint",
                dd(&s.upper)
            )],
        ),
    ];
    for (label, args, wants) in cases {
        let out = unionfs(args);
        let wants: Vec<&str> = wants.iter().map(String::as_str).collect();
        assert_refused(label, &out, &wants, &s.mnt);
        assert!(
            !is_mountpoint(&l1mnt) && !is_mountpoint(&s.upper),
            "{label}: mounted"
        );
    }
}

#[test]
fn mount_options_are_checked() {
    let s = Stack::new(1);
    let l = os(&s.lowers[0]);
    let lowerdir = cat(&[OsStr::new("lowerdir="), &l]);
    let with = |extra: &str| cat(&[&lowerdir, OsStr::new(extra)]);
    let cases: Vec<(&str, OsString, &str)> = vec![
        (
            "unknown",
            with(",frobnicate"),
            "unknown mount option \"frobnicate\"",
        ),
        (
            "unknown with value",
            with(",frob=1"),
            "unknown mount option \"frob\"",
        ),
        (
            "uidmapping",
            with(",uidmapping=0:100000:65536"),
            "\"uidmapping\" is not supported yet",
        ),
        (
            "gidmapping",
            with(",gidmapping=0:100000:65536"),
            "\"gidmapping\" is not supported yet",
        ),
        (
            "squash_to_uid",
            with(",squash_to_uid=0"),
            "\"squash_to_uid\" is not supported yet",
        ),
        (
            "squash_to_gid",
            with(",squash_to_gid=0"),
            "\"squash_to_gid\" is not supported yet",
        ),
        (
            "xattr_permissions",
            with(",xattr_permissions=2"),
            "\"xattr_permissions\" is not supported yet",
        ),
        (
            "context",
            with(",context=\"system_u:object_r:x\""),
            "\"context\" is not supported yet",
        ),
        (
            "volatile with value",
            with(",volatile=yes"),
            "\"volatile\" takes no value",
        ),
        (
            "empty lowerdir",
            OsString::from("lowerdir="),
            "\"lowerdir\" needs a value",
        ),
        ("empty layer", with("::/x"), "empty layer"),
        ("no lower", OsString::from("rw"), "no lower layer given"),
    ];
    for (label, opt, want) in cases {
        let out = unionfs([
            "mount".as_ref(),
            "-o".as_ref(),
            opt.as_os_str(),
            s.mnt.as_os_str(),
        ]);
        assert_refused(label, &out, &[want], &s.mnt);
    }
    let out = unionfs([
        "mount".as_ref(),
        "-o".as_ref(),
        lowerdir.as_os_str(),
        "--lower".as_ref(),
        l.as_os_str(),
        s.mnt.as_os_str(),
    ]);
    assert_refused("lowers twice", &out, &["given twice"], &s.mnt);
}

#[test]
fn empty_and_harmless_options_are_accepted() {
    // With a missing mountpoint the run fails on that, which shows the options were accepted.
    let s = Stack::new(1);
    let nope = s.dir.path().join("nope");
    let opts = cat(&[
        OsStr::new(",,lowerdir="),
        s.lowers[0].as_os_str(),
        OsStr::new(",,rw,default_permissions,allow_other,suid,nosuid,dev,nodev,exec,noexec,"),
    ]);
    let out = unionfs([
        "mount".as_ref(),
        "-o".as_ref(),
        opts.as_os_str(),
        "-o".as_ref(),
        "volatile,ro,".as_ref(),
        nope.as_os_str(),
    ]);
    assert_refused(
        "harmless options",
        &out,
        &[&format!("mountpoint {} does not exist", nope.display())],
        &s.mnt,
    );
}

#[test]
fn mount_helper_forms_parse_as_mount() {
    let s = Stack::new(1);
    let nope = s.dir.path().join("nope");
    let opt = cat(&[OsStr::new("lowerdir="), nope.as_os_str()]);
    let want = format!("lower layer 1 {} does not exist", nope.display());

    // `unionfs -o OPTS TARGET`, and with a source as mount(8) passes it.
    let out = unionfs(["-o".as_ref(), opt.as_os_str(), s.mnt.as_os_str()]);
    assert_refused("no subcommand", &out, &[&want], &s.mnt);
    let out = unionfs([
        "overlay".as_ref(),
        s.mnt.as_os_str(),
        "-o".as_ref(),
        opt.as_os_str(),
    ]);
    assert_refused("source and target", &out, &[&want], &s.mnt);

    // Under the name fuse-overlayfs.
    let link = s.dir.path().join("fuse-overlayfs");
    std::os::unix::fs::symlink(unionfs_bin(), &link).unwrap();
    let mut cmd = Command::new(&link);
    cmd.args(["-o".as_ref(), opt.as_os_str(), s.mnt.as_os_str()]);
    let out = output_within_limit(cmd);
    assert_refused("fuse-overlayfs", &out, &[&want], &s.mnt);
    let mut cmd = Command::new(&link);
    cmd.arg("--version");
    let out = output_within_limit(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn umount_refuses_what_is_not_a_mountpoint() {
    let s = Stack::new(1);
    let out = unionfs(["umount".as_ref(), s.mnt.as_os_str()]);
    assert_refused(
        "not a mountpoint",
        &out,
        &["is not a mountpoint", &s.mnt.display().to_string()],
        &s.mnt,
    );
    let nope = s.dir.path().join("nope");
    let out = unionfs(["umount".as_ref(), nope.as_os_str()]);
    assert_refused("missing", &out, &[&nope.display().to_string()], &s.mnt);
}

// ---------------------------------------------------------------------------------------------
// Needing root: refusals that involve a real mount or namespace.

#[test]
fn mountpoint_in_use_is_refused() {
    if !common::can_mount("mountpoint_in_use_is_refused") {
        return;
    }
    let s = Stack::new(1);
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&s.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let guard = MountGuard { mnt: s.mnt.clone() };
    let out = unionfs(["umount".as_ref(), s.mnt.as_os_str()]);
    assert!(!out.status.success(), "unionfs umount removed a tmpfs");
    assert!(
        stderr(&out).contains("is not a unionfs mount (tmpfs"),
        "{}",
        stderr(&out)
    );
    assert!(is_mountpoint(&s.mnt));
    let out = unionfs(mount_args(&[&s.lowers[0]], None, None, &s.mnt));
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("already in use")
            && err.contains("tmpfs")
            && err.contains(&s.mnt.display().to_string()),
        "{err}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = s.mnt.display().to_string();
    let stacked = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(&here))
        .count();
    assert_eq!(stacked, 1, "something was mounted over the tmpfs");
    drop(guard);
}

#[test]
fn missing_dev_fuse_is_refused() {
    if !common::can_mount("missing_dev_fuse_is_refused") {
        return;
    }
    let s = Stack::new(1);
    // A private mount namespace whose /dev is an empty tmpfs.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /dev || exit 77; exec \"$@\"")
        .arg("sh")
        .arg(unionfs_bin())
        .args(mount_args(&[&s.lowers[0]], None, None, &s.mnt));
    let out = output_within_limit(cmd);
    if out.status.code() == Some(77) || stderr(&out).starts_with("unshare:") {
        eprintln!(
            "skipping missing_dev_fuse_is_refused: no mount namespace ({})",
            stderr(&out)
        );
        return;
    }
    assert_refused("no /dev/fuse", &out, &["/dev/fuse is missing"], &s.mnt);
}

// ---------------------------------------------------------------------------------------------
// Real mounts (pass once the filesystem is implemented).

fn populate(s: &Stack) {
    std::fs::write(s.lowers[0].join("top.txt"), b"from the top layer\n").unwrap();
    std::fs::write(s.lowers[1].join("base.txt"), b"from the base layer\n").unwrap();
    std::fs::write(s.lowers[1].join("top.txt"), b"hidden\n").unwrap();
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= LIMIT {
            panic!("timed out waiting until {what}"); // a hang becomes a failure, not a stuck CI
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the processes running our binary with `mnt` among their arguments.
fn daemons_of(mnt: &Path) -> Vec<i32> {
    let me = std::fs::canonicalize(unionfs_bin()).unwrap();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe"));
        if exe.map(|x| x != me).unwrap_or(true) || is_zombie(pid) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline
            .split(|&b| b == 0)
            .any(|a| a == mnt.as_os_str().as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
fn detached_mount_serves_lower_files_and_umount_removes_it() {
    if !common::can_mount("detached_mount_serves_lower_files_and_umount_removes_it") {
        return;
    }
    let s = Stack::new(2);
    populate(&s);
    let log = s.dir.path().join("unionfs.log");
    let mut args = mount_args(
        &[&s.lowers[0], &s.lowers[1]],
        Some(&s.upper),
        Some(&s.work),
        &s.mnt,
    );
    args.extend(["--log-file".into(), os(&log)]);
    let mut cmd = Command::new(unionfs_bin());
    cmd.args(args).env("RUST_LOG", "info");
    // Returns at all only if the daemon released the stdout/stderr pipes.
    let out = output_within_limit(cmd);
    let guard = MountGuard { mnt: s.mnt.clone() };
    assert!(out.status.success(), "mount failed: {}", stderr(&out));
    assert!(is_mountpoint(&s.mnt), "not in /proc/self/mountinfo");
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("top.txt")).unwrap(),
        "from the top layer\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("base.txt")).unwrap(),
        "from the base layer\n"
    );
    let daemons = daemons_of(&s.mnt);
    assert_eq!(daemons.len(), 1, "expected one daemon, found {daemons:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("daemon ready"), "log file: {logged}");

    let out = unionfs(["umount".as_ref(), s.mnt.as_os_str()]);
    assert!(out.status.success(), "umount failed: {}", stderr(&out));
    assert!(!is_mountpoint(&s.mnt));
    wait_until("the daemon exits", || daemons_of(&s.mnt).is_empty());
    drop(guard);
}

#[test]
fn a_mount_that_fails_is_reported_and_leaves_nothing_behind() {
    if !common::can_mount("a_mount_that_fails_is_reported_and_leaves_nothing_behind") {
        return;
    }
    // Passes validation, then fails while the mount is set up: the work directory's index
    // directory is taken by a file.
    let s = Stack::new(1);
    let blocker = s.work.join("unionfs-index");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = unionfs(mount_args(
        &[&s.lowers[0]],
        Some(&s.upper),
        Some(&s.work),
        &s.mnt,
    ));
    let guard = MountGuard { mnt: s.mnt.clone() };
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "mounted over a broken work directory"
    );
    assert!(
        err.contains("cannot prepare the work directory") && err.contains("unionfs-index"),
        "{err}"
    );
    assert!(!is_mountpoint(&s.mnt), "left mounted");
    assert!(daemons_of(&s.mnt).is_empty(), "a daemon was left running");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
    drop(guard);
}

#[test]
fn option_form_mounts_read_only() {
    if !common::can_mount("option_form_mounts_read_only") {
        return;
    }
    let s = Stack::new(2);
    populate(&s);
    let opts = cat(&[
        OsStr::new("lowerdir="),
        &s.lowerdir(),
        OsStr::new(",ro,allow_other"),
    ]);
    // The mount-helper form, no subcommand.
    let out = unionfs(["-o".as_ref(), opts.as_os_str(), s.mnt.as_os_str()]);
    let guard = MountGuard { mnt: s.mnt.clone() };
    assert!(out.status.success(), "mount failed: {}", stderr(&out));
    assert!(is_mountpoint(&s.mnt));
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("base.txt")).unwrap(),
        "from the base layer\n"
    );
    let write = std::fs::write(s.mnt.join("new.txt"), b"x");
    assert!(write.is_err(), "a read-only union accepted a write");
    drop(guard);
    wait_until("unmounted", || !is_mountpoint(&s.mnt));
}

#[test]
fn sigterm_to_detached_daemon_unmounts() {
    if !common::can_mount("sigterm_to_detached_daemon_unmounts") {
        return;
    }
    let s = Stack::new(1);
    let out = unionfs(mount_args(
        &[&s.lowers[0]],
        Some(&s.upper),
        Some(&s.work),
        &s.mnt,
    ));
    let guard = MountGuard { mnt: s.mnt.clone() };
    assert!(out.status.success(), "mount failed: {}", stderr(&out));
    let daemons = daemons_of(&s.mnt);
    assert_eq!(daemons.len(), 1, "expected one daemon, found {daemons:?}");
    let pid = nix::unistd::Pid::from_raw(daemons[0]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("SIGTERM unmounts", || !is_mountpoint(&s.mnt));
    wait_until("the daemon exits", || daemons_of(&s.mnt).is_empty());
    drop(guard);
}

/// Starts `unionfs mount -f` on a one-layer stack and waits until it is mounted.
fn foreground(s: &Stack) -> Child {
    let mut child = Command::new(unionfs_bin())
        .args(mount_args(
            &[&s.lowers[0]],
            Some(&s.upper),
            Some(&s.work),
            &s.mnt,
        ))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unionfs mount -f");
    let start = Instant::now();
    while !is_mountpoint(&s.mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("unionfs mount -f exited with {st}: {err}");
        }
        if start.elapsed() >= LIMIT {
            panic!("foreground mount never showed up"); // a hang becomes a failure, not a stuck CI
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_child(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("the daemon did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn foreground_daemon_unmounts_on_sigterm_and_sigint() {
    if !common::can_mount("foreground_daemon_unmounts_on_sigterm_and_sigint") {
        return;
    }
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let s = Stack::new(1);
        let mut child = foreground(&s);
        let guard = MountGuard { mnt: s.mnt.clone() };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        let st = wait_child(&mut child);
        assert!(st.success(), "{sig:?}: daemon exited with {st}");
        assert!(!is_mountpoint(&s.mnt), "{sig:?}: still mounted");
        drop(guard);
    }
}

#[test]
fn external_umount_ends_the_daemon_with_status_0() {
    if !common::can_mount("external_umount_ends_the_daemon_with_status_0") {
        return;
    }
    let s = Stack::new(1);
    let mut child = foreground(&s);
    let guard = MountGuard { mnt: s.mnt.clone() };
    let st = Command::new("umount").arg(&s.mnt).status().unwrap();
    assert!(st.success(), "umount failed");
    let st = wait_child(&mut child);
    assert!(st.success(), "daemon exited with {st}");
    drop(guard);
}

#[test]
fn umount_of_busy_mount_needs_lazy() {
    if !common::can_mount("umount_of_busy_mount_needs_lazy") {
        return;
    }
    let s = Stack::new(2);
    populate(&s);
    let guard = s.mount_unionfs();
    let held = std::fs::File::open(s.mnt.join("base.txt")).expect("open a file in the mount");
    let out = unionfs(["umount".as_ref(), s.mnt.as_os_str()]);
    assert!(!out.status.success(), "busy umount succeeded");
    assert!(
        stderr(&out).contains("busy") && stderr(&out).contains("--lazy"),
        "{}",
        stderr(&out)
    );
    assert!(is_mountpoint(&s.mnt));
    let out = unionfs(["umount".as_ref(), "--lazy".as_ref(), s.mnt.as_os_str()]);
    assert!(out.status.success(), "lazy umount failed: {}", stderr(&out));
    assert!(!is_mountpoint(&s.mnt));
    drop(held);
    wait_until("the daemon exits", || daemons_of(&s.mnt).is_empty());
    drop(guard);
}

#[test]
fn relative_paths_work_after_detaching() {
    if !common::can_mount("relative_paths_work_after_detaching") {
        return;
    }
    let s = Stack::new(1);
    populate_one(&s.lowers[0]);
    let out = output_within_limit({
        let mut cmd = Command::new(unionfs_bin());
        cmd.current_dir(s.dir.path()).args([
            "mount", "--lower", "lower0", "--upper", "upper", "--work", "work", "mnt",
        ]);
        cmd
    });
    let guard = MountGuard { mnt: s.mnt.clone() };
    assert!(out.status.success(), "mount failed: {}", stderr(&out));
    assert!(is_mountpoint(&s.mnt));
    assert_eq!(std::fs::read(s.mnt.join("only.txt")).unwrap(), b"only");
    drop(guard);
}

fn populate_one(dir: &Path) {
    std::fs::write(dir.join("only.txt"), b"only").unwrap();
}

/// Context switches of the daemon's io_uring queue threads (`unionfs-q<cpu>.<n>`), and how
/// many there are.
fn queue_thread_switches(pid: i32) -> (usize, u64) {
    let (mut threads, mut switches) = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("unionfs-q") {
            continue;
        }
        threads += 1;
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(n) = line.strip_prefix("voluntary_ctxt_switches:") {
                switches += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    (threads, switches)
}

/// Where the kernel offers FUSE-over-io_uring (the fuse module's `enable_uring`, which
/// `cargo xtask test` sets), requests are served by the per-CPU queue threads; with
/// `-o noio_uring` there are none and fuser's threads serve everything.
#[test]
fn requests_go_over_io_uring_unless_refused() {
    if !common::can_mount("requests_go_over_io_uring_unless_refused") {
        return;
    }
    let Ok(param) = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring") else {
        eprintln!("skipping requests_go_over_io_uring_unless_refused: no FUSE-over-io_uring here");
        return;
    };
    if param.trim() != "Y" {
        let why = "the fuse module's enable_uring is not Y";
        assert!(
            std::env::var_os("UNIONFS_STRICT").is_none_or(|v| v != "1"),
            "{why} under UNIONFS_STRICT=1 (cargo xtask test sets it)"
        );
        eprintln!("skipping requests_go_over_io_uring_unless_refused: {why}");
        return;
    }
    const FILES: usize = 300;
    for uring in [true, false] {
        let mut s = Stack::new(2);
        populate(&s);
        for i in 0..FILES {
            std::fs::write(s.lowers[1].join(format!("f{i}")), b"x").unwrap();
        }
        s.dev_fuse_only = !uring;
        let guard = s.mount_unionfs();
        let daemons = daemons_of(&s.mnt);
        assert_eq!(daemons.len(), 1, "expected one daemon, found {daemons:?}");
        let (_, before) = queue_thread_switches(daemons[0]);
        for i in 0..FILES {
            let data = std::fs::read(s.mnt.join(format!("f{i}"))).unwrap();
            assert_eq!(data, b"x");
        }
        let (threads, after) = queue_thread_switches(daemons[0]);
        if uring {
            assert!(threads > 0, "no io_uring queue threads");
            // Each file costs at least a LOOKUP and an OPEN, each a wake-up of a queue thread.
            let served = after - before;
            assert!(
                served >= FILES as u64,
                "queue threads woke {served} times for {FILES} files"
            );
        } else {
            assert_eq!(threads, 0, "io_uring queue threads despite noio_uring");
        }
        guard.unmount();
    }
}

/// A debugger attaching to the daemon (strace, gdb) interrupts the io_uring queue threads'
/// waits; they must wait again rather than give up, or every request of their CPU hangs.
#[test]
fn daemon_survives_a_debugger_attaching() {
    use nix::sys::ptrace;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    if !common::can_mount("daemon_survives_a_debugger_attaching") {
        return;
    }
    let s = Stack::new(2);
    populate(&s);
    let guard = s.mount_unionfs();
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("top.txt")).unwrap(),
        "from the top layer\n"
    );
    let daemons = daemons_of(&s.mnt);
    assert_eq!(daemons.len(), 1, "expected one daemon, found {daemons:?}");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemons[0])).unwrap();
    for t in tasks.flatten() {
        let tid = Pid::from_raw(t.file_name().to_str().unwrap().parse().unwrap());
        // A short-lived thread (the index loader) may finish at any point of this.
        let gone = Err(nix::errno::Errno::ESRCH);
        if ptrace::attach(tid) == gone {
            continue;
        }
        waitpid(tid, Some(WaitPidFlag::__WALL)).unwrap();
        let detached = ptrace::detach(tid, None);
        assert!(detached.is_ok() || detached == gone, "{detached:?}");
    }
    let mnt = s.mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..50 {
            let data = std::fs::read_to_string(mnt.join("base.txt")).unwrap();
            assert_eq!(data, "from the base layer\n");
            std::fs::metadata(mnt.join("top.txt")).unwrap();
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(LIMIT)
        .expect("requests hang after a debugger attached to the daemon");
    guard.unmount();
}
