//! Copy-up and the other staged writes to the upper layer.
//!
//! Every change that must appear in the upper all at once is built in the work directory first
//! and then renamed into place, so that a crash or kill at any point leaves either the old or
//! the new state visible, never a partial file (the overlayfs design, see the kernel's
//! Documentation/filesystems/overlayfs.rst, "Non-directories"). Staging leftovers of a crash live
//! only in the work directory and are removed at the next mount.
//!
//! Hard links are kept through an index, like overlayfs's `index=on`: a lower file with more
//! than one link is copied up once into `work/unionfs-index/<ino>` and every name of it that is
//! copied up later is a hard link to that copy.

mod copy;
mod reaper;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, AT_FDCWD};
use nix::sys::stat::FileStat;

use crate::layer_index::{self, is_dir, LayerPath, LayerRoot, LowerObj};
use crate::sys::xattr;
use crate::whiteout::{self, XattrNs};

/// A copy-up or staged write that failed, with the step and the path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot prepare the work directory {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stage {path} in the work directory")]
    Stage {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot copy data of {path}")]
    Data {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot copy metadata of {path}")]
    Meta {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot move staged object to {path}")]
    Install {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

impl Error {
    /// The errno to report to the caller of the file operation.
    pub fn errno(&self) -> Errno {
        match self {
            Error::WorkDir { source, .. } => {
                Errno::from_raw(source.raw_os_error().unwrap_or(libc::EIO))
            }
            Error::Stage { source, .. }
            | Error::Data { source, .. }
            | Error::Meta { source, .. }
            | Error::Install { source, .. } => *source,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Name of the nlink xattr (after `trusted.`/`user.`) kept on indexed copies: the number of
/// merged names of the object.
const NLINK_XATTR_SUFFIX: &str = "unionfs.nlink";

/// Writes to the upper layer through the work directory.
#[derive(Debug)]
pub struct Upper {
    base: LayerRoot,
    staging: PathBuf,
    index: PathBuf,
    ns: XattrNs,
    volatile: bool,
    seq: AtomicU64,
    reaper: reaper::Reaper,
}

impl Upper {
    /// Prepares `work` (staging and index directories) and removes any staging leftovers of an
    /// earlier crash.
    pub fn new(upper: &Path, work: &Path, ns: XattrNs, volatile: bool) -> Result<Upper> {
        let staging = work.join("unionfs-work");
        let index = work.join("unionfs-index");
        let wd = |path: &Path, source| Error::WorkDir {
            path: path.to_path_buf(),
            source,
        };
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| wd(&staging, e))?;
        }
        // Private: staged copies may hold data their final mode would not let others read.
        let mut private = std::fs::DirBuilder::new();
        private.recursive(true).mode(0o700);
        private.create(&staging).map_err(|e| wd(&staging, e))?;
        private.create(&index).map_err(|e| wd(&index, e))?;
        Ok(Upper {
            base: LayerRoot::open(upper).map_err(|e| Error::WorkDir {
                path: upper.to_path_buf(),
                source: std::io::Error::from(e),
            })?,
            staging,
            index,
            ns,
            volatile,
            seq: AtomicU64::new(0),
            reaper: reaper::Reaper::default(),
        })
    }

    /// The xattr namespace markers are written in.
    pub fn ns(&self) -> XattrNs {
        self.ns
    }

    /// Whether fsyncs are skipped.
    pub fn volatile(&self) -> bool {
        self.volatile
    }

    /// Path of `rel` in the upper layer, for the daemon's own system calls (through the held
    /// root, see `layer_index::LayerRoot`).
    pub fn path(&self, rel: &Path) -> LayerPath {
        self.base.join(rel)
    }

    /// Path of the index entry of merged inode `ino`.
    pub fn index_path(&self, ino: u64) -> PathBuf {
        self.index.join(format!("{ino:016x}"))
    }

    /// Deletes `dir`, a directory in the work directory that no view shows any more, and all
    /// it holds, in the background (see `reaper`).
    pub fn discard_dir(&self, dir: PathBuf) {
        self.reaper.remove(dir);
    }

    /// Waits until every directory passed to [`Upper::discard_dir`] is deleted.
    pub fn finish_discards(&self) {
        self.reaper.finish();
    }

    /// A fresh staging name in the work directory.
    pub fn temp(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.staging
            .join(format!("#{:x}-{n:x}", std::process::id()))
    }

    fn nlink_name(&self) -> OsString {
        xattr_name(self.ns, NLINK_XATTR_SUFFIX)
    }

    /// The merged link count recorded on an indexed copy, if the object is one.
    pub fn indexed_nlink(&self, path: &Path) -> Option<u32> {
        let v = xattr::get(path, &self.nlink_name()).ok().flatten()?;
        Some(u32::from_le_bytes(v.try_into().ok()?))
    }

    /// Changes the merged link count of an indexed copy by `delta`.
    pub fn adjust_nlink(&self, path: &Path, delta: i32) -> nix::Result<()> {
        if let Some(n) = self.indexed_nlink(path) {
            let n = (n as i64 + delta as i64).max(0) as u32;
            xattr::set(path, &self.nlink_name(), &n.to_le_bytes(), 0)?;
        }
        Ok(())
    }

    /// Copies the lower directory `src` up to `rel` (its parent must already be in the upper),
    /// keeping mode, owner, times and xattrs, and recording `origin` as its inode number.
    pub fn copy_up_dir(&self, rel: &Path, src: &Path, st: &FileStat, origin: u64) -> Result<()> {
        let tmp = self.temp();
        let stage = |source| Error::Stage {
            path: tmp.clone(),
            source,
        };
        nix::unistd::mkdir(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o700)).map_err(stage)?;
        let res = copy::metadata(src, &tmp, st, self.ns, origin)
            .map_err(|source| Error::Meta {
                path: src.to_path_buf(),
                source,
            })
            .and_then(|()| self.install(&tmp, rel));
        if res.is_err() {
            let _ = std::fs::remove_dir(&tmp);
        }
        res
    }

    /// Copies the lower non-directory `src` up to `rel`. With `truncate` the data is not copied
    /// (the caller is about to truncate it to zero). A file with several links goes through the
    /// index so that its other names, copied up later, stay linked to it.
    pub fn copy_up_file(
        &self,
        rel: &Path,
        src: &LowerObj,
        srcpath: &Path,
        origin: u64,
        truncate: bool,
    ) -> Result<()> {
        let indexed = !is_dir(&src.st) && src.st.st_nlink > 1;
        if indexed {
            let idx = self.index_path(origin);
            if layer_index::lstat(&idx).is_err() {
                let tmp = self.stage_copy(srcpath, &src.st, origin, false)?;
                xattr::set(
                    &tmp,
                    &self.nlink_name(),
                    &(src.st.st_nlink as u32).to_le_bytes(),
                    0,
                )
                .map_err(|source| Error::Meta {
                    path: tmp.clone(),
                    source,
                })?;
                rename_into(&tmp, &idx.clone().into(), RenameFlags::RENAME_NOREPLACE)?;
            }
            let dst = self.path(rel);
            return nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                &idx,
                nix::fcntl::AT_FDCWD,
                &*dst,
                nix::fcntl::AtFlags::empty(),
            )
            .map_err(|source| Error::Install {
                path: dst.to_path_buf(),
                source,
            });
        }
        let tmp = self.stage_copy(srcpath, &src.st, origin, truncate)?;
        self.install(&tmp, rel)
    }

    /// Stages a copy of `src` (data and metadata) in the work directory, to be installed with
    /// [`Upper::install_staged`] or dropped with [`Upper::discard_staged`].
    pub fn stage_copy(
        &self,
        src: &Path,
        st: &FileStat,
        origin: u64,
        truncate: bool,
    ) -> Result<PathBuf> {
        let tmp = self.temp();
        let res = copy::object(src, &tmp, st, truncate, !self.volatile)
            .map_err(|source| Error::Data {
                path: src.to_path_buf(),
                source,
            })
            .and_then(|()| {
                copy::metadata(src, &tmp, st, self.ns, origin).map_err(|source| Error::Meta {
                    path: src.to_path_buf(),
                    source,
                })
            });
        match res {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Moves an object staged by [`Upper::stage_copy`] to `rel`; `rel` must not exist.
    pub fn install_staged(&self, tmp: &Path, rel: &Path) -> Result<()> {
        let r = self.install(tmp, rel);
        if r.is_err() {
            self.discard_staged(tmp);
        }
        r
    }

    /// Drops an object staged by [`Upper::stage_copy`] that is no longer needed.
    pub fn discard_staged(&self, tmp: &Path) {
        let _ = std::fs::remove_file(tmp);
    }

    /// Moves a staged object to `rel` in the upper; `rel` must not exist.
    fn install(&self, tmp: &Path, rel: &Path) -> Result<()> {
        rename_into(tmp, &self.path(rel), RenameFlags::RENAME_NOREPLACE)
    }

    /// Puts a whiteout at `rel`, replacing whatever the upper has there in one step. A directory
    /// being replaced holds at most markers (the caller checked that it looks empty).
    pub fn whiteout(&self, rel: &Path) -> Result<()> {
        let dst = self.path(rel);
        // Mostly the name is only in a lower layer: link the shared whiteout straight there (a
        // link appears whole, as a rename does). Staged only when the name is taken, or there
        // is no shared whiteout to link.
        let (dir, name) = dst.at();
        let shared = self.staging.join("whiteout");
        let taken = match nix::unistd::linkat(AT_FDCWD, &shared, dir, name, AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(e) => e == Errno::EEXIST,
        };
        let tmp = self.temp();
        self.stage_whiteout(&tmp).map_err(|source| Error::Stage {
            path: tmp.clone(),
            source,
        })?;
        let replace = || match dst.lstat() {
            Ok(st) if is_dir(&st) => {
                // The old directory then sits at `tmp`.
                rename_into(&tmp, &dst, RenameFlags::RENAME_EXCHANGE)
                    .map(|()| self.reaper.remove(tmp.clone()))
            }
            _ => rename_into(&tmp, &dst, RenameFlags::empty()),
        };
        let installed = if taken {
            replace()
        } else {
            match rename_into(&tmp, &dst, RenameFlags::RENAME_NOREPLACE) {
                Err(Error::Install {
                    source: Errno::EEXIST,
                    ..
                }) => replace(),
                other => other,
            }
        };
        if installed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        installed
    }

    /// Makes a whiteout at `tmp` in the work directory: a new link to one shared whiteout
    /// inode, as overlayfs does, since making a device node costs far more than a link (about
    /// 20x on ext4 here). A new shared inode is made when there is none yet (the work directory
    /// is emptied at mount) or it has reached the filesystem's link limit. Called with the
    /// namespace lock held alone, so the shared inode is never replaced under another caller.
    fn stage_whiteout(&self, tmp: &Path) -> nix::Result<()> {
        let shared = self.staging.join("whiteout");
        let link = || nix::unistd::linkat(AT_FDCWD, &shared, AT_FDCWD, tmp, AtFlags::empty());
        match link() {
            Ok(()) => return Ok(()),
            Err(Errno::ENOENT | Errno::EMLINK) => {}
            Err(_) => return whiteout::make_whiteout(tmp),
        }
        let fresh = self.temp();
        whiteout::make_whiteout(&fresh)?;
        if let Err(e) = nix::fcntl::renameat(AT_FDCWD, &fresh, AT_FDCWD, &shared) {
            let _ = std::fs::remove_file(&fresh);
            return Err(e);
        }
        link()
    }

    /// Replaces the upper directory at `rel` (which looks empty but holds whiteouts) with an
    /// empty opaque directory of the same attributes, as overlayfs does before removing or
    /// renaming over a merged directory.
    pub fn clear_dir(&self, rel: &Path) -> Result<()> {
        let dst = self.path(rel);
        let st = layer_index::lstat(&dst).map_err(|source| Error::Stage {
            path: dst.to_path_buf(),
            source,
        })?;
        let tmp = self.temp();
        let stage = |source| Error::Stage {
            path: tmp.clone(),
            source,
        };
        nix::unistd::mkdir(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o700)).map_err(stage)?;
        let ino = layer_index::origin_of(&dst).unwrap_or(0);
        copy::metadata(&dst, &tmp, &st, self.ns, ino).map_err(stage)?;
        whiteout::set_opaque(&tmp, self.ns).map_err(stage)?;
        rename_into(&tmp, &dst, RenameFlags::RENAME_EXCHANGE)?;
        self.reaper.remove(tmp);
        Ok(())
    }
}

pub fn xattr_name(ns: XattrNs, suffix: &str) -> OsString {
    let prefix = match ns {
        XattrNs::Trusted => "trusted.",
        XattrNs::User => "user.",
    };
    let mut s = OsString::from(prefix);
    s.push(OsStr::new(suffix));
    s
}

/// Renames the staged object `from` (in the work directory) to `to`, reporting a failure as
/// an installation error for `to`.
fn rename_into(from: &Path, to: &LayerPath, flags: RenameFlags) -> Result<()> {
    let (dir, rel) = to.at();
    nix::fcntl::renameat2(nix::fcntl::AT_FDCWD, from, dir, rel, flags).map_err(|source| {
        Error::Install {
            path: to.to_path_buf(),
            source,
        }
    })
}
