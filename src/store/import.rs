//! Adding images to the store: `import` (OCI layout, docker save archive or plain layer tar)
//! and `commit` (an upper directory packed as a new layer on top of its image).
//!
//! Everything is staged under `tmp/` with the store locked; layers are synced and renamed into
//! `layers/` and the image recorded only after every layer of the image has been extracted and
//! its digests checked. It must never leave a layer in `layers/` that failed verification.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{ConfigBuilder, HistoryBuilder, ImageConfiguration, RootFsBuilder};

use super::error::{Error, IoContext, Result};
use super::source::{self, Compression, Found, LayerBlob, Source};
use super::unpack::{self, HashingReader, Unpacked};
use super::{full_name, now_rfc3339, sync_dir, ImageRecord, Index, LayerMeta, Lock, Store};

/// Import progress, for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Layer `index` (1-based) of `count` starts; `size` is its blob size when known.
    Layer {
        index: usize,
        count: usize,
        size: Option<u64>,
    },
    /// Bytes of the current blob read so far (increment).
    Bytes(u64),
}

struct Counting<'a, R> {
    inner: R,
    progress: &'a dyn Fn(Progress),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(Progress::Bytes(n as u64));
        Ok(n)
    }
}

/// A layer extracted and verified in `tmp/`, not yet in `layers/`.
struct Staged {
    dir: PathBuf,
    meta: LayerMeta,
}

/// Splits `PATH[:TAG]`: the whole string when it exists, else the part before the last `:`.
pub fn split_source(arg: &Path) -> (PathBuf, Option<String>) {
    use std::os::unix::ffi::OsStrExt;
    if arg.exists() {
        return (arg.to_owned(), None);
    }
    let b = arg.as_os_str().as_bytes();
    match b.iter().rposition(|c| *c == b':') {
        Some(i) => {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&b[..i]));
            let tag = String::from_utf8_lossy(&b[i + 1..]).into_owned();
            (path, Some(tag))
        }
        None => (arg.to_owned(), None),
    }
}

impl Store {
    /// Imports the image at `arg` (`PATH[:TAG]`) as `name` (or the name the source gives it,
    /// or the file's name); returns the full name.
    pub fn import(
        &self,
        arg: &Path,
        name: Option<&str>,
        progress: &dyn Fn(Progress),
    ) -> Result<String> {
        let (path, tag) = split_source(arg);
        let lock = self.lock()?;
        let result = self.import_locked(&lock, &path, tag.as_deref(), name, progress);
        // Whatever is still staged (scratch copies, layers of a failed import) goes now.
        self.clear_tmp();
        result
    }

    fn import_locked(
        &self,
        lock: &Lock,
        path: &Path,
        tag: Option<&str>,
        name: Option<&str>,
        progress: &dyn Fn(Progress),
    ) -> Result<String> {
        let scratch = self.staging("import")?;
        let (src, found) = source::find(path, tag, &scratch)?;
        let key = match (name, &found.name) {
            (Some(n), _) => full_name(n)?,
            (None, Some(n)) if n.contains(':') || !n.is_empty() => full_name(n)?,
            _ => full_name(&default_name(path))?,
        };
        let staged = self.stage_all(&src, &found, progress)?;
        let config = match found.config {
            Some(c) => check_diff_ids(c, &staged, &src)?,
            None => fresh_config(&staged, &format!("unionfs import {}", path.display())),
        };
        self.install(
            lock,
            staged,
            &key,
            config,
            format!("import {}", path.display()),
        )?;
        Ok(key)
    }

    fn stage_all(
        &self,
        src: &Source,
        found: &Found,
        progress: &dyn Fn(Progress),
    ) -> Result<Vec<Staged>> {
        let count = found.layers.len();
        let mut staged = Vec::with_capacity(count);
        for (i, layer) in found.layers.iter().enumerate() {
            progress(Progress::Layer {
                index: i + 1,
                count,
                size: layer.size,
            });
            let label = if layer.blob.is_empty() {
                src.describe()
            } else {
                format!("{} ({})", i + 1, layer.blob)
            };
            let lowers: Vec<PathBuf> = staged
                .iter()
                .rev()
                .map(|s: &Staged| s.dir.join("root"))
                .collect();
            staged.push(self.stage_blob(src, layer, &label, &lowers, progress)?);
        }
        Ok(staged)
    }

    fn stage_blob(
        &self,
        src: &Source,
        layer: &LayerBlob,
        label: &str,
        lowers: &[PathBuf],
        progress: &dyn Fn(Progress),
    ) -> Result<Staged> {
        let (reader, _) = src.open(&layer.blob)?;
        let mut blob = HashingReader::new(Counting {
            inner: reader,
            progress,
        });
        let dir = self.staging("layer")?;
        let root = dir.join("root");
        std::fs::create_dir(&root).write_ctx(&root)?;
        let corrupt = |source| Error::Corrupt {
            layer: label.to_owned(),
            last: PathBuf::from("(start of archive)"),
            source,
        };
        let unpacked = {
            let dec =
                source::decompressor(layer.compression, Box::new(&mut blob)).map_err(corrupt)?;
            unpack::unpack(dec, &root, label, lowers)?
        };
        let (blob_digest, _) = blob.finish().map_err(corrupt)?;
        if let Some(expected) = &layer.blob_digest {
            if *expected != blob_digest {
                return Err(Error::DigestMismatch {
                    what: format!("layer {label}"),
                    expected: expected.clone(),
                    actual: blob_digest,
                });
            }
        }
        self.finish_stage(dir, unpacked)
    }

    fn finish_stage(&self, dir: PathBuf, u: Unpacked) -> Result<Staged> {
        let meta = LayerMeta {
            diff_id: u.diff_id,
            stats: u.stats,
        };
        let p = dir.join("layer.json");
        let bytes = serde_json::to_vec_pretty(&meta).expect("layer records serialize");
        std::fs::write(&p, bytes).write_ctx(&p)?;
        Ok(Staged { dir, meta })
    }

    /// Moves verified layers into `layers/` (keeping an identical one already there) and
    /// records the image.
    fn install(
        &self,
        lock: &Lock,
        staged: Vec<Staged>,
        key: &str,
        config: ImageConfiguration,
        source: String,
    ) -> Result<()> {
        let layers = self.root.join("layers");
        for s in staged {
            let dest = self.layer_dir(&s.meta.diff_id)?;
            if dest.exists() {
                continue;
            }
            let d = File::open(&s.dir).read_ctx(&s.dir)?;
            nix::unistd::syncfs(&d).map_err(|e| Error::Write {
                path: s.dir.clone(),
                source: e.into(),
            })?;
            std::fs::rename(&s.dir, &dest).write_ctx(&dest)?;
        }
        sync_dir(&layers)?;
        let bytes = serde_json::to_vec(&config).expect("configs serialize");
        let record = ImageRecord {
            id: unpack::digest_of(&bytes),
            config,
            source,
            added: now_rfc3339(),
        };
        let mut index: Index = self.load()?;
        index.images.insert(key.to_owned(), record);
        self.save(&index, lock)
    }

    /// Packs `upper` (with its whiteouts and opaque directories in OCI form) as a new layer on
    /// top of image `base`, recorded as `name`.
    pub fn commit_upper(&self, upper: &Path, base: &str, name: &str, note: &str) -> Result<String> {
        let key = full_name(name)?;
        let base_img = self.image(base)?;
        let lock = self.lock()?;
        let result = self.commit_locked(&lock, upper, &base_img, &key, note);
        // Whatever is still staged (scratch copies, layers of a failed import) goes now.
        self.clear_tmp();
        result
    }

    fn commit_locked(
        &self,
        lock: &Lock,
        upper: &Path,
        base_img: &ImageRecord,
        key: &str,
        note: &str,
    ) -> Result<String> {
        let lowers = base_img
            .diff_ids()
            .iter()
            .rev()
            .map(|d| self.layer_root(d))
            .collect::<Result<Vec<_>>>()?;
        let scratch = self.staging("commit")?;
        let tar_path = scratch.join("layer.tar");
        let f = File::create(&tar_path).write_ctx(&tar_path)?;
        super::pack::pack_upper(upper, &lowers, f).map_err(|source| Error::Pack {
            path: upper.to_owned(),
            source,
        })?;
        let src = Source::File(tar_path);
        let layer = LayerBlob {
            blob: String::new(),
            compression: Compression::None,
            blob_digest: None,
            size: None,
        };
        let label = upper.display().to_string();
        let staged = self.stage_blob(&src, &layer, &label, &lowers, &|_| {})?;
        let mut config = base_img.config.clone();
        let diff_id = staged.meta.diff_id.clone();
        config.rootfs_mut().diff_ids_mut().push(diff_id);
        let entry = HistoryBuilder::default()
            .created(now_rfc3339())
            .created_by(note.to_owned())
            .comment(format!("committed from {}", upper.display()))
            .build()
            .expect("history entries build");
        config
            .history_mut()
            .get_or_insert_with(Vec::new)
            .push(entry);
        config.set_created(Some(now_rfc3339()));
        self.install(
            lock,
            vec![staged],
            key,
            config,
            format!("commit {}", upper.display()),
        )?;
        Ok(key.to_owned())
    }
}

use std::fs::File;

/// The name of an image imported without one: the file name without its extensions.
fn default_name(path: &Path) -> String {
    let f = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let stem = f.split('.').next().unwrap_or("").to_owned();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "image".into()
    } else {
        cleaned
    }
}

/// Checks that the layers are those the config lists (OCI: `rootfs.diff_ids`).
fn check_diff_ids(
    config: ImageConfiguration,
    staged: &[Staged],
    src: &Source,
) -> Result<ImageConfiguration> {
    let want = config.rootfs().diff_ids();
    if want.len() != staged.len() {
        return Err(Error::BadImage {
            source_path: src.describe(),
            why: format!(
                "the config lists {} layers, the manifest {}",
                want.len(),
                staged.len()
            ),
        });
    }
    for (i, (w, s)) in want.iter().zip(staged).enumerate() {
        if *w != s.meta.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("layer {} diffID", i + 1),
                expected: w.clone(),
                actual: s.meta.diff_id.clone(),
            });
        }
    }
    Ok(config)
}

/// The config of an image made from plain layer tars.
fn fresh_config(staged: &[Staged], created_by: &str) -> ImageConfiguration {
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(
            staged
                .iter()
                .map(|s| s.meta.diff_id.clone())
                .collect::<Vec<_>>(),
        )
        .build()
        .expect("rootfs builds");
    let history: Vec<_> = staged
        .iter()
        .map(|_| {
            HistoryBuilder::default()
                .created(now_rfc3339())
                .created_by(created_by.to_owned())
                .build()
                .expect("history entries build")
        })
        .collect();
    let mut c = ImageConfiguration::default();
    c.set_rootfs(rootfs);
    c.set_history(Some(history));
    c.set_created(Some(now_rfc3339()));
    c.set_config(Some(
        ConfigBuilder::default()
            .env(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ])
            .build()
            .expect("configs build"),
    ));
    c
}
