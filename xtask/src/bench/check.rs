//! The check that runs before anything is measured: every target must show the same merged
//! tree as kernel overlayfs for every stack the rows use, or the timings would compare
//! different work.
//!
//! It compares names, types and the sizes of files and symlinks (directory sizes differ between
//! filesystems), byte for byte on the names, and on the kernel's view checks what the generator
//! promises (no whiteout shows, the opaque directory hides what is below it).

use super::stacks::{self, StackRef, Stacks};
use super::targets::{Spec, Target};
use super::workloads::{self, Entry, Workload};
use crate::host::{Error, Result};

/// Mounts every stack the rows use on every target and compares the merged trees (names,
/// types, sizes of files and symlinks) with kernel overlayfs's.
pub fn same_trees(targets: &[Target], stacks: &Stacks, rows: &[Workload]) -> Result<()> {
    let mut used: Vec<StackRef> = Vec::new();
    for w in rows {
        if !used.contains(&w.stack) {
            used.push(w.stack);
        }
    }
    for which in used {
        let spec = Spec {
            layers: stacks.layers(which),
            volatile: false,
        };
        let mut reference = None;
        for t in targets {
            let mounted = t.mount(&spec)?;
            let listing = workloads::listing(&mounted.mnt);
            mounted.unmount()?;
            let listing = listing?;
            match &reference {
                None => {
                    sanity(which, &listing)?;
                    println!("{which:?}: {} entries on {}", listing.len(), t.name());
                    reference = Some(listing);
                }
                Some(want) => {
                    compare(want, &listing, t.name())?;
                    println!("{which:?}: {} shows the same tree", t.name());
                }
            }
        }
    }
    Ok(())
}

/// What the generator promises about the merged distro tree, checked on the kernel's view.
fn sanity(which: StackRef, listing: &[Entry]) -> Result<()> {
    let problem = if listing.iter().any(|e| e.kind == 'c') {
        Some("a whiteout shows in the merged view")
    } else if matches!(which, StackRef::Distro)
        && listing.iter().any(|e| {
            e.path
                .starts_with(format!("{}/old", stacks::OPAQUE_DIR).as_bytes())
        })
    {
        Some("the opaque directory shows lower content")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::Unexpected(format!(
            "{which:?} stack, kernel view: {p}"
        ))),
        None => Ok(()),
    }
}

fn compare(want: &[Entry], got: &[Entry], name: &str) -> Result<()> {
    if want == got {
        return Ok(());
    }
    let mut diffs = Vec::new();
    let (mut i, mut j) = (0, 0);
    while (i < want.len() || j < got.len()) && diffs.len() < 10 {
        let (a, b) = (want.get(i), got.get(j));
        match (a, b) {
            (Some(a), Some(b)) if a.path == b.path => {
                if a != b {
                    diffs.push(format!("{}: kernel {a:?}, {name} {b:?}", show(&a.path)));
                }
                i += 1;
                j += 1;
            }
            (Some(a), b) if b.is_none_or(|b| a.path < b.path) => {
                diffs.push(format!("{}: missing on {name}", show(&a.path)));
                i += 1;
            }
            (_, Some(b)) => {
                diffs.push(format!("{}: only on {name}", show(&b.path)));
                j += 1;
            }
            _ => break,
        }
    }
    Err(Error::Unexpected(format!(
        "{name} shows a different tree than kernel overlayfs ({} vs {} entries):\n  {}",
        got.len(),
        want.len(),
        diffs.join("\n  ")
    )))
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: char, size: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            size,
        }
    }

    #[test]
    fn compare_names_each_difference() {
        let want = vec![e("a", 'f', 1), e("b", 'd', 0), e("c", 'f', 3)];
        assert!(compare(&want, &want, "unionfs").is_ok());
        let got = vec![e("a", 'f', 2), e("c", 'f', 3), e("d", 'l', 1)];
        let msg = compare(&want, &got, "unionfs").unwrap_err().to_string();
        assert!(msg.contains("a: kernel"), "{msg}");
        assert!(msg.contains("b: missing on unionfs"), "{msg}");
        assert!(msg.contains("d: only on unionfs"), "{msg}");
    }
}
