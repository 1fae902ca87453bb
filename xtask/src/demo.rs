//! `cargo xtask demo`: builds unionfs, mounts a small example stack it generates under
//! `target/demo/`, and walks through what a union mount does: the merged view (with both
//! whiteout formats and an opaque directory), a copy-up that keeps a hard link, a delete that
//! leaves a whiteout in the upper layer, and a directory rename recorded as a redirect.
//!
//! The demo checks what it shows and fails loudly when the filesystem disagrees, so it doubles
//! as a smoke test. It must never leave a mount behind: a guard unmounts on every exit path,
//! and a re-run first unmounts and deletes whatever a previous run left in `target/demo/`.

mod show;
mod stack;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::host::{self, Context, Error, Result};

const PHASES: usize = 9;

/// The file the demo appends to (from `base`), its hard link, the file it deletes (also from
/// `base`), and the directory it renames (merged from all three layers).
const APPENDED: &str = "home/user/notes.txt";
const APPENDED_LINK: &str = "home/user/notes.link";
const APPENDED_LINE: &str = "second line, appended through the mount\n";
const DELETED: &str = "etc/hostname";
const RENAMED_FROM: &str = "usr/share/doc";
const RENAMED_TO: &str = "usr/share/docs";

/// The demo's directories: the lower layers, `upper/`, `work/` and the mount point `merged/`.
struct Dirs {
    root: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
}

impl Dirs {
    fn new(root: PathBuf) -> Dirs {
        Dirs {
            upper: root.join("upper"),
            work: root.join("work"),
            merged: root.join("merged"),
            root,
        }
    }

    fn layer(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

pub fn run() -> Result<ExitCode> {
    host::phase(1, PHASES, "checking the host can mount");
    host::require_mount_rights()?;
    host::enable_fuse_uring();
    host::ensure_tools()?;

    host::phase(2, PHASES, "building unionfs (debug)");
    let mut build = host::cargo();
    build.current_dir(host::workspace_root()).args([
        "build",
        "--package",
        "unionfs",
        "--bin",
        "unionfs",
    ]);
    host::run(&mut build)?;
    let bin = host::unionfs_binary("debug");

    host::phase(3, PHASES, "generating the example stack in target/demo/");
    let dirs = prepare(&bin)?;

    host::phase(
        4,
        PHASES,
        "mounting: lower top:mid:base, upper, work -> merged",
    );
    let mount = Mount::new(&bin, &dirs)?;

    host::phase(5, PHASES, "the merged view");
    show_merged(&dirs)?;

    host::phase(6, PHASES, "copy-up: append to a lower file");
    copy_up(&dirs)?;

    host::phase(7, PHASES, "delete: rm a lower file");
    delete(&dirs)?;

    host::phase(8, PHASES, "rename: mv a lower directory");
    rename_dir(&dirs)?;

    host::phase(9, PHASES, "unmounting");
    mount.unmount()?;
    println!("\nupper/ keeps the changes after unmounting:");
    show::tree(&dirs.upper)?;
    println!(
        "\n==> demo finished; the stack stays in {}",
        dirs.root.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes a previous run (unmounting it first) and lays out a fresh stack.
fn prepare(bin: &Path) -> Result<Dirs> {
    let target = host::target_dir();
    fs::create_dir_all(&target).context(|| format!("create {}", target.display()))?;
    let target = target
        .canonicalize()
        .context(|| format!("resolve {}", target.display()))?;
    let dirs = Dirs::new(target.join("demo"));
    remove_previous(bin, &dirs.root)?;
    stack::create(&dirs.root)?;
    for d in [&dirs.upper, &dirs.work, &dirs.merged] {
        fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
    }
    println!("fresh upper/, work/ and merged/ in {}", dirs.root.display());
    Ok(dirs)
}

/// Unmounts anything still mounted below `root` (deepest first), then deletes `root`.
/// Deleting through a live mount would reach into its layers, so a mount that will not go
/// away stops the demo.
fn remove_previous(bin: &Path, root: &Path) -> Result<()> {
    let mut leftovers: Vec<PathBuf> = show::mount_points()
        .into_iter()
        .filter(|m| m.starts_with(root))
        .collect();
    leftovers.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mnt in &leftovers {
        println!("unmounting a leftover mount at {}", mnt.display());
        if !(bin.exists() && unionfs_umount(bin, mnt).is_ok()) {
            force_unmount(mnt);
        }
        if show::is_mount_point(mnt) {
            return Err(Error::Host(format!(
                "{} is still mounted; unmount it by hand",
                mnt.display()
            )));
        }
    }
    if root.exists() {
        println!("removing the previous demo in {}", root.display());
        fs::remove_dir_all(root).context(|| format!("remove {}", root.display()))?;
    }
    Ok(())
}

/// `unionfs umount MNT`, then waits for the mount to be gone from the mount table.
fn unionfs_umount(bin: &Path, mnt: &Path) -> Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("umount").arg(mnt);
    host::run(&mut cmd)?;
    if wait_for(|| !show::is_mount_point(mnt)) {
        Ok(())
    } else {
        Err(Error::Unexpected(format!(
            "`{}` succeeded but {} is still mounted",
            host::cmdline(&cmd),
            mnt.display()
        )))
    }
}

/// Best effort for cleanup paths: `umount`, then a lazy `umount -l`. Failures are printed by
/// the commands themselves; the caller checks the mount table.
fn force_unmount(mnt: &Path) {
    for lazy in [false, true] {
        if !show::is_mount_point(mnt) {
            return;
        }
        let mut cmd = Command::new("umount");
        if lazy {
            cmd.arg("-l");
        }
        cmd.arg(mnt);
        let _ = host::status(&mut cmd);
        wait_for(|| !show::is_mount_point(mnt));
    }
}

/// Polls `done` for up to five seconds.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The live demo mount. Dropping it without [`Mount::unmount`] (an error on the way) still
/// unmounts, so a failed demo leaves nothing mounted.
struct Mount<'a> {
    bin: &'a Path,
    mnt: PathBuf,
    live: bool,
}

impl<'a> Mount<'a> {
    fn new(bin: &'a Path, dirs: &Dirs) -> Result<Mount<'a>> {
        let lower: Vec<String> = stack::LAYERS
            .iter()
            .map(|l| dirs.layer(l.name).display().to_string())
            .collect();
        let mut cmd = Command::new(bin);
        cmd.arg("mount")
            .arg("--lower")
            .arg(lower.join(":"))
            .arg("--upper")
            .arg(&dirs.upper)
            .arg("--work")
            .arg(&dirs.work)
            .arg(&dirs.merged);
        host::run(&mut cmd)?;
        let mount = Mount {
            bin,
            mnt: dirs.merged.clone(),
            live: true,
        };
        // `unionfs mount` returns once the mount is live; the short wait only covers a
        // daemon that reports success a moment before the kernel lists the mount.
        if !wait_for(|| show::is_mount_point(&mount.mnt)) {
            return Err(Error::Unexpected(format!(
                "`unionfs mount` succeeded but {} is not in /proc/self/mountinfo",
                mount.mnt.display()
            )));
        }
        println!("mounted on {}", mount.mnt.display());
        Ok(mount)
    }

    fn unmount(mut self) -> Result<()> {
        self.live = false;
        unionfs_umount(self.bin, &self.mnt)?;
        println!("unmounted {}", self.mnt.display());
        Ok(())
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if self.live && show::is_mount_point(&self.mnt) {
            eprintln!("cleaning up: unmounting {}", self.mnt.display());
            if unionfs_umount(self.bin, &self.mnt).is_err() {
                force_unmount(&self.mnt);
            }
        }
    }
}

/// Shows the merged tree and a few files, and checks it against the stack's expectations.
fn show_merged(dirs: &Dirs) -> Result<()> {
    show::tree(&dirs.merged)?;
    println!();
    show::cat(&dirs.merged.join("etc/os-release"))?;
    show::cat(&dirs.merged.join("bin/hello"))?;
    let hello = dirs.merged.join("bin/hello");
    host::run(&mut Command::new(&hello))?;

    let mut problems = Vec::new();
    for rel in stack::EXPECTED_PRESENT {
        if fs::symlink_metadata(dirs.merged.join(rel)).is_err() {
            problems.push(format!("{rel} is missing from the merged view"));
        }
    }
    for rel in stack::EXPECTED_ABSENT {
        if fs::symlink_metadata(dirs.merged.join(rel)).is_ok() {
            problems.push(format!("{rel} shows in the merged view but must be hidden"));
        }
    }
    let merged_release = fs::read(dirs.merged.join("etc/os-release")).unwrap_or_default();
    let top_release = fs::read(dirs.layer("top").join("etc/os-release"))
        .context(|| "read top/etc/os-release".into())?;
    if merged_release != top_release {
        problems.push("etc/os-release is not the top layer's version".into());
    }
    if problems.is_empty() {
        println!("\nmerged view as expected: whiteouts (both formats) and the opaque dir hide what they should");
        Ok(())
    } else {
        Err(Error::Unexpected(format!(
            "the merged view is wrong:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Appends to a lower file through the mount: the file is copied up into `upper/`, the
/// lower layer keeps its original.
fn copy_up(dirs: &Dirs) -> Result<()> {
    let merged = dirs.merged.join(APPENDED);
    println!("append a line to {APPENDED} (a base-layer file) through the mount");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&merged)
        .context(|| format!("open {} for appending", merged.display()))?;
    file.write_all(APPENDED_LINE.as_bytes())
        .and_then(|()| file.sync_all())
        .context(|| format!("append to {}", merged.display()))?;
    drop(file);

    let upper = dirs.upper.join(APPENDED);
    let base = dirs.layer("base").join(APPENDED);
    for path in [&merged, &upper, &base] {
        show::cat(path)?;
    }
    let base_text = fs::read_to_string(&base).context(|| format!("read {}", base.display()))?;
    let upper_text = fs::read_to_string(&upper).unwrap_or_default();
    let merged_text = fs::read_to_string(&merged).unwrap_or_default();
    let want = format!("first line, from base\n{APPENDED_LINE}");
    if upper_text != want || merged_text != want || base_text != "first line, from base\n" {
        return Err(Error::Unexpected(format!(
            "copy-up of {APPENDED} went wrong: upper has {upper_text:?}, merged has \
             {merged_text:?}, base has {base_text:?}"
        )));
    }
    println!("copied up: upper/ has the new version, base/ is unchanged");

    let link = dirs.merged.join(APPENDED_LINK);
    let link_text = fs::read_to_string(&link).unwrap_or_default();
    let same_inode = match (fs::metadata(&merged), fs::metadata(&link)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino(),
        _ => false,
    };
    if link_text != want || !same_inode {
        return Err(Error::Unexpected(format!(
            "the hard link {APPENDED_LINK} came apart from {APPENDED} on copy-up \
             (same inode: {same_inode}, content {link_text:?})"
        )));
    }
    println!("{APPENDED_LINK}, a hard link to it, shows the new line too and keeps the inode");
    Ok(())
}

/// Deletes a lower file through the mount: `upper/` gets an overlay whiteout in its place.
fn delete(dirs: &Dirs) -> Result<()> {
    let merged = dirs.merged.join(DELETED);
    println!("rm {DELETED} (a base-layer file) through the mount");
    fs::remove_file(&merged).context(|| format!("remove {}", merged.display()))?;
    if fs::symlink_metadata(&merged).is_ok() {
        return Err(Error::Unexpected(format!("{DELETED} still shows after rm")));
    }
    let whiteout = dirs.upper.join(DELETED);
    let is_whiteout = fs::symlink_metadata(&whiteout)
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0);
    println!("upper/ now:");
    show::tree(&dirs.upper)?;
    if !is_whiteout {
        return Err(Error::Unexpected(format!(
            "upper/{DELETED} is not a character device 0/0 whiteout"
        )));
    }
    println!("deleted: {DELETED} is gone from merged/, upper/{DELETED} is a 0/0 whiteout");
    Ok(())
}

/// Renames a directory that comes from the lower layers: no `EXDEV`, and the upper copy
/// carries a `trusted.overlay.redirect` to where it came from (overlayfs.rst, "Redirect dir"),
/// so that what the lower layers had under the old name, and hid there, still shows and hides.
fn rename_dir(dirs: &Dirs) -> Result<()> {
    let from = dirs.merged.join(RENAMED_FROM);
    let to = dirs.merged.join(RENAMED_TO);
    println!("mv {RENAMED_FROM} {RENAMED_TO} (a directory merged from all three layers)");
    fs::rename(&from, &to).context(|| format!("rename {} to {}", from.display(), to.display()))?;
    show::tree(&to)?;
    println!("upper/ now:");
    show::tree(&dirs.upper)?;
    show_overlay_xattrs(dirs);

    let mut problems = Vec::new();
    if fs::symlink_metadata(&from).is_ok() {
        problems.push(format!("{RENAMED_FROM} still shows"));
    }
    if fs::symlink_metadata(to.join("changelog")).is_err() {
        problems.push(format!("{RENAMED_TO}/changelog (from mid) is missing"));
    }
    if fs::symlink_metadata(to.join("readme")).is_ok() {
        problems.push(format!("{RENAMED_TO}/readme shows, but top whited it out"));
    }
    let redirect = read_xattr(&dirs.upper.join(RENAMED_TO), "trusted.overlay.redirect");
    if redirect.as_deref() != Some(b"doc".as_slice()) {
        problems.push(format!(
            "upper/{RENAMED_TO} has no trusted.overlay.redirect=\"doc\" ({redirect:?})"
        ));
    }
    if !problems.is_empty() {
        return Err(Error::Unexpected(format!(
            "directory rename went wrong:\n  {}",
            problems.join("\n  ")
        )));
    }
    println!("renamed: upper/{RENAMED_TO} redirects to \"doc\"; its lower content follows it");
    Ok(())
}

/// One xattr's raw value, read with getfattr (std has no xattr calls); `None` if absent.
fn read_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// Prints the `trusted.overlay.*` xattrs unionfs wrote in `upper/` (origin, opaque, redirect
/// markers), for the curious; what is there depends on the operations, so nothing is checked.
fn show_overlay_xattrs(dirs: &Dirs) {
    let mut cmd = Command::new("getfattr");
    cmd.current_dir(&dirs.root)
        .args(["-R", "-P", "-d", "-e", "text", "-m", r"^trusted\.overlay\."])
        .arg("upper");
    println!("overlay xattrs in upper/ ($ {}):", host::cmdline(&cmd));
    match cmd.output() {
        Ok(out) if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(_) => println!("  (none)"),
        Err(e) => println!("  (getfattr could not run: {e})"),
    }
}
