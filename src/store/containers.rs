//! Containers: the writable layer of an image mount that the store manages
//! (`containers/<id>/upper`, `work`, `container.json`), so that `commit` and `diff` know which
//! image an upper directory sits on and `rmi` knows the image is still in use.
//!
//! It must never remove a container that is mounted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, IoContext, Result};
use super::{full_name, now_rfc3339, remove_tree, unique_id, write_atomic, Store};

/// A container record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    /// The image, `name:tag`.
    pub image: String,
    /// Where it was last mounted.
    pub mountpoint: PathBuf,
    pub created: String,
    /// Its upper and work directories.
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// What `commit` and `diff` work on.
#[derive(Debug, Clone)]
pub struct Target {
    pub upper: PathBuf,
    pub container: Option<Container>,
}

impl Store {
    /// Every container, by id.
    pub fn containers(&self) -> Result<Vec<Container>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).read_ctx(&dir)? {
            let p = e.read_ctx(&dir)?.path().join("container.json");
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let c: Container = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: "container record",
                path: p.display().to_string(),
                source,
            })?;
            out.push(c);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The container of `image` mounted at `mountpoint`: the existing one (so a remount keeps
    /// its changes) or a new one.
    pub fn container_for_mount(&self, image: &str, mountpoint: &Path) -> Result<Container> {
        let key = full_name(image)?;
        self.image(&key)?;
        let mnt = std::fs::canonicalize(mountpoint).read_ctx(mountpoint)?;
        if let Some(c) = self
            .containers()?
            .into_iter()
            .find(|c| c.image == key && c.mountpoint == mnt)
        {
            return Ok(c);
        }
        let lock = self.lock()?;
        let id = unique_id();
        let dir = self.root.join("containers").join(&id);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(|source| Error::Create {
                path: d.to_path_buf(),
                source,
            })?;
        }
        let c = Container {
            id,
            image: key,
            mountpoint: mnt,
            created: now_rfc3339(),
            upper,
            work,
        };
        let bytes = serde_json::to_vec_pretty(&c).expect("records serialize");
        write_atomic(&self.root.join("tmp"), &dir.join("container.json"), &bytes)?;
        drop(lock);
        Ok(c)
    }

    /// A container by id (or unique prefix), mountpoint or upper directory; else `arg` as a
    /// plain upper directory.
    pub fn target(&self, arg: &Path) -> Result<Target> {
        let all = self.containers()?;
        let s = arg.to_string_lossy();
        let by_id: Vec<&Container> = all
            .iter()
            .filter(|c| s.len() >= 4 && c.id.starts_with(s.as_ref()))
            .collect();
        if by_id.len() == 1 && !arg.exists() {
            let c = by_id[0].clone();
            return Ok(Target {
                upper: c.upper.clone(),
                container: Some(c),
            });
        }
        let Ok(canon) = std::fs::canonicalize(arg) else {
            return Err(Error::NoSuchContainer(arg.to_owned()));
        };
        if let Some(c) = all
            .iter()
            .find(|c| c.mountpoint == canon || c.upper == canon)
        {
            return Ok(Target {
                upper: c.upper.clone(),
                container: Some(c.clone()),
            });
        }
        if !canon.is_dir() {
            return Err(Error::NoSuchContainer(arg.to_owned()));
        }
        Ok(Target {
            upper: canon,
            container: None,
        })
    }

    /// Removes a container and its upper directory; refused while it is mounted.
    pub fn remove_container(&self, arg: &Path) -> Result<Container> {
        let t = self.target(arg)?;
        let c = t
            .container
            .ok_or_else(|| Error::NoSuchContainer(arg.to_owned()))?;
        if is_mounted(&c.mountpoint) {
            return Err(Error::Mounted {
                id: c.id,
                mountpoint: c.mountpoint,
            });
        }
        let _lock = self.lock()?;
        let dir = self.root.join("containers").join(&c.id);
        let doomed = self.staging("rm")?;
        std::fs::rename(&dir, doomed.join("c")).map_err(|source| Error::Remove {
            path: dir.clone(),
            source,
        })?;
        remove_tree(&doomed)?;
        Ok(c)
    }
}

/// Whether a FUSE filesystem is mounted at `path` (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    crate::config::find_mount(&table, path)
        .is_some_and(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
}
