//! The operations a differential case applies to a mountpoint, how each one is carried out
//! (plain std/nix/libc calls, as an application would), and the proptest strategy that draws
//! sequences of them.
//!
//! Paths come from a small universe (names from the fixture plus a few new ones) so that
//! generated operations collide often: renames over existing names, links of already linked
//! files, mkdir over a whiteout, rmdir of merged directories...
//!
//! Some operations hold descriptors: `Open` puts one in a numbered slot, and the `F*`
//! operations use it later, after other operations may have unlinked, renamed over, copied up
//! or removed what it names. That is where a union filesystem must keep an object's identity
//! apart from its names, and where sequences of path operations alone cannot reach.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, mkfifo, Gid, Uid};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::fixture::content;

/// One operation on the merged tree. Paths are relative to the mountpoint. `Debug` prints
/// valid Rust (after an `Op::` prefix), so a failing generated sequence can be pasted into a
/// hand-written test.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// open(O_WRONLY|O_CREAT, 0644) and write `len` bytes at offset 0 (no truncation).
    Write {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// open(O_WRONLY|O_APPEND) (no O_CREAT) and write `len` bytes.
    Append {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// open(O_WRONLY|O_CREAT|O_TRUNC, 0644) and write `len` bytes.
    Overwrite {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// truncate(2).
    Truncate {
        path: &'static str,
        size: u64,
    },
    Mkdir {
        path: &'static str,
        mode: u32,
    },
    Rmdir(&'static str),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    /// renameat2(RENAME_NOREPLACE).
    RenameNoReplace(&'static str, &'static str),
    /// renameat2(RENAME_EXCHANGE).
    Exchange(&'static str, &'static str),
    /// link(old, new).
    Link(&'static str, &'static str),
    /// symlink(target, path).
    Symlink {
        target: &'static str,
        path: &'static str,
    },
    /// chmod(2) (follows symlinks).
    Chmod {
        path: &'static str,
        mode: u32,
    },
    /// lchown(2).
    Chown {
        path: &'static str,
        uid: u32,
        gid: u32,
    },
    /// lsetxattr(2).
    SetXattr {
        path: &'static str,
        name: &'static str,
        value: &'static str,
    },
    /// lremovexattr(2).
    RemoveXattr {
        path: &'static str,
        name: &'static str,
    },
    /// mkfifo(path, 0644).
    Mkfifo(&'static str),
    /// lstat(2), recording type, mode, owner, nlink and size (not of directories).
    Stat(&'static str),
    /// Unmount and mount again on the same upper and work directories. Closes every slot
    /// first (a filesystem with open files cannot be unmounted).
    Remount,
    /// open(2) with O_NONBLOCK (fifos open without a peer) into `slot`, closing what the
    /// slot held.
    Open {
        slot: usize,
        path: &'static str,
        how: Access,
    },
    /// close(2) of a slot.
    Close(usize),
    /// fstat(2), recorded like `Stat`.
    FStat(usize),
    /// Reads the whole file from offset 0 with pread(2), recording size and content hash.
    FRead(usize),
    /// pwrite(2) of `len` bytes at `offset`.
    FWrite {
        slot: usize,
        offset: u64,
        len: usize,
        seed: u64,
    },
    /// ftruncate(2).
    FTruncate {
        slot: usize,
        size: u64,
    },
    /// fchmod(2).
    FChmod {
        slot: usize,
        mode: u32,
    },
    /// futimens(2) to `secs` for both times, recording the mtime fstat then reports.
    FUtime {
        slot: usize,
        secs: i64,
    },
    /// fsetxattr(2).
    FSetXattr {
        slot: usize,
        name: &'static str,
        value: &'static str,
    },
    /// fgetxattr(2), recording the value.
    FGetXattr {
        slot: usize,
        name: &'static str,
    },
    /// Lists a directory through the descriptor (getdents from offset 0), recording the sorted
    /// names.
    FList(usize),
    /// openat(2) of `name` relative to a directory descriptor with O_CREAT, then close.
    FCreate {
        slot: usize,
        name: &'static str,
    },
    /// fstatat(2) of `name` relative to a directory descriptor, recorded like `Stat`.
    FStatAt {
        slot: usize,
        name: &'static str,
    },
    /// mkdirat(2) of `name` (mode 0755) relative to a directory descriptor.
    FMkdir {
        slot: usize,
        name: &'static str,
    },
    /// unlinkat(2) of `name` relative to a directory descriptor (rmdir with `dir`).
    FRemove {
        slot: usize,
        name: &'static str,
        dir: bool,
    },
    /// renameat(2) of `name` in a directory descriptor to `to` (relative to the mountpoint).
    FRename {
        slot: usize,
        name: &'static str,
        to: &'static str,
    },
}

/// How `Op::Open` opens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    Read,
    ReadWrite,
    /// O_RDONLY | O_DIRECTORY.
    Dir,
}

/// Number of descriptor slots.
pub const SLOTS: usize = 3;

/// The descriptors a sequence holds, by slot.
#[derive(Default)]
pub struct Fds([Option<Held>; SLOTS]);

/// One held descriptor.
struct Held {
    file: File,
    /// Whether the object had several names when opened (see [`Fds::change`]).
    linked: bool,
}

/// How a change through a descriptor (fchmod, futimens, fsetxattr) is made and recorded.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Made, and its result recorded as it is.
    Made,
    /// Made on a file left with no name; a refusal is recorded as one (see [`refused`]).
    Nameless,
    /// Not made (see [`Fds::change`]).
    NotMade,
}

impl Fds {
    /// The descriptor an operation on `slot` uses: the slot's own, or when it is empty the
    /// first one held (generated sequences would rarely line slot numbers up by chance);
    /// EBADF when none is held.
    fn held(&self, slot: usize) -> Result<&Held, Errno> {
        self.0[slot]
            .as_ref()
            .or_else(|| self.0.iter().flatten().next())
            .ok_or(Errno::EBADF)
    }

    fn get(&self, slot: usize) -> Result<&File, Errno> {
        self.held(slot).map(|h| &h.file)
    }

    /// How a change through the descriptor in `slot` is made, given the names its object has
    /// in the merged tree under `root` and whether they are in `upper`.
    ///
    /// Left out: a change that may have to copy up one of several names of a lower hard-linked
    /// file without the file system being told which. fchmod, futimens and fsetxattr reach a
    /// FUSE daemon as requests on the inode alone, with no descriptor: kernel overlayfs copies
    /// up the name the descriptor was opened by (or none, when that one is in the upper),
    /// while a FUSE daemon can only pick one (unionfs: the name last looked up). The merged
    /// trees would agree; the upper directories would differ in which names of the file they
    /// hold. So the change is not made when the object has, or had when opened, several names
    /// and one of them is not in the upper yet.
    ///
    /// Left out as well: a change to a directory left with no name (removed, renamed over).
    /// When only lower layers held it, kernel overlayfs copies it up to the name it had, over
    /// whatever holds that name now: a directory renamed there loses its contents from the
    /// merged tree. unionfs refuses (EROFS). What a removed directory answers is checked by
    /// the hand-written tests in `tests/ops/meta.rs` and `tests/ops/namespace.rs`.
    fn change(&self, slot: usize, root: &Path, upper: &Path) -> Result<Change, Errno> {
        let held = self.held(slot)?;
        let st = fd_stat(&held.file)?;
        let names = merged_names(root, st.st_ino);
        if names.is_empty() && !is_file(&st) {
            return Ok(Change::NotMade);
        }
        if names.is_empty() {
            return Ok(Change::Nameless);
        }
        let several = held.linked || names.len() > 1;
        if is_file(&st) && several && names.iter().any(|n| !in_upper(upper, n)) {
            return Ok(Change::NotMade);
        }
        Ok(Change::Made)
    }

    /// Closes every slot.
    pub fn close_all(&mut self) {
        self.0 = Default::default();
    }
}

/// Not a directory.
fn is_file(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT != libc::S_IFDIR
}

/// The paths under `root` (not following symlinks) whose inode number is `ino`.
fn merged_names(root: &Path, ino: u64) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if m.ino() == ino {
                found.push(
                    entry
                        .path()
                        .strip_prefix(root)
                        .unwrap_or(&entry.path())
                        .into(),
                );
            }
            if m.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    found
}

/// Whether merged path `rel` is in the upper directory `upper` (not a whiteout).
fn in_upper(upper: &Path, rel: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(upper.join(rel))
        .is_ok_and(|m| !(m.file_type().is_char_device() && m.rdev() == 0))
}

/// What a change through a descriptor records when [`Fds::change`] leaves it out.
const NOT_MADE: &str = "not made";

/// What an operation returned: success, with what it observed if it is an observing
/// operation, or the errno.
pub type OpResult = Result<Option<String>, Errno>;

/// Formats an `OpResult` as `ok`, the observation, or the errno's name.
pub fn show_result(r: &OpResult) -> String {
    match r {
        Ok(None) => "ok".to_string(),
        Ok(Some(seen)) => seen.clone(),
        Err(e) => format!("{e:?}"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Op::{self:?}")
    }
}

impl fmt::Debug for Op {
    // By hand only so that modes print in octal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write { path, len, seed } => {
                write!(f, "Write {{ path: {path:?}, len: {len}, seed: {seed} }}")
            }
            Op::Append { path, len, seed } => {
                write!(f, "Append {{ path: {path:?}, len: {len}, seed: {seed} }}")
            }
            Op::Overwrite { path, len, seed } => {
                write!(
                    f,
                    "Overwrite {{ path: {path:?}, len: {len}, seed: {seed} }}"
                )
            }
            Op::Truncate { path, size } => write!(f, "Truncate {{ path: {path:?}, size: {size} }}"),
            Op::Mkdir { path, mode } => write!(f, "Mkdir {{ path: {path:?}, mode: {mode:#o} }}"),
            Op::Rmdir(p) => write!(f, "Rmdir({p:?})"),
            Op::Unlink(p) => write!(f, "Unlink({p:?})"),
            Op::Rename(a, b) => write!(f, "Rename({a:?}, {b:?})"),
            Op::RenameNoReplace(a, b) => write!(f, "RenameNoReplace({a:?}, {b:?})"),
            Op::Exchange(a, b) => write!(f, "Exchange({a:?}, {b:?})"),
            Op::Link(a, b) => write!(f, "Link({a:?}, {b:?})"),
            Op::Symlink { target, path } => {
                write!(f, "Symlink {{ target: {target:?}, path: {path:?} }}")
            }
            Op::Chmod { path, mode } => write!(f, "Chmod {{ path: {path:?}, mode: {mode:#o} }}"),
            Op::Chown { path, uid, gid } => {
                write!(f, "Chown {{ path: {path:?}, uid: {uid}, gid: {gid} }}")
            }
            Op::SetXattr { path, name, value } => write!(
                f,
                "SetXattr {{ path: {path:?}, name: {name:?}, value: {value:?} }}"
            ),
            Op::RemoveXattr { path, name } => {
                write!(f, "RemoveXattr {{ path: {path:?}, name: {name:?} }}")
            }
            Op::Mkfifo(p) => write!(f, "Mkfifo({p:?})"),
            Op::Stat(p) => write!(f, "Stat({p:?})"),
            Op::Remount => write!(f, "Remount"),
            Op::Open { slot, path, how } => write!(
                f,
                "Open {{ slot: {slot}, path: {path:?}, how: Access::{how:?} }}"
            ),
            Op::Close(slot) => write!(f, "Close({slot})"),
            Op::FStat(slot) => write!(f, "FStat({slot})"),
            Op::FRead(slot) => write!(f, "FRead({slot})"),
            Op::FWrite {
                slot,
                offset,
                len,
                seed,
            } => write!(
                f,
                "FWrite {{ slot: {slot}, offset: {offset}, len: {len}, seed: {seed} }}"
            ),
            Op::FTruncate { slot, size } => {
                write!(f, "FTruncate {{ slot: {slot}, size: {size} }}")
            }
            Op::FChmod { slot, mode } => write!(f, "FChmod {{ slot: {slot}, mode: {mode:#o} }}"),
            Op::FUtime { slot, secs } => write!(f, "FUtime {{ slot: {slot}, secs: {secs} }}"),
            Op::FSetXattr { slot, name, value } => write!(
                f,
                "FSetXattr {{ slot: {slot}, name: {name:?}, value: {value:?} }}"
            ),
            Op::FGetXattr { slot, name } => {
                write!(f, "FGetXattr {{ slot: {slot}, name: {name:?} }}")
            }
            Op::FList(slot) => write!(f, "FList({slot})"),
            Op::FCreate { slot, name } => {
                write!(f, "FCreate {{ slot: {slot}, name: {name:?} }}")
            }
            Op::FStatAt { slot, name } => {
                write!(f, "FStatAt {{ slot: {slot}, name: {name:?} }}")
            }
            Op::FMkdir { slot, name } => write!(f, "FMkdir {{ slot: {slot}, name: {name:?} }}"),
            Op::FRemove { slot, name, dir } => {
                write!(f, "FRemove {{ slot: {slot}, name: {name:?}, dir: {dir} }}")
            }
            Op::FRename { slot, name, to } => {
                write!(f, "FRename {{ slot: {slot}, name: {name:?}, to: {to:?} }}")
            }
        }
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("test paths have no NUL")
}

fn write_with(path: &Path, opts: &mut std::fs::OpenOptions, len: usize, seed: u64) -> OpResult {
    // O_NONBLOCK so that opening a fifo for writing fails with ENXIO instead of blocking.
    let mut f = opts
        .custom_flags(libc::O_NONBLOCK)
        .mode(0o644)
        .open(path)
        .map_err(errno)?;
    f.write_all(&content(seed, len)).map_err(errno)?;
    Ok(None)
}

/// The part of a stat result that must agree between implementations: no inode numbers,
/// devices or times, and no size for directories (filesystem-specific).
fn show_stat(mode: u32, nlink: u64, uid: u32, gid: u32, size: u64) -> String {
    let kind = match SFlag::from_bits_truncate(mode & libc::S_IFMT) {
        SFlag::S_IFDIR => "dir",
        SFlag::S_IFREG => "file",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFIFO => "fifo",
        _ => "other",
    };
    let size = if kind == "dir" {
        String::new()
    } else {
        format!(" size={size}")
    };
    format!(
        "{kind} {:04o} {uid}:{gid} nlink={nlink}{size}",
        mode & 0o7777
    )
}

/// The error a change through a descriptor of a file left with no name is recorded with.
/// One only the lower layers hold cannot change: no name is left to copy it up to. unionfs
/// refuses with EROFS; kernel overlayfs tries the copy-up anyway and fails with what that
/// meets at the old name (EEXIST at a whiteout, ENOTDIR, EIO). No change through a descriptor
/// fails with those on a file system that can make it, so they are recorded as the one
/// refusal. (One that the upper holds must change on both.)
impl Change {
    /// The error recorded for a change that failed with `e`.
    fn error(&self, e: Errno) -> Errno {
        match self {
            Change::Nameless => refused(e),
            _ => e,
        }
    }
}

fn refused(e: Errno) -> Errno {
    match e {
        Errno::EEXIST | Errno::ENOTDIR | Errno::EIO => Errno::EROFS,
        e => e,
    }
}

/// [`show_stat`] of a stat(2) result.
fn show_raw_stat(st: &libc::stat) -> String {
    show_stat(
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size as u64,
    )
}

fn fd_stat(fd: &File) -> Result<libc::stat, Errno> {
    fstat(fd.as_fd())
}

/// Reads all of `fd` from offset 0 with pread (the descriptor's offset is left alone).
fn read_all(fd: &File) -> Result<Vec<u8>, Errno> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = nix::sys::uio::pread(fd.as_fd(), &mut buf, data.len() as libc::off_t)?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Sorted names in the directory `fd` refers to, read through a duplicate of it (which shares
/// its offset; the listing rewinds when done).
fn list_fd(fd: &File) -> Result<Vec<String>, Errno> {
    // fdopendir's own check, made first: nix's `Dir::from_fd` leaks the descriptor when
    // fdopendir fails, which would keep the filesystem busy.
    if fd_stat(fd)?.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Errno::ENOTDIR);
    }
    let mut dir = nix::dir::Dir::from_fd(fd.try_clone().map_err(errno)?.into())?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), Errno> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both strings are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

impl Op {
    /// Carries out the operation under `root` (a mountpoint), with the descriptors the sequence
    /// holds. `Remount` is the caller's job.
    pub fn apply(&self, root: &Path, upper: &Path, fds: &mut Fds) -> OpResult {
        let p = |rel: &str| root.join(rel);
        let done = |r: Result<(), Errno>| r.map(|()| None);
        match *self {
            Op::Write { path, len, seed } => write_with(
                &p(path),
                std::fs::OpenOptions::new().write(true).create(true),
                len,
                seed,
            ),
            Op::Append { path, len, seed } => write_with(
                &p(path),
                std::fs::OpenOptions::new().append(true),
                len,
                seed,
            ),
            Op::Overwrite { path, len, seed } => write_with(
                &p(path),
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                len,
                seed,
            ),
            Op::Truncate { path, size } => {
                done(nix::unistd::truncate(&p(path), size as libc::off_t))
            }
            Op::Mkdir { path, mode } => done(
                std::fs::DirBuilder::new()
                    .mode(mode)
                    .create(p(path))
                    .map_err(errno),
            ),
            Op::Rmdir(path) => done(std::fs::remove_dir(p(path)).map_err(errno)),
            Op::Unlink(path) => done(std::fs::remove_file(p(path)).map_err(errno)),
            Op::Rename(a, b) => done(std::fs::rename(p(a), p(b)).map_err(errno)),
            Op::RenameNoReplace(a, b) => done(renameat2(&p(a), &p(b), libc::RENAME_NOREPLACE)),
            Op::Exchange(a, b) => done(renameat2(&p(a), &p(b), libc::RENAME_EXCHANGE)),
            Op::Link(a, b) => done(std::fs::hard_link(p(a), p(b)).map_err(errno)),
            Op::Symlink { target, path } => done(symlink(target, p(path)).map_err(errno)),
            Op::Chmod { path, mode } => done(
                std::fs::set_permissions(p(path), std::fs::Permissions::from_mode(mode))
                    .map_err(errno),
            ),
            Op::Chown { path, uid, gid } => done(fchownat(
                AT_FDCWD,
                &p(path),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )),
            Op::SetXattr { path, name, value } => {
                done(xattr::set(p(path), name, value.as_bytes()).map_err(errno))
            }
            Op::RemoveXattr { path, name } => done(xattr::remove(p(path), name).map_err(errno)),
            Op::Mkfifo(path) => done(mkfifo(&p(path), Mode::from_bits_truncate(0o644))),
            Op::Stat(path) => {
                let m = std::fs::symlink_metadata(p(path)).map_err(errno)?;
                Ok(Some(show_stat(
                    m.mode(),
                    m.nlink(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                )))
            }
            Op::Remount => unreachable!("the runner handles Remount"),
            Op::Open { slot, path, how } => {
                fds.0[slot] = None;
                let flags = OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC
                    | match how {
                        Access::Read => OFlag::O_RDONLY,
                        Access::ReadWrite => OFlag::O_RDWR,
                        Access::Dir => OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    };
                let file = File::from(nix::fcntl::open(&p(path), flags, Mode::empty())?);
                let st = fd_stat(&file)?;
                let linked = is_file(&st) && st.st_nlink > 1;
                fds.0[slot] = Some(Held { file, linked });
                Ok(None)
            }
            Op::Close(slot) => {
                fds.0[slot].take().ok_or(Errno::EBADF)?;
                Ok(None)
            }
            Op::FStat(slot) => {
                let st = fd_stat(fds.get(slot)?)?;
                Ok(Some(show_raw_stat(&st)))
            }
            Op::FRead(slot) => {
                let data = read_all(fds.get(slot)?)?;
                let digest = Sha256::digest(&data);
                let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
                Ok(Some(format!("{} bytes sha={hash}", data.len())))
            }
            Op::FWrite {
                slot,
                offset,
                len,
                seed,
            } => {
                let data = content(seed, len);
                let n = nix::sys::uio::pwrite(fds.get(slot)?, &data, offset as libc::off_t)?;
                Ok((n != len).then(|| format!("short write {n}")))
            }
            Op::FTruncate { slot, size } => {
                done(nix::unistd::ftruncate(fds.get(slot)?, size as libc::off_t))
            }
            Op::FChmod { slot, mode } => {
                let how = fds.change(slot, root, upper)?;
                if how == Change::NotMade {
                    return Ok(Some(NOT_MADE.to_string()));
                }
                let r = nix::sys::stat::fchmod(fds.get(slot)?, Mode::from_bits_truncate(mode));
                done(r.map_err(|e| how.error(e)))
            }
            Op::FUtime { slot, secs } => {
                let how = fds.change(slot, root, upper)?;
                if how == Change::NotMade {
                    return Ok(Some(NOT_MADE.to_string()));
                }
                let fd = fds.get(slot)?;
                let t = TimeSpec::new(secs, 0);
                nix::sys::stat::futimens(fd, &t, &t).map_err(|e| how.error(e))?;
                Ok(Some(format!("mtime={}", fd_stat(fd)?.st_mtime)))
            }
            Op::FSetXattr { slot, name, value } => {
                let how = fds.change(slot, root, upper)?;
                if how == Change::NotMade {
                    return Ok(Some(NOT_MADE.to_string()));
                }
                let r = xattr::FileExt::set_xattr(fds.get(slot)?, name, value.as_bytes());
                done(r.map_err(|e| how.error(errno(e))))
            }
            Op::FGetXattr { slot, name } => {
                match xattr::FileExt::get_xattr(fds.get(slot)?, name).map_err(errno)? {
                    Some(v) => Ok(Some(format!("{:?}", String::from_utf8_lossy(&v)))),
                    None => Err(Errno::ENODATA),
                }
            }
            Op::FList(slot) => Ok(Some(list_fd(fds.get(slot)?)?.join(" "))),
            Op::FCreate { slot, name } => {
                let fd = nix::fcntl::openat(
                    fds.get(slot)?,
                    name,
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )?;
                drop(fd);
                Ok(None)
            }
            Op::FStatAt { slot, name } => {
                let st = nix::sys::stat::fstatat(
                    fds.get(slot)?,
                    name,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                Ok(Some(show_raw_stat(&st)))
            }
            Op::FMkdir { slot, name } => done(nix::sys::stat::mkdirat(
                fds.get(slot)?,
                name,
                Mode::from_bits_truncate(0o755),
            )),
            Op::FRemove { slot, name, dir } => {
                let how = if dir {
                    nix::unistd::UnlinkatFlags::RemoveDir
                } else {
                    nix::unistd::UnlinkatFlags::NoRemoveDir
                };
                done(nix::unistd::unlinkat(fds.get(slot)?, name, how))
            }
            Op::FRename { slot, name, to } => {
                done(nix::fcntl::renameat(fds.get(slot)?, name, AT_FDCWD, &p(to)))
            }
        }
    }
}

/// The path universe of generated operations: fixture names (files, directories from one or
/// several layers, whiteouts, the opaque dir, hard links, special files) and new names.
pub const PATHS: &[&str] = &[
    "a", "b", "c", "new", "big", "hl1", "hl2", "h3a", "h3b", "d1", "d1/x", "d1/y1", "d1/h3c",
    "d1/sub", "d1/new", "d2", "d2/sub", "d2/sub/y", "d2/l0", "m", "m/both", "m/l1file", "m/msub",
    "m/wo", "m/new", "opq", "opq/new", "opq/old", "gone", "gonedir", "suid", "priv", "xa", "fifo",
    "ln", "dang", "e", "e2", "nd", "nd/f", "e/f",
];

/// A smaller universe for sequences that hold descriptors: names of a few objects, some hard
/// linked, some merged directories, so that what a descriptor holds is renamed, unlinked and
/// copied up often.
pub const HELD_PATHS: &[&str] = &[
    "a", "b", "new", "hl1", "hl2", "h3a", "d1/h3c", "xa", "d1", "d1/x", "d1/sub", "d2", "m",
    "m/both", "e", "nd",
];

fn path_in(paths: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop::sample::select(paths)
}

fn data() -> impl Strategy<Value = (usize, u64)> {
    (
        prop::sample::select(&[1usize, 100, 5000, 70_000][..]),
        0u64..4,
    )
}

/// One generated operation by path (weights favour the namespace operations, which are where
/// union filesystems go wrong).
fn path_op(paths: &'static [&'static str]) -> impl Strategy<Value = Op> {
    let path = || path_in(paths);
    prop_oneof![
        2 => (path(), data()).prop_map(|(path, (len, seed))| Op::Write { path, len, seed }),
        1 => (path(), data()).prop_map(|(path, (len, seed))| Op::Append { path, len, seed }),
        1 => (path(), data()).prop_map(|(path, (len, seed))| Op::Overwrite { path, len, seed }),
        1 => (path(), prop::sample::select(&[0u64, 7, 5000, (2 << 20) + 1][..]))
            .prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => (path(), prop::sample::select(&[0o755u32, 0o700][..]))
            .prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        2 => path().prop_map(Op::Rmdir),
        2 => path().prop_map(Op::Unlink),
        4 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::RenameNoReplace(a, b)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Exchange(a, b)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (prop::sample::select(&["a", "d1", "../a", "nowhere"][..]), path())
            .prop_map(|(target, path)| Op::Symlink { target, path }),
        1 => (path(), prop::sample::select(&[0o600u32, 0o755, 0o4755, 0o1777, 0o000][..]))
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), prop::sample::select(&[(0u32, 0u32), (1000, 1000), (1001, 0)][..]))
            .prop_map(|(path, (uid, gid))| Op::Chown { path, uid, gid }),
        1 => (path(), xattr_name(), xattr_value())
            .prop_map(|(path, name, value)| Op::SetXattr { path, name, value }),
        1 => (path(), xattr_name()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => path().prop_map(Op::Mkfifo),
        1 => Just(Op::Remount),
    ]
}

fn xattr_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["user.one", "user.new"][..])
}

fn xattr_value() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["v", "", "longer value"][..])
}

/// One generated operation on a held descriptor, or one that opens, closes or looks.
fn held_op(paths: &'static [&'static str]) -> impl Strategy<Value = Op> {
    let slot = || 0..SLOTS;
    prop_oneof![
        4 => open(paths),
        1 => slot().prop_map(Op::Close),
        2 => path_in(paths).prop_map(Op::Stat),
        3 => slot().prop_map(Op::FStat),
        2 => slot().prop_map(Op::FRead),
        2 => (slot(), prop::sample::select(&[0u64, 3, 5000][..]), data())
            .prop_map(|(slot, offset, (len, seed))| Op::FWrite { slot, offset, len, seed }),
        1 => (slot(), prop::sample::select(&[0u64, 2, 6000][..]))
            .prop_map(|(slot, size)| Op::FTruncate { slot, size }),
        1 => (slot(), prop::sample::select(&[0o600u32, 0o751, 0o4755][..]))
            .prop_map(|(slot, mode)| Op::FChmod { slot, mode }),
        1 => (slot(), prop::sample::select(&[1_000_000i64, 2_000_000][..]))
            .prop_map(|(slot, secs)| Op::FUtime { slot, secs }),
        1 => (slot(), xattr_name(), xattr_value())
            .prop_map(|(slot, name, value)| Op::FSetXattr { slot, name, value }),
        1 => (slot(), xattr_name()).prop_map(|(slot, name)| Op::FGetXattr { slot, name }),
        2 => slot().prop_map(Op::FList),
        1 => (slot(), child()).prop_map(|(slot, name)| Op::FCreate { slot, name }),
        2 => (slot(), child()).prop_map(|(slot, name)| Op::FStatAt { slot, name }),
        1 => (slot(), child()).prop_map(|(slot, name)| Op::FMkdir { slot, name }),
        1 => (slot(), child(), any::<bool>())
            .prop_map(|(slot, name, dir)| Op::FRemove { slot, name, dir }),
        1 => (slot(), child(), path_in(paths))
            .prop_map(|(slot, name, to)| Op::FRename { slot, name, to }),
    ]
}

/// An `Op::Open` of one of `paths`. O_RDONLY opens directories as well, so it comes first.
fn open(paths: &'static [&'static str]) -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        3 => Just(Access::Read),
        2 => Just(Access::ReadWrite),
        1 => Just(Access::Dir),
    ];
    (0..SLOTS, path_in(paths), how).prop_map(|(slot, path, how)| Op::Open { slot, path, how })
}

/// Names looked up in a held directory: new ones, and ones the fixture's directories hold.
fn child() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["n1", "n2", "x", "sub", "both", "h3c", "l0"][..])
}

/// A sequence of 1–24 operations by path over the whole fixture.
pub fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(path_op(PATHS), 1..=24)
}

/// A sequence over [`HELD_PATHS`] that opens one to three descriptors, then goes on with 1–32
/// operations, about half of them on held descriptors.
pub fn held_sequence() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![1 => path_op(HELD_PATHS), 1 => held_op(HELD_PATHS)];
    let opens = prop::collection::vec(open(HELD_PATHS), 1..=SLOTS);
    (opens, prop::collection::vec(op, 1..=32)).prop_map(|(mut ops, more)| {
        ops.extend(more);
        ops
    })
}
