//! Resolution and listing over small layer stacks built in a temporary directory. AUFS-format
//! markers and `user.` xattrs need no privilege, so these run anywhere.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::*;

/// One fixture line: in layer `layer` ("upper", "l0" top-most lower, "l1", …) create `path`.
enum Kind {
    Dir,
    File(&'static str),
    /// AUFS whiteout hiding `path`.
    Wh,
    /// AUFS opaque marker in directory `path`.
    Opq,
    /// `user.overlay.redirect` on directory `path`.
    Redirect(&'static str),
}
use Kind::*;

struct Stack {
    _dir: tempfile::TempDir,
    layers: Layers,
    /// The same layers with their name indexes: every answer must be the same.
    indexed: Layers,
}

fn build(n_lowers: usize, lines: &[(&str, &str, Kind)]) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = |l: &str| dir.path().join(l);
    for l in std::iter::once("upper".to_string()).chain((0..n_lowers).map(|i| format!("l{i}"))) {
        std::fs::create_dir(root(&l)).expect("layer dir");
    }
    for (layer, path, kind) in lines {
        let p = root(layer).join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("parent");
        }
        match kind {
            Dir => std::fs::create_dir_all(&p).expect("dir"),
            File(s) => std::fs::write(&p, s).expect("file"),
            Wh => {
                let name = whiteout::aufs_whiteout_name(p.file_name().expect("name"));
                std::fs::write(p.with_file_name(name), "").expect("whiteout");
            }
            Opq => {
                std::fs::create_dir_all(&p).expect("dir");
                std::fs::write(p.join(OsStr::from_bytes(whiteout::AUFS_OPAQUE)), "")
                    .expect("opaque marker")
            }
            Redirect(to) => {
                std::fs::create_dir_all(&p).expect("dir");
                crate::sys::xattr::set(&p, OsStr::new("user.overlay.redirect"), to.as_bytes(), 0)
                    .expect("redirect xattr")
            }
        }
    }
    let lowers: Vec<PathBuf> = (0..n_lowers).map(|i| root(&format!("l{i}"))).collect();
    let layers = Layers::open(Some(&root("upper")), &lowers).expect("open layers");
    let indexed = Layers::open(Some(&root("upper")), &lowers).expect("open layers");
    indexed.index_now(None);
    Stack {
        _dir: dir,
        layers,
        indexed,
    }
}

impl Stack {
    /// The view of merged directory `path`, resolved from the root.
    fn view(&self, path: &str) -> DirView {
        view_in(&self.layers, path)
    }

    fn names(&self, dir: &str) -> Vec<String> {
        let plain = names_in(&self.layers, dir);
        assert_eq!(
            plain,
            names_in(&self.indexed, dir),
            "listing of {dir:?} with an index"
        );
        plain
    }

    /// Content of merged file `path`, or None when it does not exist.
    fn read(&self, path: &str) -> Option<String> {
        let plain = read_in(&self.layers, path);
        assert_eq!(
            plain,
            read_in(&self.indexed, path),
            "{path:?} with an index"
        );
        plain
    }
}

fn view_in(layers: &Layers, path: &str) -> DirView {
    let (_, mut view) = layers.root_view().expect("root");
    for comp in Path::new(path).components() {
        let name = comp.as_os_str();
        let r = layers.resolve(&view, name).expect("resolve");
        assert!(r.is_dir(), "{path} is not a merged directory");
        view = r.dir_view(view.path.join(name));
    }
    view
}

/// The merged listing of `dir`, checking that the shallow listing shows the same names, types
/// and inode numbers.
fn names_in(layers: &Layers, dir: &str) -> Vec<String> {
    let view = view_in(layers, dir);
    let full = layers.list(&view).expect("list");
    let shallow = layers.list_shallow(&view).expect("shallow list");
    assert_eq!(
        full.iter().map(|e| &e.name).collect::<Vec<_>>(),
        shallow.iter().map(|e| &e.name).collect::<Vec<_>>(),
        "shallow listing of {dir:?}"
    );
    for (f, s) in full.iter().zip(&shallow) {
        let st = f.resolved.stat().expect("listed entries exist");
        assert_eq!(s.kind, file_type(st), "type of {dir:?}/{:?}", f.name);
        if let Shown::Lower { ino } = s.shown {
            let want = layers.ino_of(&view, &f.name, &f.resolved);
            assert_eq!(ino, want, "inode number of {dir:?}/{:?}", f.name);
        }
    }
    let mut v: Vec<String> = full
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read_in(layers: &Layers, path: &str) -> Option<String> {
    let p = Path::new(path);
    let dir = p.parent().map_or("", |d| d.to_str().expect("utf-8"));
    let r = layers.resolve(&view_in(layers, dir), p.file_name()?).ok()?;
    let full = match (&r.upper, &r.lower) {
        (Some(_), _) => layers
            .upper
            .as_ref()?
            .join(&Path::new(dir).join(p.file_name()?)),
        (None, Some(l)) => layers.lowers[l.layer].join(&l.path),
        (None, None) => return None,
    };
    std::fs::read_to_string(full).ok()
}

#[test]
fn upper_hides_lower_and_whiteouts_hide_names() {
    let s = build(
        2,
        &[
            ("l1", "a", File("l1")),
            ("l1", "b", File("l1")),
            ("l1", "c", File("l1")),
            ("l1", "e", Dir),
            ("l0", "a", File("l0")),
            ("l0", "b", Wh),
            ("upper", "c", File("up")),
        ],
    );
    assert_eq!(s.names(""), ["a", "c", "e"]);
    assert_eq!(s.read("a").as_deref(), Some("l0"));
    assert_eq!(s.read("b"), None);
    assert_eq!(s.read("c").as_deref(), Some("up"));
}

#[test]
fn directories_merge_until_an_opaque_one() {
    let s = build(
        3,
        &[
            ("l2", "d/deep", File("l2")),
            ("l1", "d/mid", File("l1")),
            ("l1", "d", Opq),
            ("l0", "d/top", File("l0")),
            ("upper", "d/up", File("up")),
        ],
    );
    assert_eq!(
        s.names("d"),
        ["mid", "top", "up"],
        "l2 is below the opaque l1"
    );
    assert_eq!(s.view("d").lowers.len(), 2);
}

#[test]
fn a_non_directory_ends_the_merge_of_a_directory() {
    let s = build(
        2,
        &[("l1", "d", File("file below")), ("l0", "d/x", File("x"))],
    );
    assert_eq!(s.names("d"), ["x"]);
    assert_eq!(s.view("d").lowers.len(), 1);
}

#[test]
fn markers_never_show_and_cannot_be_looked_up() {
    let s = build(
        1,
        &[("l0", "d", Opq), ("l0", "d/f", File("f")), ("l0", "g", Wh)],
    );
    assert_eq!(s.names(""), ["d"]);
    assert_eq!(s.names("d"), ["f"]);
    let root = s.view("");
    let marker = OsStr::from_bytes(b".wh.g");
    assert!(!s.layers.resolve(&root, marker).expect("resolve").exists());
}

#[test]
fn renamed_directories_follow_their_redirect() {
    let s = build(
        1,
        &[
            ("l0", "old/f", File("moved")),
            ("l0", "x/deep/g", File("far")),
            ("upper", "new", Redirect("old")),
            ("upper", "new2", Redirect("/x/deep")),
            ("upper", "old", Wh),
        ],
    );
    assert_eq!(s.names(""), ["new", "new2", "x"]);
    assert_eq!(s.read("new/f").as_deref(), Some("moved"));
    assert_eq!(s.read("new2/g").as_deref(), Some("far"));
}

#[test]
fn lower_positive_is_the_top_most_lower_entry() {
    let s = build(
        2,
        &[
            ("l1", "a", File("a")),
            ("l0", "a", Wh),
            ("l1", "b", File("b")),
        ],
    );
    for layers in [&s.layers, &s.indexed] {
        let root = view_in(layers, "");
        assert!(!layers.lower_positive(&root, OsStr::new("a")).expect("a"));
        assert!(layers.lower_positive(&root, OsStr::new("b")).expect("b"));
        assert!(!layers.lower_positive(&root, OsStr::new("c")).expect("c"));
    }
}

#[test]
fn deep_stacks_answer_the_same_through_the_presence_map() {
    // 20 lowers: enough for the presence map, which then answers for every layer.
    let s = build(
        20,
        &[
            ("l19", "d/bottom", File("l19")),
            ("l19", "d/gone", File("l19")),
            ("l19", "o/hidden", File("l19")),
            ("l12", "d/gone", Wh),
            ("l12", "d/mid", File("l12")),
            ("l9", "old/f", File("moved")),
            ("l7", "o", Opq),
            ("l7", "o/shown", File("l7")),
            ("l3", "new", Redirect("old")),
            ("l3", "old", Wh),
            ("l0", "d/top", File("l0")),
        ],
    );
    assert!(s.indexed.indexes.presence().is_some(), "no presence map");
    assert!(s.layers.indexes.presence().is_none());
    assert_eq!(s.names("d"), ["bottom", "mid", "top"]);
    assert_eq!(s.read("d/bottom").as_deref(), Some("l19"));
    assert_eq!(s.read("d/gone"), None);
    assert_eq!(s.names("o"), ["shown"]);
    assert_eq!(s.read("o/hidden"), None);
    assert_eq!(s.names(""), ["d", "new", "o"]);
    assert_eq!(s.read("new/f").as_deref(), Some("moved"));
    assert_eq!(s.view("d").lowers.len(), 3);
}

#[test]
fn lower_names_are_listed_from_their_entries() {
    let s = build(
        2,
        &[
            ("l1", "d/file", File("l1")),
            ("l1", "d/sub/x", File("x")),
            ("l1", "d/hidden", File("l1")),
            ("l0", "d/file", File("l0")),
            ("l0", "d/sub/y", File("y")),
            ("l0", "d/hidden", Wh),
            ("upper", "d/up", File("up")),
        ],
    );
    assert_eq!(s.names("d"), ["file", "sub", "up"]);
    let view = s.view("d");
    let shallow = s.layers.list_shallow(&view).expect("shallow list");
    let shown = |name: &str| {
        &shallow
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .shown
    };
    // Only lower layers hold these: no resolution needed, where their entries say enough.
    let exact = s.layers.lowers.iter().all(|l| l.entries_exact);
    for name in ["file", "sub"] {
        let listed_from_entry = matches!(shown(name), Shown::Lower { .. });
        assert_eq!(listed_from_entry, exact, "{name} (entries exact: {exact})");
    }
    // The upper holds this one: resolved.
    assert!(matches!(shown("up"), Shown::Resolved(_)));
}
