//! `LayerIndex::load` on an arbitrary saved index: an error, never a panic or an abort; an
//! index is accepted only when its trailing sha256 covers the rest of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unionfs::layer_index::index::LayerIndex;

/// The identity the fuzzer's files are loaded under (all zero, so the fuzzer can match it).
const ID: [u8; 32] = [0; 32];

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DIR: std::path::PathBuf = {
            let d = std::env::temp_dir().join(format!("unionfs-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("fuzz scratch dir");
            d
        };
    }
    DIR.with(|dir| {
        let file = dir.join(format!("{}.idx", "00".repeat(32)));
        std::fs::write(&file, data).expect("write the index file");
        if LayerIndex::load(dir, &ID).is_ok() {
            use sha2::Digest;
            let n = data.len() - 32;
            assert!(
                sha2::Sha256::digest(&data[..n])[..] == data[n..],
                "an index without a matching checksum loaded"
            );
        }
    });
});
