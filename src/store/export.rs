//! Writing images out of the store: as an OCI image layout directory (gzip layers, the tag as
//! `org.opencontainers.image.ref.name`, so `skopeo copy oci:OUT:TAG` and
//! `umoci unpack --image OUT:TAG` read it), or as one flat tar of the merged tree.
//!
//! Layers are re-packed from their trees (with OCI whiteouts), so the exported config carries
//! the diffIDs of the tars actually written. It must never write into an existing non-empty
//! directory, and never leave a half-written flat tar under the final name.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, SCHEMA_VERSION,
};

use super::error::{Error, IoContext, Result};
use super::pack::{self, HashingWriter};
use super::Store;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let digest = super::unpack::digest_of(bytes);
    let p = blobs.join(&digest[7..]);
    std::fs::write(&p, bytes).write_ctx(&p)?;
    Ok((digest, bytes.len() as u64))
}

impl Store {
    /// Writes image `name` as an OCI image layout at `out` (created; must be absent or empty).
    pub fn export_oci(&self, name: &str, out: &Path) -> Result<()> {
        let key = super::full_name(name)?;
        let img = self.image(&key)?;
        let tag = key.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::Create {
                path: out.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let blobs = out.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|source| Error::Create {
            path: blobs.clone(),
            source,
        })?;
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for d in img.diff_ids() {
            let root = self.layer_root(d)?;
            let (digest, size, diff_id) = pack_gzip_blob(&root, &blobs)?;
            diff_ids.push(diff_id);
            layer_descs.push(
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageLayerGzip)
                    .digest(
                        digest
                            .parse::<oci_spec::image::Digest>()
                            .expect("sha256 digests parse"),
                    )
                    .size(size)
                    .build()
                    .expect("descriptors build"),
            );
        }
        let mut config = img.config.clone();
        config.rootfs_mut().set_diff_ids(diff_ids);
        let cbytes = serde_json::to_vec(&config).expect("configs serialize");
        let (cdigest, csize) = write_blob(&blobs, &cbytes)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &cdigest, csize, None))
            .layers(layer_descs)
            .build()
            .expect("manifests build");
        let mbytes = serde_json::to_vec(&manifest).expect("manifests serialize");
        let (mdigest, msize) = write_blob(&blobs, &mbytes)?;
        let index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![descriptor(
                MediaType::ImageManifest,
                &mdigest,
                msize,
                Some(tag),
            )])
            .build()
            .expect("indexes build");
        let ibytes = serde_json::to_vec(&index).expect("indexes serialize");
        let ip = out.join("index.json");
        std::fs::write(&ip, ibytes).write_ctx(&ip)?;
        let lp = out.join("oci-layout");
        std::fs::write(&lp, br#"{"imageLayoutVersion":"1.0.0"}"#).write_ctx(&lp)?;
        Ok(())
    }

    /// Writes the merged tree of image `name` as one tar at `out`.
    pub fn export_flat(&self, name: &str, out: &Path) -> Result<()> {
        let lowers = self.lowers_of(name)?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.partial",
            out.file_name().unwrap_or_default().to_string_lossy()
        ));
        let f = File::create(&tmp).write_ctx(&tmp)?;
        let f = pack::pack_merged(&lowers, f).map_err(|source| Error::Pack {
            path: out.to_owned(),
            source,
        })?;
        f.sync_all().write_ctx(&tmp)?;
        std::fs::rename(&tmp, out).write_ctx(out)
    }
}

fn descriptor(
    mt: MediaType,
    digest: &str,
    size: u64,
    tag: Option<&str>,
) -> oci_spec::image::Descriptor {
    let mut b = DescriptorBuilder::default()
        .media_type(mt)
        .digest(
            digest
                .parse::<oci_spec::image::Digest>()
                .expect("sha256 digests parse"),
        )
        .size(size);
    if let Some(t) = tag {
        b = b.annotations(
            [(REF_NAME.to_owned(), t.to_owned())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    b.build().expect("descriptors build")
}

/// Packs a layer tree as a gzip blob in `blobs`; returns its digest, size and diffID.
fn pack_gzip_blob(root: &Path, blobs: &Path) -> Result<(String, u64, String)> {
    let tmp: PathBuf = blobs.join(".partial");
    let f = File::create(&tmp).write_ctx(&tmp)?;
    let outer = HashingWriter::new(f);
    let gz = flate2::write::GzEncoder::new(outer, flate2::Compression::fast());
    let inner = HashingWriter::new(gz);
    let pack_err = |source| Error::Pack {
        path: root.to_owned(),
        source,
    };
    let inner = pack::pack_layer(root, inner).map_err(pack_err)?;
    let (gz, diff_id, _) = inner.finish();
    let mut outer = gz.finish().map_err(pack_err)?;
    outer.flush().map_err(pack_err)?;
    let (_, digest, size) = outer.finish();
    let dest = blobs.join(&digest[7..]);
    std::fs::rename(&tmp, &dest).write_ctx(&dest)?;
    Ok((digest, size, diff_id))
}
