//! Copy-up of one 16 MiB lower file through the work directory, with the fsync overlayfs does
//! and without it (`-o volatile`).

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use unionfs::cow::Upper;
use unionfs::layer_index::{lstat, LowerObj};
use unionfs::whiteout::XattrNs;

fn copy_up(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lower = dir.path().join("lower");
    std::fs::create_dir_all(&lower).expect("lower");
    let src = lower.join("big");
    let data: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&src, data).expect("file");
    let obj = LowerObj {
        layer: 0,
        path: "big".into(),
        st: lstat(&src).expect("stat"),
    };
    let mut g = c.benchmark_group("copy-up 16MiB");
    g.sample_size(10);
    for volatile in [false, true] {
        let upper_dir = dir.path().join(format!("upper-{volatile}"));
        let work = dir.path().join(format!("work-{volatile}"));
        std::fs::create_dir_all(&upper_dir).expect("upper");
        std::fs::create_dir_all(&work).expect("work");
        let upper = Upper::new(&upper_dir, &work, XattrNs::User, volatile).expect("upper");
        let name = if volatile { "volatile" } else { "fsync" };
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_file(upper_dir.join("big"));
                },
                |()| {
                    upper
                        .copy_up_file(Path::new("big"), &obj, &src, 42, false)
                        .expect("copy-up")
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, copy_up);
criterion_main!(benches);
