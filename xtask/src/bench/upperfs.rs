//! The file system the benchmark's upper and work directories live on: a fresh ext4 (with its
//! journal) in a sparse image under `target/bench/`, loop-mounted on the run directory.
//!
//! Why not the directory the repository sits on: the rows that create or remove many files
//! measure the upper file system as much as the union. On a host whose root ext4 has no
//! journal, ext4's inode allocator skips each recently deleted inode one by one, so a row run
//! shortly after another target's upper was removed paid for that removal: create times of
//! the kernel's own mount swung by 4x between repetitions. A new file system per run, with a
//! journal as on a usual container host, takes that out. Where a loop mount is impossible the
//! uppers stay where they were, and the run says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{self, Context, Result};

/// Size of the sparse image: room for every target's upper at once (the largest row writes
/// a 1 GiB copy-up per target); only what is written takes disk space.
const IMAGE_BYTES: u64 = 16 << 30;

/// A mounted image; unmounted and deleted on drop.
pub struct UpperFs {
    image: PathBuf,
    mnt: Option<PathBuf>,
}

impl UpperFs {
    /// Mounts a new file system on `mnt` (which is created), from an image in `dir`. Where
    /// the host cannot, says why and leaves `mnt` a plain directory.
    pub fn mount(dir: &Path, mnt: &Path) -> UpperFs {
        let image = dir.join("uppers.img");
        let mut fsys = UpperFs { image, mnt: None };
        match fsys.try_mount(mnt) {
            Ok(()) => println!(
                "uppers: a new ext4 (with journal) loop-mounted at {}",
                mnt.display()
            ),
            Err(e) => println!("uppers: on the host's file system, not a fresh one ({e})"),
        }
        fsys
    }

    fn try_mount(&mut self, mnt: &Path) -> Result<()> {
        let _ = fs::remove_file(&self.image);
        let f =
            fs::File::create(&self.image).context(|| format!("create {}", self.image.display()))?;
        f.set_len(IMAGE_BYTES)
            .context(|| format!("size {}", self.image.display()))?;
        drop(f);
        host::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=1"])
                .arg(&self.image),
        )?;
        fs::create_dir_all(mnt).context(|| format!("create {}", mnt.display()))?;
        host::run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&self.image)
                .arg(mnt),
        )?;
        self.mnt = Some(mnt.to_path_buf());
        Ok(())
    }
}

impl Drop for UpperFs {
    fn drop(&mut self) {
        if let Some(mnt) = self.mnt.take() {
            super::targets::force_unmount(&mnt);
        }
        let _ = fs::remove_file(&self.image);
    }
}
