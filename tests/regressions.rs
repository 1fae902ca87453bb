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
