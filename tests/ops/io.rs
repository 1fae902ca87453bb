//! File data: reads and writes that copy a lower file up, size changes, sparse files, mmap,
//! copy_file_range and the sync calls. Each test also checks the lower layer is never written.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::fcntl::{copy_file_range, fallocate, FallocateFlags};
use nix::unistd::{fdatasync, fsync, lseek, Whence};

use crate::common;
use crate::harness::{
    assert_errno, assert_nix_errno, lstat, pattern, read, sha256, targets, Env, Node,
};
use Node::*;

fn open_rw(t: crate::harness::Target, p: &std::path::Path) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{t}: open rw {p:?}: {e}"))
}

#[test]
fn write_lower_file_copies_up_and_keeps_lower() {
    if !common::can_mount("write_lower_file_copies_up_and_keeps_lower") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/f", b"0123456789")]], &[]);
        let f = open_rw(t, &e.p("d/f"));
        f.write_all_at(b"AB", 3).expect("pwrite");
        let mut buf = [0u8; 10];
        f.read_exact_at(&mut buf, 0).expect("pread same fd");
        assert_eq!(&buf, b"012AB56789", "{t}: read back through the same fd");
        drop(f);
        assert_eq!(read(t, &e.p("d/f")), b"012AB56789", "{t}: fresh open");
        assert_eq!(read(t, &e.upper("d/f")), b"012AB56789", "{t}: upper copy");
        assert_eq!(
            read(t, &e.lower(0, "d/f")),
            b"0123456789",
            "{t}: lower untouched"
        );
    }
}

#[test]
fn open_lower_file_read_only_does_not_copy_up() {
    if !common::can_mount("open_lower_file_read_only_does_not_copy_up") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/f", b"data")]], &[]);
        let mut s = String::new();
        std::fs::File::open(e.p("d/f"))
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("read");
        assert_eq!(s, "data", "{t}");
        assert!(!e.upper("d/f").exists(), "{t}: a read-only open copied up");
    }
}

#[test]
fn truncate_and_ftruncate_lower_files() {
    if !common::can_mount("truncate_and_ftruncate_lower_files") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("a", b"abcdef"), File("b", b"abcdef")]], &[]);
        // truncate(2) by path, shrinking.
        nix::unistd::truncate(&e.p("a"), 2).expect("truncate");
        assert_eq!(read(t, &e.p("a")), b"ab", "{t}: truncate shrink");
        // ftruncate(2), growing with zeros.
        let f = open_rw(t, &e.p("b"));
        f.set_len(8).expect("ftruncate");
        assert_eq!(f.metadata().expect("fstat").len(), 8, "{t}: fstat size");
        drop(f);
        assert_eq!(read(t, &e.p("b")), b"abcdef\0\0", "{t}: ftruncate grow");
        assert_eq!(
            read(t, &e.lower(0, "a")),
            b"abcdef",
            "{t}: lower a untouched"
        );
        assert_eq!(
            read(t, &e.lower(0, "b")),
            b"abcdef",
            "{t}: lower b untouched"
        );
    }
}

#[test]
fn o_trunc_empties_lower_file() {
    if !common::can_mount("o_trunc_empties_lower_file") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("f", b"old contents")]], &[]);
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(e.p("f"))
            .expect("open O_TRUNC");
        assert_eq!(
            f.metadata().expect("fstat").len(),
            0,
            "{t}: size after O_TRUNC"
        );
        f.write_all(b"new").expect("write");
        drop(f);
        assert_eq!(read(t, &e.p("f")), b"new", "{t}");
        assert_eq!(read(t, &e.lower(0, "f")), b"old contents", "{t}: lower");
    }
}

#[test]
fn o_append_writes_at_end_of_lower_file() {
    if !common::can_mount("o_append_writes_at_end_of_lower_file") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("f", b"head")]], &[]);
        let mut f = OpenOptions::new()
            .append(true)
            .open(e.p("f"))
            .expect("open O_APPEND");
        f.write_all(b"-one").expect("append one");
        // Even after seeking back, O_APPEND writes land at the end.
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(b"-two").expect("append two");
        drop(f);
        assert_eq!(read(t, &e.p("f")), b"head-one-two", "{t}");
        assert_eq!(read(t, &e.lower(0, "f")), b"head", "{t}: lower");
    }
}

#[test]
fn o_excl_on_existing_name_eexist() {
    if !common::can_mount("o_excl_on_existing_name_eexist") {
        return;
    }
    for t in targets() {
        let e = Env::new(
            t,
            &[
                &[Whiteout("gone")],
                &[File("low", b"l"), File("gone", b"g")],
            ],
            &[File("up", b"u")],
        );
        let excl = |rel: &str| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(e.p(rel))
        };
        assert_errno(t, "O_EXCL on lower name", excl("low"), libc::EEXIST);
        assert_errno(t, "O_EXCL on upper name", excl("up"), libc::EEXIST);
        // A whited-out name is free.
        excl("gone")
            .and_then(|mut f| f.write_all(b"new"))
            .unwrap_or_else(|err| panic!("{t}: O_EXCL over a whiteout: {err}"));
        assert_eq!(read(t, &e.p("gone")), b"new", "{t}");
        assert_eq!(read(t, &e.p("low")), b"l", "{t}: lower intact");
    }
}

#[test]
fn fallocate_and_punch_hole_on_lower_file() {
    if !common::can_mount("fallocate_and_punch_hole_on_lower_file") {
        return;
    }
    for t in targets() {
        let data = pattern(16384, 7);
        let e = Env::new(t, &[&[File("f", &data)]], &[]);
        let f = open_rw(t, &e.p("f"));
        fallocate(&f, FallocateFlags::empty(), 0, 32768)
            .unwrap_or_else(|err| panic!("{t}: fallocate grow: {err}"));
        assert_eq!(f.metadata().expect("fstat").len(), 32768, "{t}: size");
        fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 65536)
            .unwrap_or_else(|err| panic!("{t}: fallocate keep size: {err}"));
        assert_eq!(f.metadata().expect("fstat").len(), 32768, "{t}: KEEP_SIZE");
        fallocate(
            &f,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            4096,
            4096,
        )
        .unwrap_or_else(|err| panic!("{t}: punch hole: {err}"));
        drop(f);
        let mut want = data.clone();
        want[4096..8192].fill(0);
        want.resize(32768, 0);
        assert_eq!(read(t, &e.p("f")), want, "{t}: content after fallocate");
        assert_eq!(read(t, &e.lower(0, "f")), data, "{t}: lower");
    }
}

#[test]
fn copy_file_range_from_lower_to_new_file() {
    if !common::can_mount("copy_file_range_from_lower_to_new_file") {
        return;
    }
    for t in targets() {
        let data = pattern(100_000, 3);
        let e = Env::new(t, &[&[File("src", &data), File("dst", b"xxxxxxxxxx")]], &[]);
        let src = std::fs::File::open(e.p("src")).expect("open src");
        let dst = open_rw(t, &e.p("dst"));
        let mut off_in: i64 = 10;
        let mut off_out: i64 = 5;
        let mut left = 50_000usize;
        while left > 0 {
            let n = copy_file_range(&src, Some(&mut off_in), &dst, Some(&mut off_out), left)
                .unwrap_or_else(|err| panic!("{t}: copy_file_range: {err}"));
            assert!(n > 0, "{t}: copy_file_range returned 0 before the end");
            left -= n;
        }
        assert_eq!((off_in, off_out), (50_010, 50_005), "{t}: offsets advanced");
        drop((src, dst));
        let mut want = b"xxxxx".to_vec();
        want.extend_from_slice(&data[10..50_010]);
        assert_eq!(read(t, &e.p("dst")), want, "{t}: dst content");
        assert_eq!(read(t, &e.lower(0, "dst")), b"xxxxxxxxxx", "{t}: lower dst");
    }
}

/// Reads of lower data in no page cache: the daemon's read waits for the disk, which on a
/// queue thread lifts its pinning until the reply is out and pins it again after. Every read
/// must still return the right bytes, and requests after it must still be answered. (Where
/// the layers' file system keeps its pages, as tmpfs does, the reads are warm and this checks
/// only the data.)
#[test]
fn cold_reads_of_a_lower_file() {
    if !common::can_mount("cold_reads_of_a_lower_file") {
        return;
    }
    for t in targets() {
        let data = pattern(4 << 20, 5);
        let e = Env::new(t, &[&[File("d/big", &data)]], &[]);
        let lower = std::fs::File::open(e.lower(0, "d/big")).expect("open lower");
        lower.sync_all().expect("fsync lower");
        nix::fcntl::posix_fadvise(
            &lower,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .expect("drop the lower file's pages");
        let f = std::fs::File::open(e.p("d/big")).expect("open");
        // Far apart, so that read-ahead does not bring the next one in.
        for i in [7usize, 2, 13, 0, 9, 4, 15, 11] {
            let at = i * (256 << 10);
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, at as u64)
                .unwrap_or_else(|err| panic!("{t}: read at {at}: {err}"));
            assert!(buf == data[at..at + 4096], "{t}: bytes at {at}");
            lstat(t, &e.p("d/big"));
        }
        assert_eq!(
            sha256(&read(t, &e.p("d/big"))),
            sha256(&data),
            "{t}: whole file"
        );
        assert!(!e.upper("d/big").exists(), "{t}: reading copied up");
    }
}

const TAIL: i64 = 8 << 20;
const SPARSE_LEN: i64 = TAIL + 4096;

/// A lower file with data at [0, 4096) and [8 MiB, 8 MiB + 4096), a hole between.
fn make_sparse(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).expect("create sparse");
    f.write_all(&[b'a'; 4096]).expect("write head");
    f.seek(SeekFrom::Start(TAIL as u64)).expect("seek");
    f.write_all(&[b'b'; 4096]).expect("write tail");
    f.sync_all().expect("sync sparse");
}

/// Exact extents, as on the lower file.
fn check_sparse_exact(t: crate::harness::Target, f: &std::fs::File, what: &str) {
    assert_eq!(
        lseek(f, 0, Whence::SeekData).ok(),
        Some(0),
        "{t}: {what}: SEEK_DATA 0"
    );
    assert_eq!(
        lseek(f, 0, Whence::SeekHole).ok(),
        Some(4096),
        "{t}: {what}: SEEK_HOLE 0"
    );
    check_sparse_tail(t, f, what);
}

/// The big hole before the tail and the tail itself. (Kernel copy-up skips holes in 1 MiB
/// chunks, so small holes near data may be filled; a hole of several MiB must survive.)
fn check_sparse_tail(t: crate::harness::Target, f: &std::fs::File, what: &str) {
    let hole = lseek(f, 0, Whence::SeekHole).unwrap_or_else(|e| panic!("{t}: {what}: {e}"));
    assert!(
        hole < TAIL,
        "{t}: {what}: no hole before the tail (first hole at {hole})"
    );
    assert_eq!(
        lseek(f, TAIL - (2 << 20), Whence::SeekData).ok(),
        Some(TAIL),
        "{t}: {what}: SEEK_DATA in the hole"
    );
    assert_eq!(
        lseek(f, TAIL, Whence::SeekHole).ok(),
        Some(SPARSE_LEN),
        "{t}: {what}: SEEK_HOLE in the tail"
    );
    assert_nix_errno(
        t,
        &format!("{what}: SEEK_DATA past the end"),
        lseek(f, SPARSE_LEN, Whence::SeekData),
        libc::ENXIO,
    );
}

#[test]
fn lseek_data_hole_on_sparse_file() {
    if !common::can_mount("lseek_data_hole_on_sparse_file") {
        return;
    }
    for t in targets() {
        let mut e = Env::build(t, &[&[Dir("d")]], &[]);
        make_sparse(&e.lower(0, "d/sparse"));
        e.mount();
        let f = std::fs::File::open(e.p("d/sparse")).expect("open sparse");
        check_sparse_exact(t, &f, "lower file");
        assert_eq!(f.metadata().expect("fstat").len(), SPARSE_LEN as u64, "{t}");
        drop(f);
        // Copy-up keeps the file sparse, as overlayfs copies data extents only.
        let f = open_rw(t, &e.p("d/sparse"));
        check_sparse_tail(t, &f, "after copy-up");
        drop(f);
        let up = std::fs::File::open(e.upper("d/sparse")).expect("open upper copy");
        check_sparse_tail(t, &up, "upper copy");
        assert!(
            up.metadata().expect("fstat").blocks() < 4096,
            "{t}: upper copy allocated the hole"
        );
        let mut buf = vec![0u8; 8];
        up.read_exact_at(&mut buf, 5 << 20).expect("read hole");
        assert_eq!(buf, [0u8; 8], "{t}: hole reads zeros");
        // A sparse file made through the mount.
        let mut n = std::fs::File::create(e.p("d/new")).expect("create new");
        n.write_all(&[b'a'; 4096]).expect("write");
        n.seek(SeekFrom::Start(TAIL as u64)).expect("seek");
        n.write_all(&[b'b'; 4096]).expect("write");
        n.sync_all().expect("fsync");
        check_sparse_exact(t, &n, "new file");
    }
}

fn map(t: crate::harness::Target, f: &std::fs::File, len: usize, write: bool) -> *mut u8 {
    use std::os::fd::AsRawFd;
    let prot = if write {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a fresh shared mapping of a file the test owns; nothing else aliases it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(
        p != libc::MAP_FAILED,
        "{t}: mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: `p` came from `map` with this length and is not used afterwards.
    assert_eq!(unsafe { libc::munmap(p.cast(), len) }, 0, "munmap");
}

#[test]
fn mmap_read_of_lower_file() {
    if !common::can_mount("mmap_read_of_lower_file") {
        return;
    }
    for t in targets() {
        let data = pattern(3 * 4096 + 100, 11);
        let e = Env::new(t, &[&[File("f", &data)]], &[]);
        let f = std::fs::File::open(e.p("f")).expect("open");
        let p = map(t, &f, data.len(), false);
        // SAFETY: the mapping is `data.len()` bytes long and lives until `unmap`.
        let got = unsafe { std::slice::from_raw_parts(p, data.len()) }.to_vec();
        unmap(p, data.len());
        assert!(got == data, "{t}: mapped bytes differ from the lower file");
    }
}

/// A small lower file's first open may hand its data to the kernel with the open (unionfs
/// preloads it); what the page cache then holds must follow later changes: writes through
/// another descriptor, truncation by path, and a rewrite after the first reader closed.
#[test]
fn first_read_of_small_lower_file_follows_later_changes() {
    if !common::can_mount("first_read_of_small_lower_file_follows_later_changes") {
        return;
    }
    for t in targets() {
        let data = pattern(3 * 4096 + 100, 7);
        let e = Env::new(
            t,
            &[&[File("a", &data), File("b", &data), File("c", &data)]],
            &[],
        );
        // Read while a writer changes it.
        let ro = std::fs::File::open(e.p("a")).expect("open a");
        let mut buf = vec![0u8; data.len()];
        ro.read_exact_at(&mut buf, 0).expect("read a");
        assert!(buf == data, "{t}: first read of a");
        open_rw(t, &e.p("a"))
            .write_all_at(b"NEW", 4096)
            .expect("write a");
        ro.read_exact_at(&mut buf, 0).expect("read a again");
        assert_eq!(&buf[4096..4099], b"NEW", "{t}: reader sees the write");
        // Truncated by path while open.
        let ro = std::fs::File::open(e.p("b")).expect("open b");
        ro.read_exact_at(&mut buf[..10], 0).expect("read b");
        nix::unistd::truncate(&e.p("b"), 5).expect("truncate b");
        assert_eq!(ro.metadata().expect("fstat b").len(), 5, "{t}: fstat size");
        let mut rest = Vec::new();
        (&ro).read_to_end(&mut rest).expect("read b after truncate");
        assert_eq!(rest, &data[..5], "{t}: reader sees the truncation");
        // Rewritten after its first reader closed.
        assert!(read(t, &e.p("c")) == data, "{t}: first read of c");
        let w = open_rw(t, &e.p("c"));
        w.write_all_at(b"XYZ", 0).expect("write c");
        w.set_len(4).expect("ftruncate c");
        drop(w);
        let want = [b"XYZ".as_slice(), &data[3..4]].concat();
        assert_eq!(read(t, &e.p("c")), want, "{t}: c rewritten");
        assert!(read(t, &e.lower(0, "c")) == data, "{t}: lower c untouched");
    }
}

/// An open racing a truncation by path: once both returned, a read sees the truncation,
/// whichever came first. unionfs preloads a small lower file's data with its first open;
/// that must never land after the truncation (the lower files are evicted from the host's
/// page cache first, so that the preload reads them from disk and the race is likelier).
#[test]
fn open_racing_truncate_by_path_reads_truncated() {
    if !common::can_mount("open_racing_truncate_by_path_reads_truncated") {
        return;
    }
    const FILES: usize = 500;
    let data = pattern(8192, 3);
    let names: Vec<String> = (0..FILES).map(|i| format!("d/f{i}")).collect();
    let files: Vec<Node> = names.iter().map(|n| File(n, &data)).collect();
    for t in targets() {
        let e = Env::new(t, &[&files], &[]);
        for n in &names {
            let lower = std::fs::File::open(e.lower(0, n)).expect("open lower file");
            lower.sync_all().expect("fsync lower file");
            nix::fcntl::posix_fadvise(
                &lower,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )
            .expect("fadvise");
            let p = e.p(n);
            let opener = {
                let p = p.clone();
                std::thread::spawn(move || std::fs::File::open(p).expect("open"))
            };
            nix::unistd::truncate(&p, 0).expect("truncate");
            let f = opener.join().expect("opening thread");
            let mut buf = [0u8; 50];
            let got = f.read_at(&mut buf, 0).expect("read after both");
            assert_eq!(got, 0, "{t}: {n}: read {got} bytes after the truncation");
        }
        assert_eq!(lstat(t, &e.p(&names[0])).size(), 0, "{t}: size");
    }
}

#[test]
fn mmap_shared_write_persists_after_msync_and_remount() {
    if !common::can_mount("mmap_shared_write_persists_after_msync_and_remount") {
        return;
    }
    for t in targets() {
        let data = pattern(2 * 4096, 5);
        let mut e = Env::new(t, &[&[File("f", &data)]], &[]);
        let f = open_rw(t, &e.p("f"));
        let len = data.len();
        let p = map(t, &f, len, true);
        // SAFETY: writes inside the `len`-byte writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(b"MMAP".as_ptr(), p.add(10), 4);
            std::ptr::copy_nonoverlapping(b"PAGE2".as_ptr(), p.add(4096 + 1), 5);
        }
        // SAFETY: the range is the whole live mapping.
        let rc = unsafe { libc::msync(p.cast(), len, libc::MS_SYNC) };
        assert_eq!(rc, 0, "{t}: msync: {}", std::io::Error::last_os_error());
        unmap(p, len);
        drop(f);
        let mut want = data.clone();
        want[10..14].copy_from_slice(b"MMAP");
        want[4097..4102].copy_from_slice(b"PAGE2");
        assert!(read(t, &e.p("f")) == want, "{t}: fresh fd after msync");
        e.remount();
        assert!(read(t, &e.p("f")) == want, "{t}: after remount");
        assert!(read(t, &e.upper("f")) == want, "{t}: upper copy");
        assert!(read(t, &e.lower(0, "f")) == data, "{t}: lower untouched");
    }
}

#[test]
fn fsync_and_fdatasync_succeed() {
    if !common::can_mount("fsync_and_fdatasync_succeed") {
        return;
    }
    for t in targets() {
        let e = Env::new(t, &[&[File("d/f", b"abc")]], &[]);
        let f = open_rw(t, &e.p("d/f"));
        f.write_all_at(b"X", 0).expect("write");
        fsync(&f).unwrap_or_else(|err| panic!("{t}: fsync: {err}"));
        fdatasync(&f).unwrap_or_else(|err| panic!("{t}: fdatasync: {err}"));
        let ro = std::fs::File::open(e.p("d/f")).expect("open ro");
        fsync(&ro).unwrap_or_else(|err| panic!("{t}: fsync ro fd: {err}"));
        let dir = std::fs::File::open(e.p("d")).expect("open dir");
        fsync(&dir).unwrap_or_else(|err| panic!("{t}: fsync dir: {err}"));
        let new = std::fs::File::create(e.p("d/new")).expect("create");
        fdatasync(&new).unwrap_or_else(|err| panic!("{t}: fdatasync new: {err}"));
        assert_eq!(read(t, &e.p("d/f")), b"Xbc", "{t}");
    }
}

#[test]
fn large_lower_file_copy_up_keeps_content() {
    if !common::can_mount("large_lower_file_copy_up_keeps_content") {
        return;
    }
    for t in targets() {
        let data = pattern(8 << 20, 42);
        let e = Env::new(t, &[&[File("big", &data)]], &[]);
        let f = OpenOptions::new()
            .write(true)
            .open(e.p("big"))
            .expect("open big rw");
        f.write_all_at(b"0123456789abcdef", 4 << 20).expect("write");
        drop(f);
        let mut want = data.clone();
        want[(4 << 20)..(4 << 20) + 16].copy_from_slice(b"0123456789abcdef");
        let through = read(t, &e.p("big"));
        assert_eq!(through.len(), 8 << 20, "{t}: size through the mount");
        assert_eq!(
            sha256(&through),
            sha256(&want),
            "{t}: hash through the mount"
        );
        assert_eq!(
            sha256(&read(t, &e.upper("big"))),
            sha256(&want),
            "{t}: upper"
        );
        assert_eq!(
            sha256(&read(t, &e.lower(0, "big"))),
            sha256(&data),
            "{t}: lower"
        );
        assert_eq!(lstat(t, &e.p("big")).size(), 8 << 20, "{t}: st_size");
    }
}

/// `O_DIRECT` on a lower file, and on its copy-up while plain descriptors keep it served by the
/// daemon: the daemon's own buffers are not block-aligned, so it must not do direct I/O for
/// the caller (it did, and every such read failed with EINVAL).
#[test]
fn direct_io_on_lower_and_copied_up_files() {
    use std::os::unix::fs::OpenOptionsExt;
    if !common::can_mount("direct_io_on_lower_and_copied_up_files") {
        return;
    }
    const BLOCK: usize = 4096;
    let data = pattern(4 * BLOCK, 7);
    for t in targets() {
        let e = Env::new(t, &[&[File("f", &data)]], &[]);
        let direct = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_DIRECT)
                .open(e.p("f"))
                .unwrap_or_else(|err| panic!("{t}: open O_DIRECT (write: {write}): {err}"))
        };
        // Direct I/O wants a block-aligned buffer.
        let mut mem = vec![0u8; 3 * BLOCK];
        let at = mem.as_ptr().align_offset(BLOCK);
        let block = &mut mem[at..at + BLOCK];
        let ro = direct(false);
        ro.read_exact_at(block, BLOCK as u64)
            .unwrap_or_else(|err| panic!("{t}: direct read of the lower file: {err}"));
        assert_eq!(block, &data[BLOCK..2 * BLOCK], "{t}: direct read");
        let plain = std::fs::File::open(e.p("f")).expect("open read-only");
        let rw = direct(true);
        block.fill(b'D');
        rw.write_all_at(block, 2 * BLOCK as u64)
            .unwrap_or_else(|err| panic!("{t}: direct write after copy-up: {err}"));
        block.fill(0);
        ro.read_exact_at(block, 2 * BLOCK as u64)
            .unwrap_or_else(|err| panic!("{t}: direct read after copy-up: {err}"));
        assert!(
            block.iter().all(|&b| b == b'D'),
            "{t}: direct read sees the write"
        );
        let mut want = data.clone();
        want[2 * BLOCK..3 * BLOCK].fill(b'D');
        let mut seen = vec![0u8; want.len()];
        plain.read_exact_at(&mut seen, 0).expect("plain read");
        assert!(
            seen == want,
            "{t}: the plain descriptor sees the direct write"
        );
        assert!(read(t, &e.upper("f")) == want, "{t}: upper copy");
        assert!(read(t, &e.lower(0, "f")) == data, "{t}: lower unchanged");
    }
}
