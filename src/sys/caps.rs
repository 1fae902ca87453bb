//! Capability sets of a container process: docker's default set, and the two steps that
//! reduce a root process to it (see capabilities(7)).
//!
//! The bounding set must shrink while the process still holds CAP_SETPCAP, that is before it
//! changes uid; the effective, permitted and inheritable sets are set afterwards, since a uid
//! change from root clears them anyway. Nothing here decides *when*: `crate::run` does.

use std::io;

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities docker grants by default (moby's `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

fn to_io(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Drops from the bounding set every capability the kernel knows and `keep` lacks, and clears
/// the ambient set.
pub fn drop_bounding(keep: &[Capability]) -> io::Result<()> {
    let supported = caps::runtime::thread_all_supported();
    for cap in supported {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(to_io)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(to_io)
}

/// Sets the inheritable, permitted and effective sets to `keep` restricted to what is
/// permitted now (after a switch away from uid 0 that is nothing).
pub fn set_sets(keep: &[Capability]) -> io::Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(to_io)?;
    let want: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    caps::set(None, CapSet::Inheritable, &want).map_err(to_io)?;
    caps::set(None, CapSet::Effective, &want).map_err(to_io)?;
    caps::set(None, CapSet::Permitted, &want).map_err(to_io)
}
