//! The stack of layers and name resolution over it: which layer holds a name, what is whited
//! out, what is opaque, what a merged directory lists, and each object's stable inode number.
//!
//! This is pure logic over directory entries: no FUSE types. Every lookup and listing of the
//! filesystem goes through [`Layers::resolve`] and [`Layers::list`] (or its cheaper
//! [`Layers::list_shallow`]), so that a faster index (one lookup instead of one per layer) can
//! replace their insides without touching the callers.
//!
//! Lower layers are immutable: a lower location `(layer, path)` found once stays valid for the
//! life of the mount. Only the upper changes, and only through this daemon.

pub mod index;
mod ino;
mod loader;
mod root;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

use crate::whiteout::{self, XattrNs};

use index::LayerIndex;
pub use ino::{origin_of, set_origin, InoMapper, ORIGIN_XATTR_SUFFIX};
use loader::{Indexes, Presence};
pub use root::{LayerPath, LayerRoot};

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub root: PathBuf,
    pub dev: u64,
    /// The root's attributes when the layer was opened: for a lower layer, for good.
    st: FileStat,
    /// The root, held open so that paths inside the layer can be short (see [`LayerRoot`]).
    base: LayerRoot,
    /// Whether the layer's directory entries tell what stat would of their objects' type and
    /// number: the layer is on a local file system whose entries carry `d_type`, with one
    /// device for every object and `d_ino` equal to `st_ino` (not so on overlayfs, btrfs with
    /// subvolumes, or network file systems). Only then is a lower name listed from its entry.
    entries_exact: bool,
}

/// `statfs` types of the file systems whose directory entries are exact (see
/// [`Layer::entries_exact`]): ext2/3/4, XFS, tmpfs.
const EXACT_ENTRY_FS: [libc::c_long; 3] = [0xEF53, 0x5846_5342, 0x0102_1994];

impl Layer {
    /// Opens the layer rooted at `root` (which must be a directory).
    pub fn open(root: &Path) -> nix::Result<Layer> {
        Layer::open_held(root, None)
    }

    /// [`Layer::open`], using `held` (the root already open, see [`LayerRoot::held`]) if given.
    pub fn open_held(root: &Path, held: Option<&Arc<OwnedFd>>) -> nix::Result<Layer> {
        let base = match held {
            Some(fd) => LayerRoot::held(fd.clone()),
            None => LayerRoot::open(root)?,
        };
        let st = base.stat()?;
        let entries_exact = base
            .fs_type()
            .is_ok_and(|t| EXACT_ENTRY_FS.contains(&(t.0 as libc::c_long)));
        Ok(Layer {
            root: root.to_path_buf(),
            dev: st.st_dev,
            st,
            base,
            entries_exact,
        })
    }

    /// Whether this layer's root hides the layers below it (see [`whiteout::is_opaque_root`]).
    fn root_is_opaque(&self) -> bool {
        self.base
            .stat_entry(OsStr::from_bytes(whiteout::AUFS_OPAQUE))
            .is_ok()
    }

    /// The path of `rel` inside this layer, for the daemon's own system calls.
    pub fn join(&self, rel: &Path) -> LayerPath {
        self.base.join(rel)
    }
}

/// A directory of some lower layer that takes part in a merged directory. The lower directories
/// of one merged directory mostly share their path, so it is shared rather than copied: a view
/// of a directory merged from 100 layers is then cheap to take and to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerDir {
    pub layer: usize,
    pub path: Arc<Path>,
}

/// The lower directories of one merged directory, top first. The list is made once, when the
/// directory is resolved, and shared from then on by its node and by every view taken for a
/// lookup in it: taking a view of a directory merged from 100 layers copies no list.
pub type LowerDirs = Arc<[LowerDir]>;

/// What the resolution of a merged directory needs to know about it.
#[derive(Debug, Clone, Default)]
pub struct DirView {
    /// Merged path, which is also its path in the upper layer.
    pub path: PathBuf,
    /// Whether the directory exists in the upper layer.
    pub in_upper: bool,
    /// The lower directories merged into it, top first (empty when opaque).
    pub lowers: LowerDirs,
}

/// The top-most lower object behind a merged name.
#[derive(Debug, Clone)]
pub struct LowerObj {
    pub layer: usize,
    pub path: PathBuf,
    pub st: FileStat,
}

/// A name looked up in a merged directory.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The upper object at the name (never a whiteout).
    pub upper: Option<FileStat>,
    /// The upper holds an overlayfs whiteout at the name, which a new object there replaces.
    /// (An AUFS marker `.wh.<name>` in the upper leaves the name free: nothing is resolved,
    /// and nothing replaced.)
    pub upper_whiteout: bool,
    /// The top-most visible lower object (the copy-up source; for a directory the top lower).
    pub lower: Option<LowerObj>,
    /// For a directory: every lower directory merged into it, top first.
    pub lower_dirs: LowerDirs,
}

impl Resolved {
    /// Whether the name exists in the merged view.
    pub fn exists(&self) -> bool {
        self.upper.is_some() || self.lower.is_some()
    }

    /// The attributes of the object the merged view shows.
    pub fn stat(&self) -> Option<&FileStat> {
        self.upper.as_ref().or(self.lower.as_ref().map(|l| &l.st))
    }

    /// Whether the merged object is a directory.
    pub fn is_dir(&self) -> bool {
        self.stat().is_some_and(is_dir)
    }

    /// The view a directory's children are resolved against.
    pub fn dir_view(&self, path: PathBuf) -> DirView {
        DirView {
            path,
            in_upper: self.upper.is_some(),
            lowers: self.lower_dirs.clone(),
        }
    }
}

/// An entry of a merged directory listing.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub name: OsString,
    pub resolved: Resolved,
}

/// An entry of a merged listing read by [`Layers::list_shallow`].
#[derive(Debug, Clone)]
pub struct ShallowEntry {
    pub name: OsString,
    /// The file type bits of the object shown.
    pub kind: SFlag,
    pub shown: Shown,
}

/// How a [`ShallowEntry`] was settled.
#[derive(Debug, Clone)]
pub enum Shown {
    /// By lower layers' directory entries alone: the object's stable inode number.
    Lower { ino: u64 },
    /// By resolution, as [`Layers::list`] does.
    Resolved(Box<Resolved>),
}

/// The whole stack: an optional writable upper over read-only lowers (top first).
#[derive(Debug)]
pub struct Layers {
    pub upper: Option<Layer>,
    pub lowers: Vec<Layer>,
    pub inos: InoMapper,
    /// The namespace of the origin xattrs this process writes on upper objects (see
    /// [`ino::origin_in`]).
    origin_ns: XattrNs,
    /// Each lower layer's name index, once built or loaded (see [`index`] and [`loader`]).
    indexes: Arc<Indexes>,
}

pub fn lstat(path: &Path) -> nix::Result<FileStat> {
    fstatat(nix::fcntl::AT_FDCWD, path, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn lstat_opt(path: &LayerPath) -> nix::Result<Option<FileStat>> {
    match path.lstat() {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// What one layer shows at one name.
enum Seen {
    Nothing,
    /// An overlayfs whiteout: a character device 0/0 at the name itself.
    Whiteout,
    /// An AUFS/OCI marker `.wh.<name>` beside the name: it hides the name in the layers
    /// below, and leaves the name itself free in this one.
    Marker,
    Object(FileStat),
}

/// The names of one directory, read for a merged listing, with what its entry says of each:
/// resolving a listed name can then skip the stat of names a layer does not have, and a name
/// that only lower layers hold is listed from its entry alone (see [`Layers::list_shallow`]).
type Names = HashMap<OsString, Dent>;

/// What a directory entry says of its object, without a stat.
#[derive(Debug, Clone, Copy)]
struct Dent {
    /// The type (`d_type`), when the file system reports it.
    kind: Option<nix::dir::Type>,
    /// The inode number (`d_ino`).
    ino: u64,
}

/// Looks at `dir/name` in one layer, reading both whiteout formats; an AUFS marker only when
/// `markers` (there are layers below for it to hide). `listed`, when given, is that
/// directory's names as just read.
fn look(dir: &LayerPath, name: &OsStr, listed: Option<&Names>, markers: bool) -> nix::Result<Seen> {
    if whiteout::is_aufs_marker(name) {
        return Ok(Seen::Nothing);
    }
    if let Some(names) = listed {
        if !names.contains_key(name) {
            let marked = markers && names.contains_key(&whiteout::aufs_whiteout_name(name));
            return Ok(if marked { Seen::Marker } else { Seen::Nothing });
        }
    }
    match lstat_opt(&dir.child(name))? {
        Some(st) if whiteout::is_overlay_whiteout(&st) => Ok(Seen::Whiteout),
        Some(st) => Ok(Seen::Object(st)),
        None if !markers => Ok(Seen::Nothing),
        None => match lstat_opt(&dir.child(&whiteout::aufs_whiteout_name(name))) {
            Ok(Some(_)) => Ok(Seen::Marker),
            // No marker can exist for a name too long to carry the `.wh.` prefix.
            Ok(None) | Err(Errno::ENAMETOOLONG) => Ok(Seen::Nothing),
            Err(e) => Err(e),
        },
    }
}

/// A redirect read from a directory: where lower layers keep its contents.
enum Redirect {
    /// The same parent, another name.
    Name(OsString),
    /// A path from every lower layer's root.
    Absolute(PathBuf),
}

fn parse_redirect(v: Vec<u8>) -> Option<Redirect> {
    if v.first() == Some(&b'/') {
        let rel = v
            .iter()
            .position(|b| *b != b'/')
            .map_or(&[][..], |i| &v[i..]);
        Some(Redirect::Absolute(PathBuf::from(OsStr::from_bytes(rel))))
    } else if v.contains(&b'/') || v.is_empty() {
        None
    } else {
        Some(Redirect::Name(OsString::from(OsStr::from_bytes(&v))))
    }
}

impl Layers {
    /// Opens the layers. `lowers` are top-most first.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> nix::Result<Layers> {
        let lowers = lowers.iter().map(|l| (l.as_path(), None));
        Layers::open_each(upper.map(|u| (u, None)), lowers).map_err(|(_, e)| e)
    }

    /// [`Layers::open`], each root given with its descriptor if it is already open (see
    /// [`Layer::open_held`]), naming the layer that could not be opened.
    pub fn open_each<'a>(
        upper: Option<(&Path, Option<&Arc<OwnedFd>>)>,
        lowers: impl Iterator<Item = (&'a Path, Option<&'a Arc<OwnedFd>>)>,
    ) -> Result<Layers, (PathBuf, Errno)> {
        let open = |(p, held): (&Path, Option<&Arc<OwnedFd>>)| {
            Layer::open_held(p, held).map_err(|e| (p.to_path_buf(), e))
        };
        let upper = upper.map(open).transpose()?;
        let lowers = lowers.map(open).collect::<Result<Vec<_>, _>>()?;
        let devs = upper.iter().chain(lowers.iter()).map(|l| l.dev);
        let inos = InoMapper::new(devs);
        let indexes = Arc::new(Indexes::new(lowers.len()));
        Ok(Layers {
            upper,
            lowers,
            inos,
            origin_ns: XattrNs::for_current_user(),
            indexes,
        })
    }

    /// Loads or builds the lower layers' name indexes in a background thread, saving them in
    /// `dir` (see `loader.rs`). Lookups wait briefly for the saved ones, and use plain system
    /// calls for a layer whose index is not ready.
    pub fn start_indexing(&self, dir: Option<PathBuf>) {
        let layers = self
            .lowers
            .iter()
            .map(|l| (l.root.clone(), l.base.clone(), l.st))
            .collect();
        self.indexes.start(layers, dir, loader::WAIT_FOR_SAVED);
    }

    /// Builds the indexes now, in this thread (for tests and benchmarks).
    pub fn index_now(&self, dir: Option<&Path>) {
        for (i, l) in self.lowers.iter().enumerate() {
            let id = LayerIndex::identity(&l.root).ok();
            self.indexes
                .set(i, LayerIndex::load_or_build(&l.root, id, dir));
        }
        self.indexes.build_presence();
    }

    /// What lower layer `layer` holds at `rel`, per its index: `None` when not indexed (yet).
    fn indexed(&self, layer: usize, rel: &Path) -> Option<u8> {
        self.indexed_key(layer, index::key(rel))
    }

    /// [`Layers::indexed`] by the path's key, for callers asking many layers about one path.
    fn indexed_key(&self, layer: usize, key: u64) -> Option<u8> {
        if self
            .indexes
            .presence()
            .is_some_and(|p| !p.holds(layer, key))
        {
            return Some(0);
        }
        Some(self.indexes.get(layer)?.marks_of(key))
    }

    /// Whether the lower directory `rel` of `layer` is opaque.
    fn lower_opaque(&self, layer: usize, rel: &Path, full: &LayerPath) -> bool {
        match self.indexed(layer, rel) {
            Some(m) if m & index::OPAQUE == 0 => false,
            _ => whiteout::is_opaque_dir(full),
        }
    }

    /// The redirect recorded on the lower directory `rel` of `layer`, if any.
    fn lower_redirect(&self, layer: usize, rel: &Path, full: &LayerPath) -> Option<Redirect> {
        match self.indexed(layer, rel) {
            Some(m) if m & index::REDIRECT == 0 => None,
            _ => whiteout::redirect_of(full).and_then(parse_redirect),
        }
    }

    /// The view of the root directory.
    pub fn root_view(&self) -> nix::Result<(Resolved, DirView)> {
        let upper = match &self.upper {
            Some(u) => Some(u.base.stat()?),
            None => None,
        };
        let opaque = self.upper.as_ref().is_some_and(Layer::root_is_opaque);
        let mut lower_dirs = Vec::new();
        let mut lower = None;
        let root: Arc<Path> = Arc::from(Path::new(""));
        if !opaque {
            for (i, l) in self.lowers.iter().enumerate() {
                let st = l.st;
                lower_dirs.push(LowerDir {
                    layer: i,
                    path: root.clone(),
                });
                if lower.is_none() {
                    lower = Some(LowerObj {
                        layer: i,
                        path: PathBuf::new(),
                        st,
                    });
                }
                if l.root_is_opaque() {
                    break;
                }
            }
        }
        let r = Resolved {
            upper,
            upper_whiteout: false,
            lower,
            lower_dirs: lower_dirs.into(),
        };
        let view = r.dir_view(PathBuf::new());
        Ok((r, view))
    }

    /// Resolves `name` in the merged directory `dir`, upper first, then each lower in turn,
    /// stopping at a whiteout, an opaque directory or a non-directory, and following redirects
    /// of renamed directories (overlayfs's `redirect_dir`).
    pub fn resolve(&self, dir: &DirView, name: &OsStr) -> nix::Result<Resolved> {
        self.resolve_in(dir, name, None)
    }

    /// [`Layers::resolve`], with the names of `dir`'s layer directories when just read.
    fn resolve_in(
        &self,
        dir: &DirView,
        name: &OsStr,
        listed: Option<&Listed>,
    ) -> nix::Result<Resolved> {
        let mut r = Resolved {
            upper: None,
            upper_whiteout: false,
            lower: None,
            lower_dirs: LowerDirs::default(),
        };
        if whiteout::is_aufs_marker(name) {
            return Ok(r);
        }
        // Where the lower layers are to be searched: by default the same name in each lower
        // directory of the parent.
        let mut cands = candidates(
            dir.lowers.iter().map(|d| (d.layer, &d.path)),
            name,
            self.indexes.presence(),
        );
        if let (true, Some(upper)) = (dir.in_upper, &self.upper) {
            let updir = upper.join(&dir.path);
            // A marker hides only what the candidates below would show.
            let names = listed.and_then(|l| l.upper.as_ref());
            match look(&updir, name, names, !cands.is_empty())? {
                Seen::Whiteout => {
                    r.upper_whiteout = true;
                    return Ok(r);
                }
                // Nothing to show, and the name is free: nothing there needs replacing.
                Seen::Marker => return Ok(r),
                Seen::Nothing => {}
                Seen::Object(st) => {
                    let path = updir.child(name);
                    let dir_obj = is_dir(&st);
                    r.upper = Some(st);
                    if !dir_obj || whiteout::is_opaque_dir(&path) {
                        return Ok(r);
                    }
                    if let Some(rd) = whiteout::redirect_of(&path).and_then(parse_redirect) {
                        cands = self.redirected(dir, rd, None);
                    }
                }
            }
        }
        let mut lower_dirs = Vec::new();
        let mut i = 0;
        // Most candidates share one path: hash it once.
        let mut keyed: Option<(Arc<Path>, u64)> = None;
        while i < cands.len() {
            let layer = cands[i].0;
            let key = match &keyed {
                Some((p, k)) if Arc::ptr_eq(p, &cands[i].1) => *k,
                _ => {
                    let k = index::key(&cands[i].1);
                    keyed = Some((cands[i].1.clone(), k));
                    k
                }
            };
            i += 1;
            if self.indexed_key(layer, key) == Some(0) {
                continue;
            }
            let shared = cands[i - 1].1.clone();
            let path = shared.to_path_buf();
            let (parent, name) = split_name(&path);
            let pdir = self.lowers[layer].join(parent);
            let names = listed.and_then(|l| l.lower(layer, &path));
            let seen = look(&pdir, name, names, true)?;
            let st = match seen {
                Seen::Nothing => continue,
                Seen::Whiteout | Seen::Marker => break,
                Seen::Object(st) => st,
            };
            let have_dir = r.is_dir() || !lower_dirs.is_empty();
            if !is_dir(&st) {
                if r.upper.is_none() && r.lower.is_none() {
                    r.lower = Some(LowerObj { layer, path, st });
                }
                break;
            }
            if r.exists() && !have_dir {
                break;
            }
            lower_dirs.push(LowerDir {
                layer,
                path: shared,
            });
            if r.lower.is_none() {
                r.lower = Some(LowerObj {
                    layer,
                    path: path.clone(),
                    st,
                });
            }
            let full = pdir.child(name);
            if self.lower_opaque(layer, &path, &full) {
                break;
            }
            if let Some(rd) = self.lower_redirect(layer, &path, &full) {
                let rest = self.redirected(dir, rd, Some(layer));
                cands.truncate(i);
                cands.extend(rest);
            }
        }
        if r.upper.is_some() && r.lower.as_ref().is_some_and(|l| !is_dir(&l.st)) {
            r.lower = None;
        }
        // Only a directory has any; an empty list stays the default, which allocates nothing.
        if !lower_dirs.is_empty() {
            r.lower_dirs = lower_dirs.into();
        }
        Ok(r)
    }

    /// The lower search list after a redirect found in layer `after` (None: in the upper).
    fn redirected(&self, dir: &DirView, rd: Redirect, after: Option<usize>) -> Vec<Candidate> {
        let below = |l: usize| after.is_none_or(|a| l > a);
        match rd {
            Redirect::Name(n) => candidates(
                dir.lowers
                    .iter()
                    .filter(|d| below(d.layer))
                    .map(|d| (d.layer, &d.path)),
                &n,
                self.indexes.presence(),
            ),
            Redirect::Absolute(p) => {
                let p: Arc<Path> = Arc::from(p.as_path());
                (0..self.lowers.len())
                    .filter(|l| below(*l))
                    .map(|l| (l, p.clone()))
                    .collect()
            }
        }
    }

    /// Whether the top-most lower entry at `name` in `dir` is a real object (not a whiteout):
    /// removing or renaming away such a name must leave a whiteout in the upper.
    pub fn lower_positive(&self, dir: &DirView, name: &OsStr) -> nix::Result<bool> {
        for d in dir.lowers.iter() {
            if self.indexed(d.layer, &d.path.join(name)) == Some(0) {
                continue;
            }
            match look(&self.lowers[d.layer].join(&d.path), name, None, true)? {
                Seen::Nothing => continue,
                Seen::Whiteout | Seen::Marker => return Ok(false),
                Seen::Object(_) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The merged listing of `dir`: every visible name once, resolved, in a stable order
    /// (upper names first, then each lower's new names, each in its directory's order).
    pub fn list(&self, dir: &DirView) -> nix::Result<Vec<ListEntry>> {
        let (order, listed) = self.read_layers(dir)?;
        let mut out = Vec::with_capacity(order.len());
        for name in order {
            let resolved = self.resolve_in(dir, &name, Some(&listed))?;
            if resolved.exists() {
                out.push(ListEntry { name, resolved });
            }
        }
        Ok(out)
    }

    /// [`Layers::list`], resolving only the names that directory entries cannot settle. A
    /// name that only lower layers hold shows the top-most entry at it, with that entry's
    /// type and inode number where the layer's entries are exact (see `Layer`); a marker
    /// above it hides it. What the upper holds or marks,
    /// and an entry that may be a whiteout (a character device) or reports no type, is
    /// resolved as by `list`. A big lower directory is so listed with one `getdents` per layer
    /// instead of a stat per name; the attributes of the few names sent with attributes are
    /// looked up when they are sent.
    pub fn list_shallow(&self, dir: &DirView) -> nix::Result<Vec<ShallowEntry>> {
        let (order, listed) = self.read_layers(dir)?;
        let mut out = Vec::with_capacity(order.len());
        for name in order {
            match self.shown_by_entries(&name, &listed) {
                Some(Some((kind, ino))) => out.push(ShallowEntry {
                    name,
                    kind,
                    shown: Shown::Lower { ino },
                }),
                Some(None) => {}
                None => {
                    let resolved = self.resolve_in(dir, &name, Some(&listed))?;
                    if let Some(st) = resolved.stat() {
                        out.push(ShallowEntry {
                            name,
                            kind: file_type(st),
                            shown: Shown::Resolved(Box::new(resolved)),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// What the entries read into `listed` say of `name`: shown, as the type and mapped inode
    /// number of its top-most lower entry; hidden (`Some(None)`); or not settled by them.
    fn shown_by_entries(&self, name: &OsStr, listed: &Listed) -> Option<Option<(SFlag, u64)>> {
        if let Some(upper) = &listed.upper {
            if upper.contains_key(name) || upper.contains_key(&whiteout::aufs_whiteout_name(name)) {
                return None;
            }
        }
        for (layer, _, names) in &listed.lowers {
            if let Some(dent) = names.get(name) {
                if !self.lowers[*layer].entries_exact {
                    return None;
                }
                let kind = dent_kind(dent.kind?)?;
                return Some(Some((
                    kind,
                    self.inos.map(self.lowers[*layer].dev, dent.ino),
                )));
            }
            if names.contains_key(&whiteout::aufs_whiteout_name(name)) {
                return Some(None);
            }
        }
        Some(None)
    }

    /// Reads the layer directories of `dir`: every name that may show in it, once, in listing
    /// order (a name an AUFS marker hides stands for the marker), and each directory's entries.
    fn read_layers(&self, dir: &DirView) -> nix::Result<(Vec<OsString>, Listed)> {
        let mut order: Vec<OsString> = Vec::new();
        let mut seen: HashMap<OsString, ()> = HashMap::new();
        let mut listed = Listed::default();
        let mut add = |names: &[(OsString, Dent)]| {
            for (n, _) in names {
                let n = match whiteout::aufs_hidden_name(n) {
                    Some(hidden) => hidden.to_os_string(),
                    None if whiteout::is_aufs_marker(n) => continue,
                    None => n.clone(),
                };
                if seen.insert(n.clone(), ()).is_none() {
                    order.push(n);
                }
            }
        };
        if let (true, Some(u)) = (dir.in_upper, &self.upper) {
            let names = read_names(&u.join(&dir.path))?;
            add(&names);
            listed.upper = Some(names.into_iter().collect());
        }
        for d in dir.lowers.iter() {
            let names = read_names(&self.lowers[d.layer].join(&d.path))?;
            add(&names);
            listed
                .lowers
                .push((d.layer, d.path.to_path_buf(), names.into_iter().collect()));
        }
        Ok((order, listed))
    }

    /// The stable inode number of a resolved object (see [`InoMapper`]).
    pub fn ino_of(&self, dir: &DirView, name: &OsStr, r: &Resolved) -> u64 {
        match (&r.upper, &r.lower) {
            (Some(st), Some(l)) if is_dir(st) => self.inos.map(l.st.st_dev, l.st.st_ino),
            (Some(st), _) => {
                let upper = self
                    .upper
                    .as_ref()
                    .expect("an upper object needs an upper layer");
                let path = upper.join(&dir.path.join(name));
                ino::origin_in(&path, self.origin_ns)
                    .unwrap_or_else(|| self.inos.map(st.st_dev, st.st_ino))
            }
            (None, Some(l)) => self.inos.map(l.st.st_dev, l.st.st_ino),
            (None, None) => 0,
        }
    }
}

/// The directory and the last component of a relative path (the root itself for an empty one).
fn split_name(path: &Path) -> (&Path, &OsStr) {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => (Path::new(""), OsStr::new(".")),
    }
}

/// A place to look for a name: a lower layer and the path in it.
type Candidate = (usize, Arc<Path>);

/// `name` in each of the given lower directories. Directories of one merged directory mostly
/// share their path, so the joined path is shared too rather than built per layer. With a
/// presence map, a layer it does not list at that path is left out: on a deep stack most are.
fn candidates<'a>(
    dirs: impl Iterator<Item = (usize, &'a Arc<Path>)>,
    name: &OsStr,
    presence: Option<&Presence>,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut last: Option<(&Arc<Path>, Arc<Path>, Option<loader::Holding>)> = None;
    for (layer, dir) in dirs {
        // Mostly the same shared path as the last: compare the pointers before the names.
        let same = |d: &Arc<Path>| Arc::ptr_eq(d, dir) || d.as_os_str() == dir.as_os_str();
        if last.as_ref().is_none_or(|(d, _, _)| !same(d)) {
            let joined: Arc<Path> = Arc::from(dir.join(name).as_path());
            let held = presence.map(|p| p.layers_holding(index::key(&joined)));
            last = Some((dir, joined, held));
        }
        let (_, joined, held) = last.as_ref().expect("set above");
        if held.is_some_and(|h| !h.contains(layer)) {
            continue;
        }
        out.push((layer, joined.clone()));
    }
    out
}

/// The names of the layer directories of one merged directory, read for its listing.
#[derive(Default)]
struct Listed {
    upper: Option<Names>,
    lowers: Vec<(usize, PathBuf, Names)>,
}

impl Listed {
    /// The names of the directory holding `rel` in lower `layer`, if that directory was read
    /// (a redirect may send resolution elsewhere).
    fn lower(&self, layer: usize, rel: &Path) -> Option<&Names> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        self.lowers
            .iter()
            .find(|(l, p, _)| *l == layer && p == parent)
            .map(|(_, _, n)| n)
    }
}

/// The entries of a directory, without `.` and `..`, in the directory's order.
fn read_names(dir: &LayerPath) -> nix::Result<Vec<(OsString, Dent)>> {
    let (at, rel) = dir.at();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut d = match nix::dir::Dir::openat(at, rel, flags, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            let dent = Dent {
                kind: e.file_type(),
                ino: e.ino(),
            };
            names.push((OsStr::from_bytes(name).to_os_string(), dent));
        }
    }
    Ok(names)
}

/// The file type bits of a directory entry's type; none for a character device (which may be
/// a whiteout).
fn dent_kind(t: nix::dir::Type) -> Option<SFlag> {
    use nix::dir::Type;
    Some(match t {
        Type::Fifo => SFlag::S_IFIFO,
        Type::CharacterDevice => return None,
        Type::Directory => SFlag::S_IFDIR,
        Type::BlockDevice => SFlag::S_IFBLK,
        Type::File => SFlag::S_IFREG,
        Type::Symlink => SFlag::S_IFLNK,
        Type::Socket => SFlag::S_IFSOCK,
    })
}

/// The file type bits of a stat result.
pub fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)
}

#[cfg(test)]
mod tests;
