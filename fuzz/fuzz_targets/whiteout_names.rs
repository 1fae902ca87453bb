//! `aufs_hidden_name` on arbitrary names: the hidden name, when there is one, is the marker
//! minus `.wh.`, never empty and never the opaque marker's; encoding it back gives the marker.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use unionfs::whiteout::{aufs_hidden_name, aufs_whiteout_name};

fuzz_target!(|data: &[u8]| {
    let name = OsStr::from_bytes(data);
    if let Some(hidden) = aufs_hidden_name(name) {
        assert!(!hidden.is_empty());
        assert!(data.starts_with(b".wh."));
        assert_ne!(data, b".wh..wh..opq");
        assert_eq!(aufs_whiteout_name(hidden).as_bytes(), data);
    } else {
        assert!(!data.starts_with(b".wh.") || data == b".wh." || data == b".wh..wh..opq");
    }
});
