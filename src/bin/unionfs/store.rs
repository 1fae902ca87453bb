//! The image-store commands (`import`, `images`, `rmi`, `layers`, `commit`, `export`, `diff`,
//! `which`, `inspect`, `containers`, `rm`) and the image form of `mount`: argument parsing and
//! printing only; the work is in [`unionfs::store`].
//!
//! It must never hold logic worth testing on its own, and never touch a store other than the
//! one `--root` / `UNIONFS_ROOT` chose.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use unionfs::store::{self, Progress, Store};

use crate::MountArgs;

/// The subcommands this module adds to `unionfs` (their names, for `normalize_args`).
pub(crate) const NAMES: &[&str] = &[
    "import",
    "images",
    "rmi",
    "layers",
    "commit",
    "export",
    "diff",
    "which",
    "inspect",
    "containers",
    "rm",
    "--root",
];

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub(crate) enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct FormatArg {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Import an OCI image layout (DIR[:TAG] or archive), a docker save archive or a layer tar
    Import {
        /// PATH or PATH:TAG (the tag picks the image in an OCI layout, as umoci and skopeo name it)
        source: PathBuf,
        /// NAME[:TAG] for the image [default: the name the source gives it, or the file name]
        name: Option<String>,
    },
    /// List the images in the store
    Images(FormatArg),
    /// Remove an image; layers no other image uses are freed
    Rmi { name: String },
    /// List an image's layers, top-most first (like docker history)
    Layers {
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Record an upper directory (or a container) as a new layer on top of its image
    Commit {
        /// A container id, its mountpoint, or an upper directory (then --from names the image)
        target: PathBuf,
        /// NAME[:TAG] of the new image
        name: String,
        /// The image the upper directory was mounted on
        #[arg(long, value_name = "IMAGE")]
        from: Option<String>,
    },
    /// Write an image as an OCI image layout, or (--flat) its merged tree as one tar
    Export {
        name: String,
        out: PathBuf,
        /// One tar of the merged tree instead of an OCI layout
        #[arg(long)]
        flat: bool,
    },
    /// List what an upper directory or container changed (A added, C changed, D deleted)
    Diff {
        target: PathBuf,
        /// The image it sits on, for a plain upper directory
        #[arg(long, value_name = "IMAGE")]
        from: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Which layer provides PATH, which it shadows, and which whites it out
    Which {
        name: String,
        path: PathBuf,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Per-layer trees with added/modified/deleted marks, sizes and wasted space
    Inspect {
        name: String,
        /// Only this layer (0 is the base)
        #[arg(long, value_name = "N")]
        layer: Option<usize>,
        /// Only this subtree
        path: Option<PathBuf>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List the containers (writable layers of image mounts)
    Containers(FormatArg),
    /// Remove a container and its writable layer (it must not be mounted)
    Rm { container: PathBuf },
}

fn open(root: Option<&Path>) -> Result<Store> {
    let r = Store::root_from(root);
    Store::open(&r).with_context(|| format!("cannot open the image store {}", r.display()))
}

fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn run(cmd: StoreCommand, root: Option<&Path>) -> Result<()> {
    let store = open(root)?;
    match cmd {
        StoreCommand::Import { source, name } => import(&store, &source, name.as_deref()),
        StoreCommand::Images(f) => images(&store, f.format),
        StoreCommand::Rmi { name } => {
            let freed = store.remove_image(&name)?;
            println!("removed {name} ({} layers freed)", freed.len());
            Ok(())
        }
        StoreCommand::Layers { name, format } => layers(&store, &name, format.format),
        StoreCommand::Commit { target, name, from } => {
            let t = store.target(&target)?;
            let base = match (from, &t.container) {
                (Some(f), _) => f,
                (None, Some(c)) => c.image.clone(),
                (None, None) => bail!(store::Error::UnknownBase { path: t.upper }),
            };
            let note = format!("unionfs commit {}", target.display());
            let key = store.commit_upper(&t.upper, &base, &name, &note)?;
            println!("{key}");
            Ok(())
        }
        StoreCommand::Export { name, out, flat } => {
            if flat {
                store.export_flat(&name, &out)?;
            } else {
                store.export_oci(&name, &out)?;
            }
            Ok(())
        }
        StoreCommand::Diff {
            target,
            from,
            format,
        } => diff(&store, &target, from, format.format),
        StoreCommand::Which { name, path, format } => which(&store, &name, &path, format.format),
        StoreCommand::Inspect {
            name,
            layer,
            path,
            format,
        } => inspect(&store, &name, layer, path.as_deref(), format.format),
        StoreCommand::Containers(f) => containers(&store, f.format),
        StoreCommand::Rm { container } => {
            let c = store.remove_container(&container)?;
            println!("removed container {}", c.id);
            Ok(())
        }
    }
}

fn import(store: &Store, source: &Path, name: Option<&str>) -> Result<()> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        b
    });
    let progress = |p: Progress| {
        let Some(b) = &bar else { return };
        match p {
            Progress::Layer { index, count, size } => {
                b.set_position(0);
                b.set_length(size.unwrap_or(0));
                b.set_message(format!("layer {index}/{count}"));
            }
            Progress::Bytes(n) => b.inc(n),
        }
    };
    let result = store.import(source, name, &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let key = result?;
    println!("{key}");
    Ok(())
}

fn short(digest: &str) -> &str {
    digest.get(7..19).unwrap_or(digest)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn images(store: &Store, format: Format) -> Result<()> {
    let imgs = store.images()?;
    if let Format::Json = format {
        let rows: Vec<_> = imgs
            .iter()
            .map(|(n, r)| {
                serde_json::json!({"name": n, "id": r.id, "layers": r.diff_ids(),
                    "source": r.source, "added": r.added})
            })
            .collect();
        return json(&rows);
    }
    println!(
        "{:<30} {:<12} {:>6} {:>10}  ADDED",
        "NAME", "ID", "LAYERS", "SIZE"
    );
    for (name, r) in imgs {
        let size: u64 = r
            .diff_ids()
            .iter()
            .filter_map(|d| store.layer_meta(d).ok())
            .map(|m| m.stats.tar_size)
            .sum();
        println!(
            "{name:<30} {:<12} {:>6} {:>10}  {}",
            short(&r.id),
            r.diff_ids().len(),
            human(size),
            r.added
        );
    }
    Ok(())
}

fn layers(store: &Store, name: &str, format: Format) -> Result<()> {
    let rows = store.layer_rows(name)?;
    if let Format::Json = format {
        return json(&rows);
    }
    println!(
        "{:>3} {:<12} {:>10} {:>7}  CREATED BY",
        "N", "DIFF ID", "SIZE", "FILES"
    );
    for r in rows {
        println!(
            "{:>3} {:<12} {:>10} {:>7}  {}",
            r.index,
            short(&r.diff_id),
            human(r.size),
            r.files,
            r.created_by.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn diff(store: &Store, target: &Path, from: Option<String>, format: Format) -> Result<()> {
    let t = store.target(target)?;
    let base = match (from, &t.container) {
        (Some(f), _) => f,
        (None, Some(c)) => c.image.clone(),
        (None, None) => bail!(store::Error::UnknownBase { path: t.upper }),
    };
    let lowers = store.lowers_of(&base)?;
    let lines = store.diff_upper(&t.upper, &lowers)?;
    if let Format::Json = format {
        return json(&lines);
    }
    let mut out = std::io::stdout().lock();
    for l in lines {
        use std::io::Write;
        out.write_all(format!("{} ", l.kind).as_bytes())?;
        out.write_all(l.path.as_os_str().as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn which(store: &Store, name: &str, path: &Path, format: Format) -> Result<()> {
    let rows = store.which(name, path)?;
    if let Format::Json = format {
        return json(&rows);
    }
    for r in rows {
        let role = serde_json::to_value(r.role)?;
        println!(
            "layer {:>2} {:<12} {:<10} {}{}",
            r.index,
            short(&r.diff_id),
            role.as_str().unwrap_or(""),
            r.kind.unwrap_or(""),
            r.size.map(|s| format!(" {}", human(s))).unwrap_or_default()
        );
    }
    Ok(())
}

fn inspect(
    store: &Store,
    name: &str,
    layer: Option<usize>,
    path: Option<&Path>,
    format: Format,
) -> Result<()> {
    let layers = store.inspect(name, layer, path)?;
    if let Format::Json = format {
        return json(&layers);
    }
    let total: u64 = layers.iter().map(|l| l.wasted).sum();
    for l in &layers {
        println!(
            "layer {} {} wasted {}  {}",
            l.index,
            short(&l.diff_id),
            human(l.wasted),
            l.created_by.as_deref().unwrap_or("")
        );
        for e in &l.entries {
            println!(
                "  {} {:>9} {}{}{}",
                e.mark,
                if e.kind == "file" {
                    human(e.size)
                } else {
                    e.kind.to_owned()
                },
                e.path.display(),
                if e.opaque { " (opaque)" } else { "" },
                if e.hidden { " (hidden above)" } else { "" },
            );
        }
    }
    println!("wasted space: {}", human(total));
    Ok(())
}

fn containers(store: &Store, format: Format) -> Result<()> {
    let all = store.containers()?;
    if let Format::Json = format {
        return json(&all);
    }
    println!("{:<12} {:<30} MOUNTPOINT", "ID", "IMAGE");
    for c in all {
        let m = if store::is_mounted(&c.mountpoint) {
            ""
        } else {
            " (not mounted)"
        };
        println!("{:<12} {:<30} {}{m}", c.id, c.image, c.mountpoint.display());
    }
    Ok(())
}

/// `unionfs mount IMAGE MNT` and `unionfs mount --image IMAGE MNT`: fills in the lowers from
/// the store and a container's upper and work directories. Every other form passes through.
pub(crate) fn resolve_mount(mut args: MountArgs, root: Option<&Path>) -> Result<MountArgs> {
    let has_lowers = args.lower.is_some()
        || args
            .options
            .iter()
            .any(|o| o.as_bytes().windows(8).any(|w| w == b"lowerdir"));
    let image = match (args.image.take(), &args.source) {
        (Some(i), _) => i,
        (None, Some(src)) if !has_lowers && !Path::new(src).is_dir() => {
            src.to_string_lossy().into_owned()
        }
        _ => return Ok(args),
    };
    let store = open(root)?;
    let lowers = store.lowers_of(&image)?;
    let mut lower = OsString::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            lower.push(":");
        }
        lower.push(escape_layer(l));
    }
    args.lower = Some(lower);
    args.source = None;
    if args.upper.is_none() {
        let c = store.container_for_mount(&image, &args.mountpoint)?;
        eprintln!("unionfs: container {} (upper {})", c.id, c.upper.display());
        args.upper = Some(c.upper);
        args.work = Some(c.work);
    }
    Ok(args)
}

/// Escapes `\`, `:` and `,` as overlayfs's lowerdir wants.
fn escape_layer(p: &Path) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    for b in p.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(*b);
    }
    OsString::from_vec(out)
}
