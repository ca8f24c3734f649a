//! Small files' disk work off the network task, in two stages that overlap: a writer
//! thread creates, writes and hashes each part file, and a syncer thread makes the
//! verified ones durable in rounds and gives them their final names.
//!
//! The network task reads a small file whole into memory (at most [`SMALL_FILE`]), hands
//! it over and goes on to the next data stream without waiting for the disk; verdicts
//! come back through [`Pipeline::next`] as their rounds finish. Before, the network task
//! created each part file itself and stopped for every round of fsyncs: profiled on the
//! `small` bench (3,000 files, ext4), creating inodes and waiting for fsyncs were most of
//! the receiver's time, and the sender sat idle behind them (bench/RESULTS.md, "Many
//! small files: a pipeline on the receiver").
//!
//! A round is whatever the writer verified while the syncer flushed the last one (at most
//! [`ROUND_FILES`]): on a fast disk rounds stay small and verdicts quick, on a slow one
//! they grow, and each fsync round costs about the same whatever its size.
//!
//! A small file reaches the disk only once it arrived whole: a connection lost in the
//! middle of one sends it again from its start (at most [`SMALL_FILE`]), where a large
//! file resumes from what arrived.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::shown::shown;
use crate::transfer::store::{Part, Store};
use crate::wire::{Entry, FileStatus, Trailer};

/// Files at most this large (what is left of them) go through the pipeline; a larger
/// one is received and flushed on its own, after the pipeline has settled, so no
/// verdict waits for a large file to cross.
pub(super) const SMALL_FILE: u64 = 1 << 20;
/// Bytes of small files held in memory between the network task and the writer.
const BUDGET_KIB: usize = 8 << 10;
/// Most files in one durability round.
const ROUND_FILES: usize = 64;
/// Most verified files waiting for the syncer: each is an open part file until named.
const QUEUE_FILES: usize = 128;

/// One small file, all its data in memory, for the writer.
pub(super) struct Job {
    pub(super) index: u32,
    pub(super) rel: PathBuf,
    pub(super) entry: Entry,
    /// Where `data` goes in the part file (the resumed prefix before it).
    pub(super) start: u64,
    /// The hasher after the first `start` bytes.
    pub(super) hasher: blake3::Hasher,
    pub(super) data: Vec<u8>,
    pub(super) trailer: Trailer,
    /// Its share of [`BUDGET_KIB`], given back once written.
    pub(super) permit: OwnedSemaphorePermit,
}

/// What the pipeline reports, in an order consistent with the jobs: a `Settled` comes
/// after the verdicts of every job handed over before the [`Pipeline::settle`] call.
#[derive(Debug)]
pub(super) enum Done {
    /// A file's verdict: where it is stored, or why not; with our hash of it.
    File {
        index: u32,
        saved: Result<PathBuf, FileStatus>,
        hash: blake3::Hash,
    },
    /// Every job handed over before the matching [`Pipeline::settle`] is reported.
    Settled,
    /// The disk failed; the job ends.
    Failed(Error),
}

enum Msg {
    /// Boxed: a job carries a hasher (~1.9 KB).
    Job(Box<Job>),
    Settle,
}

/// A verified part file waiting for its round, or a settle marker.
enum Item {
    File(u32, Part, PathBuf, Entry, blake3::Hash),
    Settle,
}

/// The writer and the syncer of one connection.
pub(super) struct Pipeline {
    jobs: std::sync::mpsc::Sender<Msg>,
    done: mpsc::UnboundedReceiver<Done>,
    budget: Arc<Semaphore>,
    /// Settle requests not yet answered.
    settling: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the two threads, writing into `store`.
    pub(super) fn start(store: Store) -> Result<Pipeline, Error> {
        let (jobs, jobs_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::default());
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        let (q, tx, s) = (Arc::clone(&queue), done_tx.clone(), store.clone());
        let failed = |e| Error::Internal(format!("cannot start a disk thread: {e}"));
        let writer = spawn("p2pcopy-write")
            .spawn(move || write_all(&s, jobs_rx, &q, &tx))
            .map_err(failed)?;
        let syncer = spawn("p2pcopy-sync").spawn(move || sync_all(&store, &queue, &done_tx));
        let syncer = match syncer {
            Ok(t) => t,
            Err(e) => {
                // The writer ends with its channel.
                drop(jobs);
                let _ = writer.join();
                return Err(failed(e));
            }
        };
        Ok(Pipeline {
            jobs,
            done,
            budget: Arc::new(Semaphore::new(BUDGET_KIB)),
            settling: 0,
            threads: vec![writer, syncer],
        })
    }

    /// The two threads, to join once the pipeline is dropped: they finish what was handed
    /// over (files verified get their names, unreported), which a reconnect must not race.
    pub(super) fn take_threads(&mut self) -> Vec<std::thread::JoinHandle<()>> {
        std::mem::take(&mut self.threads)
    }

    /// Waits for room for a file of `len` bytes in memory.
    pub(super) async fn reserve(&self, len: u64) -> Result<OwnedSemaphorePermit, Error> {
        let kib = (len / 1024 + 1).min(BUDGET_KIB as u64) as u32;
        Arc::clone(&self.budget)
            .acquire_many_owned(kib)
            .await
            .map_err(|_| Error::Internal("the write budget closed".into()))
    }

    /// Hands a file to the writer.
    pub(super) fn push(&mut self, job: Job) -> Result<(), Error> {
        self.jobs
            .send(Msg::Job(Box::new(job)))
            .map_err(|_| self.stopped())
    }

    /// Asks for a `Settled` once every file handed over so far has its verdict.
    pub(super) fn settle(&mut self) -> Result<(), Error> {
        self.jobs.send(Msg::Settle).map_err(|_| self.stopped())?;
        self.settling += 1;
        Ok(())
    }

    /// Why the writer no longer takes jobs: the disk error it reported.
    fn stopped(&mut self) -> Error {
        while let Ok(d) = self.done.try_recv() {
            if let Done::Failed(e) = d {
                return e;
            }
        }
        gone()
    }

    /// Settle requests whose `Settled` is still to come.
    pub(super) fn settling(&self) -> usize {
        self.settling
    }

    /// The next report, if one is ready.
    pub(super) fn try_next(&mut self) -> Option<Done> {
        let d = self.done.try_recv().ok()?;
        Some(self.count(d))
    }

    /// Waits for the next report.
    pub(super) async fn next(&mut self) -> Done {
        match self.done.recv().await {
            Some(d) => self.count(d),
            None => Done::Failed(gone()),
        }
    }

    fn count(&mut self, d: Done) -> Done {
        if matches!(d, Done::Settled) {
            self.settling = self.settling.saturating_sub(1);
        }
        d
    }
}

fn gone() -> Error {
    Error::Internal("the disk threads stopped".into())
}

/// The writer: each job's part file created, written and hashed, in order; verified
/// files queued for the syncer, others reported at once.
fn write_all(
    store: &Store,
    jobs: std::sync::mpsc::Receiver<Msg>,
    queue: &Queue,
    done: &mpsc::UnboundedSender<Done>,
) {
    // Ends when the network task drops the pipeline, or on the first disk error.
    for msg in jobs {
        let job = match msg {
            Msg::Job(job) => job,
            Msg::Settle => {
                queue.push(Item::Settle);
                continue;
            }
        };
        match write_one(store, *job) {
            Ok(Ok(item)) => queue.push(item),
            Ok(Err(report)) => {
                let _ = done.send(report);
            }
            Err(e) => {
                let _ = done.send(Done::Failed(e));
                break;
            }
        }
    }
    queue.close();
}

/// Writes one file's part; `Ok(Err(_))` is a file that did not verify, already discarded.
fn write_one(store: &Store, job: Job) -> Result<Result<Item, Done>, Error> {
    let Job {
        index,
        rel,
        entry,
        start,
        mut hasher,
        data,
        trailer,
        permit,
    } = job;
    let mut part = store.open_part(&rel, start)?;
    let written = part.file.write_all(&data);
    hasher.update(&data);
    drop((data, permit));
    // On a write error the part data stays for the next run: the disk is the problem.
    written.map_err(|e| Error::write(part.path.clone(), e))?;
    let ours = hasher.finalize();
    let status = match trailer {
        Trailer::Complete(theirs) if theirs == *ours.as_bytes() => {
            part.start_writeback();
            return Ok(Ok(Item::File(index, part, rel, entry, ours)));
        }
        Trailer::Complete(_) => {
            tracing::warn!(path = %shown(&entry.path), "BLAKE3 mismatch; discarding");
            FileStatus::HashMismatch
        }
        Trailer::SourceChanged => FileStatus::SourceChanged,
    };
    store.discard(part);
    Ok(Err(Done::File {
        index,
        saved: Err(status),
        hash: ours,
    }))
}

/// The syncer: takes what the writer verified, makes it durable and named in rounds
/// ([`Store::persist_all`]), reports each file once its name is flushed too; answers
/// settle markers in order.
///
/// A round's names are flushed by the next round's flush while more files wait (so each
/// round waits for one flush, not two), and by a flush of their own once none wait: a
/// verdict waits at most for the round after it.
fn sync_all(store: &Store, queue: &Queue, done: &mpsc::UnboundedSender<Done>) {
    let mut round = Vec::new();
    let mut named = Named::default();
    loop {
        // With names held, what is queued now: an idle moment flushes them at once.
        let Some(items) = queue.take(ROUND_FILES, named.is_empty()) else {
            break;
        };
        for item in items {
            match item {
                Item::File(index, part, rel, entry, hash) => {
                    round.push((index, hash, part, rel, entry))
                }
                Item::Settle => {
                    if !persist(store, &mut round, &mut named, done) || !named.flush(store, done) {
                        return queue.close();
                    }
                    let _ = done.send(Done::Settled);
                }
            }
        }
        let ok = if round.is_empty() {
            named.flush(store, done)
        } else {
            persist(store, &mut round, &mut named, done)
        };
        if !ok {
            return queue.close();
        }
    }
    named.flush(store, done);
}

/// Files named whose folders are not flushed yet: not reported until they are.
#[derive(Default)]
struct Named {
    ids: Vec<(u32, blake3::Hash)>,
    paths: Vec<PathBuf>,
}

impl Named {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Reports every file held, its name now durable.
    fn report(&mut self, done: &mpsc::UnboundedSender<Done>) {
        for ((index, hash), at) in self.ids.drain(..).zip(self.paths.drain(..)) {
            let _ = done.send(Done::File {
                index,
                saved: Ok(at),
                hash,
            });
        }
    }

    /// Flushes the held names on their own and reports them; false if the disk failed.
    fn flush(&mut self, store: &Store, done: &mpsc::UnboundedSender<Done>) -> bool {
        if self.is_empty() {
            return true;
        }
        match store.flush_names(&self.paths) {
            Ok(()) => {
                self.report(done);
                true
            }
            Err(e) => {
                let _ = done.send(Done::Failed(e));
                false
            }
        }
    }
}

/// One durability round for `round`, whose flush also carries the names held in `named`
/// (reported then); the round's own names are held in their place. False if the disk
/// failed.
fn persist(
    store: &Store,
    round: &mut Vec<(u32, blake3::Hash, Part, PathBuf, Entry)>,
    named: &mut Named,
    done: &mpsc::UnboundedSender<Done>,
) -> bool {
    if round.is_empty() {
        return true;
    }
    let (ids, batch): (Vec<_>, Vec<_>) = round
        .drain(..)
        .map(|(index, hash, part, rel, entry)| ((index, hash), (part, rel, entry)))
        .unzip();
    match store.persist_all(batch, &named.paths) {
        Ok(saved) => {
            named.report(done);
            named.ids = ids;
            named.paths = saved;
            true
        }
        Err(e) => {
            let _ = done.send(Done::Failed(e));
            false
        }
    }
}

/// The writer's verified files and settle markers, for the syncer; bounded by
/// [`QUEUE_FILES`].
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    closed: bool,
}

impl Queue {
    /// Adds an item, waiting while the queue is full (unless it was closed).
    fn push(&self, item: Item) {
        let Ok(mut s) = self.state.lock() else { return };
        while s.items.len() >= QUEUE_FILES && !s.closed {
            s = match self.changed.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
        if !s.closed {
            s.items.push_back(item);
            self.changed.notify_all();
        }
    }

    /// Takes up to `most` items, waiting for at least one if `wait` (else maybe none);
    /// `None` once closed and empty.
    fn take(&self, most: usize, wait: bool) -> Option<Vec<Item>> {
        let mut s = self.state.lock().ok()?;
        while s.items.is_empty() {
            if s.closed {
                return None;
            }
            if !wait {
                break;
            }
            s = self.changed.wait(s).ok()?;
        }
        let n = s.items.len().min(most);
        let items = s.items.drain(..n).collect();
        self.changed.notify_all();
        Some(items)
    }

    /// No more items: the syncer finishes what is queued (the writer's end), or the
    /// writer stops adding (the syncer's failure).
    fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EntryKind;
    use std::collections::HashMap;

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            kind: EntryKind::File,
            path: path.into(),
            size,
            mode: 0o640,
            mtime_secs: 1_600_000_000,
            mtime_nanos: 7,
            target: String::new(),
        }
    }

    /// A job for `data` under `name`, with the trailer a sender would send (or `lie`).
    async fn job(pipe: &Pipeline, index: u32, name: &str, data: &[u8], lie: bool) -> Job {
        let hash = if lie {
            [9; 32]
        } else {
            *blake3::hash(data).as_bytes()
        };
        Job {
            index,
            rel: name.into(),
            entry: entry(name, data.len() as u64),
            start: 0,
            hasher: blake3::Hasher::new(),
            data: data.to_vec(),
            trailer: Trailer::Complete(hash),
            permit: pipe.reserve(data.len() as u64).await.unwrap(),
        }
    }

    /// Reports until the next `Settled`, by file.
    async fn until_settled(
        pipe: &mut Pipeline,
    ) -> HashMap<u32, (Result<PathBuf, FileStatus>, blake3::Hash)> {
        let mut got = HashMap::new();
        loop {
            match pipe.next().await {
                Done::File { index, saved, hash } => {
                    assert!(got.insert(index, (saved, hash)).is_none(), "{index} twice");
                }
                Done::Settled => return got,
                Done::Failed(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn verified_files_are_named_durably_and_each_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned(), false);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut pipe = Pipeline::start(store).unwrap();
        // More than a round, so rounds and the queue's bound both come into play.
        let n = (QUEUE_FILES + ROUND_FILES + 3) as u32;
        for i in 0..n {
            let data = format!("file {i}").repeat(i as usize % 50);
            let j = job(&pipe, i, &format!("sub/f{i}"), data.as_bytes(), false).await;
            pipe.push(j).unwrap();
        }
        pipe.settle().unwrap();
        let got = until_settled(&mut pipe).await;
        assert_eq!(pipe.settling(), 0);
        assert_eq!(got.len(), n as usize);
        for i in 0..n {
            let data = format!("file {i}").repeat(i as usize % 50);
            let (saved, hash) = &got[&i];
            let at = saved.as_ref().unwrap();
            assert_eq!(at, &dir.path().join(format!("sub/f{i}")));
            assert_eq!(std::fs::read(at).unwrap(), data.as_bytes());
            assert_eq!(*hash, blake3::hash(data.as_bytes()));
        }
        // No part file is left, and nothing is reported after the settle.
        let names = std::fs::read_dir(dir.path().join("sub")).unwrap().count();
        assert_eq!(names, n as usize);
        assert!(pipe.try_next().is_none());
    }

    #[tokio::test]
    async fn verdicts_come_without_a_settle_once_no_file_follows() {
        // A round's verdicts wait for its names' flush, which the next round's flush
        // carries while files keep coming: the last round must not wait for a next one.
        let dir = tempfile::tempdir().unwrap();
        let mut pipe = Pipeline::start(Store::new(dir.path().to_owned(), false)).unwrap();
        for i in 0..3u32 {
            let j = job(&pipe, i, &format!("f{i}"), b"data", false).await;
            pipe.push(j).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), pipe.next());
            match next.await {
                Ok(Done::File { index, saved, .. }) => {
                    assert_eq!(std::fs::read(saved.unwrap()).unwrap(), b"data");
                    got.push(index);
                }
                other => panic!("{other:?}"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2]);
    }

    #[tokio::test]
    async fn files_that_do_not_verify_get_no_name_and_their_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut pipe = Pipeline::start(Store::new(dir.path().to_owned(), false)).unwrap();
        let good = job(&pipe, 0, "good", b"good data", false).await;
        let bad = job(&pipe, 1, "bad", b"bad data", true).await;
        let mut changed = job(&pipe, 2, "changed", b"half of it", false).await;
        changed.trailer = Trailer::SourceChanged;
        for j in [good, bad, changed] {
            pipe.push(j).unwrap();
        }
        pipe.settle().unwrap();
        let got = until_settled(&mut pipe).await;
        assert!(got[&0].0.is_ok());
        assert_eq!(got[&1].0, Err(FileStatus::HashMismatch));
        assert_eq!(got[&2].0, Err(FileStatus::SourceChanged));
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["good"]);
    }

    #[tokio::test]
    async fn a_resumed_file_continues_its_part_and_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned(), false);
        let whole = b"the first half, then the second half";
        let (head, tail) = whole.split_at(15);
        std::fs::write(dir.path().join(crate::transfer::part_name("f")), head).unwrap();
        let mut pipe = Pipeline::start(store).unwrap();
        let mut hasher = blake3::Hasher::new();
        hasher.update(head);
        let mut j = job(&pipe, 4, "f", tail, false).await;
        (j.start, j.hasher, j.entry.size) = (15, hasher, whole.len() as u64);
        j.trailer = Trailer::Complete(*blake3::hash(whole).as_bytes());
        pipe.push(j).unwrap();
        pipe.settle().unwrap();
        let got = until_settled(&mut pipe).await;
        assert_eq!(got[&4].1, blake3::hash(whole));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), whole);
    }

    #[tokio::test]
    async fn a_disk_error_is_reported_and_ends_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let mut pipe = Pipeline::start(Store::new(dir.path().to_owned(), false)).unwrap();
        // Its folder was never made: the part file cannot be created.
        let j = job(&pipe, 0, "missing/f", b"data", false).await;
        pipe.push(j).unwrap();
        let failed = match pipe.next().await {
            Done::Failed(e) => e,
            other => panic!("{other:?}"),
        };
        assert!(matches!(failed, Error::Write { .. }), "{failed:?}");
        // Both threads end, and handing over more fails.
        for t in pipe.take_threads() {
            t.join().unwrap();
        }
        let j = job(&pipe, 1, "f", b"data", false).await;
        assert!(pipe.push(j).and_then(|()| pipe.settle()).is_err());
    }
}
