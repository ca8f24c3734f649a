//! The receiver's disk: folders, resumable part files, and final names that never replace
//! what is already there (unless `--overwrite`).
//!
//! A file is written to `.NAME.p2pcopy-part` beside its final place. The part file's name
//! depends only on the final name, so a later run (or a reconnect) finds it again; its
//! length is how much arrived, and the sender only continues from there after the
//! receiver's BLAKE3 over that prefix matches its own. The verified file then gets its
//! final name with a hard link (which fails instead of replacing) or, with `--overwrite`, a
//! rename. Part files are locked while written, so two receivers cannot interleave.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::manifest::join_time;
use crate::wire::Entry;

const PART_SUFFIX: &str = ".p2pcopy-part";

/// Where and how the receiver writes.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    overwrite: bool,
}

/// What the receiver already holds of one file.
#[derive(Clone, Debug)]
pub struct Held {
    /// Bytes held.
    pub offset: u64,
    /// Their BLAKE3.
    pub hash: blake3::Hash,
    /// The hasher after those bytes, to continue with the rest (part files only).
    /// Boxed: a hasher is ~1.9 KB, and a re-run holds an entry for every file already there.
    pub hasher: Option<Box<blake3::Hasher>>,
    /// True when the held bytes are a complete file under its final name.
    pub complete: bool,
}

/// An open, locked part file.
#[derive(Debug)]
pub struct Part {
    /// Its path.
    pub path: PathBuf,
    /// The file, positioned where new data goes.
    pub file: File,
}

impl Part {
    /// Starts writing what was written to the part file to disk, without waiting: a file
    /// received whole is on its way to the disk while it waits for its durability round,
    /// whose fsync then mostly waits for the file system's log. Measured in
    /// bench/RESULTS.md ("Many small files on a journaled ext4").
    pub fn start_writeback(&self) {
        crate::sys::start_writeback(&self.file);
    }
}

impl Store {
    /// A store writing under `root` (already checked with [`check_output_dir`]).
    pub fn new(root: PathBuf, overwrite: bool) -> Store {
        Store { root, overwrite }
    }

    /// The output folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `rel` as a folder under the root, with any missing parents.
    ///
    /// Every component must be a real folder: an existing symlink (planted by anyone, or
    /// left by an earlier job) is refused, so nothing is ever written through one.
    pub fn make_dir(&self, rel: &Path) -> Result<PathBuf, Error> {
        let mut at = self.root.clone();
        for c in rel.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Output {
                        path: at,
                        source: io::Error::other("exists and is not a folder"),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::write(at, e)),
                },
                Err(e) => {
                    return Err(Error::Output {
                        path: at,
                        source: e,
                    })
                }
            }
        }
        Ok(at)
    }

    /// Creates the parent folders of file `rel`.
    pub fn make_parent(&self, rel: &Path) -> Result<(), Error> {
        if let Some(parent) = rel.parent() {
            self.make_dir(parent)?;
        }
        Ok(())
    }

    fn part_path(&self, rel: &Path) -> PathBuf {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.root.join(rel).with_file_name(part_name(&name))
    }

    /// What is already here of file `rel` (announced as `entry`): a part file from an
    /// interrupted transfer, or a complete file of the same size and time under the final
    /// name. Reads and hashes it, so call it off the async runtime.
    pub fn held(&self, rel: &Path, entry: &Entry) -> Result<Option<Held>, Error> {
        let part = self.part_path(rel);
        match fs::symlink_metadata(&part) {
            Ok(m) if m.is_file() && m.len() <= entry.size => {
                let (hash, hasher) = hash_file(&part)?;
                return Ok(Some(Held {
                    offset: m.len(),
                    hash,
                    hasher: Some(Box::new(hasher)),
                    complete: false,
                }));
            }
            _ => {}
        }
        let path = self.root.join(rel);
        let Ok(m) = fs::symlink_metadata(&path) else {
            return Ok(None);
        };
        let same_time = m.modified().ok() == Some(join_time(entry.mtime_secs, entry.mtime_nanos));
        if !m.is_file() || m.len() != entry.size || !same_time {
            return Ok(None);
        }
        let (hash, _) = hash_file(&path)?;
        Ok(Some(Held {
            offset: entry.size,
            hash,
            hasher: None,
            complete: true,
        }))
    }

    /// Opens (creating) and locks the part file of `rel`, positioned at `start`; `start` 0
    /// throws away whatever it held.
    pub fn open_part(&self, rel: &Path, start: u64) -> Result<Part, Error> {
        let path = self.part_path(rel);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A symlink planted under the part file's name must not redirect our writes.
            opts.custom_flags(libc::O_NOFOLLOW);
        }
        let mut file = opts
            .open(&path)
            .map_err(|e| Error::write(path.clone(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Output {
                    path,
                    source: io::Error::other("another p2pcopy is receiving this file right now"),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::write(path, e)),
        }
        if start == 0 {
            file.set_len(0).map_err(|e| Error::write(path.clone(), e))?;
        }
        file.seek(SeekFrom::Start(start))
            .map_err(|e| Error::write(path.clone(), e))?;
        Ok(Part { path, file })
    }

    /// Gives a verified part file its final name with the announced time and permissions;
    /// returns where it went. Without `--overwrite` an existing file is never replaced: the
    /// new one becomes `name (1).ext` (or the next free number).
    pub fn persist(&self, part: Part, rel: &Path, entry: &Entry) -> Result<PathBuf, Error> {
        let saved = self.persist_all(vec![(part, rel.to_owned(), entry.clone())], &[])?;
        self.flush_names(&saved)?;
        saved
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("nothing persisted".into()))
    }

    /// [`Store::persist`] for several verified part files (each with its path under the
    /// root and its entry) in one durability round: each gets its time and permissions,
    /// all are flushed to disk at once, and only when every flush has returned do they get
    /// their final names, in order. Returns where each went.
    ///
    /// The new names are not flushed yet: before anyone is told a file is stored, its
    /// name goes to [`Store::flush_names`], or as `earlier` to the next round, whose flush
    /// then carries the folders that got those names along with its own files. A stream
    /// of rounds so waits for one flush each instead of two.
    ///
    /// As safe as one at a time: a file is named only after its own fsync succeeded, so
    /// after a crash every final name holds the complete, verified file, as with
    /// [`Store::persist`]. A crash before the names leaves complete part files, which the
    /// next run claims at their full length, the sender proves by hash, and the receiver
    /// names without the data crossing again. A crash after the names but before their
    /// folders' flush may lose a name, never make one wrong: the part file or the named
    /// file is there, and the next run claims it.
    ///
    /// What the batch saves: fsyncs issued together can share one journal commit and disk
    /// cache flush (ext4's and XFS's logs group the fsyncs that arrive while a commit
    /// forms), where one after another each waits for a commit of its own, which for
    /// small files costs more than writing their data.
    pub fn persist_all(
        &self,
        batch: Vec<(Part, PathBuf, Entry)>,
        earlier: &[PathBuf],
    ) -> Result<Vec<PathBuf>, Error> {
        for (part, _, entry) in &batch {
            self.seal(part, entry)?;
        }
        let folders = open_folders(earlier)?;
        let flushes: Vec<(&File, &Path)> = batch
            .iter()
            .map(|(part, _, _)| (&part.file, part.path.as_path()))
            .chain(folders.iter().map(|(dir, path)| (dir, *path)))
            .collect();
        sync_together(&flushes)?;
        drop(flushes);
        batch
            .into_iter()
            .map(|(part, rel, _)| self.name(part, &rel))
            .collect()
    }

    /// Flushes the folders that files named by [`Store::persist_all`] went into (each
    /// folder once), so those names survive a crash.
    pub fn flush_names(&self, saved: &[PathBuf]) -> Result<(), Error> {
        let folders = open_folders(saved)?;
        let flushes: Vec<(&File, &Path)> = folders.iter().map(|(dir, path)| (dir, *path)).collect();
        sync_together(&flushes)
    }

    /// Gives a verified part file the announced time and permissions.
    fn seal(&self, part: &Part, entry: &Entry) -> Result<(), Error> {
        let werr = |e| Error::write(part.path.clone(), e);
        set_mode(&part.file, entry.mode).map_err(werr)?;
        part.file
            .set_modified(join_time(entry.mtime_secs, entry.mtime_nanos))
            .map_err(werr)
    }

    /// Gives a sealed part file, flushed to disk, its final name.
    fn name(&self, part: Part, rel: &Path) -> Result<PathBuf, Error> {
        let target = self.root.join(rel);
        if self.overwrite {
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                return Err(Error::Output {
                    path: target,
                    source: io::Error::other("a folder has that name"),
                });
            }
            fs::rename(&part.path, &target).map_err(|e| Error::write(target.clone(), e))?;
            return Ok(target);
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for n in 0..10_000 {
            let candidate = target.with_file_name(numbered(&name, n));
            // A hard link fails if the name exists, so a file created meanwhile is safe too.
            match fs::hard_link(&part.path, &candidate) {
                Ok(()) => {
                    let _ = fs::remove_file(&part.path);
                    return Ok(candidate);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) if fs::symlink_metadata(&candidate).is_err() => {
                    // File systems without hard links: a rename after the check.
                    fs::rename(&part.path, &candidate)
                        .map_err(|e| Error::write(candidate.clone(), e))?;
                    return Ok(candidate);
                }
                Err(e) => return Err(Error::write(candidate, e)),
            }
        }
        Err(Error::Write {
            path: target,
            source: io::Error::other("no free name left"),
        })
    }

    /// Deletes a part file whose data cannot be used.
    pub fn discard(&self, part: Part) {
        let _ = fs::remove_file(&part.path);
    }

    /// Creates the symlink `rel` → `target` (both checked by the caller); an identical link
    /// already there is fine, anything else there keeps its name and the link gets a number.
    pub fn make_link(&self, rel: &Path, target: &str) -> Result<PathBuf, Error> {
        let at = self.root.join(rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for n in 0..10_000 {
            let candidate = at.with_file_name(numbered(&name, n));
            if fs::read_link(&candidate).is_ok_and(|t| t == Path::new(target)) {
                return Ok(candidate);
            }
            match symlink(target, &candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::write(candidate, e)),
            }
        }
        Err(Error::Write {
            path: at,
            source: io::Error::other("no free name left"),
        })
    }

    /// Gives folder `rel` its announced time and permissions (after its contents are in,
    /// since writing into it changes its time). The owner keeps full access, so a later
    /// run can still resume into it.
    pub fn finish_dir(&self, rel: &Path, entry: &Entry) -> Result<(), Error> {
        let at = self.root.join(rel);
        let err = |e| Error::write(at.clone(), e);
        let dir = File::open(&at).map_err(err)?;
        dir.set_modified(join_time(entry.mtime_secs, entry.mtime_nanos))
            .map_err(err)?;
        set_mode(&dir, entry.mode | 0o700).map_err(err)
    }

    /// Bytes free for us under the root, if the OS says.
    pub fn free_space(&self) -> Option<u64> {
        crate::sys::free_space(&self.root)
    }
}

/// Most threads one durability round flushes on: enough fsyncs at once for the file system
/// to group them into few journal commits, few enough that spawning them costs little next
/// to a flush (where fsync costs nothing, as on tmpfs, the threads are all the cost).
const SYNC_THREADS: usize = 8;

/// Flushes every file to disk (each with its path, for the error), on up to
/// [`SYNC_THREADS`] threads at once, and waits for them all; the first failure is the
/// result.
fn sync_together(files: &[(&File, &Path)]) -> Result<(), Error> {
    let sync = |&(file, path): &(&File, &Path)| {
        file.sync_all()
            .map_err(|e| Error::write(path.to_owned(), e))
    };
    let threads = files.len().min(SYNC_THREADS);
    if threads <= 1 {
        return files.iter().try_for_each(sync);
    }
    // Thread t flushes files t, t + threads, ...
    let share = |t: usize| files.iter().skip(t).step_by(threads);
    std::thread::scope(|scope| {
        let mut waits = Vec::with_capacity(threads);
        for t in 0..threads {
            let thread = std::thread::Builder::new().name("p2pcopy-fsync".into());
            match thread.spawn_scoped(scope, move || share(t).try_for_each(sync)) {
                Ok(wait) => waits.push(wait),
                // No thread to spare: this one flushes that share, only less at once.
                Err(_) => share(t).try_for_each(sync)?,
            }
        }
        for wait in waits {
            wait.join()
                .map_err(|_| Error::Internal("an fsync thread panicked".into()))??;
        }
        Ok(())
    })
}

/// The folders holding `files` (each once), opened for a flush of their names.
#[cfg(unix)]
fn open_folders(files: &[PathBuf]) -> Result<Vec<(File, &Path)>, Error> {
    let mut folders: Vec<(File, &Path)> = Vec::new();
    for dir in files.iter().filter_map(|f| f.parent()) {
        // A round's files mostly share a few folders: a short list beats a set.
        if folders.iter().any(|(_, d)| *d == dir) {
            continue;
        }
        let opened = File::open(dir).map_err(|e| Error::write(dir.to_owned(), e))?;
        folders.push((opened, dir));
    }
    Ok(folders)
}

/// Elsewhere a folder cannot be opened as a file; NTFS logs its names itself.
#[cfg(not(unix))]
fn open_folders(_files: &[PathBuf]) -> Result<Vec<(File, &Path)>, Error> {
    Ok(Vec::new())
}

/// The hidden name of the part file for final name `name`.
pub fn part_name(name: &str) -> String {
    const ROOM: usize = 255 - 1 - PART_SUFFIX.len();
    if name.len() <= ROOM {
        return format!(".{name}{PART_SUFFIX}");
    }
    // Over-long names keep a prefix and a hash of the whole, to stay unique and within 255.
    let mut cut = ROOM - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let tag = blake3::hash(name.as_bytes()).to_hex();
    format!(".{}.{}{PART_SUFFIX}", &name[..cut], &tag[..16])
}

fn hash_file(path: &Path) -> Result<(blake3::Hash, blake3::Hasher), Error> {
    let err = |e| Error::Output {
        path: path.to_owned(),
        source: e,
    };
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(File::open(path).map_err(err)?)
        .map_err(err)?;
    Ok((hasher.finalize(), hasher))
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Never group- or world-writable, whatever the sender had: its users are not ours.
    file.set_permissions(fs::Permissions::from_mode(mode & 0o755))
}

#[cfg(not(unix))]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    let mut p = file.metadata()?.permissions();
    p.set_readonly(mode & 0o200 == 0);
    file.set_permissions(p)
}

#[cfg(unix)]
fn symlink(target: &str, at: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn symlink(_target: &str, _at: &Path) -> io::Result<()> {
    Err(io::Error::other("symbolic links are not supported here"))
}

/// `name` for n = 0, else `stem (n).ext`.
pub fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// Checks that received files can be created in `dir`, before any network work.
pub fn check_output_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::Output {
        path: dir.to_owned(),
        source,
    };
    let meta = fs::metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(io::Error::other("not a directory")));
    }
    let probe = dir.join(format!(".p2pcopy-write-test.{:08x}", rand::random::<u32>()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(err)?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EntryKind;
    use std::io::Write;

    fn entry(size: u64) -> Entry {
        Entry {
            kind: EntryKind::File,
            path: String::new(),
            size,
            mode: 0o644,
            mtime_secs: 1_600_000_000,
            mtime_nanos: 5,
            target: String::new(),
        }
    }

    #[test]
    fn numbering() {
        assert_eq!(numbered("x.tif", 0), "x.tif");
        assert_eq!(numbered("x.tif", 2), "x (2).tif");
        assert_eq!(numbered("Makefile", 1), "Makefile (1)");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
    }

    #[test]
    fn part_names_fit() {
        assert_eq!(part_name("x.tif"), ".x.tif.p2pcopy-part");
        let long = "é".repeat(127);
        let p = part_name(&long);
        assert!(p.len() <= 255 && p.ends_with(PART_SUFFIX), "{}", p.len());
        assert_ne!(p, part_name(&format!("{long}x")));
    }

    #[test]
    fn persist_never_overwrites_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned(), false);
        fs::write(dir.path().join("a.txt"), b"old").unwrap();
        let rel = Path::new("a.txt");
        let mut part = store.open_part(rel, 0).unwrap();
        part.file.write_all(b"new").unwrap();
        let saved = store.persist(part, rel, &entry(3)).unwrap();
        assert_eq!(saved, dir.path().join("a (1).txt"));
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"old");
        assert_eq!(fs::read(&saved).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&saved).unwrap().modified().unwrap(),
            join_time(1_600_000_000, 5)
        );

        let store = Store::new(dir.path().to_owned(), true);
        let mut part = store.open_part(rel, 0).unwrap();
        part.file.write_all(b"newer").unwrap();
        assert_eq!(
            store.persist(part, rel, &entry(5)).unwrap(),
            dir.path().join("a.txt")
        );
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"newer");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a (1).txt", "a.txt"]);
    }

    #[test]
    fn a_batch_is_named_only_after_its_flush_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned(), false);
        fs::write(dir.path().join("b.txt"), b"old").unwrap();
        let mut batch = Vec::new();
        for (name, data) in [("a.txt", &b"one"[..]), ("b.txt", b"two"), ("c", b"")] {
            let rel = Path::new(name);
            let mut part = store.open_part(rel, 0).unwrap();
            part.file.write_all(data).unwrap();
            batch.push((part, rel.to_owned(), entry(data.len() as u64)));
        }
        let saved = store.persist_all(batch, &[]).unwrap();
        store.flush_names(&saved).unwrap();
        let root = dir.path();
        assert_eq!(
            saved,
            [root.join("a.txt"), root.join("b (1).txt"), root.join("c")]
        );
        assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"old");
        assert_eq!(fs::read(root.join("b (1).txt")).unwrap(), b"two");
        for p in &saved {
            let m = fs::metadata(p).unwrap();
            assert_eq!(m.modified().unwrap(), join_time(1_600_000_000, 5));
        }
        let mut names: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a.txt", "b (1).txt", "b.txt", "c"]);
        assert!(store.persist_all(Vec::new(), &saved).unwrap().is_empty());
    }

    #[test]
    fn part_files_resume_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned(), false);
        let rel = Path::new("big.bin");
        assert!(store.held(rel, &entry(10)).unwrap().is_none());
        let mut part = store.open_part(rel, 0).unwrap();
        part.file.write_all(b"hello").unwrap();
        // A second writer is refused while the first holds the lock.
        assert!(matches!(store.open_part(rel, 0), Err(Error::Output { .. })));
        drop(part);
        let held = store.held(rel, &entry(10)).unwrap().unwrap();
        assert_eq!(held.offset, 5);
        assert_eq!(held.hash, blake3::hash(b"hello"));
        assert!(!held.complete);
        // More bytes than the file has: not a prefix of it.
        assert!(store.held(rel, &entry(4)).unwrap().is_none());
        let mut part = store.open_part(rel, 5).unwrap();
        part.file.write_all(b" world").unwrap();
        let mut hasher = held.hasher.unwrap();
        hasher.update(b" world");
        assert_eq!(hasher.finalize(), blake3::hash(b"hello world"));
        let saved = store.persist(part, rel, &entry(11)).unwrap();
        assert_eq!(fs::read(&saved).unwrap(), b"hello world");
        // The finished file, same size and time, is offered as complete.
        let held = store.held(rel, &entry(11)).unwrap().unwrap();
        assert!(held.complete && held.offset == 11);
        let mut newer = entry(11);
        newer.mtime_secs += 1;
        assert!(store.held(rel, &newer).unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let store = Store::new(dir.path().to_owned(), false);
        assert!(matches!(
            store.make_parent(Path::new("evil/x.txt")),
            Err(Error::Output { .. })
        ));
        std::os::unix::fs::symlink(outside.path().join("p"), dir.path().join(".f.p2pcopy-part"))
            .unwrap();
        assert!(store.open_part(Path::new("f"), 0).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        // Links: identical ones are kept, others get a number.
        assert_eq!(
            store.make_link(Path::new("l"), "x").unwrap(),
            dir.path().join("l")
        );
        assert_eq!(
            store.make_link(Path::new("l"), "x").unwrap(),
            dir.path().join("l")
        );
        assert_eq!(
            store.make_link(Path::new("l"), "y").unwrap(),
            dir.path().join("l (1)")
        );
    }

    #[test]
    fn output_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        check_output_dir(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(matches!(
            check_output_dir(&dir.path().join("missing")),
            Err(Error::Output { .. })
        ));
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(matches!(check_output_dir(&file), Err(Error::Output { .. })));
        assert!(
            Store::new(dir.path().to_owned(), false)
                .free_space()
                .unwrap()
                > 0
        );
    }
}
