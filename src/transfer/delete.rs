//! A link's deletions (`p2pcopy link --watch DIR --delete`): a control stream that starts
//! with [`Frame::Delete`] instead of an offer asks the other side to remove one path under
//! its output folder; it answers [`Frame::Deleted`] and the stream ends.
//!
//! The path is the peer's word, so the receiving side trusts none of it: the name is
//! confined as a manifest entry's is ([`crate::manifest::confine`]); every folder on the
//! way must be a real folder (a symlink there is refused, so nothing outside the output
//! folder is ever reached); a file is removed only while it still holds exactly what was
//! sent (the request carries its BLAKE3), so a file changed there since, or another file
//! that took the name, is kept; a folder only when empty; anything else (a symlink, a
//! device) is refused. The caller decides whether a request is allowed at all: a link
//! allows it only with its own `--allow-delete`, and only for a path its [`Ledger`] says
//! this peer sent over this link with that very BLAKE3 (or a folder such files went into),
//! so a peer cannot name a file it never sent, whatever it knows of its content. The
//! sending side keeps a [`Ledger`] too: it sends deletions only of what it sent.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};

use super::watchdog::{Waiting, Watch};
use super::{closed, lost_write, read_frame};
use crate::error::Error;
use crate::wire::{DeleteStatus, Frame};

/// Files that crossed a link, by `/`-separated name, with their BLAKE3 (the latest wins),
/// and the folders above them: which deletions are the link's business. A path not in it
/// (a scratch file made and removed within the watch's quiet second, a file of the user's
/// own) is not.
#[derive(Debug, Default)]
pub struct Ledger {
    files: HashMap<String, blake3::Hash>,
    dirs: HashSet<String>,
}

impl Ledger {
    /// The file `name` crossed with this content.
    pub fn add(&mut self, name: &str, hash: blake3::Hash) {
        self.files.insert(name.to_owned(), hash);
        let mut at = name;
        while let Some((parent, _)) = at.rsplit_once('/') {
            self.dirs.insert(parent.to_owned());
            at = parent;
        }
    }

    /// The deletion that fits `name`: `Some(Some(hash))` for a file that crossed with that
    /// content, `Some(None)` for a folder such files went into, `None` for anything else.
    pub fn deletion(&self, name: &str) -> Option<Option<blake3::Hash>> {
        match self.files.get(name) {
            Some(h) => Some(Some(*h)),
            None => self.dirs.contains(name).then_some(None),
        }
    }

    /// `name` is gone on both sides.
    pub fn forget(&mut self, name: &str) {
        self.files.remove(name);
        self.dirs.remove(name);
    }
}

/// What the peer opened a control stream for.
pub enum Opened {
    /// A job: hand it to [`super::Incoming::run_started`].
    Job(Started),
    /// A deletion: [`DeleteAsked::answer`] it.
    Delete(DeleteAsked),
}

/// A job's control stream whose first frame was already read.
pub struct Started {
    pub(super) send: SendStream,
    pub(super) recv: RecvStream,
    pub(super) first: Frame,
}

/// The peer's request to delete a path.
pub struct DeleteAsked {
    /// The path as the peer sent it (unchecked: show it escaped).
    pub path: String,
    hash: Option<blake3::Hash>,
    send: SendStream,
}

/// Reads the first frame of a control stream the peer opened (bounded by `stall`, as an
/// offer is) and says what the stream is for.
pub async fn opened(
    conn: &Connection,
    (send, mut recv): (SendStream, RecvStream),
    stall: Option<Duration>,
) -> Result<Opened, Error> {
    let watch = Watch::new(conn, stall);
    let first = watch.guard(Waiting::Offer, read_frame(&mut recv)).await?;
    Ok(match first {
        Frame::Delete { path, hash } => Opened::Delete(DeleteAsked {
            path,
            hash: hash.map(blake3::Hash::from_bytes),
            send,
        }),
        first => Opened::Job(Started { send, recv, first }),
    })
}

impl DeleteAsked {
    /// The request's path as it would be stored here (confined, `/`-separated, as a
    /// received job's saved names are); `None` for a path that leaves the folder.
    pub fn name_here(&self) -> Option<String> {
        let rel = crate::manifest::confine(&self.path).ok()?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        Some(parts?.join("/"))
    }

    /// What the request says the path holds: a file's BLAKE3, or `None` for a folder.
    pub fn hash(&self) -> Option<blake3::Hash> {
        self.hash
    }

    /// Deletes the path under `root` if `allowed` and the rules let it (see the module
    /// doc), answers the peer, and says what became of it.
    pub async fn answer(mut self, root: &Path, allowed: bool) -> DeleteStatus {
        let status = if allowed {
            let (root, path, hash) = (root.to_owned(), self.path.clone(), self.hash);
            tokio::task::spawn_blocking(move || delete_under(&root, &path, hash))
                .await
                .unwrap_or(DeleteStatus::Refused)
        } else {
            DeleteStatus::Refused
        };
        let mut buf = Vec::new();
        Frame::Deleted { status }.encode(&mut buf);
        // A peer that went away learns nothing; it asks again on the next path.
        let _ = self.send.write_all(&buf).await;
        let _ = self.send.finish();
        status
    }
}

/// Asks the peer to delete `path` under its output folder: the file that holds `hash`, or
/// an empty folder (`None`). Waits up to `stall` for the answer.
pub async fn ask(
    conn: &Connection,
    path: &str,
    hash: Option<blake3::Hash>,
    stall: Option<Duration>,
) -> Result<DeleteStatus, Error> {
    let watch = Watch::new(conn, stall);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
    let mut buf = Vec::new();
    Frame::Delete {
        path: path.to_owned(),
        hash: hash.map(|h| *h.as_bytes()),
    }
    .encode(&mut buf);
    send.write_all(&buf).await.map_err(lost_write)?;
    let _ = send.finish();
    match watch.guard(Waiting::Verdict, read_frame(&mut recv)).await? {
        Frame::Deleted { status } => Ok(status),
        other => Err(Error::Protocol(format!(
            "the peer answered a deletion with {other:?}"
        ))),
    }
}

/// Deletes `name` (the peer's word) under `root` by the rules of the module doc.
pub fn delete_under(root: &Path, name: &str, hash: Option<blake3::Hash>) -> DeleteStatus {
    let Ok(rel) = crate::manifest::confine(name) else {
        return DeleteStatus::Refused;
    };
    // Every folder on the way must be a real one: a symlink could lead out of `root`.
    let mut at = root.to_owned();
    let parents = rel.parent().map(|p| p.components().count()).unwrap_or(0);
    for c in rel.components().take(parents) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return DeleteStatus::Refused,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return DeleteStatus::Missing,
            Err(_) => return DeleteStatus::Refused,
        }
    }
    let path = root.join(&rel);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return DeleteStatus::Missing,
        Err(_) => return DeleteStatus::Refused,
    };
    let removed = match hash {
        Some(want) if meta.is_file() => {
            if hash_of(&path).ok() != Some(want) {
                return DeleteStatus::Kept;
            }
            fs::remove_file(&path)
        }
        // A folder: only an empty one (remove_dir refuses the others).
        None if meta.is_dir() => fs::remove_dir(&path),
        _ => return DeleteStatus::Refused,
    };
    match removed {
        Ok(()) => {
            tracing::info!(path = %path.display(), "deleted as the peer asked");
            DeleteStatus::Deleted
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => DeleteStatus::Missing,
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => DeleteStatus::Kept,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete what the peer asked");
            DeleteStatus::Refused
        }
    }
}

fn hash_of(path: &Path) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_sent_is_deleted_and_only_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        fs::create_dir_all(root.join("sub/empty")).unwrap();
        fs::write(root.join("sub/a.txt"), b"as sent").unwrap();
        fs::write(root.join("b.txt"), b"changed here").unwrap();
        let sent = blake3::hash(b"as sent");
        let d = |name: &str, hash| delete_under(&root, name, hash);
        // Changed since it was sent, or another file under the name: kept.
        assert_eq!(
            d("b.txt", Some(blake3::hash(b"b as sent"))),
            DeleteStatus::Kept
        );
        assert!(root.join("b.txt").exists());
        // A folder with something in it is kept; a file is no folder and the reverse.
        assert_eq!(d("sub", None), DeleteStatus::Kept);
        assert_eq!(d("sub/a.txt", None), DeleteStatus::Refused);
        assert_eq!(d("sub/empty", Some(sent)), DeleteStatus::Refused);
        assert_eq!(d("sub/a.txt", Some(sent)), DeleteStatus::Deleted);
        assert!(!root.join("sub/a.txt").exists());
        assert_eq!(d("sub/a.txt", Some(sent)), DeleteStatus::Missing);
        assert_eq!(d("nowhere/a.txt", Some(sent)), DeleteStatus::Missing);
        assert_eq!(d("sub/empty", None), DeleteStatus::Deleted);
        // Names that leave the folder never reach the disk.
        fs::write(dir.path().join("victim"), b"as sent").unwrap();
        for name in [
            "../victim",
            "/etc/passwd",
            "sub/../../victim",
            "",
            "a//b",
            "a\0b",
        ] {
            assert_eq!(d(name, Some(sent)), DeleteStatus::Refused, "{name:?}");
        }
        assert!(dir.path().join("victim").exists());
    }

    #[test]
    fn a_ledger_knows_what_crossed() {
        let (one, two) = (blake3::hash(b"1"), blake3::hash(b"2"));
        let mut sent = Ledger::default();
        sent.add("a/b/c.txt", one);
        sent.add("top.txt", one);
        sent.add("top.txt", two);
        assert_eq!(
            sent.deletion("top.txt"),
            Some(Some(two)),
            "the latest content"
        );
        assert_eq!(sent.deletion("a/b/c.txt"), Some(Some(one)));
        assert_eq!(sent.deletion("a/b"), Some(None));
        assert_eq!(sent.deletion("a"), Some(None));
        assert_eq!(sent.deletion("scratch.tmp"), None);
        assert_eq!(sent.deletion("a/b/c"), None);
        sent.forget("a/b/c.txt");
        assert_eq!(sent.deletion("a/b/c.txt"), None);
        // Its folders are still ours to delete once empty.
        assert_eq!(sent.deletion("a/b"), Some(None));
        sent.forget("a/b");
        assert_eq!(sent.deletion("a/b"), None);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_never_followed_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("out"), dir.path().join("outside"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("x"), b"as sent").unwrap();
        let sent = blake3::hash(b"as sent");
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.join("x"), root.join("link")).unwrap();
        assert_eq!(
            delete_under(&root, "evil/x", Some(sent)),
            DeleteStatus::Refused
        );
        assert_eq!(
            delete_under(&root, "link", Some(sent)),
            DeleteStatus::Refused
        );
        assert_eq!(delete_under(&root, "evil", None), DeleteStatus::Refused);
        assert!(outside.join("x").exists());
        assert!(root.join("link").exists() && root.join("evil").exists());
    }
}
