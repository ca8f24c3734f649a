//! `p2pcopy link --watch DIR`: what appears or changes under a folder is sent over the
//! link once it has been quiet for a second.
//!
//! [`Quiet`] is the rule, sans-IO (time is an argument): every change to a path moves its
//! due time to a second later; a path is handed out once its due time has passed. The
//! shell ([`Watch`]) feeds it the `notify` crate's events and sends what comes due: a
//! regular file as a one-file job named by its path under DIR (so `DIR/sub/x.txt` lands as
//! `sub/x.txt`), a new folder by looking at what is already in it. Reads are not changes
//! (sending a file reads it); a deleted path is gone when it comes due and is passed over,
//! so deletions are not sent. A file that changes while it is being sent gets a new due
//! time and is sent again once quiet.

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

/// Whether a `notify` event is a change worth sending (not a read, not a deletion).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other
    )
}

/// A folder being watched (recursively): changes are collected from [`Watch::start`] on,
/// and [`Watch::run`] sends them.
pub struct Watch {
    root: PathBuf,
    events: tokio::sync::mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    /// Kept for as long as the watch runs: dropping it ends the watch.
    _watcher: notify::RecommendedWatcher,
}

impl Watch {
    /// Starts watching `root`: a change made once this returns is not missed.
    pub fn start(root: PathBuf) -> Result<Watch, Error> {
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
            events,
            _watcher: watcher,
        })
    }

    /// Calls `send(name, path)` for every file that comes due; runs until the watcher fails.
    pub async fn run(mut self, mut send: impl FnMut(String, PathBuf)) -> Result<(), Error> {
        let mut quiet = Quiet::new(QUIET);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let wake = quiet.poll_timeout().unwrap_or(far);
            tokio::select! {
                e = self.events.recv() => match e {
                    Some(Ok(event)) if is_change(&event.kind) => {
                        for p in event.paths {
                            quiet.changed(p, Instant::now());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "watching failed for a moment"),
                    None => return Err(Error::Internal("the folder watcher stopped".into())),
                },
                _ = tokio::time::sleep_until(wake) => {
                    for path in quiet.poll_due(Instant::now()) {
                        due(&self.root, path, &mut quiet, &mut send);
                    }
                }
            }
        }
    }
}

/// A path that came due: a file is sent, a folder's contents are looked at (what was
/// written into it before the watch on it began), anything else is passed over.
fn due(root: &Path, path: PathBuf, quiet: &mut Quiet, send: &mut impl FnMut(String, PathBuf)) {
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return; // deleted (or renamed away) meanwhile: deletions are not sent
    };
    let Some(name) = job_name(root, &path) else {
        return;
    };
    if meta.is_file() {
        send(name, path);
    } else if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(&path) {
            for e in entries.flatten() {
                quiet.changed(e.path(), Instant::now());
            }
        }
    }
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
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(!is_change(&EventKind::Access(AccessKind::Any)));
        assert!(!is_change(&EventKind::Remove(RemoveKind::File)));
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
        let watch = Watch::start(root.clone()).unwrap();
        let watching = tokio::spawn(watch.run(move |name, _| {
            let _ = tx.send(name);
        }));
        std::fs::write(root.join("a.txt"), b"x").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        watching.abort();
        assert_eq!(got.unwrap().as_deref(), Some("a.txt"));
    }
}
