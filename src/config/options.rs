//! The mount(8)-style option parser: `-o lowerdir=A:B,upperdir=U,workdir=W,...` and the
//! `--lower`/`--upper`/`--work` flags, gathered into [`MountOptions`] and finished into a
//! [`MountConfig`].
//!
//! It follows the overlayfs option syntax (Documentation/filesystems/overlayfs.rst: `lowerdir`
//! is `:`-separated, top-most first, and a backslash escapes `:` and `,`). Pure logic over bytes:
//! it never touches the filesystem, and paths never pass through a lossy `String`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::MountConfig;

/// Why a set of mount options or layer flags does not describe a mount.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option \"{0}\"")]
    Unknown(String),
    #[error("mount option \"{0}\" is not supported yet")]
    NotSupported(String),
    #[error("mount option \"{0}\" needs a value (\"{0}=...\")")]
    MissingValue(String),
    #[error("mount option \"{0}\" takes no value")]
    UnexpectedValue(String),
    #[error("empty layer in lower directory list \"{}\"", .0.display())]
    EmptyLayer(PathBuf),
    #[error("the lower layers are given twice (both --lower and -o lowerdir)")]
    LowersTwice,
    #[error("the upper directory is given twice (both --upper and -o upperdir)")]
    UpperTwice,
    #[error("the work directory is given twice (both --work and -o workdir)")]
    WorkTwice,
    #[error("no lower layer given (use --lower A:B or -o lowerdir=A:B)")]
    NoLowers,
    #[error("an upper directory needs a work directory (--work or -o workdir)")]
    UpperWithoutWork,
    #[error("a work directory needs an upper directory (--upper or -o upperdir)")]
    WorkWithoutUpper,
}

/// Generic mount(8)/FUSE options that change nothing for unionfs and are accepted silently.
const HARMLESS: &[&str] = &[
    "rw",
    "default_permissions",
    "allow_other",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
];

/// fuse-overlayfs / containers-storage options we know but do not implement: refusing them is
/// safer than mounting with an id mapping or label silently missing.
const NOT_SUPPORTED: &[&str] = &[
    "uidmapping",
    "gidmapping",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "context",
];

/// `-o` options and layer flags gathered before they become a [`MountConfig`].
///
/// Later options override earlier ones, as with mount(8); `ro` drops the upper layer when the
/// configuration is finished, whatever the order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub lowers: Option<Vec<PathBuf>>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub volatile: bool,
    pub read_only: bool,
    pub no_io_uring: bool,
}

impl MountOptions {
    /// Parses one `-o` string.
    pub fn parse(opts: &OsStr) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        o.apply(opts)?;
        Ok(o)
    }

    /// Applies one comma-separated `-o` string; empty items (`a,,b`, trailing commas) are
    /// ignored.
    pub fn apply(&mut self, opts: &OsStr) -> Result<(), OptionError> {
        for item in split_escaped(opts.as_bytes(), b',') {
            if !item.is_empty() {
                self.apply_one(item)?;
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, item: &[u8]) -> Result<(), OptionError> {
        let (name, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match name.as_str() {
            "lowerdir" => self.lowers = Some(parse_lowerdir(need(&name, value)?)?),
            "lowerdir+" => {
                let layer = unescape(need(&name, value)?);
                self.lowers.get_or_insert_with(Vec::new).push(layer);
            }
            "upperdir" => self.upper = Some(unescape(need(&name, value)?)),
            "workdir" => self.work = Some(unescape(need(&name, value)?)),
            "volatile" | "ro" | "io_uring" | "noio_uring" => {
                if value.is_some() {
                    return Err(OptionError::UnexpectedValue(name));
                }
                match name.as_str() {
                    "ro" => self.read_only = true,
                    "volatile" => self.volatile = true,
                    n => self.no_io_uring = n == "noio_uring",
                }
            }
            n if HARMLESS.contains(&n) => {
                if value.is_some() {
                    return Err(OptionError::UnexpectedValue(name));
                }
                if n == "rw" {
                    self.read_only = false;
                }
            }
            n if NOT_SUPPORTED.contains(&n) => return Err(OptionError::NotSupported(name)),
            _ => return Err(OptionError::Unknown(name)),
        }
        Ok(())
    }

    /// Adds the `--lower`, `--upper` and `--work` flags; giving a layer both as a flag and as an
    /// option is an error rather than a silent override.
    pub fn merge_flags(
        &mut self,
        lower: Option<&OsStr>,
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<(), OptionError> {
        if let Some(l) = lower {
            if self.lowers.is_some() {
                return Err(OptionError::LowersTwice);
            }
            self.lowers = Some(parse_lowerdir(l.as_bytes())?);
        }
        if let Some(u) = upper {
            if self.upper.replace(u.to_path_buf()).is_some() {
                return Err(OptionError::UpperTwice);
            }
        }
        if let Some(w) = work {
            if self.work.replace(w.to_path_buf()).is_some() {
                return Err(OptionError::WorkTwice);
            }
        }
        Ok(())
    }

    /// Finishes the configuration: at least one lower, upper and work together, `ro` applied.
    pub fn into_config(self) -> Result<MountConfig, OptionError> {
        let lowers = match self.lowers {
            Some(l) if !l.is_empty() => l,
            _ => return Err(OptionError::NoLowers),
        };
        match (&self.upper, &self.work) {
            (Some(_), None) => return Err(OptionError::UpperWithoutWork),
            (None, Some(_)) => return Err(OptionError::WorkWithoutUpper),
            _ => {}
        }
        let (upper, work) = if self.read_only {
            if self.upper.is_some() {
                tracing::debug!("option ro: the upper layer is not used");
            }
            (None, None)
        } else {
            (self.upper, self.work)
        };
        Ok(MountConfig {
            lowers,
            upper,
            work,
            volatile: self.volatile,
            no_io_uring: self.no_io_uring,
        })
    }
}

fn need<'a>(name: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], OptionError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OptionError::MissingValue(name.to_owned())),
    }
}

/// Splits `s` at every `sep` not preceded by a backslash; escapes are kept for the next stage.
fn split_escaped(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < s.len() {
        if s[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i] == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

/// Removes backslash escapes (`\:` → `:`, `\,` → `,`, `\\` → `\`).
fn unescape(s: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
                continue;
            }
        }
        out.push(b);
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses an overlayfs `lowerdir` value: `:`-separated, top-most first, `\:` for a literal colon.
pub fn parse_lowerdir(s: &[u8]) -> Result<Vec<PathBuf>, OptionError> {
    let parts = split_escaped(s, b':');
    if parts.iter().any(|p| p.is_empty()) {
        return Err(OptionError::EmptyLayer(PathBuf::from(OsStr::from_bytes(s))));
    }
    Ok(parts.into_iter().map(unescape).collect())
}

impl MountConfig {
    /// Builds a configuration from one mount(8)-style option string.
    pub fn from_options(opts: &OsStr) -> Result<MountConfig, OptionError> {
        MountOptions::parse(opts)?.into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn cfg(
        lowers: &[&str],
        upper: Option<&str>,
        work: Option<&str>,
        volatile: bool,
    ) -> MountConfig {
        MountConfig {
            lowers: lowers.iter().map(|l| p(l)).collect(),
            upper: upper.map(p),
            work: work.map(p),
            volatile,
            no_io_uring: false,
        }
    }

    #[test]
    fn options_table() {
        let ok: &[(&str, MountConfig)] = &[
            ("lowerdir=/a", cfg(&["/a"], None, None, false)),
            (
                "lowerdir=/a:/b:/c",
                cfg(&["/a", "/b", "/c"], None, None, false),
            ),
            (
                "lowerdir=/a,upperdir=/u,workdir=/w",
                cfg(&["/a"], Some("/u"), Some("/w"), false),
            ),
            (",,lowerdir=/a,,volatile,", cfg(&["/a"], None, None, true)),
            (
                "lowerdir=/a,upperdir=/u,workdir=/w,ro",
                cfg(&["/a"], None, None, false),
            ),
            (
                "ro,lowerdir=/a,upperdir=/u,workdir=/w",
                cfg(&["/a"], None, None, false),
            ),
            (
                "ro,rw,lowerdir=/a,upperdir=/u,workdir=/w",
                cfg(&["/a"], Some("/u"), Some("/w"), false),
            ),
            ("lowerdir=/x,lowerdir=/a", cfg(&["/a"], None, None, false)),
            (
                "lowerdir+=/a,lowerdir+=/b",
                cfg(&["/a", "/b"], None, None, false),
            ),
            (
                r"lowerdir=/a\:b:/c\,d",
                cfg(&["/a:b", "/c,d"], None, None, false),
            ),
            (
                "lowerdir=/a,rw,default_permissions,allow_other,suid,nosuid,dev,nodev,exec,noexec",
                cfg(&["/a"], None, None, false),
            ),
        ];
        for (input, want) in ok {
            assert_eq!(
                MountConfig::from_options(OsStr::new(input)).as_ref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn option_errors_table() {
        use OptionError as E;
        let bad: &[(&str, E)] = &[
            ("lowerdir=/a,bogus", E::Unknown("bogus".into())),
            ("lowerdir=/a,bogus=1", E::Unknown("bogus".into())),
            (
                "lowerdir=/a,uidmapping=0:1:1",
                E::NotSupported("uidmapping".into()),
            ),
            (
                "lowerdir=/a,gidmapping=0:1:1",
                E::NotSupported("gidmapping".into()),
            ),
            (
                "lowerdir=/a,squash_to_uid=0",
                E::NotSupported("squash_to_uid".into()),
            ),
            (
                "lowerdir=/a,squash_to_gid=0",
                E::NotSupported("squash_to_gid".into()),
            ),
            (
                "lowerdir=/a,xattr_permissions=1",
                E::NotSupported("xattr_permissions".into()),
            ),
            ("lowerdir=/a,context=x", E::NotSupported("context".into())),
            ("lowerdir=", E::MissingValue("lowerdir".into())),
            ("lowerdir", E::MissingValue("lowerdir".into())),
            ("lowerdir=/a,upperdir", E::MissingValue("upperdir".into())),
            (
                "lowerdir=/a,volatile=1",
                E::UnexpectedValue("volatile".into()),
            ),
            ("lowerdir=/a,ro=1", E::UnexpectedValue("ro".into())),
            (
                "lowerdir=/a,allow_other=1",
                E::UnexpectedValue("allow_other".into()),
            ),
            ("lowerdir=/a::/b", E::EmptyLayer(p("/a::/b"))),
            ("lowerdir=/a:", E::EmptyLayer(p("/a:"))),
            ("upperdir=/u,workdir=/w", E::NoLowers),
            ("", E::NoLowers),
            ("lowerdir=/a,upperdir=/u", E::UpperWithoutWork),
            ("lowerdir=/a,workdir=/w", E::WorkWithoutUpper),
        ];
        for (input, want) in bad {
            assert_eq!(
                MountConfig::from_options(OsStr::new(input)).as_ref(),
                Err(want),
                "{input}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_option() {
        let e = MountConfig::from_options(OsStr::new("lowerdir=/a,frobnicate")).unwrap_err();
        assert_eq!(e.to_string(), "unknown mount option \"frobnicate\"");
        let e = MountConfig::from_options(OsStr::new("lowerdir=/a,uidmapping=0:1:1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount option \"uidmapping\" is not supported yet"
        );
    }

    #[test]
    fn several_option_strings_and_flags() {
        let mut o = MountOptions::default();
        o.apply(OsStr::new("upperdir=/u")).unwrap();
        o.apply(OsStr::new("workdir=/w,volatile")).unwrap();
        o.merge_flags(Some(OsStr::new("/a:/b")), None, None)
            .unwrap();
        assert_eq!(
            o.into_config(),
            Ok(cfg(&["/a", "/b"], Some("/u"), Some("/w"), true))
        );

        let mut o = MountOptions::parse(OsStr::new("lowerdir=/a")).unwrap();
        assert_eq!(
            o.merge_flags(Some(OsStr::new("/b")), None, None),
            Err(OptionError::LowersTwice)
        );
        let mut o = MountOptions::parse(OsStr::new("upperdir=/u")).unwrap();
        assert_eq!(
            o.merge_flags(None, Some(Path::new("/u")), None),
            Err(OptionError::UpperTwice)
        );
        let mut o = MountOptions::parse(OsStr::new("workdir=/w")).unwrap();
        assert_eq!(
            o.merge_flags(None, None, Some(Path::new("/w"))),
            Err(OptionError::WorkTwice)
        );
    }

    #[test]
    fn non_utf8_paths_survive() {
        let raw = b"lowerdir=/a\xff:/b".to_vec();
        let c = MountConfig::from_options(OsStr::from_bytes(&raw)).unwrap();
        assert_eq!(c.lowers[0].as_os_str().as_bytes(), b"/a\xff");
    }
}
