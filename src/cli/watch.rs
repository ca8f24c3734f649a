//! `p2pcopy link --watch DIR`: what appears or changes under a folder is sent over the
//! link once it has been quiet for a second.
//!
//! [`Quiet`] is the rule, sans-IO (time is an argument): every change to a path moves its
//! due time to a second later; a path is handed out once its due time has passed. The
//! shell ([`Watch`]) feeds it the `notify` crate's events and sends what comes due: a
//! regular file as a one-file job named by its path under DIR (so `DIR/sub/x.txt` lands as
//! `sub/x.txt`), a new folder by looking at what is already in it. Reads are not changes
//! (sending a file reads it). A path that is gone when it comes due was deleted (or renamed
//! away): it is passed over, unless deletions are watched too (`--delete`), when it is
//! handed out as [`Due::Gone`], the deepest first so a folder's files go before the folder.
//! A file that changes while it is being sent gets a new due time and is sent again once
//! quiet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// How long a path must stay unchanged before it is sent.
pub const QUIET: Duration = Duration::from_secs(1);

/// The quiet-period rule: paths and when each is due.
#[derive(Debug)]
pub struct Quiet {
    quiet: Duration,
    due: BTreeMap<PathBuf, Instant>,
}

impl Quiet {
    /// Paths are due `quiet` after their last change.
    pub fn new(quiet: Duration) -> Quiet {
        Quiet {
            quiet,
            due: BTreeMap::new(),
        }
    }

    /// `path` changed at `now`.
    pub fn changed(&mut self, path: PathBuf, now: Instant) {
        self.due.insert(path, now + self.quiet);
    }

    /// The paths quiet since their due time, oldest name first; they are forgotten.
    pub fn poll_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let due: Vec<PathBuf> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &due {
            self.due.remove(p);
        }
        due
    }

    /// When the next path comes due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }
}

/// The name a file under `root` is sent under: its `/`-separated path below `root`; `None`
/// for a path outside it, a hidden one (our own part files, editors' swap files) or one that
/// is not UTF-8.
pub fn job_name(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        let std::path::Component::Normal(n) = c else {
            return None;
        };
        let n = n.to_str()?;
        if n.starts_with('.') {
            return None;
        }
        parts.push(n);
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Refuses a watched folder that overlaps the output folder: what arrives would be sent
/// back.
pub fn check_apart(watch: &Path, output: &Path) -> Result<(), Error> {
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| Error::Input {
            path: p.to_owned(),
            source: e,
        })
    };
    let (w, o) = (canon(watch)?, canon(output)?);
    if w.starts_with(&o) || o.starts_with(&w) {
        return Err(Error::Usage(format!(
            "--watch {} and --output {} overlap: what arrives would be sent back; use separate folders",
            watch.display(),
            output.display()
        )));
    }
    Ok(())
}

/// Whether a `notify` event is a change worth sending: not a read, and a deletion only
/// when `deletions` are sent.
fn is_change(kind: &notify::EventKind, deletions: bool) -> bool {
    use notify::EventKind;
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Remove(_) => deletions,
        EventKind::Access(_) => false,
    }
}

/// What came due under the watched folder.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// A file to send: its name below the folder, and where it is.
    File(String, PathBuf),
    /// A path no longer there (deleted or renamed away), by its name below the folder.
    Gone(String),
}

/// A folder being watched (recursively): changes are collected from [`Watch::start`] on,
/// and [`Watch::run`] sends them.
pub struct Watch {
    root: PathBuf,
    deletions: bool,
    events: tokio::sync::mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    /// Kept for as long as the watch runs: dropping it ends the watch.
    _watcher: notify::RecommendedWatcher,
}

impl Watch {
    /// Starts watching `root` (and what is deleted there too, if `deletions`): a change
    /// made once this returns is not missed.
    pub fn start(root: PathBuf, deletions: bool) -> Result<Watch, Error> {
        use notify::{RecursiveMode, Watcher};
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let cannot = |e: notify::Error| Error::Input {
            path: root.clone(),
            source: std::io::Error::other(format!("cannot watch it: {e}")),
        };
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .map_err(cannot)?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .map_err(cannot)?;
        Ok(Watch {
            root,
            deletions,
            events,
            _watcher: watcher,
        })
    }

    /// Calls `send` with every file that comes due (and every path gone, if deletions are
    /// watched); runs until the watcher fails.
    pub async fn run(mut self, mut send: impl FnMut(Due)) -> Result<(), Error> {
        let mut quiet = Quiet::new(QUIET);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let wake = quiet.poll_timeout().unwrap_or(far);
            tokio::select! {
                e = self.events.recv() => match e {
                    Some(Ok(event)) if is_change(&event.kind, self.deletions) => {
                        for p in event.paths {
                            quiet.changed(p, Instant::now());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "watching failed for a moment"),
                    None => return Err(Error::Internal("the folder watcher stopped".into())),
                },
                _ = tokio::time::sleep_until(wake) => {
                    let mut gone = Vec::new();
                    for path in quiet.poll_due(Instant::now()) {
                        match came_due(&self.root, path, &mut quiet) {
                            Some(Due::Gone(name)) if self.deletions => gone.push(name),
                            Some(Due::Gone(_)) | None => {}
                            Some(file) => send(file),
                        }
                    }
                    // Names come in order, a folder before what is in it: deepest first.
                    for name in gone.into_iter().rev() {
                        send(Due::Gone(name));
                    }
                }
            }
        }
    }
}

/// A path that came due: a file is to be sent, a path no longer there is gone, a folder's
/// contents are looked at (what was written into it before the watch on it began),
/// anything else is passed over.
fn came_due(root: &Path, path: PathBuf, quiet: &mut Quiet) -> Option<Due> {
    let name = job_name(root, &path)?;
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Due::Gone(name)),
        Err(_) => return None,
    };
    if meta.is_file() {
        return Some(Due::File(name, path));
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(&path) {
            for e in entries.flatten() {
                quiet.changed(e.path(), Instant::now());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_due_once_quiet() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = Quiet::new(s);
        q.changed("a".into(), t0);
        q.changed("b".into(), t0 + s / 2);
        assert_eq!(q.poll_timeout(), Some(t0 + s));
        assert!(q.poll_due(t0 + s / 2).is_empty());
        // Written again before it was due: it waits a whole second more.
        q.changed("a".into(), t0 + s * 9 / 10);
        assert_eq!(q.poll_due(t0 + s * 3 / 2), vec![PathBuf::from("b")]);
        assert_eq!(q.poll_timeout(), Some(t0 + s * 19 / 10));
        assert_eq!(q.poll_due(t0 + s * 2), vec![PathBuf::from("a")]);
        assert!(q.poll_due(t0 + s * 10).is_empty());
        assert_eq!(q.poll_timeout(), None);
    }

    #[test]
    fn names_are_relative_and_hidden_ones_are_skipped() {
        let root = Path::new("/w");
        assert_eq!(
            job_name(root, Path::new("/w/a.txt")).as_deref(),
            Some("a.txt")
        );
        assert_eq!(
            job_name(root, Path::new("/w/sub/b.txt")).as_deref(),
            Some("sub/b.txt")
        );
        for skipped in [
            "/w",
            "/x/a.txt",
            "/w/.a.txt.p2pcopy-part",
            "/w/.git/x",
            "/w/../e",
        ] {
            assert_eq!(job_name(root, Path::new(skipped)), None, "{skipped}");
        }
    }

    #[test]
    fn reads_and_deletions_are_not_changes() {
        use notify::event::{AccessKind, CreateKind, ModifyKind, RemoveKind};
        use notify::EventKind;
        for deletions in [false, true] {
            assert!(is_change(&EventKind::Create(CreateKind::File), deletions));
            assert!(is_change(&EventKind::Modify(ModifyKind::Any), deletions));
            assert!(!is_change(&EventKind::Access(AccessKind::Any), deletions));
        }
        assert!(!is_change(&EventKind::Remove(RemoveKind::File), false));
        assert!(is_change(&EventKind::Remove(RemoveKind::File), true));
    }

    #[test]
    fn what_came_due_is_a_file_a_gone_path_or_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"x").unwrap();
        let mut q = Quiet::new(QUIET);
        assert_eq!(
            came_due(root, root.join("d/f"), &mut q),
            Some(Due::File("d/f".into(), root.join("d/f")))
        );
        assert_eq!(
            came_due(root, root.join("d/gone"), &mut q),
            Some(Due::Gone("d/gone".into()))
        );
        assert_eq!(came_due(root, root.join(".hidden"), &mut q), None);
        // A folder: what is in it comes due later.
        assert_eq!(came_due(root, root.join("d"), &mut q), None);
        assert!(q.poll_timeout().is_some());
    }

    #[test]
    fn overlapping_folders_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("in")).unwrap();
        std::fs::create_dir(&b).unwrap();
        check_apart(&a, &b).unwrap();
        assert_eq!(check_apart(&a, &a.join("in")).unwrap_err().exit_code(), 2);
        assert_eq!(check_apart(&a.join("in"), &a).unwrap_err().exit_code(), 2);
        assert_eq!(check_apart(&a, &a).unwrap_err().exit_code(), 2);
    }
}

#[cfg(test)]
mod shell_tests {
    use super::*;

    #[tokio::test]
    async fn a_written_file_comes_due() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watch = Watch::start(root.clone(), false).unwrap();
        let watching = tokio::spawn(watch.run(move |due| {
            let _ = tx.send(due);
        }));
        std::fs::write(root.join("a.txt"), b"x").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        watching.abort();
        assert_eq!(
            got.unwrap(),
            Some(Due::File("a.txt".into(), root.join("a.txt")))
        );
    }

    #[tokio::test]
    async fn deletions_come_due_deepest_first_only_when_watched() {
        let tmp = tempfile::tempdir().unwrap();
        for deletions in [true, false] {
            let root = tmp.path().join(deletions.to_string());
            std::fs::create_dir_all(root.join("d")).unwrap();
            std::fs::write(root.join("d/f"), b"x").unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let watch = Watch::start(root.clone(), deletions).unwrap();
            let watching = tokio::spawn(watch.run(move |due| {
                let _ = tx.send(due);
            }));
            std::fs::remove_dir_all(root.join("d")).unwrap();
            let mut got = Vec::new();
            while let Ok(Some(due)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await
            {
                got.push(due);
            }
            watching.abort();
            let want = if deletions {
                vec![Due::Gone("d/f".into()), Due::Gone("d".into())]
            } else {
                vec![]
            };
            assert_eq!(got, want);
        }
    }
}
