//! unionfs: a userspace union filesystem with kernel-overlayfs semantics.
//!
//! A stack of immutable lower layers plus one writable upper directory is presented as a single
//! tree through FUSE. The crate is layered so that each part depends only on the ones below it:
//! `fs` (FUSE glue) → `cow` (copy-up) and `whiteout` (on-disk markers) → `layer_index` (which
//! layer holds a name; merged listings) → `sys` (the few raw syscalls, all `unsafe` lives there).
//! `config` describes a mount and is shared by the library and the command line.
#![deny(unsafe_code)]

pub mod config;
pub mod cow;
pub mod fs;
pub mod layer_index;
pub mod run;
pub mod store;
pub mod sys;
pub mod whiteout;
