//! The `unionfs` command line: argument parsing (clap derive) and wiring, nothing worth testing
//! on its own.
//!
//! `unionfs mount` turns its flags and `-o` options into a [`config::MountConfig`], validates it
//! before anything is mounted (validation hands the layer roots it opened on to the mount),
//! mounts, and then either serves in the foreground (`-f`) or detaches: it forks, and the child
//! (the daemon) releases the caller's terminal and pipes, starts a new session and serves. The
//! caller therefore exits 0 only once the mount is live, and otherwise prints the reason and
//! exits non-zero with nothing mounted.
//! `fs::mount` starts no thread (the session's threads start in `Mounted::run`), which is what
//! makes forking after it (and blocking signals for the sigwait thread) sound.
//!
//! Invoked without a subcommand (`unionfs -o lowerdir=A TARGET`, as mount(8) calls helpers) or
//! under the name `fuse-overlayfs`, it behaves as `unionfs mount`.
#![deny(unsafe_code)]

mod run;
mod store;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::signal::{SigSet, Signal};
use unionfs::config::{self, MountOptions, Validated};
use unionfs::fs::{Mounted, Unmounter};
use unionfs::sys::process::{self, Fork};

const EXAMPLES: &str = "\
Examples:
  Two read-only layers (top-most first) and a writable upper; returns once mounted:
    unionfs mount --lower /srv/app:/srv/base --upper /srv/rw/upper --work /srv/rw/work /mnt/merged
  The same in the mount(8) / fuse-overlayfs form:
    unionfs mount -o lowerdir=/srv/app:/srv/base,upperdir=/srv/rw/upper,workdir=/srv/rw/work /mnt/merged
  A read-only union served in the foreground, with debug logs on stderr:
    RUST_LOG=debug unionfs mount -f --lower /srv/app:/srv/base /mnt/merged
  Unmount (the daemon then exits by itself; SIGTERM to the daemon does the same):
    unionfs umount /mnt/merged

Without a subcommand (`unionfs -o OPTIONS TARGET`, as mount(8) runs helpers) or when run under
the name fuse-overlayfs, unionfs acts as `unionfs mount`.

Logging: RUST_LOG sets the filter (default: warn). A detached daemon logs to --log-file, by
default /run/unionfs/<mountpoint-escaped>.log as root, else $XDG_RUNTIME_DIR/unionfs/ or
/tmp/unionfs-<uid>/ (escaped like systemd-escape --path, e.g. mnt-merged.log).";

const MOUNT_OPTIONS_HELP: &str = "\
Mount options (comma-separated; -o may be repeated; later ones win):
  lowerdir=A:B:C     lower layers, top-most first (\\: and \\, escape literal : and ,)
  lowerdir+=A        append one lower layer
  upperdir=U         writable layer (needs workdir)
  workdir=W          empty directory on the upper's filesystem
  volatile           skip fsync, like overlayfs's volatile
  noio_uring         take requests over /dev/fuse only, even where the kernel offers
                     FUSE-over-io_uring (the fuse module's enable_uring); io_uring is the default
  ro                 read-only: the upper layer is not used
  rw, default_permissions, allow_other, suid, dev, exec and their no- forms are accepted.
  uidmapping, gidmapping, squash_to_uid, squash_to_gid, xattr_permissions and context are
  refused (not supported yet).";

/// A userspace union filesystem (FUSE) with kernel-overlayfs semantics.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Image store directory [default: $UNIONFS_ROOT, else /var/lib/unionfs]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a union of directories (returns once the mount is live, unless -f)
    #[command(
        allow_missing_positional = true,
        after_help = format!("{MOUNT_OPTIONS_HELP}\n\n{EXAMPLES}")
    )]
    Mount(MountArgs),
    /// Unmount a union (the daemon exits by itself)
    #[command(visible_alias = "unmount")]
    Umount(UmountArgs),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); with a command, that command's page (unionfs-mount(1), ...)
    Man {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(MAN_PAGES.map(|(n, _)| n)))]
        command: Option<String>,
    },
    /// Run a command in a container whose root is a union of the given layers
    Run(run::RunArgs),
    #[command(flatten)]
    Store(store::StoreCommand),
}

#[derive(Debug, Args)]
struct MountArgs {
    /// Lower layers, top-most first, separated by ':' (as overlayfs's lowerdir)
    #[arg(long, value_name = "DIR[:DIR...]")]
    lower: Option<OsString>,
    /// Writable layer; without it the mount is read-only (needs --work)
    #[arg(long, value_name = "DIR", requires = "work")]
    upper: Option<PathBuf>,
    /// Empty directory on the upper's filesystem, used to stage copy-ups (needs --upper)
    #[arg(long, value_name = "DIR", requires = "upper")]
    work: Option<PathBuf>,
    /// Mount options, mount(8) style (see below)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<OsString>,
    /// Stay in the foreground, logging to stderr
    #[arg(short, long)]
    foreground: bool,
    /// Log file [default: /run/unionfs/<mountpoint-escaped>.log as root, else under
    /// $XDG_RUNTIME_DIR/unionfs/ or /tmp/unionfs-<uid>/; stderr with -f]
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Image from the store to mount (its layers as lowers, a container's upper)
    #[arg(long, value_name = "NAME[:TAG]")]
    image: Option<String>,
    /// Device name given by mount(8), e.g. "overlay" (ignored), or an image name
    #[arg(value_name = "SOURCE")]
    source: Option<OsString>,
    /// Where to mount the union
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
}

#[derive(Debug, Args)]
struct UmountArgs {
    /// If the mount is busy, detach it now (MNT_DETACH) and let it go once no longer used
    #[arg(short, long)]
    lazy: bool,
    /// The mountpoint to unmount
    mountpoint: PathBuf,
}

/// Signals that unmount the filesystem cleanly.
const TERMINATING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn main() -> ExitCode {
    let args = normalize_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // `run` keeps docker's convention: 125 for every error of unionfs itself, usage errors
        // included (help and version are not errors and exit 0).
        Err(e) if e.use_stderr() && subcommand_of(&args) == Some(OsStr::new("run")) => {
            let _ = e.print();
            return ExitCode::from(125);
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Mount(args) => store::resolve_mount(args, cli.root.as_deref()).and_then(mount),
        Command::Umount(args) => umount(&args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "unionfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { command } => man(command.as_deref()),
        Command::Run(args) => return run::main(args),
        Command::Store(cmd) => store::run(cmd, cli.root.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The subcommand `args` name: the first argument after the program name and the global
/// `--root DIR`.
fn subcommand_of(args: &[OsString]) -> Option<&OsStr> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--root" {
            it.next();
        } else if !a.as_encoded_bytes().starts_with(b"--root=") {
            return Some(a);
        }
    }
    None
}

/// Inserts `mount` when called as `fuse-overlayfs` or with mount options instead of a
/// subcommand, so that both mount-helper forms reach [`MountArgs`].
fn normalize_args(mut args: Vec<OsString>) -> Vec<OsString> {
    const OWN: &[&str] = &[
        "mount",
        "umount",
        "unmount",
        "completions",
        "man",
        "run",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    let as_helper = args
        .first()
        .and_then(|a0| Path::new(a0).file_name())
        .is_some_and(|n| n == "fuse-overlayfs");
    let first = args.get(1).map(OsString::as_os_str);
    let insert = match first {
        None => false,
        Some(a) if as_helper => a != "--version" && a != "-V",
        Some(a) => !OWN.iter().chain(store::NAMES).any(|o| a == OsStr::new(o)),
    };
    if insert {
        args.insert(1, OsString::from("mount"));
    }
    args
}

fn mount(args: MountArgs) -> Result<()> {
    let mut opts = MountOptions::default();
    for o in &args.options {
        opts.apply(o).context("invalid mount options")?;
    }
    opts.merge_flags(
        args.lower.as_deref(),
        args.upper.as_deref(),
        args.work.as_deref(),
    )
    .context("invalid mount options")?;
    let cfg = opts.into_config().context("invalid mount options")?;
    let v = cfg
        .validate(&args.mountpoint)
        .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;
    if args.foreground {
        let log = match &args.log_file {
            Some(p) => Some(open_log(p)?),
            None => None,
        };
        init_logging(log, std::io::stderr().is_terminal());
        let signals = process::block_signals(&TERMINATING)?;
        let mounted = mount_fs(&v)?;
        return serve(mounted, signals);
    }
    let log_path = match args.log_file {
        Some(p) => p,
        None => default_log_path(&v.mountpoint)?,
    };
    let log = open_log(&log_path)?;
    init_logging(None, false);
    detach(&v, log, &log_path)
}

fn mount_fs(v: &Validated) -> Result<Mounted> {
    // The kernel has already applied the caller's umask to the modes of create, mkdir and mknod
    // requests; a second mask from the daemon's own umask would be wrong (fuse-overlayfs does
    // the same).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    // The library's errors already name the path that failed.
    unionfs::fs::mount(v).context("mount failed")
}

/// Serves until unmounted; a dedicated thread turns termination signals into an unmount.
fn serve(mut mounted: Mounted, signals: SigSet) -> Result<()> {
    let unmounter = mounted.unmounter();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch_signals(signals, unmounter))
        .context("cannot start the signal thread")?;
    tracing::info!("mounted");
    mounted.run().context("serving the filesystem failed")?;
    tracing::info!("unmounted");
    Ok(())
}

fn watch_signals(signals: SigSet, mut unmounter: Unmounter) {
    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(err) => {
                tracing::error!(?err, "sigwait failed; signals no longer unmount");
                return;
            }
        };
        tracing::info!(?sig, "unmounting on signal");
        match unmounter.unmount() {
            Ok(()) => return,
            // A busy mount stays served; a later signal tries again.
            Err(err) => tracing::warn!(?sig, %err, "cannot unmount"),
        }
    }
}

/// Mounts, then forks the daemon that serves the mount. Everything that can fail is done here,
/// before the fork, and reported by this process itself: once `mount_fs` returns the mount is
/// live, and once the fork has returned the daemon exists, so the caller exits 0 at once.
/// Mounting before the fork keeps the daemon's setup off the caller's wait, and spares a
/// readiness pipe.
///
/// One fork, as libfuse's `fuse_daemonize` does: the daemon leads a new session of its own. A
/// session leader would take a terminal it opens as its controlling one, but the daemon opens
/// none (device nodes in the tree are opened by the kernel, never through the daemon). A second
/// fork, whose only use would be to rule that out, costs the caller a fork and a wait.
fn detach(v: &Validated, log: File, log_path: &Path) -> Result<()> {
    let mnt = v.mountpoint.as_path();
    // Blocked before the fork, so that the daemon inherits the mask its signal thread waits on.
    let signals = process::block_signals(&TERMINATING)?;
    let mut mounted = mount_fs(v)?;
    match process::fork() {
        Ok(Fork::Parent(_)) => {
            // The daemon serves the mount now. This process's copy of the session is not
            // dropped: an unprivileged session unmounts when dropped.
            std::mem::forget(mounted);
            Ok(())
        }
        Ok(Fork::Child) => {
            // The caller's terminal and pipes are let go of first: a caller reading them (a
            // shell's `$(…)`) sees their end as soon as it has exited itself.
            if let Err(err) = process::detach_stdio(&log).and_then(|()| process::setsid()) {
                tracing::error!(mountpoint = %mnt.display(), "cannot start the daemon: {err}");
                let _ = mounted.unmounter().unmount();
                process::exit_now(1)
            }
            // stdout and stderr now hold the log open; the original descriptor is not needed.
            drop(log);
            let code = daemon(mnt, mounted, signals);
            if code == 0 {
                remove_if_unused(log_path);
            }
            std::process::exit(code)
        }
        Err(e) => {
            let _ = mounted.unmounter().unmount();
            Err(anyhow::Error::from(e).context("cannot start the daemon"))
        }
    }
}

/// Removes the log at `path` after a clean exit if nothing was logged to it, so that mounts
/// made by tools that cannot choose a log file (containers/storage) leave none behind. Only
/// our own log is removed: the file standard error points at must be the one at `path`.
fn remove_if_unused(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ours = nix::sys::stat::fstat(std::io::stderr());
    let there = std::fs::metadata(path);
    if let (Ok(ours), Ok(there)) = (ours, there) {
        if ours.st_size == 0 && ours.st_ino == there.ino() && ours.st_dev == there.dev() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The detached daemon: serves until unmounted.
fn daemon(mnt: &Path, mounted: Mounted, signals: SigSet) -> i32 {
    tracing::info!(mountpoint = %mnt.display(), pid = std::process::id(), "daemon ready");
    match serve(mounted, signals) {
        Ok(()) => 0,
        Err(err) => {
            tracing::error!(mountpoint = %mnt.display(), "{err:#}");
            1
        }
    }
}

/// Installs the tracing subscriber: `RUST_LOG` (default `warn`) to `file` or to stderr (which
/// a detached daemon points at its log file).
fn init_logging(file: Option<File>, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => builder.with_ansi(ansi).with_writer(std::io::stderr).init(),
    }
}

fn default_log_path(mnt: &Path) -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    let dir = config::default_log_dir(uid.is_root(), xdg.as_deref(), uid.as_raw());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    // The /tmp fallback is shared: refuse a directory someone else planted there.
    let meta = std::fs::symlink_metadata(&dir)
        .with_context(|| format!("cannot inspect the log directory {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid.as_raw() {
        bail!(
            "log directory {} is not a directory owned by uid {uid}; use --log-file",
            dir.display()
        );
    }
    Ok(dir.join(config::log_file_name(mnt)))
}

fn open_log(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))
}

fn umount(args: &UmountArgs) -> Result<()> {
    // A mount whose daemon died answers ENOTCONN to stat, so resolve it without following it.
    let path = match std::fs::canonicalize(&args.mountpoint) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            std::path::absolute(&args.mountpoint)?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot resolve {}", args.mountpoint.display()))
        }
    };
    let table = std::fs::read("/proc/self/mountinfo").context("cannot read the mount table")?;
    let Some(entry) = config::find_mount(&table, &path) else {
        bail!("{} is not a mountpoint", path.display());
    };
    // Only FUSE mounts: `unionfs umount /` must not try to unmount the root filesystem.
    if !(entry.fstype == "fuse" || entry.fstype.starts_with("fuse.")) {
        bail!(
            "{} is not a unionfs mount ({} is mounted there)",
            path.display(),
            entry.fstype
        );
    }
    match nix::mount::umount2(&path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) if args.lazy => nix::mount::umount2(&path, MntFlags::MNT_DETACH)
            .with_context(|| format!("cannot detach {}", path.display())),
        Err(Errno::EBUSY) => bail!(
            "{} is busy (files are open there; --lazy detaches it anyway)",
            path.display()
        ),
        Err(Errno::EPERM) if !nix::unistd::geteuid().is_root() => fusermount_u(&path, args.lazy),
        Err(e) => Err(e).with_context(|| format!("cannot unmount {}", path.display())),
    }
}

/// Unprivileged users unmount their FUSE mounts through the setuid fusermount3.
fn fusermount_u(path: &Path, lazy: bool) -> Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let status = cmd
        .arg(path)
        .status()
        .context("cannot run fusermount3 -u")?;
    if !status.success() {
        bail!("fusermount3 -u {} failed ({status})", path.display());
    }
    Ok(())
}

/// The commands with a page of their own, and its name. clap names are `&'static str` (its
/// `string` feature is off), hence a table rather than `format!`.
const MAN_PAGES: [(&str, &str); 15] = [
    ("mount", "unionfs-mount"),
    ("umount", "unionfs-umount"),
    ("completions", "unionfs-completions"),
    ("run", "unionfs-run"),
    ("import", "unionfs-import"),
    ("images", "unionfs-images"),
    ("rmi", "unionfs-rmi"),
    ("layers", "unionfs-layers"),
    ("commit", "unionfs-commit"),
    ("export", "unionfs-export"),
    ("diff", "unionfs-diff"),
    ("which", "unionfs-which"),
    ("inspect", "unionfs-inspect"),
    ("containers", "unionfs-containers"),
    ("rm", "unionfs-rm"),
];

fn man(command: Option<&str>) -> Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => {
            let (_, page) = MAN_PAGES
                .iter()
                .find(|(n, _)| *n == name)
                .with_context(|| format!("no man page for {name}"))?;
            let sub = cmd
                .find_subcommand(name)
                .with_context(|| format!("no command {name}"))?;
            sub.clone().name(page)
        }
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("cannot write the man page")?;
    out.flush().context("cannot write the man page")
}
