//! `LayerIndex::load` on an arbitrary saved index: an error, never a panic or an abort; an
//! index is accepted only when its header carries the format and the identity asked for.
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
            // bincode's standard config: varint format 1, then the 32 identity bytes.
            assert!(
                data.len() >= 33 && data[0] == 1 && data[1..33] == ID,
                "untrusted index loaded"
            );
        }
    });
});
