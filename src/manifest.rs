//! What a job contains: the sender's scan of the files and folders it was given, and the
//! receiver's confinement of every announced path to its output folder.
//!
//! Both halves are pure path logic plus metadata reads, so they are tested here without a
//! network. The receiver never trusts the sender's scan: [`confine`] and [`link_stays_inside`]
//! run again on every entry that arrives.

use std::fs::{self, Metadata};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::wire::{entry_cost, Entry, EntryKind, MAX_ENTRIES, MAX_MANIFEST_COST, MAX_PATH_LEN};

/// Longest single name accepted (the limit of common file systems).
pub const MAX_NAME_LEN: usize = 255;
/// Deepest folder nesting accepted from a peer.
pub const MAX_DEPTH: usize = 256;

/// The sender's side of a job: entries in sending order, each with where it lives here.
#[derive(Debug, Default)]
pub struct Scan {
    /// Entries, folders before their contents.
    pub entries: Vec<Entry>,
    /// Local path of each entry (same index).
    pub sources: Vec<PathBuf>,
    /// Things found but not sent, with the reason (shown to the user).
    pub skipped: Vec<(PathBuf, &'static str)>,
    /// What the entries will cost the receiver (see [`crate::wire::entry_cost`]).
    pub cost: u64,
}

impl Scan {
    /// Sum of all file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Number of regular files.
    pub fn files(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count()
    }
}

/// Walks the paths the user gave (`--file`, repeatable; files or folders) into a job.
///
/// A named path is followed if it is a symlink (the user asked for it); inside folders links
/// are kept as links when they point inside the job and skipped otherwise. Only metadata is
/// read here; file contents are streamed later.
pub fn scan(paths: &[PathBuf]) -> Result<Scan, Error> {
    let mut scan = Scan::default();
    let mut tops: Vec<String> = Vec::new();
    for path in paths {
        let err = |source| Error::Input {
            path: path.clone(),
            source,
        };
        let meta = fs::metadata(path).map_err(err)?;
        let name = top_name(path).map_err(err)?;
        if tops.contains(&name) {
            return Err(Error::Usage(format!(
                "two of the paths to send are both called \"{name}\"; send them from different runs or rename one"
            )));
        }
        tops.push(name.clone());
        if meta.is_dir() {
            push(&mut scan, EntryKind::Dir, name.clone(), path, &meta, "")?;
            walk(&mut scan, path, &name, 1)?;
        } else if meta.is_file() {
            push(&mut scan, EntryKind::File, name, path, &meta, "")?;
        } else {
            return Err(err(io::Error::other("not a regular file or folder")));
        }
    }
    Ok(scan)
}

/// The name a top-level path is sent under: its last component, even for `.` or `dir/..`.
fn top_name(path: &Path) -> io::Result<String> {
    let named = match path.components().next_back() {
        Some(Component::Normal(n)) => Some(n.to_owned()),
        _ => None,
    };
    let name = match named {
        Some(n) => n,
        None => fs::canonicalize(path)?
            .file_name()
            .map(|n| n.to_owned())
            .ok_or_else(|| io::Error::other("cannot send the root folder itself"))?,
    };
    name.into_string()
        .map_err(|_| io::Error::other("its name is not valid UTF-8"))
}

fn push(
    scan: &mut Scan,
    kind: EntryKind,
    path: String,
    local: &Path,
    meta: &Metadata,
    target: &str,
) -> Result<(), Error> {
    if scan.entries.len() >= MAX_ENTRIES as usize {
        return Err(Error::Usage(format!(
            "more than {MAX_ENTRIES} files and folders; send them in several runs"
        )));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::Input {
            path: local.to_owned(),
            source: io::Error::other(format!("path longer than {MAX_PATH_LEN} bytes")),
        });
    }
    let (mtime_secs, mtime_nanos) = meta.modified().map(split_time).unwrap_or((0, 0));
    let entry = Entry {
        kind,
        path,
        size: if kind == EntryKind::File {
            meta.len()
        } else {
            0
        },
        mode: mode_of(meta),
        mtime_secs,
        mtime_nanos,
        target: target.to_owned(),
    };
    scan.cost = add_cost(scan.cost, &entry, scan.entries.len(), MAX_MANIFEST_COST)?;
    scan.entries.push(entry);
    scan.sources.push(local.to_owned());
    Ok(())
}

/// Adds `e`, the job's entry number `count + 1`, to the job's cost for the receiver;
/// refuses a job that a receiver would refuse, before connecting, rather than after.
fn add_cost(cost: u64, e: &Entry, count: usize, limit: u64) -> Result<u64, Error> {
    let cost = cost + entry_cost(e);
    if cost > limit {
        return Err(Error::Usage(format!(
            "too many files and folders for one run: their list would take more than the receiver's limit of {} of memory (reached at entry {}, {:?}); send them in several runs",
            indicatif::HumanBytes(limit),
            count + 1,
            e.path,
        )));
    }
    Ok(cost)
}

fn walk(scan: &mut Scan, dir: &Path, rel: &str, depth: usize) -> Result<(), Error> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Input { path, source }
    };
    if depth > MAX_DEPTH {
        return Err(err(dir)(io::Error::other("folders nested too deeply")));
    }
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(err(dir))?
        .collect::<io::Result<_>>()
        .map_err(err(dir))?;
    // Sorted, so two scans of the same tree agree and the order on screen is predictable.
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let local = child.path();
        let Ok(name) = child.file_name().into_string() else {
            return Err(err(&local)(io::Error::other(
                "its name is not valid UTF-8; rename it to send it",
            )));
        };
        let path = format!("{rel}/{name}");
        let meta = fs::symlink_metadata(&local).map_err(err(&local))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            push(scan, EntryKind::Dir, path.clone(), &local, &meta, "")?;
            walk(scan, &local, &path, depth + 1)?;
        } else if ft.is_file() {
            push(scan, EntryKind::File, path, &local, &meta, "")?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&local).map_err(err(&local))?;
            match target.to_str() {
                Some(t) if link_stays_inside(&path, t) => {
                    push(scan, EntryKind::Symlink, path, &local, &meta, t)?
                }
                _ => scan
                    .skipped
                    .push((local, "symbolic link pointing outside what is sent")),
            }
        } else {
            scan.skipped
                .push((local, "not a regular file, folder or link"));
        }
    }
    Ok(())
}

/// Seconds and nanoseconds since the Unix epoch (negative seconds before it).
pub fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// The inverse of [`split_time`].
pub fn join_time(secs: i64, nanos: u32) -> SystemTime {
    let base = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    base + Duration::from_nanos(u64::from(nanos.min(999_999_999)))
}

#[cfg(unix)]
fn mode_of(meta: &Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(meta: &Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

/// Why a peer's path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty, absolute, or with an empty component.
    #[error("\"{0}\" is not a relative path")]
    NotRelative(String),
    /// `.` or `..` as a component.
    #[error("\"{0}\" climbs out of its folder")]
    Climbs(String),
    /// A component with a separator or NUL byte in it.
    #[error("\"{0}\" has a forbidden character")]
    Forbidden(String),
    /// Over [`MAX_NAME_LEN`] in one component, or nested over [`MAX_DEPTH`].
    #[error("\"{0}\" is too long or too deep")]
    TooLong(String),
}

/// Turns a peer-announced relative path into a path under the output folder, or refuses it.
///
/// Structural attacks (absolute paths, `..`, `.`, empty components, backslashes, NUL, names
/// over 255 bytes, absurd depth) are refused outright: a sender that sends them is broken or
/// hostile. Characters that are merely awkward (control characters; on Windows also drive
/// letters, `:*?"<>|`, trailing dots and device names like `CON`) are replaced, so an honest
/// sender's odd file name still arrives.
pub fn confine(raw: &str) -> Result<PathBuf, PathError> {
    confine_for(raw, cfg!(windows))
}

fn confine_for(raw: &str, windows: bool) -> Result<PathBuf, PathError> {
    let owned = || raw.to_owned();
    if raw.is_empty() || raw.starts_with('/') {
        return Err(PathError::NotRelative(owned()));
    }
    let mut out = PathBuf::new();
    for (depth, c) in raw.split('/').enumerate() {
        if depth >= MAX_DEPTH || c.len() > MAX_NAME_LEN {
            return Err(PathError::TooLong(owned()));
        }
        match c {
            "" => return Err(PathError::NotRelative(owned())),
            "." | ".." => return Err(PathError::Climbs(owned())),
            _ if c.contains(['\\', '\0']) => return Err(PathError::Forbidden(owned())),
            _ => out.push(safe_name(c, windows)),
        }
    }
    Ok(out)
}

/// Replaces what the local file system or a terminal would misread in one name.
fn safe_name(name: &str, windows: bool) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            let bad =
                c.is_control() || (windows && matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|'));
            if bad {
                '_'
            } else {
                c
            }
        })
        .collect();
    if !windows {
        return cleaned;
    }
    // Windows drops trailing dots and spaces ("a." opens "a") and reserves device names.
    let mut name = cleaned.trim_end_matches(['.', ' ']).to_owned();
    if name.is_empty() {
        name.push('_');
    }
    let stem = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        name.insert(0, '_');
    }
    name
}

/// Whether a symlink at relative `path` with `target` resolves inside the job's root.
///
/// Only relative targets whose `..` components all come first are allowed: after them the
/// target descends by name, so a link can never climb through another link (`a/b/..` where
/// `b` is itself a link would climb from wherever `b` points).
pub fn link_stays_inside(path: &str, target: &str) -> bool {
    if target.is_empty() || target.len() > MAX_PATH_LEN || target.starts_with('/') {
        return false;
    }
    if target.contains(['\\', '\0']) || target.chars().any(char::is_control) {
        return false;
    }
    let mut depth = path.split('/').count() as i64 - 1;
    let mut descending = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if descending => return false,
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => descending = true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_a_receiver_would_refuse_is_refused_before_connecting() {
        let e = |path: &str| Entry {
            kind: EntryKind::File,
            path: path.into(),
            size: 1,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            target: String::new(),
        };
        let long = e(&"a".repeat(MAX_PATH_LEN));
        let limit = 3 * entry_cost(&long);
        let mut cost = 0;
        for i in 0..3 {
            cost = add_cost(cost, &long, i, limit).unwrap();
        }
        assert_eq!(cost, limit);
        let err = add_cost(cost, &e("x"), 3, limit).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("limit of ") && text.contains("entry 4"),
            "{text}"
        );
        assert!(text.contains("several runs"), "{text}");
        // The default limit holds tens of thousands of ordinary entries, and fewer long ones.
        let ordinary = e("photos/2024/IMG_0001.JPG");
        assert!(MAX_MANIFEST_COST / entry_cost(&ordinary) > 50_000);
        assert!(MAX_MANIFEST_COST / entry_cost(&long) > 3_000);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for raw in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "..",
            "a\\..\\b",
            "nul\0byte",
        ] {
            assert!(confine_for(raw, false).is_err(), "{raw:?}");
            assert!(confine_for(raw, true).is_err(), "{raw:?}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            confine_for(&long, false),
            Err(PathError::TooLong(_))
        ));
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(matches!(
            confine_for(&deep, false),
            Err(PathError::TooLong(_))
        ));
    }

    #[test]
    fn odd_names_are_made_safe() {
        let unix = |raw| confine_for(raw, false).unwrap();
        assert_eq!(unix("dir/sub/file.txt"), PathBuf::from("dir/sub/file.txt"));
        assert_eq!(unix("a\nb/\u{1b}[31mred"), PathBuf::from("a_b/_[31mred"));
        // Legal on Unix; mangling them would change an honest Linux-to-Linux copy.
        assert_eq!(
            unix("12:30 log/con.txt"),
            PathBuf::from("12:30 log/con.txt")
        );
        assert_eq!(unix(".bashrc"), PathBuf::from(".bashrc"));
        let win = |raw| confine_for(raw, true).unwrap();
        assert_eq!(
            win("C:/Windows/evil.dll"),
            PathBuf::from("C_/Windows/evil.dll")
        );
        assert_eq!(
            win("CON/LPT1.txt/COMPUTER"),
            PathBuf::from("_CON/_LPT1.txt/COMPUTER")
        );
        assert_eq!(win("what?.txt"), PathBuf::from("what_.txt"));
        assert_eq!(win("trailing. . "), PathBuf::from("trailing"));
        assert_eq!(win(" ..."), PathBuf::from("_"));
    }

    #[test]
    fn links_must_stay_inside() {
        assert!(link_stays_inside("top/a", "b"));
        assert!(link_stays_inside("top/a", "../top/b"));
        assert!(link_stays_inside("top/sub/a", "../../top"));
        assert!(link_stays_inside("top/a", "./sub/./x"));
        assert!(!link_stays_inside("top/a", "../../etc/passwd"));
        assert!(!link_stays_inside("a", "../x"));
        assert!(!link_stays_inside("top/a", "/etc/passwd"));
        // Climbing after descending could climb out of whatever `b` points at.
        assert!(!link_stays_inside("top/a", "b/../../x"));
        assert!(!link_stays_inside("top/a", "b/.."));
        assert!(!link_stays_inside("top/a", ""));
        assert!(!link_stays_inside("top/a", "x\ny"));
    }

    #[test]
    fn times_round_trip() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 250_000_000),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            let (s, n) = split_time(t);
            assert!(n < 1_000_000_000);
            assert_eq!(join_time(s, n), t, "{t:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn scan_walks_trees_in_order_and_skips_what_cannot_go() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("proj");
        fs::create_dir_all(top.join("src/empty")).unwrap();
        fs::write(top.join("src/main.rs"), b"fn main() {}").unwrap();
        fs::write(top.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(top.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("src/main.rs", top.join("link-in")).unwrap();
        symlink("/etc/passwd", top.join("link-out")).unwrap();
        let lone = dir.path().join("notes.txt");
        fs::write(&lone, b"hello").unwrap();

        let scan = scan(&[top.clone(), lone.clone()]).unwrap();
        let got: Vec<(EntryKind, &str, u64)> = scan
            .entries
            .iter()
            .map(|e| (e.kind, e.path.as_str(), e.size))
            .collect();
        assert_eq!(
            got,
            [
                (EntryKind::Dir, "proj", 0),
                (EntryKind::Symlink, "proj/link-in", 0),
                (EntryKind::File, "proj/run.sh", 10),
                (EntryKind::Dir, "proj/src", 0),
                (EntryKind::Dir, "proj/src/empty", 0),
                (EntryKind::File, "proj/src/main.rs", 12),
                (EntryKind::File, "notes.txt", 5),
            ]
        );
        assert_eq!(scan.entries[1].target, "src/main.rs");
        assert_eq!(scan.entries[2].mode, 0o755);
        assert_eq!(scan.total_bytes(), 27);
        assert_eq!(scan.files(), 3);
        assert_eq!(
            scan.skipped,
            [(
                top.join("link-out"),
                "symbolic link pointing outside what is sent"
            )]
        );
        assert_eq!(scan.sources[6], lone);

        // The same name twice at the top would collide on the receiver.
        let other = dir.path().join("x");
        fs::create_dir_all(other.join("proj")).unwrap();
        assert!(matches!(
            super::scan(&[top.clone(), other.join("proj")]),
            Err(Error::Usage(_))
        ));
        // `.` is sent under the folder's real name.
        let dot = super::scan(&[top.join("src/.")]).unwrap();
        assert_eq!(dot.entries[0].path, "src");
        assert!(matches!(
            super::scan(&[dir.path().join("missing")]),
            Err(Error::Input { .. })
        ));
    }
}
