//! The rows of the benchmark: what each one does to a mounted target, how the target is
//! prepared first (warm, cold, primed lower files) and which part is timed.
//!
//! Every measurement mounts afresh (new upper and work directories) and unmounts afterwards,
//! so rows never see each other's writes. A row's operation must do the same work on every
//! target; where a row checks its own result (a removed directory is gone, a copied-up file
//! grew), a wrong answer is an error rather than a fast time.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::launch::{self, Launch};
use super::stacks::{self, Rng, StackRef, Stacks};
use super::targets::{Kind, Spec, Target};
use crate::host::{self, Context, Error, Result};

/// What a row does to the mounted target.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `find MNT -type f`.
    Find,
    /// readdir + lstat of every entry, in process.
    StatWalk,
    /// `ls -lR MNT`.
    LsLr,
    /// `tar -c . | cat > /dev/null`, without the big file.
    TarSmall,
    /// `reads` 4 KiB preads at fixed pseudo-random offsets of the big file.
    RandRead { reads: usize },
    /// Reads the big file front to back in 1 MiB pieces.
    SeqRead,
    /// Writes a new file of `bytes` in `piece`-byte writes (closed, not fsynced).
    SeqWrite { bytes: u64, piece: usize },
    /// Creates `n` files of 100 bytes in a new directory.
    Create { n: usize },
    /// `rm -rf` of [`stacks::RM_DIR`], a lower directory (leaves a whiteout).
    RmRf,
    /// Appends one byte to the big lower file: the copy-up of the whole file.
    CopyUp,
    /// The first lstat of every name that only the bottom layer of a layered stack has.
    FirstStat,
    /// `n` lstats of a name no layer has.
    MissingStat { n: usize },
    /// Opens, reads and closes every bottom-only file of a layered stack, the names dealt
    /// round-robin to `readers` threads that run at once.
    ReadFiles { readers: usize },
    /// The mount itself, until the mount point is live.
    MountTime,
    /// Mount, launch and unmount, timed as a whole by [`launch::measure`].
    Launch(Launch),
}

/// How the target is prepared before the timed part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prep {
    /// Nothing: the mount is fresh, the host's caches are as the previous row left them.
    Fresh,
    /// The operation runs once untimed first.
    Warm,
    /// `sync` and drop the page, dentry and inode caches after mounting.
    Cold,
    /// Bring this path of the bottom layer (file data or a directory's metadata) into the
    /// host's cache, through the layer, not through the mount.
    PrimeLower(&'static str),
    /// Walk every layer of the stack directly, so that only the union's own work is timed.
    PrimeLayers,
    /// As `PrimeLayers`, and read every file's data too.
    PrimeLayerData,
}

/// One row of the report.
pub struct Workload {
    /// Short name for `--only` and the JSON file.
    pub id: String,
    /// What the row measures, as the table shows it.
    pub title: String,
    pub stack: StackRef,
    pub op: Op,
    pub prep: Prep,
    pub volatile: bool,
    /// Rows that only kernel overlayfs and unionfs support (`volatile`).
    pub kernel_and_unionfs_only: bool,
    /// Also record the daemon's RSS after the operation, in the row with this id.
    pub rss_row: Option<&'static str>,
}

impl Workload {
    fn new(id: &str, title: String, stack: StackRef, op: Op, prep: Prep) -> Workload {
        Workload {
            id: id.to_string(),
            title,
            stack,
            op,
            prep,
            volatile: false,
            kernel_and_unionfs_only: false,
            rss_row: None,
        }
    }

    pub fn runs_on(&self, kind: Kind) -> bool {
        !self.kernel_and_unionfs_only || kind != Kind::FuseOverlayfs
    }

    /// Rows that write to the upper: the caches are flushed after them (untimed), so that their
    /// writeback does not slow the next row.
    fn writes(&self) -> bool {
        matches!(
            self.op,
            Op::SeqWrite { .. } | Op::Create { .. } | Op::RmRf | Op::CopyUp
        )
    }
}

/// The id of the daemon-memory row, filled from the `stat` row's mounts.
pub const RSS_ROW: &str = "rss";

/// Sizes that differ between `--quick` and the full run.
pub struct Scale {
    pub rand_reads: usize,
    pub write_bytes: u64,
    pub create_files: usize,
    pub missing_stats: usize,
    pub layer_counts: &'static [usize],
}

/// Every row, in report order.
pub fn all(scale: &Scale, stacks: &Stacks) -> Vec<Workload> {
    use Prep::*;
    use StackRef::Distro as D;
    let p = &stacks.distro.params;
    let mut stat = Workload::new(
        "stat",
        "stat every file, warm".into(),
        D,
        Op::StatWalk,
        Warm,
    );
    stat.rss_row = Some(RSS_ROW);
    let mut rows = vec![
        Workload::new("find", "find -type f, warm".into(), D, Op::Find, Warm),
        stat,
        Workload::new("ls-lR", "ls -lR, warm".into(), D, Op::LsLr, Warm),
        Workload::new(
            "read-small",
            "read all small-file data (tar | cat), warm".into(),
            D,
            Op::TarSmall,
            Warm,
        ),
        Workload::new(
            "cold-walk",
            "metadata walk (stat every file), cold".into(),
            D,
            Op::StatWalk,
            Cold,
        ),
        Workload::new(
            "randread",
            format!(
                "4k random read of the big file, cold ({} reads)",
                scale.rand_reads
            ),
            D,
            Op::RandRead {
                reads: scale.rand_reads,
            },
            Cold,
        ),
        Workload::new(
            "seqread",
            format!(
                "sequential read of the big file ({}), warm",
                mib(p.big_bytes)
            ),
            D,
            Op::SeqRead,
            Warm,
        ),
        Workload::new(
            "seqwrite",
            format!("sequential write of a new {} file", mib(scale.write_bytes)),
            D,
            Op::SeqWrite {
                bytes: scale.write_bytes,
                piece: 1 << 20,
            },
            Fresh,
        ),
        // Small writes, as tar, compilers and loggers make: each one a round trip if the
        // kernel had to ask about privileges to drop before every write.
        Workload::new(
            "seqwrite-4k",
            format!(
                "sequential write of a new {} file, 4 KiB per write",
                mib(scale.write_bytes / 4)
            ),
            D,
            Op::SeqWrite {
                bytes: scale.write_bytes / 4,
                piece: 4096,
            },
            Fresh,
        ),
        Workload::new(
            "create",
            format!("create {} small files", scale.create_files),
            D,
            Op::Create {
                n: scale.create_files,
            },
            Fresh,
        ),
        Workload::new(
            "rm-rf",
            format!("rm -rf of a {}-entry lower dir", p.rm_entries),
            D,
            Op::RmRf,
            PrimeLower(stacks::RM_DIR),
        ),
        Workload::new(
            "copy-up",
            format!(
                "copy-up of the big file ({}, append 1 byte)",
                mib(p.big_bytes)
            ),
            D,
            Op::CopyUp,
            PrimeLower(stacks::BIG_FILE),
        ),
    ];
    let mut volatile = Workload::new(
        "copy-up-volatile",
        "copy-up of the big file, -o volatile".into(),
        D,
        Op::CopyUp,
        PrimeLower(stacks::BIG_FILE),
    );
    volatile.volatile = true;
    volatile.kernel_and_unionfs_only = true;
    rows.push(volatile);
    for &n in scale.layer_counts {
        rows.push(Workload::new(
            &format!("lookup-bottom-{n}"),
            format!("{n} layers: first stat of 1000 bottom-only names"),
            StackRef::Layered(n),
            Op::FirstStat,
            PrimeLayers,
        ));
    }
    for &n in scale.layer_counts {
        rows.push(Workload::new(
            &format!("lookup-missing-{n}"),
            format!(
                "{n} layers: {} stats of a missing name",
                scale.missing_stats
            ),
            StackRef::Layered(n),
            Op::MissingStat {
                n: scale.missing_stats,
            },
            PrimeLayers,
        ));
    }
    let most = *scale.layer_counts.last().expect("layer counts are listed");
    // Reading through a fresh mount sends every open and read to the daemon: how well it
    // serves two readers at once, on the stack size of a typical image.
    let typical = scale
        .layer_counts
        .iter()
        .copied()
        .find(|&n| n >= 10)
        .unwrap_or(most);
    for readers in [1, 2] {
        rows.push(Workload::new(
            &format!("readers-{readers}"),
            format!(
                "{typical} layers: read {} bottom-only files, fresh mount, {readers} thread{}",
                stacks::BOTTOM_ONLY_NAMES,
                if readers == 1 { "" } else { "s" }
            ),
            StackRef::Layered(typical),
            Op::ReadFiles { readers },
            PrimeLayerData,
        ));
    }
    rows.push(Workload::new(
        &format!("mount-{most}"),
        format!("mount time, {most} layers"),
        StackRef::Layered(most),
        Op::MountTime,
        PrimeLayers,
    ));
    rows.extend(launch_rows());
    rows
}

/// The `run-true` rows; both take kernel overlayfs + `unshare … chroot MNT /bin/true` as the
/// reference (see [`launch`]).
fn launch_rows() -> Vec<Workload> {
    let mut run = Workload::new(
        "run-true",
        "/bin/true: unionfs run --rm vs mount+unshare chroot+umount".into(),
        StackRef::Busybox,
        Op::Launch(Launch::RunTrue),
        Prep::PrimeLayers,
    );
    run.kernel_and_unionfs_only = true;
    let mount = Workload::new(
        "run-true-mount",
        "mount+umount alone, no command (kernel: as above)".into(),
        StackRef::Busybox,
        Op::Launch(Launch::MountOnly),
        Prep::PrimeLayers,
    );
    vec![run, mount]
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// What one run of a row on one target gave.
pub struct Measured {
    pub secs: f64,
    pub rss_mib: Option<f64>,
}

/// Mounts `target`, prepares it, times the row's operation, and unmounts.
pub fn measure(w: &Workload, target: &Target, stacks: &Stacks) -> Result<Measured> {
    let layers = stacks.layers(w.stack);
    let spec = Spec {
        layers,
        volatile: w.volatile,
    };
    prime(w.prep, layers)?;
    if let Op::Launch(row) = w.op {
        let secs = launch::measure(row, target, layers)?;
        return Ok(Measured {
            secs,
            rss_mib: None,
        });
    }
    // The mount command until the mount is live; not preparing its directories, nor finding
    // a FUSE target's daemon afterwards (a scan of /proc, which the kernel target has no
    // counterpart of).
    let (mounted, mount_took) = target.mount_timed(&spec)?;
    let mount_secs = mount_took.as_secs_f64();
    let mnt = mounted.mnt.clone();
    match w.prep {
        Prep::Warm => run_op(w.op, &mnt, stacks)?,
        Prep::Cold => super::drop_caches()?,
        _ => {}
    }
    let secs = if matches!(w.op, Op::MountTime) {
        mount_secs
    } else {
        let start = Instant::now();
        run_op(w.op, &mnt, stacks)?;
        start.elapsed().as_secs_f64()
    };
    let rss_mib = w.rss_row.and_then(|_| mounted.daemon_rss_mib());
    check_after(w.op, &mnt, stacks)?;
    mounted.unmount()?;
    if w.writes() {
        super::sync()?;
    }
    Ok(Measured { secs, rss_mib })
}

fn prime(prep: Prep, layers: &[PathBuf]) -> Result<()> {
    match prep {
        Prep::PrimeLower(rel) => {
            let path = layers[0].join(rel);
            if path.is_dir() {
                stat_walk(&path)?;
            } else {
                read_all(&path)?;
            }
        }
        Prep::PrimeLayers => {
            for l in layers {
                stat_walk(l)?;
            }
        }
        Prep::PrimeLayerData => {
            for l in layers {
                read_walk(l)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn run_op(op: Op, mnt: &Path, stacks: &Stacks) -> Result<()> {
    let big = || mnt.join(stacks::BIG_FILE);
    match op {
        Op::Find => {
            let mut cmd = Command::new("find");
            cmd.arg(mnt).args(["-type", "f"]);
            silent(&mut cmd)
        }
        Op::StatWalk => stat_walk(mnt).map(drop),
        Op::LsLr => {
            let mut cmd = Command::new("ls");
            cmd.arg("-lR").arg(mnt);
            silent(&mut cmd)
        }
        Op::TarSmall => {
            // GNU tar does not read the data when writing to /dev/null itself, hence the cat.
            let script = format!("tar -cf - --exclude=./{} . | cat", stacks::BIG_DIR);
            let mut cmd = Command::new("sh");
            cmd.current_dir(mnt).args(["-ec", &script]);
            silent(&mut cmd)
        }
        Op::RandRead { reads } => rand_read(&big(), reads),
        Op::SeqRead => read_all(&big()).map(drop),
        Op::SeqWrite { bytes, piece } => seq_write(&mnt.join("bench-seqwrite.bin"), bytes, piece),
        Op::Create { n } => create_files(&mnt.join("bench-create"), n),
        Op::RmRf => {
            let dir = mnt.join(stacks::RM_DIR);
            fs::remove_dir_all(&dir).context(|| format!("rm -rf {}", dir.display()))
        }
        Op::CopyUp => {
            let path = big();
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .context(|| format!("open {} for appending", path.display()))?;
            f.write_all(b"!")
                .context(|| format!("append to {}", path.display()))
        }
        Op::FirstStat => {
            // Every layered stack has the same bottom-only names.
            let stack = stacks
                .layered
                .first()
                .expect("rows with layered stacks have one");
            for name in &stack.bottom_only {
                let p = mnt.join(name);
                fs::symlink_metadata(&p).context(|| format!("stat {}", p.display()))?;
            }
            Ok(())
        }
        Op::MissingStat { n } => {
            let p = mnt.join(stacks::MISSING_NAME);
            for _ in 0..n {
                if fs::symlink_metadata(&p).is_ok() {
                    return Err(Error::Unexpected(format!("{} exists", p.display())));
                }
            }
            Ok(())
        }
        Op::ReadFiles { readers } => {
            let stack = stacks
                .layered
                .first()
                .expect("rows with layered stacks have one");
            read_files(mnt, &stack.bottom_only, readers)
        }
        Op::MountTime | Op::Launch(_) => Ok(()),
    }
}

/// Reads `names` below `mnt` on `readers` threads at once, thread `t` taking every
/// `readers`-th name from the `t`-th; every file must hold what the bottom layer wrote.
fn read_files(mnt: &Path, names: &[String], readers: usize) -> Result<()> {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..readers)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    for name in names.iter().skip(t).step_by(readers) {
                        let p = mnt.join(name);
                        let data = fs::read(&p).context(|| format!("read {}", p.display()))?;
                        if data != stacks::BOTTOM_ONLY_DATA {
                            return Err(Error::Unexpected(format!(
                                "{} holds {} bytes, not the bottom layer's",
                                p.display(),
                                data.len()
                            )));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("a reader thread panicked"))
    })
}

/// The checks that make a fast but wrong answer an error.
fn check_after(op: Op, mnt: &Path, stacks: &Stacks) -> Result<()> {
    match op {
        Op::RmRf => {
            let dir = mnt.join(stacks::RM_DIR);
            if fs::symlink_metadata(&dir).is_ok() {
                return Err(Error::Unexpected(format!(
                    "{} still exists after rm -rf",
                    dir.display()
                )));
            }
        }
        Op::CopyUp => {
            let path = mnt.join(stacks::BIG_FILE);
            let len = fs::metadata(&path)
                .context(|| format!("stat {}", path.display()))?
                .len();
            let want = stacks.distro.params.big_bytes + 1;
            if len != want {
                return Err(Error::Unexpected(format!(
                    "{} has {len} bytes after appending one, not {want}",
                    path.display()
                )));
            }
        }
        Op::Create { n } => {
            let dir = mnt.join("bench-create");
            let count = fs::read_dir(&dir)
                .context(|| format!("list {}", dir.display()))?
                .count();
            if count != n {
                return Err(Error::Unexpected(format!(
                    "{} lists {count} files, {n} were created",
                    dir.display()
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Runs `cmd` with its output discarded (stderr kept for the error), failing unless it
/// succeeded.
fn silent(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Command {
            cmdline: host::cmdline(cmd),
            why: format!("could not start: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let first: Vec<&str> = err.lines().take(5).collect();
    Err(Error::Command {
        cmdline: host::cmdline(cmd),
        why: format!("failed ({}): {}", out.status, first.join(" | ")),
    })
}

/// One merged entry as the tree check compares it: path, type letter, and size for regular
/// files and symlinks (directory sizes differ between filesystems and mean nothing here).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: char,
    pub size: u64,
}

/// Every entry below `root`, sorted by path.
pub fn listing(root: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk(root, &mut |path, meta| {
        let ft = meta.file_type();
        let (kind, size) = match () {
            _ if ft.is_dir() => ('d', 0),
            _ if ft.is_symlink() => ('l', meta.len()),
            _ if ft.is_file() => ('f', meta.len()),
            _ if ft.is_char_device() => ('c', meta.rdev()),
            _ => ('o', 0),
        };
        let rel = path.strip_prefix(root).expect("walk stays below its root");
        out.push(Entry {
            path: rel.as_os_str().as_bytes().to_vec(),
            kind,
            size,
        });
    })?;
    out.sort();
    Ok(out)
}

/// readdir + lstat of every entry below `root`; returns how many entries there were.
pub fn stat_walk(root: &Path) -> Result<usize> {
    let mut n = 0;
    walk(root, &mut |_, _| n += 1)?;
    Ok(n)
}

fn walk(root: &Path, visit: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).context(|| format!("list {}", dir.display()))? {
            let entry = entry.context(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).context(|| format!("stat {}", path.display()))?;
            visit(&path, &meta);
            if meta.is_dir() {
                dirs.push(path);
            }
        }
    }
    Ok(())
}

/// Reads every regular file below `root` front to back.
fn read_walk(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(root, &mut |path, meta| {
        if meta.is_file() {
            files.push(path.to_path_buf());
        }
    })?;
    files.iter().try_for_each(|f| read_all(f).map(drop))
}

/// Reads `path` front to back; returns its size.
fn read_all(path: &Path) -> Result<u64> {
    let mut f = fs::File::open(path).context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = f
            .read(&mut buf)
            .context(|| format!("read {}", path.display()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn rand_read(path: &Path, reads: usize) -> Result<()> {
    let f = fs::File::open(path).context(|| format!("open {}", path.display()))?;
    let blocks = f
        .metadata()
        .context(|| format!("stat {}", path.display()))?
        .len()
        / 4096;
    let mut rng = Rng::new(0x7261_6e64);
    let mut buf = [0u8; 4096];
    for _ in 0..reads {
        let off = rng.below(blocks) * 4096;
        f.read_exact_at(&mut buf, off)
            .context(|| format!("read {} at {off}", path.display()))?;
    }
    Ok(())
}

fn seq_write(path: &Path, bytes: u64, piece: usize) -> Result<()> {
    let mut rng = Rng::new(0x7772_6974);
    let buf: Vec<u8> = (0..piece.div_ceil(8))
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    let mut f = fs::File::create(path).context(|| format!("create {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])
            .context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    Ok(())
}

fn create_files(dir: &Path, n: usize) -> Result<()> {
    fs::create_dir(dir).context(|| format!("mkdir {}", dir.display()))?;
    let body = [b'x'; 100];
    for i in 0..n {
        let p = dir.join(format!("f{i:05}"));
        fs::write(&p, body).context(|| format!("create {}", p.display()))?;
    }
    Ok(())
}
