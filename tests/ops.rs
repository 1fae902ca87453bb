//! Operation tests: every system call a program expects from the union, run against kernel
//! overlayfs (`redirect_dir=on,index=on`, the reference that validates each expectation) and
//! against unionfs over overlay-format and over AUFS/OCI-format lower layers.
//!
//! Each test is written once over a target (see `ops/harness.rs`); `UNIONFS_OPS_TARGETS`
//! narrows the targets (e.g. `kernel` or `unionfs-aufs`), all of them by default.

mod common;

#[path = "ops/edges.rs"]
mod edges;
#[path = "ops/harness.rs"]
mod harness;
#[path = "ops/inodes.rs"]
mod inodes;
#[path = "ops/io.rs"]
mod io;
#[path = "ops/lookup.rs"]
mod lookup;
#[path = "ops/meta.rs"]
mod meta;
#[path = "ops/namespace.rs"]
mod namespace;
#[path = "ops/users.rs"]
mod users;
