//! The few raw system calls that have no safe wrapper in `nix` or `std`.
//!
//! Every `unsafe` block of the crate lives below this module, each with a `// SAFETY:` note, so
//! that reviewing memory safety means reading these files only. The wrappers take paths as
//! `&Path` and return `nix::Result`, keeping errno intact for the FUSE layer to pass on.
#![allow(unsafe_code)]

pub mod caps;
pub mod fileattr;
pub mod fuse_ring;
pub mod io;
pub mod ns;
pub mod passthrough;
pub mod process;
pub mod stat;
pub mod tty;
pub mod xattr;
