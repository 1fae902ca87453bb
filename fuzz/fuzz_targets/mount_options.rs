//! `MountConfig::from_options` on arbitrary bytes: an error or a configuration, never a panic;
//! an accepted configuration always names at least one lower layer.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use unionfs::config::MountConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = MountConfig::from_options(OsStr::from_bytes(data)) {
        assert!(
            !cfg.lowers.is_empty(),
            "accepted options without a lower layer"
        );
        assert_eq!(
            cfg.upper.is_some(),
            cfg.work.is_some(),
            "upper without work or back"
        );
    }
});
