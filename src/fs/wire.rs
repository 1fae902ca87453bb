//! Requests that arrive over io_uring: decode the FUSE wire format, call the same `do_*`
//! operations as `adapter`, encode the reply.
//!
//! fuser parses `/dev/fuse` requests but keeps its parser and replies private, so the io_uring
//! queues need a decoder of their own. The structures are the kernel's (`polyfuse-kernel`
//! declares them). Each arm mirrors the matching `adapter` method: a difference between the
//! two would be a difference between the transports, and the test suite runs on both.
//!
//! An io_uring request differs from a `/dev/fuse` one only in layout: the opcode's fixed
//! argument (`fuse_getattr_in`, say) comes separately from the rest (names, data), and the
//! reply's body goes in the payload buffer with its length beside it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, TimeOrNow};
use nix::errno::Errno;
use polyfuse_kernel as abi;
use zerocopy::{FromBytes, IntoBytes};

use super::core::{entry_ttl, Res, UnionFs, TTL};
use super::data::{OpenReply, SetAttr};
use super::handle::Plus;
use super::namespace::{Caller, NewObject};
use crate::sys::fileattr::FileAttrOp;

/// `fuse_setattr_in.valid`: clear the set-id bits (FUSE_HANDLE_KILLPRIV_V2, ABI 7.33).
const FATTR_KILL_SUIDGID: u32 = 1 << 11;
/// `fuse_write_in.write_flags`: clear the set-id bits before writing (ABI 7.33).
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// Serves one request: `header` is its `fuse_in_header`, `op_in` its fixed argument, `rest`
/// its other arguments. The reply's body is left in `out`; the result is 0 or a negative errno.
pub(super) fn serve(
    fs: &UnionFs,
    header: &[u8],
    op_in: &[u8],
    rest: &[u8],
    out: &mut Vec<u8>,
) -> i32 {
    out.clear();
    let Ok((h, _)) = abi::fuse_in_header::read_from_prefix(header) else {
        return -libc::EIO;
    };
    match dispatch(fs, &h, op_in, rest, out) {
        Ok(()) => 0,
        Err(e) => {
            out.clear();
            -(e as i32)
        }
    }
}

/// The opcode's fixed argument.
fn arg<T: FromBytes>(op_in: &[u8]) -> Res<T> {
    T::read_from_prefix(op_in)
        .map(|(t, _)| t)
        .map_err(|_| Errno::EINVAL)
}

/// The NUL-terminated name at the start of `buf`, and what follows it.
fn name(buf: &[u8]) -> Res<(&OsStr, &[u8])> {
    let end = buf.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
    Ok((OsStr::from_bytes(&buf[..end]), &buf[end + 1..]))
}

fn time_parts(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (-(d.as_secs() as i64), d.subsec_nanos());
            if n == 0 {
                (s as u64, 0)
            } else {
                ((s - 1) as u64, 1_000_000_000 - n)
            }
        }
    }
}

fn time_of(secs: u64, nsec: u32) -> SystemTime {
    let secs = secs as i64;
    let base = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    base + Duration::from_nanos(nsec.into())
}

fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

fn attr_out(a: &FileAttr) -> abi::fuse_attr {
    let (atime, atimensec) = time_parts(a.atime);
    let (mtime, mtimensec) = time_parts(a.mtime);
    let (ctime, ctimensec) = time_parts(a.ctime);
    abi::fuse_attr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: type_bits(a.kind) | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        padding: 0,
    }
}

fn entry_out(ino: u64, ttl: Duration, attr: abi::fuse_attr) -> abi::fuse_entry_out {
    abi::fuse_entry_out {
        nodeid: ino,
        generation: 0,
        entry_valid: ttl.as_secs(),
        attr_valid: ttl.as_secs(),
        entry_valid_nsec: ttl.subsec_nanos(),
        attr_valid_nsec: ttl.subsec_nanos(),
        attr,
    }
}

fn put_entry(out: &mut Vec<u8>, (attr, ttl): (FileAttr, Duration)) {
    out.extend_from_slice(entry_out(attr.ino.0, ttl, attr_out(&attr)).as_bytes());
}

fn put_attr(out: &mut Vec<u8>, attr: &FileAttr) {
    let a = abi::fuse_attr_out {
        attr_valid: TTL.as_secs(),
        attr_valid_nsec: TTL.subsec_nanos(),
        dummy: 0,
        attr: attr_out(attr),
    };
    out.extend_from_slice(a.as_bytes());
}

fn put_open(out: &mut Vec<u8>, fh: u64, open_flags: u32, backing_id: u32) {
    let o = abi::fuse_open_out {
        fh,
        open_flags,
        // `backing_id` since ABI 7.40, in what this binding calls padding.
        padding: backing_id,
    };
    out.extend_from_slice(o.as_bytes());
}

/// FOPEN_PASSTHROUGH, since ABI 7.40.
const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Writes the open reply for an opened file (`adapter::open` and `create`).
fn put_opened(out: &mut Vec<u8>, o: &OpenReply) {
    match &o.backing {
        Some(b) => put_open(out, o.fh, FOPEN_PASSTHROUGH, b.id()),
        None => {
            let flags = if o.keep_cache {
                abi::FOPEN_KEEP_CACHE
            } else {
                0
            };
            put_open(out, o.fh, flags, 0)
        }
    }
}

fn put_xattr(out: &mut Vec<u8>, size: u32, v: Vec<u8>) -> Res<()> {
    if size == 0 {
        let o = abi::fuse_getxattr_out {
            size: v.len() as u32,
            padding: 0,
        };
        out.extend_from_slice(o.as_bytes());
    } else if v.len() > size as usize {
        return Err(Errno::ERANGE);
    } else {
        out.extend_from_slice(&v);
    }
    Ok(())
}

/// Appends one directory entry if it fits in `max` bytes; false when it does not.
fn put_dirent(
    out: &mut Vec<u8>,
    max: usize,
    plus: Option<abi::fuse_entry_out>,
    d: abi::fuse_dirent,
    name: &[u8],
) -> bool {
    let head = plus.map_or(0, |_| std::mem::size_of::<abi::fuse_entry_out>());
    let len = head + std::mem::size_of::<abi::fuse_dirent>() + name.len();
    let padded = len.next_multiple_of(8);
    if out.len() + padded > max {
        return false;
    }
    if let Some(e) = plus {
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(name);
    out.resize(out.len() + padded - len, 0);
    true
}

fn make(
    fs: &UnionFs,
    h: &abi::fuse_in_header,
    name: &OsStr,
    what: NewObject<'_>,
    out: &mut Vec<u8>,
) -> Res<()> {
    let who = Caller {
        uid: h.uid,
        gid: h.gid,
    };
    let (attr, ttl, _) = fs.do_create(who, h.nodeid, name, what)?;
    put_entry(out, (attr, ttl));
    Ok(())
}

fn dispatch(
    fs: &UnionFs,
    h: &abi::fuse_in_header,
    op_in: &[u8],
    rest: &[u8],
    out: &mut Vec<u8>,
) -> Res<()> {
    let ino = h.nodeid;
    match h.opcode {
        abi::FUSE_LOOKUP => {
            let (n, _) = name(rest)?;
            let _s = tracing::trace_span!("lookup", parent = ino, name = ?n).entered();
            match fs.do_lookup(ino, n) {
                // A negative entry: the kernel remembers that the name does not exist.
                Err(Errno::ENOENT) => {
                    out.extend_from_slice(entry_out(0, TTL, abi::fuse_attr::default()).as_bytes())
                }
                r => put_entry(out, r?),
            }
        }
        abi::FUSE_GETATTR => {
            let a: abi::fuse_getattr_in = arg(op_in)?;
            let fh = (a.getattr_flags & abi::FUSE_GETATTR_FH != 0).then_some(a.fh);
            put_attr(out, &fs.do_getattr(ino, fh)?);
        }
        abi::FUSE_SETATTR => {
            let a: abi::fuse_setattr_in = arg(op_in)?;
            let has = |bit| a.valid & bit != 0;
            let when = |now_bit, bit, secs, nsec| {
                if has(now_bit) {
                    Some(TimeOrNow::Now)
                } else if has(bit) {
                    Some(TimeOrNow::SpecificTime(time_of(secs, nsec)))
                } else {
                    None
                }
            };
            let s = SetAttr {
                mode: has(abi::FATTR_MODE).then_some(a.mode),
                uid: has(abi::FATTR_UID).then_some(a.uid),
                gid: has(abi::FATTR_GID).then_some(a.gid),
                size: has(abi::FATTR_SIZE).then_some(a.size),
                atime: when(abi::FATTR_ATIME_NOW, abi::FATTR_ATIME, a.atime, a.atimensec),
                mtime: when(abi::FATTR_MTIME_NOW, abi::FATTR_MTIME, a.mtime, a.mtimensec),
                fh: has(abi::FATTR_FH).then_some(a.fh),
                // Asked for explicitly (a truncate, a chown), or implied: with
                // FUSE_HANDLE_KILLPRIV_V2 the kernel turns its "remove privileges" before a
                // write by a caller without CAP_FSETID into a setattr of nothing at all.
                kill_setid: has(FATTR_KILL_SUIDGID)
                    || a.valid & !(abi::FATTR_FH | abi::FATTR_LOCKOWNER) == 0,
            };
            let _s = tracing::debug_span!("setattr", ino, mode = ?s.mode, size = ?s.size).entered();
            put_attr(out, &fs.do_setattr(ino, s)?);
        }
        abi::FUSE_READLINK => out.extend_from_slice(&fs.do_readlink(ino)?),
        abi::FUSE_SYMLINK => {
            let (n, more) = name(rest)?;
            let (target, _) = name(more)?;
            let _s = tracing::debug_span!("symlink", parent = ino, name = ?n).entered();
            let target = Path::new(target);
            make(fs, h, n, NewObject::Symlink { target }, out)?;
        }
        abi::FUSE_MKNOD => {
            let a: abi::fuse_mknod_in = arg(op_in)?;
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("mknod", parent = ino, name = ?n, a.mode).entered();
            let what = NewObject::Node {
                mode: a.mode & !(a.umask & 0o777),
                rdev: a.rdev.into(),
            };
            make(fs, h, n, what, out)?;
        }
        abi::FUSE_MKDIR => {
            let a: abi::fuse_mkdir_in = arg(op_in)?;
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("mkdir", parent = ino, name = ?n, a.mode).entered();
            let what = NewObject::Dir {
                mode: a.mode & !a.umask & 0o7777,
            };
            make(fs, h, n, what, out)?;
        }
        abi::FUSE_UNLINK => {
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("unlink", parent = ino, name = ?n).entered();
            fs.do_unlink(ino, n)?;
        }
        abi::FUSE_RMDIR => {
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("rmdir", parent = ino, name = ?n).entered();
            fs.do_rmdir(ino, n)?;
        }
        abi::FUSE_RENAME | abi::FUSE_RENAME2 => {
            let (newdir, flags) = if h.opcode == abi::FUSE_RENAME {
                (arg::<abi::fuse_rename_in>(op_in)?.newdir, 0)
            } else {
                let a: abi::fuse_rename2_in = arg(op_in)?;
                (a.newdir, a.flags)
            };
            let (from, more) = name(rest)?;
            let (to, _) = name(more)?;
            let _s =
                tracing::debug_span!("rename", parent = ino, name = ?from, newdir, newname = ?to)
                    .entered();
            fs.do_rename(ino, from, newdir, to, flags)?;
        }
        abi::FUSE_LINK => {
            let a: abi::fuse_link_in = arg(op_in)?;
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("link", ino = a.oldnodeid, newparent = ino, name = ?n)
                .entered();
            put_entry(out, fs.do_link(a.oldnodeid, ino, n)?);
        }
        abi::FUSE_OPEN => {
            let a: abi::fuse_open_in = arg(op_in)?;
            let _s = tracing::debug_span!("open", ino, flags = a.flags).entered();
            put_opened(out, &fs.open_file(ino, a.flags as i32)?);
        }
        abi::FUSE_READ => {
            let a: abi::fuse_read_in = arg(op_in)?;
            fs.do_read_into(a.fh, a.offset, a.size, out)?;
        }
        abi::FUSE_WRITE => {
            let a: abi::fuse_write_in = arg(op_in)?;
            let data = rest.get(..a.size as usize).ok_or(Errno::EINVAL)?;
            let kill = a.write_flags & FUSE_WRITE_KILL_SUIDGID != 0;
            let n = fs.do_write(a.fh, a.offset, data, kill)?;
            let w = abi::fuse_write_out {
                size: n,
                padding: 0,
            };
            out.extend_from_slice(w.as_bytes());
        }
        abi::FUSE_STATFS => {
            let s = fs.do_statfs()?;
            let st = abi::fuse_kstatfs {
                blocks: s.blocks(),
                bfree: s.blocks_free(),
                bavail: s.blocks_available(),
                files: s.files(),
                ffree: s.files_free(),
                bsize: s.block_size() as u32,
                namelen: s.name_max() as u32,
                frsize: s.fragment_size() as u32,
                padding: 0,
                spare: [0; 6],
            };
            out.extend_from_slice(abi::fuse_statfs_out { st }.as_bytes());
        }
        abi::FUSE_RELEASE => {
            let a: abi::fuse_release_in = arg(op_in)?;
            fs.do_release(a.fh);
        }
        abi::FUSE_FSYNC => {
            let a: abi::fuse_fsync_in = arg(op_in)?;
            fs.do_fsync(a.fh, a.fsync_flags & abi::FUSE_FSYNC_FDATASYNC != 0)?;
        }
        abi::FUSE_SETXATTR => {
            let a: abi::fuse_setxattr_in = arg(op_in)?;
            let (n, value) = name(rest)?;
            let value = value.get(..a.size as usize).ok_or(Errno::EINVAL)?;
            let _s = tracing::debug_span!("setxattr", ino, name = ?n).entered();
            fs.do_setxattr(ino, n, value, a.flags as i32)?;
        }
        abi::FUSE_GETXATTR => {
            let a: abi::fuse_getxattr_in = arg(op_in)?;
            let (n, _) = name(rest)?;
            put_xattr(out, a.size, fs.do_getxattr(ino, n)?)?;
        }
        abi::FUSE_LISTXATTR => {
            let a: abi::fuse_getxattr_in = arg(op_in)?;
            put_xattr(out, a.size, fs.do_listxattr(ino)?)?;
        }
        abi::FUSE_REMOVEXATTR => {
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("removexattr", ino, name = ?n).entered();
            fs.do_removexattr(ino, n)?;
        }
        // Not buffered, and directories are not opened: see `adapter::flush` and `opendir`.
        abi::FUSE_FLUSH | abi::FUSE_OPENDIR => return Err(Errno::ENOSYS),
        abi::FUSE_RELEASEDIR | abi::FUSE_FSYNCDIR | abi::FUSE_ACCESS => {}
        abi::FUSE_READDIR | abi::FUSE_READDIRPLUS => {
            let a: abi::fuse_read_in = arg(op_in)?;
            readdir(fs, ino, &a, h.opcode == abi::FUSE_READDIRPLUS, out)?;
        }
        abi::FUSE_CREATE => {
            let a: abi::fuse_create_in = arg(op_in)?;
            let (n, _) = name(rest)?;
            let _s = tracing::debug_span!("create", parent = ino, name = ?n, a.mode).entered();
            let who = Caller {
                uid: h.uid,
                gid: h.gid,
            };
            let mode = a.mode & !a.umask & 0o7777;
            let (attr, ttl, o) = fs.create_file(who, ino, n, mode, a.flags as i32)?;
            put_entry(out, (attr, ttl));
            put_opened(out, &o);
        }
        abi::FUSE_IOCTL => {
            let a: abi::fuse_ioctl_in = arg(op_in)?;
            // Only the inode-attribute ioctls concern a filesystem (see `adapter::ioctl`).
            let op = FileAttrOp::from_cmd(a.cmd).ok_or(Errno::ENOTTY)?;
            let _s = tracing::debug_span!("ioctl", ino, ?op).entered();
            if !op.is_set() && (a.out_size as usize) < op.arg_len() {
                return Err(Errno::EINVAL);
            }
            let input = rest.get(..a.in_size as usize).ok_or(Errno::EINVAL)?;
            let data = fs.do_fileattr(ino, op, input)?;
            out.extend_from_slice(abi::fuse_ioctl_out::default().as_bytes());
            out.extend_from_slice(&data);
        }
        abi::FUSE_FALLOCATE => {
            let a: abi::fuse_fallocate_in = arg(op_in)?;
            fs.do_fallocate(a.fh, a.offset, a.length, a.mode as i32)?;
        }
        abi::FUSE_LSEEK => {
            let a: abi::fuse_lseek_in = arg(op_in)?;
            let offset = fs.do_lseek(a.fh, a.offset as i64, a.whence as i32)?;
            out.extend_from_slice(
                abi::fuse_lseek_out {
                    offset: offset as u64,
                }
                .as_bytes(),
            );
        }
        abi::FUSE_COPY_FILE_RANGE => {
            let a: abi::fuse_copy_file_range_in = arg(op_in)?;
            let n = fs.do_copy_file_range(a.fh_in, a.off_in, a.fh_out, a.off_out, a.len)?;
            let w = abi::fuse_write_out {
                size: n,
                padding: 0,
            };
            out.extend_from_slice(w.as_bytes());
        }
        abi::FUSE_DESTROY => {}
        op => {
            tracing::debug!(op, "unsupported request over io_uring");
            return Err(Errno::ENOSYS);
        }
    }
    Ok(())
}

/// READDIR and READDIRPLUS (`adapter::readdir`, `readdirplus`).
fn readdir(
    fs: &UnionFs,
    ino: u64,
    a: &abi::fuse_read_in,
    plus: bool,
    out: &mut Vec<u8>,
) -> Res<()> {
    let (listing, start, fresh) = fs.do_readdir(ino, a.offset)?;
    let resolver = if plus {
        Some(fs.plus_resolver(ino, &listing, fresh)?)
    } else {
        None
    };
    let max = a.size as usize;
    let mut sent = Vec::new();
    for e in &listing.entries[start..] {
        let name = e.name.as_bytes();
        let (found, head) = match &resolver {
            None => (None, None),
            // `.` and `..`: not instantiated by the kernel (see `adapter::readdirplus`).
            Some(_) if matches!(e.plus, Plus::Dot) => {
                let attr = abi::fuse_attr {
                    ino: e.ino,
                    mode: type_bits(e.kind),
                    ..Default::default()
                };
                (None, Some(entry_out(e.ino, Duration::ZERO, attr)))
            }
            Some(r) => {
                // A name gone since the listing was read is left out.
                let Some((node, attr)) = r.plus(e)? else {
                    continue;
                };
                let head = entry_out(attr.ino.0, entry_ttl(&node, &attr), attr_out(&attr));
                (Some(node), Some(head))
            }
        };
        // With attributes, the entry says what they say.
        let (ino, typ) = head
            .as_ref()
            .map_or((e.ino, type_bits(e.kind)), |h| (h.nodeid, h.attr.mode));
        let d = abi::fuse_dirent {
            ino,
            off: e.cookie,
            namelen: name.len() as u32,
            typ: (typ & libc::S_IFMT) >> 12,
            name: [],
        };
        if !put_dirent(out, max, head, d, name) {
            break;
        }
        sent.extend(found);
    }
    // Every entry the kernel receives counts as a lookup.
    for node in sent {
        fs.count_lookup(node);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip() {
        for (secs, nsec) in [
            (0u64, 0u32),
            (1, 5),
            (-1i64 as u64, 999_999_999),
            (-7i64 as u64, 0),
        ] {
            let t = time_of(secs, nsec);
            assert_eq!(time_parts(t), (secs, nsec), "{secs} {nsec}");
        }
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        // 1.5 s before the epoch is -2 s plus 0.5 s, as the kernel writes timestamps.
        assert_eq!(time_parts(before), (-2i64 as u64, 500_000_000));
    }

    #[test]
    fn dirents_are_padded_and_refused_when_full() {
        let d = |namelen| abi::fuse_dirent {
            ino: 5,
            off: 1,
            namelen,
            typ: libc::DT_REG.into(),
            name: [],
        };
        let mut out = Vec::new();
        // 24-byte header + 3-byte name, padded to 32.
        assert!(put_dirent(&mut out, 64, None, d(3), b"abc"));
        assert_eq!(out.len(), 32);
        assert_eq!(&out[24..27], b"abc");
        assert_eq!(&out[27..32], &[0; 5]);
        // Another 32 fits exactly; a third does not, and leaves the buffer as it was.
        assert!(put_dirent(&mut out, 64, None, d(3), b"def"));
        assert!(!put_dirent(&mut out, 64, None, d(3), b"ghi"));
        assert_eq!(out.len(), 64);
        // With readdirplus each entry starts with a 128-byte fuse_entry_out.
        let mut plus = Vec::new();
        let e = entry_out(5, TTL, abi::fuse_attr::default());
        assert!(put_dirent(&mut plus, 4096, Some(e), d(8), b"12345678"));
        assert_eq!(plus.len(), 128 + 24 + 8);
    }

    #[test]
    fn names_are_split_at_their_nul() {
        let (a, rest) = name(b"old\0new\0").unwrap();
        let (b, rest) = name(rest).unwrap();
        assert_eq!(
            (a, b, rest),
            (OsStr::new("old"), OsStr::new("new"), &b""[..])
        );
        assert_eq!(name(b"unterminated").unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn a_short_fixed_argument_is_invalid() {
        assert!(matches!(
            arg::<abi::fuse_read_in>(&[0; 8]),
            Err(Errno::EINVAL)
        ));
        let mut raw = [0u8; 24];
        raw[0] = 1;
        let r: abi::fuse_release_in = arg(&raw).unwrap();
        assert_eq!(r.fh, 1);
    }
}
