//! Name resolution against stacks of 1, 10 and 100 lower layers, with and without the
//! per-layer name index, and the cost of building and loading a 100,000-entry index.
//!
//! The index's promise is that a lookup costs the same whatever the depth of the stack:
//! compare `resolve/indexed/*` across depths, and each against `resolve/plain/*`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use unionfs::layer_index::index::LayerIndex;
use unionfs::layer_index::Layers;

/// `n` lower layers of `per_layer` files each; `deep` exists only in the bottom layer.
fn stack(dir: &Path, n: usize, per_layer: usize) -> Vec<PathBuf> {
    let mut lowers = Vec::new();
    for l in 0..n {
        let root = dir.join(format!("l{l}"));
        std::fs::create_dir_all(root.join("etc")).expect("layer");
        for f in 0..per_layer {
            std::fs::write(root.join(format!("etc/f{l}-{f}")), b"x").expect("file");
        }
        if l == n - 1 {
            std::fs::write(root.join("etc/deep"), b"bottom").expect("file");
        }
        lowers.push(root);
    }
    lowers
}

fn resolve(c: &mut Criterion) {
    let mut g = c.benchmark_group("resolve");
    for n in [1, 10, 100] {
        let dir = tempfile::tempdir().expect("tempdir");
        let lowers = stack(dir.path(), n, 50);
        let plain = Layers::open(None, &lowers).expect("layers");
        let indexed = Layers::open(None, &lowers).expect("layers");
        indexed.index_now(None);
        for (kind, layers) in [("plain", &plain), ("indexed", &indexed)] {
            let (_, root) = layers.root_view().expect("root");
            let etc = layers.resolve(&root, OsStr::new("etc")).expect("etc");
            let view = etc.dir_view(PathBuf::from("etc"));
            g.bench_with_input(
                BenchmarkId::new(format!("{kind}/bottom-only"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let r = layers.resolve(&view, OsStr::new("deep")).expect("resolve");
                        assert!(r.exists());
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{kind}/missing"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let r = layers
                            .resolve(&view, OsStr::new("nothing"))
                            .expect("resolve");
                        assert!(!r.exists());
                    })
                },
            );
        }
    }
    g.finish();
}

fn build_and_load(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("layer");
    for d in 0..100 {
        let sub = root.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).expect("dir");
        for f in 0..1000 {
            std::fs::write(sub.join(format!("file-{f}")), b"").expect("file");
        }
    }
    let cache = dir.path().join("cache");
    let id = LayerIndex::identity(&root).expect("identity");
    let idx = LayerIndex::build(&root).expect("build");
    assert!(idx.len() > 100_000);
    idx.save(&cache, &id).expect("save");

    let mut g = c.benchmark_group("index-100k");
    g.sample_size(10);
    g.bench_function("build", |b| {
        b.iter(|| LayerIndex::build(&root).expect("build"))
    });
    g.bench_function("load", |b| {
        b.iter(|| LayerIndex::load(&cache, &id).expect("load"))
    });
    g.finish();
}

criterion_group!(benches, resolve, build_and_load);
criterion_main!(benches);
