//! The layer stacks the benchmark mounts, generated from a fixed seed so that every run (and
//! every machine) measures the same trees, and cached under `target/bench/stacks/<key>/`, keyed
//! by every parameter, so that a rerun skips the generation.
//!
//! Three kinds: a distro-like five-layer stack ([`Distro`]), the lookup-scaling stacks of 1, 10
//! and 100 layers ([`Layered`]) and a one-layer root filesystem holding the host's static busybox
//! for the container-launch rows ([`Busybox`]). A stack is built in `<key>.tmp/` and renamed
//! into place only when complete, so a half-written stack is never mistaken for a cached one. A
//! cached stack is used as a lower layer of live mounts and must never be written once renamed
//! into place.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::quiet;
use crate::host::{Context, Error, Result};

/// Bumped whenever the generator changes what it writes, so that old caches are not reused.
const GENERATOR_VERSION: u32 = 1;
/// The seed of every stack; fixed so that runs are comparable.
const SEED: u64 = 0x756e_696f_6e66_7321;

/// The directory (relative to the merged root) that the `rm -rf` row removes.
pub const RM_DIR: &str = "usr/share/icons";
/// The big file in the bottom layer, and the directory that holds only it.
pub const BIG_FILE: &str = "opt/images/disk.img";
pub const BIG_DIR: &str = "opt/images";
/// The directory that is opaque in layer 2.
pub const OPAQUE_DIR: &str = "usr/lib/python3/dist-packages/legacy";
/// The merged directory of a [`Layered`] stack, present in every layer.
pub const LAYERED_DIR: &str = "d";
/// A name no layer of a [`Layered`] stack has.
pub const MISSING_NAME: &str = "d/no-such-name";

/// How big the distro stack is.
#[derive(Clone, Copy, Debug)]
pub struct DistroParams {
    /// Files (regular files and symlinks) in the merged view, roughly.
    pub files: usize,
    /// Size of the big file in the bottom layer, in bytes.
    pub big_bytes: u64,
    /// Entries (files and directories) in [`RM_DIR`].
    pub rm_entries: usize,
}

/// A generated distro-like stack: `layers[0]` is the bottom layer, the last one the top.
pub struct Distro {
    pub params: DistroParams,
    pub layers: Vec<PathBuf>,
}

/// A generated stack of `n` layers for the lookup-scaling rows.
pub struct Layered {
    pub n: usize,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// Names (relative to the merged root) that only the bottom layer has.
    pub bottom_only: Vec<String>,
}

/// A one-layer root filesystem: a static busybox with its applets as symlinks.
pub struct Busybox {
    pub layers: Vec<PathBuf>,
}

/// Which stack a row mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackRef {
    Distro,
    Layered(usize),
    Busybox,
}

/// Every stack of a run.
pub struct Stacks {
    pub distro: Distro,
    pub layered: Vec<Layered>,
    pub busybox: Busybox,
}

impl Stacks {
    /// The layer directories of `which`, bottom first.
    pub fn layers(&self, which: StackRef) -> &[PathBuf] {
        match which {
            StackRef::Distro => &self.distro.layers,
            StackRef::Layered(n) => {
                &self
                    .layered
                    .iter()
                    .find(|l| l.n == n)
                    .expect("every layer count in the rows was generated")
                    .layers
            }
            StackRef::Busybox => &self.busybox.layers,
        }
    }
}

/// Names that only the bottom layer of a [`Layered`] stack has.
pub const BOTTOM_ONLY_NAMES: usize = 1000;
/// What every bottom-only file holds.
pub const BOTTOM_ONLY_DATA: &[u8] = b"bottom\n";
/// Files every layer of a [`Layered`] stack adds to the merged directory.
const FILES_PER_LAYER: usize = 20;

/// SplitMix64: a tiny, well-mixed generator; enough for laying out trees deterministically.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Log-uniform in `lo..hi`.
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        (l + u * (h - l)).exp() as u64
    }
}

/// A file size drawn from a distro-like spread: most files under 16 KiB, a tail of larger ones
/// (libraries, images) up to 2 MiB; the mean is about 13 KiB.
fn file_size(rng: &mut Rng) -> u64 {
    let r = rng.below(1000);
    if r < 920 {
        rng.log_uniform(16, 16 << 10)
    } else if r < 995 {
        rng.log_uniform(16 << 10, 256 << 10)
    } else {
        rng.log_uniform(256 << 10, 2 << 20)
    }
}

/// Returns the distro stack for `params`, generating it unless cached.
pub fn distro(root: &Path, params: DistroParams) -> Result<Distro> {
    let key = format!(
        "distro-v{GENERATOR_VERSION}-f{}-b{}-r{}-s{SEED:x}",
        params.files, params.big_bytes, params.rm_entries
    );
    let dir = cached(root, &key, |tmp| DistroWriter::new(tmp, params).write())?;
    let layers = (0..DISTRO_LAYERS)
        .map(|i| dir.join(format!("l{i}")))
        .collect();
    Ok(Distro { params, layers })
}

/// Returns the `n`-layer lookup stack, generating it unless cached.
pub fn layered(root: &Path, n: usize) -> Result<Layered> {
    let key = format!("layered-v{GENERATOR_VERSION}-n{n}-k{BOTTOM_ONLY_NAMES}");
    let dir = cached(root, &key, |tmp| write_layered(tmp, n))?;
    Ok(Layered {
        n,
        layers: (0..n).map(|i| dir.join(format!("l{i}"))).collect(),
        bottom_only: (0..BOTTOM_ONLY_NAMES)
            .map(|i| format!("{LAYERED_DIR}/bottom-{i:05}"))
            .collect(),
    })
}

/// `root/key` if it exists, else builds it with `build` in `root/key.tmp` and renames it.
fn cached(root: &Path, key: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = root.join(key);
    if dir.is_dir() {
        println!("stack {key}: cached");
        return Ok(dir);
    }
    let tmp = root.join(format!("{key}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).context(|| format!("remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).context(|| format!("create {}", tmp.display()))?;
    println!("stack {key}: generating");
    let start = std::time::Instant::now();
    build(&tmp)?;
    fs::rename(&tmp, &dir).context(|| format!("rename {} into place", tmp.display()))?;
    println!(
        "stack {key}: generated in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// Where Debian's busybox-static installs the binary (`cargo xtask test` installs it, as
/// tests/run.rs needs it too).
const BUSYBOX: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];
/// The applets linked into the busybox root, as `bin/NAME -> busybox`.
const BUSYBOX_APPLETS: [&str; 4] = ["sh", "true", "cat", "ls"];

/// Returns the busybox root, copying the host's static busybox unless cached. The key holds
/// the binary's size and modification time, so that an upgraded busybox makes a new stack.
pub fn busybox(root: &Path) -> Result<Busybox> {
    let bin = BUSYBOX
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Host(
                "no static busybox in /bin or /usr/bin (apt-get install busybox-static)".into(),
            )
        })?;
    let meta = fs::metadata(bin).context(|| format!("stat {}", bin.display()))?;
    let key = format!(
        "busybox-v{GENERATOR_VERSION}-{}-{}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    );
    let dir = cached(root, &key, |tmp| write_busybox(tmp, bin))?;
    Ok(Busybox {
        layers: vec![dir.join("l0")],
    })
}

/// `l0/bin/busybox` with its applets, and the empty directories a root needs.
fn write_busybox(root: &Path, bin: &Path) -> Result<()> {
    let layer = root.join("l0");
    for d in ["bin", "etc", "tmp", "proc", "dev", "sys"] {
        let p = layer.join(d);
        fs::create_dir_all(&p).context(|| format!("create {}", p.display()))?;
    }
    let to = layer.join("bin/busybox");
    fs::copy(bin, &to).context(|| format!("copy {} to {}", bin.display(), to.display()))?;
    for a in BUSYBOX_APPLETS {
        symlink("busybox", &layer.join("bin").join(a))?;
    }
    Ok(())
}

const DISTRO_LAYERS: usize = 5;

/// Lays out the distro stack: the bottom layer holds most files, each layer above adds new
/// files, replaces some below and deletes some with overlay whiteouts; layer 2 makes one
/// directory opaque.
struct DistroWriter {
    root: PathBuf,
    params: DistroParams,
    rng: Rng,
    /// Random bytes that file contents are sliced from.
    pool: Vec<u8>,
    /// Regular files of the bottom layer that upper layers may replace or delete.
    replaceable: Vec<String>,
    packages: usize,
}

const POOL_BYTES: usize = 4 << 20;

impl DistroWriter {
    fn new(root: &Path, params: DistroParams) -> DistroWriter {
        let mut rng = Rng::new(SEED);
        let mut pool = Vec::with_capacity(POOL_BYTES);
        while pool.len() < POOL_BYTES {
            pool.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        DistroWriter {
            root: root.to_path_buf(),
            params,
            rng,
            pool,
            replaceable: Vec::new(),
            packages: 0,
        }
    }

    fn write(mut self) -> Result<()> {
        let bottom = self.root.join("l0");
        // The bottom layer holds about 80% of the merged files; the four above add 5% each.
        let rm = self.params.rm_entries;
        let bottom_files = (self.params.files * 4 / 5).saturating_sub(rm);
        self.write_packages(&bottom, bottom_files, true)?;
        self.write_icons(&bottom, rm)?;
        self.write_big(&bottom)?;
        self.write_file(&bottom, &format!("{OPAQUE_DIR}/old/__init__.py"), 1200)?;
        self.write_file(&bottom, &format!("{OPAQUE_DIR}/old/core.py"), 9000)?;
        for layer in 1..DISTRO_LAYERS {
            let dir = self.root.join(format!("l{layer}"));
            fs::create_dir_all(&dir).context(|| format!("create {}", dir.display()))?;
            self.write_packages(&dir, self.params.files / 20, false)?;
            self.write_changes(&dir)?;
            if layer == 2 {
                self.write_opaque(&dir)?;
            }
        }
        Ok(())
    }

    /// Writes packages into `layer` until it holds about `files` files: binaries, libraries,
    /// headers, docs, man pages, locales, config and dpkg metadata, plus symlinks and hard links.
    fn write_packages(&mut self, layer: &Path, files: usize, bottom: bool) -> Result<()> {
        let mut written = 0;
        while written < files {
            let pkg = format!("pkg{:04}", self.packages);
            self.packages += 1;
            written += self.write_package(layer, &pkg, bottom)?;
        }
        Ok(())
    }

    /// One package; returns how many files and symlinks it wrote.
    fn write_package(&mut self, layer: &Path, pkg: &str, bottom: bool) -> Result<usize> {
        let mut paths = vec![
            format!("usr/bin/{pkg}"),
            format!("usr/share/doc/{pkg}/copyright"),
            format!("usr/share/doc/{pkg}/changelog.Debian.gz"),
            format!("usr/share/man/man1/{pkg}.1.gz"),
            format!("var/lib/dpkg/info/{pkg}.list"),
            format!("var/lib/dpkg/info/{pkg}.md5sums"),
        ];
        if self.rng.chance(0.3) {
            paths.push(format!("etc/{pkg}/{pkg}.conf"));
        }
        let libs = self.rng.below(24) as usize;
        for i in 0..libs {
            let sub = self.rng.below(4);
            paths.push(format!("usr/lib/x86_64-linux-gnu/{pkg}/m{sub}/mod{i}.so"));
        }
        let py = if self.rng.chance(0.3) {
            self.rng.below(30) as usize
        } else {
            0
        };
        for i in 0..py {
            paths.push(format!(
                "usr/lib/python3/dist-packages/{pkg}/sub{}/f{i}.py",
                i % 3
            ));
        }
        if self.rng.chance(0.2) {
            for i in 0..self.rng.below(15) {
                paths.push(format!("usr/include/{pkg}/h{i}.h"));
            }
        }
        if self.rng.chance(0.15) {
            for lang in ["de", "fr", "es", "ja", "pt_BR", "zh_CN"] {
                paths.push(format!("usr/share/locale/{lang}/LC_MESSAGES/{pkg}.mo"));
            }
        }
        for p in &paths {
            let size = file_size(&mut self.rng);
            self.write_file(layer, p, size)?;
            if bottom {
                self.replaceable.push(p.clone());
            }
        }
        let mut count = paths.len();
        count += self.write_links(layer, pkg, libs)?;
        Ok(count)
    }

    /// Symlinks for the library soname and an alternative name, and now and then a hard link
    /// of the binary (as coreutils-style multi-call binaries have).
    fn write_links(&mut self, layer: &Path, pkg: &str, libs: usize) -> Result<usize> {
        let mut count = 0;
        if libs > 0 {
            let link = layer.join(format!("usr/lib/x86_64-linux-gnu/lib{pkg}.so.1"));
            symlink(&format!("{pkg}/m0/mod0.so"), &link)?;
            count += 1;
        }
        if self.rng.chance(0.15) {
            let link = layer.join(format!("usr/bin/{pkg}-alt"));
            symlink(pkg, &link)?;
            count += 1;
        }
        if self.rng.chance(0.05) {
            let from = layer.join(format!("usr/bin/{pkg}"));
            let to = layer.join(format!("usr/bin/{pkg}.hardlink"));
            fs::hard_link(&from, &to).context(|| format!("link {}", to.display()))?;
            count += 1;
        }
        Ok(count)
    }

    /// The `rm -rf` directory: icon themes, `entries` files and directories, all small.
    fn write_icons(&mut self, layer: &Path, entries: usize) -> Result<()> {
        let sizes = [
            "16x16", "22x22", "24x24", "32x32", "48x48", "64x64", "scalable",
        ];
        let mut made = 0;
        'themes: for theme in 0.. {
            for size in sizes {
                for cat in ["apps", "actions", "devices", "mimetypes"] {
                    if made >= entries {
                        break 'themes;
                    }
                    let dir = format!("{RM_DIR}/theme{theme}/{size}/{cat}");
                    made += 1;
                    for i in 0..60.min(entries - made) {
                        let size = self.rng.log_uniform(200, 6000);
                        self.write_file(layer, &format!("{dir}/icon{i}.png"), size)?;
                        made += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The big file, written in 1 MiB pieces of the random pool (never sparse: it must be read
    /// from disk and copied for real).
    fn write_big(&mut self, layer: &Path) -> Result<()> {
        let path = layer.join(BIG_FILE);
        create_parent(&path)?;
        let mut f = fs::File::create(&path).context(|| format!("create {}", path.display()))?;
        let mut left = self.params.big_bytes;
        while left > 0 {
            let n = left.min(1 << 20) as usize;
            let off = self.rng.below((POOL_BYTES - n) as u64 + 1) as usize;
            f.write_all(&self.pool[off..off + n])
                .context(|| format!("write {}", path.display()))?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Replaces about 2% of the bottom layer's files and deletes about 0.5% with whiteouts.
    fn write_changes(&mut self, layer: &Path) -> Result<()> {
        let n = self.replaceable.len() as u64;
        let mut seen = HashSet::new();
        for _ in 0..self.params.files / 50 {
            let p = self.replaceable[self.rng.below(n) as usize].clone();
            if seen.insert(p.clone()) {
                let size = file_size(&mut self.rng);
                self.write_file(layer, &p, size)?;
            }
        }
        for _ in 0..self.params.files / 200 {
            let p = self.replaceable[self.rng.below(n) as usize].clone();
            if seen.insert(p.clone()) {
                whiteout(&layer.join(&p))?;
            }
        }
        Ok(())
    }

    /// Layer 2 replaces [`OPAQUE_DIR`] with an opaque directory of its own.
    fn write_opaque(&mut self, layer: &Path) -> Result<()> {
        self.write_file(layer, &format!("{OPAQUE_DIR}/__init__.py"), 300)?;
        self.write_file(layer, &format!("{OPAQUE_DIR}/new.py"), 4000)?;
        let dir = layer.join(OPAQUE_DIR);
        let mut cmd = Command::new("setfattr");
        cmd.args(["-n", "trusted.overlay.opaque", "-v", "y"])
            .arg(&dir);
        quiet(&mut cmd)
    }

    fn write_file(&mut self, layer: &Path, rel: &str, size: u64) -> Result<()> {
        let path = layer.join(rel);
        create_parent(&path)?;
        let n = size as usize;
        let off = self.rng.below((POOL_BYTES - n) as u64 + 1) as usize;
        fs::write(&path, &self.pool[off..off + n])
            .context(|| format!("write {}", path.display()))?;
        if rel.starts_with("usr/bin/") {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .context(|| format!("chmod {}", path.display()))?;
        }
        Ok(())
    }
}

/// Every layer has [`LAYERED_DIR`] with a few files of its own; the bottom layer also has the
/// names the "first stat" row looks up, so that each lookup passes every layer.
fn write_layered(root: &Path, n: usize) -> Result<()> {
    for layer in 0..n {
        let dir = root.join(format!("l{layer}")).join(LAYERED_DIR);
        fs::create_dir_all(&dir).context(|| format!("create {}", dir.display()))?;
        for i in 0..FILES_PER_LAYER {
            let p = dir.join(format!("layer{layer:03}-{i:02}"));
            fs::write(&p, format!("layer {layer} file {i}\n"))
                .context(|| format!("write {}", p.display()))?;
        }
        if layer == 0 {
            for i in 0..BOTTOM_ONLY_NAMES {
                let p = dir.join(format!("bottom-{i:05}"));
                fs::write(&p, BOTTOM_ONLY_DATA).context(|| format!("write {}", p.display()))?;
            }
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().expect("layer paths have a parent");
    fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    create_parent(link)?;
    std::os::unix::fs::symlink(target, link).context(|| format!("symlink {}", link.display()))
}

/// An overlay whiteout (character device 0/0, overlayfs.rst "whiteouts and opaque
/// directories") replacing whatever `path` held; std has no mknod, the command keeps xtask
/// free of libc.
fn whiteout(path: &Path) -> Result<()> {
    create_parent(path)?;
    let _ = fs::remove_file(path);
    let mut cmd = Command::new("mknod");
    cmd.arg(path).args(["c", "0", "0"]);
    quiet(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_sizes_stay_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let s = file_size(&mut a);
            assert!((16..=2 << 20).contains(&s), "{s}");
            file_size(&mut b);
        }
    }
}
