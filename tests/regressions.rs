//! Regression tests for bugs found by the third-party suites, each named after what broke.

mod common;

use std::os::unix::fs::MetadataExt;

use common::Stack;

/// pjdfstest found it: after an rmdir, ext4 gives the next mkdir the same inode number while
/// the kernel still holds the removed directory (here: an open descriptor on it). With the
/// number reused as the FUSE node id, the new directory was bound to the dead inode and every
/// create inside it failed with ENOENT.
#[test]
fn mkdir_after_rmdir_of_a_held_directory_accepts_entries() {
    if !common::can_mount("mkdir_after_rmdir_of_a_held_directory_accepts_entries") {
        return;
    }
    let s = Stack::new(1);
    let _m = s.mount_unionfs();
    let mut reused = 0;
    for i in 0..50 {
        let d = s.mnt.join("d");
        std::fs::create_dir(&d).expect("mkdir");
        let old_ino = std::fs::metadata(&d).expect("stat").ino();
        let held = std::fs::File::open(&d).expect("open the directory");
        std::fs::remove_dir(&d).expect("rmdir");
        std::fs::create_dir(&d).expect("mkdir again");
        let new_ino = std::fs::metadata(&d).expect("stat").ino();
        assert_ne!(
            old_ino, new_ino,
            "round {i}: two live directories share an inode number"
        );
        if std::fs::metadata(s.upper.join("d")).expect("upper").ino() == old_ino {
            reused += 1;
        }
        std::fs::write(d.join("f"), b"x")
            .unwrap_or_else(|e| panic!("round {i}: create in the new directory: {e}"));
        drop(held);
        std::fs::remove_file(d.join("f")).expect("unlink");
        std::fs::remove_dir(&d).expect("rmdir");
    }
    eprintln!("upper reused the removed directory's inode number in {reused} of 50 rounds");
}

/// An upper written in the AUFS format (docker's aufs driver keeps a container's changes so)
/// hides a lower name with a `.wh.<name>` file beside it, leaving the name itself free. Names
/// created over such markers were built aside and swapped into place as if a whiteout stood
/// at the name: `mkdir` failed with ENOENT. Each must now work, and what the markers hide
/// must stay hidden.
#[test]
fn create_over_an_aufs_marker_in_the_upper() {
    if !common::can_mount("create_over_an_aufs_marker_in_the_upper") {
        return;
    }
    let s = Stack::new(1);
    std::fs::create_dir(s.lowers[0].join("dir")).expect("mkdir lower");
    std::fs::write(s.lowers[0].join("dir/old"), b"lower").expect("write lower");
    std::fs::write(s.lowers[0].join("file"), b"lower").expect("write lower");
    std::fs::create_dir(s.lowers[0].join("moved")).expect("mkdir lower");
    std::fs::write(s.lowers[0].join("moved/old"), b"lower").expect("write lower");
    for name in ["dir", "file", "moved"] {
        std::fs::write(s.upper.join(format!(".wh.{name}")), b"").expect("marker");
    }
    let _m = s.mount_unionfs();
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        v.sort();
        v
    };
    assert!(names(&s.mnt).is_empty(), "markers hide the lower names");
    std::fs::create_dir(s.mnt.join("dir")).expect("mkdir over a marker");
    assert!(
        names(&s.mnt.join("dir")).is_empty(),
        "the lower dir stays hidden"
    );
    std::fs::write(s.mnt.join("file"), b"new").expect("create over a marker");
    assert_eq!(std::fs::read(s.mnt.join("file")).expect("read"), b"new");
    std::fs::create_dir(s.mnt.join("made")).expect("mkdir");
    std::fs::rename(s.mnt.join("made"), s.mnt.join("moved")).expect("rename over a marker");
    assert!(
        names(&s.mnt.join("moved")).is_empty(),
        "the lower dir stays hidden"
    );
    std::fs::hard_link(s.mnt.join("file"), s.mnt.join("link")).expect("link");
    assert_eq!(names(&s.mnt), ["dir", "file", "link", "moved"]);
    // Removed again, each name must be hidden once more.
    std::fs::remove_dir(s.mnt.join("dir")).expect("rmdir");
    std::fs::remove_dir(s.mnt.join("moved")).expect("rmdir");
    std::fs::remove_file(s.mnt.join("file")).expect("unlink");
    assert_eq!(names(&s.mnt), ["link"]);
}

/// Found by `cargo xtask bench` once its uppers moved to a file system of their own: copy-up
/// used only `copy_file_range`, which the kernel refuses between two file systems (EXDEV), so
/// every write to a lower file failed when the upper was not on the lowers' file system, as
/// with an upper on tmpfs. Kernel overlayfs copies across.
#[test]
fn copy_up_to_an_upper_on_another_file_system() {
    if !common::can_mount("copy_up_to_an_upper_on_another_file_system") {
        return;
    }
    let mut s = Stack::new(1);
    let fs_dir = s.dir.path().join("upper-fs");
    std::fs::create_dir(&fs_dir).expect("mkdir");
    let _tmpfs = Tmpfs::mount(&fs_dir);
    s.upper = fs_dir.join("upper");
    s.work = fs_dir.join("work");
    std::fs::create_dir(&s.upper).expect("mkdir upper");
    std::fs::create_dir(&s.work).expect("mkdir work");
    // More than one buffer's worth, with a hole in the middle.
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let lower_file = s.lowers[0].join("data.bin");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&lower_file).expect("create lower file");
        f.write_all_at(&body[..1 << 20], 0).expect("write");
        f.write_all_at(&body[2 << 20..], 2 << 20).expect("write");
    }
    let mut want = std::fs::read(&lower_file).expect("read lower");
    assert_eq!(want.len(), 3 << 20);
    let m = s.mount_unionfs();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(s.mnt.join("data.bin"))
            .expect("open a lower file for appending (copy-up)");
        f.write_all(b"tail").expect("append");
    }
    want.extend_from_slice(b"tail");
    assert!(std::fs::read(s.mnt.join("data.bin")).expect("read merged") == want);
    assert!(std::fs::read(s.upper.join("data.bin")).expect("read upper") == want);
    assert_eq!(
        std::fs::metadata(&lower_file).expect("lower").len(),
        3 << 20,
        "the lower file changed"
    );
    drop(m);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path) -> Tmpfs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
