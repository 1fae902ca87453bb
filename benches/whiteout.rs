//! Decoding whiteouts: the AUFS name check every listed name goes through, and a merged
//! listing of a directory where half the lower names are whited out in either format.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use unionfs::layer_index::Layers;
use unionfs::whiteout;

fn names(c: &mut Criterion) {
    let names: Vec<OsString> = (0..1000)
        .map(|i| match i % 3 {
            0 => OsString::from(format!(".wh.name-{i}")),
            1 => OsString::from(".wh..wh..opq"),
            _ => OsString::from(format!("plain-name-{i}")),
        })
        .collect();
    c.bench_function("whiteout/aufs_hidden_name x1000", |b| {
        b.iter(|| {
            names
                .iter()
                .filter(|n| whiteout::aufs_hidden_name(n).is_some())
                .count()
        })
    });
}

fn listing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    std::fs::create_dir_all(top.join("d")).expect("dir");
    std::fs::create_dir_all(bottom.join("d")).expect("dir");
    for i in 0..1000 {
        std::fs::write(bottom.join(format!("d/f{i}")), b"x").expect("file");
        if i % 2 == 0 {
            std::fs::write(top.join(format!("d/.wh.f{i}")), b"").expect("whiteout");
        }
    }
    let layers = Layers::open(None, &[top, bottom]).expect("layers");
    let (_, root) = layers.root_view().expect("root");
    let d = layers.resolve(&root, OsStr::new("d")).expect("d");
    let view = d.dir_view(PathBuf::from("d"));
    c.bench_function("whiteout/list 1000 names, 500 whited out", |b| {
        b.iter(|| {
            let l = layers.list(&view).expect("list");
            assert_eq!(l.len(), 500);
        })
    });
}

criterion_group!(benches, names, listing);
criterion_main!(benches);
