//! The receiver's half of a job.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use quinn::{Connection, ReadError, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::store::{Held, Store};
use super::watchdog::{heartbeat_every, Waiting, Watch};
use super::{
    closed, explain, lost_read, lost_write, read_exact_err, read_frame, wire, FileDone, Observer,
    Options, Report, CHUNK, PIPELINE,
};
use crate::error::Error;
use crate::manifest::{confine, link_stays_inside};
use crate::shown::shown;
use crate::wire::{
    entry_cost, segment_end, Claim, DataHead, Entry, EntryKind, FileStatus, Frame, Trailer,
    DATA_HEAD_LEN, FLAG_AUTHENTICATED, FLAG_HEARTBEAT, RESET_SOURCE_CHANGED, STOP_STORE_FAILED,
    TRAILER_LEN,
};

/// A job being received, kept across reconnects.
pub struct Incoming {
    store: Store,
    /// Files verified in this run: (path, size) → hash. A reconnect claims them without
    /// hashing them again.
    verified: HashMap<(PathBuf, u64), blake3::Hash>,
    report: Report,
    renamed: HashMap<String, PathBuf>,
    /// Entries stored in this run (on any connection).
    stored_now: HashSet<u32>,
    /// Entries the observer was told are done: a reconnect reports them again as already
    /// there, which is no news.
    reported: HashSet<u32>,
}

/// One announced entry, checked.
struct Checked {
    entry: Entry,
    rel: PathBuf,
}

/// The control stream back to the sender, and how to keep it informed.
struct Control<'a> {
    send: &'a mut SendStream,
    watch: &'a Watch,
    /// How often to tell the sender we are busy on our disk; `None` if it does not
    /// understand heartbeats.
    heartbeat: Option<Duration>,
}

impl Control<'_> {
    /// Writes control frames, watching that the sender reads them.
    async fn write(&mut self, frames: &[u8]) -> Result<(), Error> {
        let send = &mut *self.send;
        self.watch
            .guard(Waiting::Reading, async {
                send.write_all(frames).await.map_err(lost_write)
            })
            .await
    }

    /// Waits for local work on a blocking thread, sending heartbeats meanwhile: hashing a
    /// large held file or flushing one to a slow disk takes longer than the sender's
    /// patience, and QUIC keep-alives alone do not tell it we are still working.
    async fn busy<T>(&mut self, work: JoinHandle<T>) -> Result<T, Error> {
        let mut work = std::pin::pin!(work);
        let internal = |e: tokio::task::JoinError| Error::Internal(e.to_string());
        let Some(every) = self.heartbeat else {
            return work.await.map_err(internal);
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = Vec::new();
        Frame::Busy.encode(&mut beat);
        loop {
            tokio::select! {
                r = &mut work => return r.map_err(internal),
                _ = tick.tick() => self.write(&beat).await?,
            }
        }
    }
}

impl Incoming {
    /// A receiver writing into `store`.
    pub fn new(store: Store) -> Incoming {
        Incoming {
            store,
            verified: HashMap::new(),
            report: Report::default(),
            renamed: HashMap::new(),
            stored_now: HashSet::new(),
            reported: HashSet::new(),
        }
    }

    /// What the job did so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Where the output goes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the file announced as `name` was stored.
    fn saved_path(&self, name: &str) -> Option<PathBuf> {
        match self.renamed.get(name) {
            Some(p) => Some(p.clone()),
            None => Some(self.store.root().join(confine(name).ok()?)),
        }
    }

    /// Where the single file of a one-file job was stored, if it was.
    pub fn saved_as(&self) -> Option<PathBuf> {
        self.saved_path(&self.report.hashes.first()?.0)
    }

    /// Each stored file's path relative to the output folder, with its BLAKE3.
    pub fn saved_hashes(&self) -> impl Iterator<Item = (String, blake3::Hash)> + '_ {
        self.report.hashes.iter().filter_map(|(name, h)| {
            let at = self.saved_path(name)?;
            let rel = at.strip_prefix(self.store.root()).unwrap_or(&at);
            Some((rel.to_string_lossy().into_owned(), *h))
        })
    }

    /// Receives the job the peer offers on `conn`, telling `observer` how it goes; called
    /// again after a reconnect.
    pub async fn run(
        &mut self,
        conn: &Connection,
        opts: Options,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        match self.run_once(conn, opts, observer).await {
            Err(e) => Err(explain(conn, e).await),
            ok => ok,
        }
    }

    async fn run_once(
        &mut self,
        conn: &Connection,
        opts: Options,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let first = self.report.connection_started();
        let watch = Watch::new(conn, opts.stall_timeout);
        let (mut send, mut recv) = watch
            .guard(Waiting::Offer, async {
                conn.accept_bi().await.map_err(|e| closed(&e))
            })
            .await?;
        let offer = match watch.guard(Waiting::Offer, read_frame(&mut recv)).await? {
            Frame::Offer(o) => o,
            other => return Err(unexpected(&other)),
        };
        self.report.peer_authenticated = offer.flags & FLAG_AUTHENTICATED != 0;
        let limit = opts.manifest_limit;
        let entries = watch
            .guard(
                Waiting::Manifest,
                read_manifest(&mut recv, offer.entries, offer.total, limit),
            )
            .await?;
        self.report.tally(&entries);
        let mut ctl = Control {
            send: &mut send,
            watch: &watch,
            heartbeat: (offer.flags & FLAG_HEARTBEAT != 0)
                .then(|| heartbeat_every(opts.stall_timeout)),
        };

        // Folders first, then what is already here: both touch the disk, off the runtime.
        let store = self.store.clone();
        // Lent to the disk thread rather than copied: it holds a path per file. Lost only
        // if this connection fails meanwhile; a reconnect then hashes those files again.
        let verified = std::mem::take(&mut self.verified);
        let (prepared, verified) = ctl
            .busy(tokio::task::spawn_blocking(move || {
                let prepared = prepare(&store, entries, &verified);
                (prepared, verified)
            }))
            .await?;
        self.verified = verified;
        let (entries, held) = prepared?;

        let have: u64 = held.values().map(|h| h.offset).sum();
        let need = offer.total.saturating_sub(have);
        if let Some(free) = self.store.free_space() {
            if need > free {
                return Err(Error::NoSpace {
                    path: self.store.root().to_owned(),
                    need,
                    free,
                });
            }
        }

        let mut buf = Vec::new();
        Frame::Accept {
            flags: opts.flags(),
        }
        .encode(&mut buf);
        let mut claims: Vec<_> = held.iter().collect();
        claims.sort_by_key(|(i, _)| **i);
        for (&index, h) in claims {
            Frame::Claim(Claim {
                index,
                offset: h.offset,
                hash: *h.hash.as_bytes(),
            })
            .encode(&mut buf);
        }
        Frame::PlanEnd.encode(&mut buf);
        ctl.write(&buf).await?;
        self.report.plan(observer, have);

        let mut held = held;
        let mut pending: HashSet<u32> = entries
            .iter()
            .enumerate()
            .filter(|(_, c)| c.entry.kind == EntryKind::File)
            .map(|(i, _)| i as u32)
            .collect();
        let mut statuses: Vec<(u32, FileStatus, blake3::Hash)> = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let (mut stream, head) = watch.guard(Waiting::NextFile, accept_data(conn)).await?;
            if !pending.remove(&head.index) {
                return Err(Error::Protocol(format!(
                    "the sender sent data for entry {} which is not an awaited file",
                    head.index
                )));
            }
            let c = &entries[head.index as usize];
            let claim = held.remove(&head.index);
            let claimed = claim.as_ref().map_or(0, |h| h.offset);
            if head.start != 0 && head.start != claimed {
                return Err(Error::Protocol(format!(
                    "the sender continues {} at byte {} but {} were claimed",
                    c.entry.path, head.start, claimed
                )));
            }
            self.report
                .file_started(observer, &c.entry.path, first, claimed, head.start);
            let got = receive_file(
                &self.store,
                conn,
                &mut ctl,
                &mut stream,
                head.index,
                c,
                head.start,
                claim,
                observer,
                &mut self.report,
            )
            .await;
            let (outcome, hash) = match got {
                Ok(x) => x,
                Err(e) => {
                    if matches!(
                        e,
                        Error::DiskFull { .. } | Error::Write { .. } | Error::Output { .. }
                    ) {
                        let _ = stream.stop(STOP_STORE_FAILED.into());
                    }
                    return Err(e);
                }
            };
            let own_name = self.store.root().join(&c.rel);
            let (status, saved_as) = match outcome {
                Outcome::Stored(p) => {
                    if p != own_name {
                        self.renamed.insert(c.entry.path.clone(), p.clone());
                    }
                    self.stored_now.insert(head.index);
                    (FileStatus::Stored, p)
                }
                Outcome::Status(s) => (s, own_name),
            };
            if matches!(status, FileStatus::Stored | FileStatus::AlreadyThere) {
                self.verified.insert((c.rel.clone(), c.entry.size), hash);
                if self.reported.insert(head.index) {
                    observer.file_done(&FileDone {
                        path: &c.entry.path,
                        size: c.entry.size,
                        hash,
                        status,
                        saved_as: Some(&saved_as),
                    });
                }
            }
            statuses.push((head.index, status, hash));
            let mut b = Vec::new();
            Frame::FileDone {
                index: head.index,
                status,
            }
            .encode(&mut b);
            ctl.write(&b).await?;
        }

        let store = self.store.clone();
        let (entries, link_renames) = ctl
            .busy(tokio::task::spawn_blocking(move || {
                finish_tree(&store, &entries).map(|renamed| (entries, renamed))
            }))
            .await??;
        for (path, at) in link_renames {
            self.renamed.insert(path, at);
        }
        let mut b = Vec::new();
        Frame::JobDone.encode(&mut b);
        ctl.write(&b).await?;
        let _ = send.finish();
        observer.finish();
        self.report.finished();
        self.summarise(&entries, &statuses)
    }

    fn summarise(
        &mut self,
        entries: &[Checked],
        statuses: &[(u32, FileStatus, blake3::Hash)],
    ) -> Result<(), Error> {
        let r = &mut self.report;
        r.hashes.clear();
        r.hashes.reserve_exact(statuses.len());
        r.failed.clear();
        r.already_there = 0;
        for &(index, status, hash) in statuses {
            let path = entries[index as usize].entry.path.clone();
            match status {
                FileStatus::Stored => r.hashes.push((path, hash)),
                FileStatus::AlreadyThere => {
                    r.hashes.push((path, hash));
                    // Stored on an earlier connection of this run is not "already there".
                    if !self.stored_now.contains(&index) {
                        r.already_there += 1;
                    }
                }
                FileStatus::HashMismatch => r
                    .failed
                    .push((path, "its BLAKE3 did not match the sender's".into())),
                FileStatus::SourceChanged => r
                    .failed
                    .push((path, "it changed on the sender while being sent".into())),
            }
        }
        r.renamed = self
            .renamed
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        r.renamed.sort();
        if r.failed.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = r
            .failed
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        Err(Error::Verify(format!(
            "{} file{} did not arrive ({}); nothing was stored under {} name, run both commands again",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            list.join("; "),
            if list.len() == 1 { "its" } else { "their" },
        )))
    }
}

fn unexpected(f: &Frame) -> Error {
    Error::Protocol(format!("unexpected message from the sender: {f:?}"))
}

/// Reads and checks the sender's entries; nothing touches the disk yet. What the entries
/// will cost us over the job is counted as they arrive, and refused past `limit`.
async fn read_manifest(
    recv: &mut RecvStream,
    n: u32,
    total: u64,
    limit: u64,
) -> Result<Vec<Entry>, Error> {
    let too_large = |at: String| {
        Error::Protocol(format!(
            "the sender's file list is larger than this receiver accepts (the limit is {} of memory for the list; {at}); send the files in several runs",
            indicatif::HumanBytes(limit),
        ))
    };
    // Even the shortest entries would not fit: no need to read them.
    let least = entry_cost(&Entry {
        kind: EntryKind::Dir,
        path: String::new(),
        size: 0,
        mode: 0,
        mtime_secs: 0,
        mtime_nanos: 0,
        target: String::new(),
    });
    if u64::from(n) * least > limit {
        return Err(too_large(format!("{n} entries announced")));
    }
    let mut entries = Vec::with_capacity(n.min(4096) as usize);
    let mut sum: u64 = 0;
    let mut cost: u64 = 0;
    for _ in 0..n {
        match read_frame(recv).await? {
            Frame::Entry(e) => {
                sum = sum
                    .checked_add(e.size)
                    .ok_or_else(|| Error::Protocol("the announced file sizes overflow".into()))?;
                cost += entry_cost(&e);
                if cost > limit {
                    return Err(too_large(format!(
                        "entry {} of {n} passed it",
                        entries.len() + 1
                    )));
                }
                entries.push(e);
            }
            other => return Err(unexpected(&other)),
        }
    }
    if sum != total {
        return Err(Error::Protocol(format!(
            "the announced file sizes add up to {sum} bytes, not the {total} announced"
        )));
    }
    Ok(entries)
}

/// Confines every path, creates the folders, and finds what is already here. Runs on a
/// blocking thread.
fn prepare(
    store: &Store,
    entries: Vec<Entry>,
    verified: &HashMap<(PathBuf, u64), blake3::Hash>,
) -> Result<(Vec<Checked>, HashMap<u32, Held>), Error> {
    let mut checked = Vec::with_capacity(entries.len());
    for e in entries {
        let refuse = |why: String| Error::Protocol(format!("refused an unsafe entry: {why}"));
        let rel = confine(&e.path).map_err(|err| refuse(err.to_string()))?;
        if e.kind == EntryKind::Symlink && !link_stays_inside(&e.path, &e.target) {
            return Err(refuse(format!(
                "link \"{}\" points outside the output folder (\"{}\")",
                e.path, e.target
            )));
        }
        if e.kind != EntryKind::File && e.size != 0 {
            return Err(refuse(format!(
                "\"{}\" is not a file but has a size",
                e.path
            )));
        }
        checked.push(Checked { entry: e, rel });
    }
    // Sorted indices find a path announced twice without a second copy of every path.
    let mut order: Vec<u32> = (0..checked.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| checked[a as usize].rel.cmp(&checked[b as usize].rel));
    if let Some(w) = order
        .windows(2)
        .find(|w| checked[w[0] as usize].rel == checked[w[1] as usize].rel)
    {
        return Err(Error::Protocol(format!(
            "refused an unsafe entry: \"{}\" is announced twice",
            checked[w[1] as usize].entry.path
        )));
    }
    drop(order);
    let mut held = HashMap::new();
    for (i, c) in checked.iter().enumerate() {
        match c.entry.kind {
            EntryKind::Dir => {
                store.make_dir(&c.rel)?;
            }
            EntryKind::File => {
                store.make_parent(&c.rel)?;
                let h = match verified.get(&(c.rel.clone(), c.entry.size)) {
                    Some(hash) => Some(Held {
                        offset: c.entry.size,
                        hash: *hash,
                        hasher: None,
                        complete: true,
                    }),
                    None => store.held(&c.rel, &c.entry)?,
                };
                if let Some(h) = h {
                    held.insert(i as u32, h);
                }
            }
            EntryKind::Symlink => {}
        }
    }
    Ok((checked, held))
}

/// How one file ended.
enum Outcome {
    /// Verified and stored under this path.
    Stored(PathBuf),
    /// Anything else the sender is told.
    Status(FileStatus),
}

/// Receives one file's data streams, the first already past its head; an error ends the
/// job. `stream` is left at the file's last segment, which the caller stops on a store
/// error.
#[allow(clippy::too_many_arguments)]
async fn receive_file(
    store: &Store,
    conn: &Connection,
    ctl: &mut Control<'_>,
    stream: &mut RecvStream,
    index: u32,
    c: &Checked,
    start: u64,
    claim: Option<Held>,
    observer: &mut dyn Observer,
    report: &mut Report,
) -> Result<(Outcome, blake3::Hash), Error> {
    let size = c.entry.size;
    // "Already there": the sender proved our complete copy; nothing is written.
    let watch = ctl.watch;
    if let Some(h) = claim.as_ref().filter(|h| h.complete && start == size) {
        let status = match watch.guard(Waiting::MidFile, read_trailer(stream)).await? {
            Trailer::Complete(theirs) if theirs == *h.hash.as_bytes() => FileStatus::AlreadyThere,
            Trailer::Complete(_) => {
                return Err(Error::Protocol(format!(
                    "the sender skipped {} but its hash differs from ours",
                    c.entry.path
                )))
            }
            Trailer::SourceChanged => FileStatus::SourceChanged,
        };
        return Ok((Outcome::Status(status), h.hash));
    }
    let hasher = match claim {
        Some(Held {
            hasher: Some(h), ..
        }) if start > 0 => *h,
        _ => blake3::Hasher::new(),
    };
    let part = store.open_part(&c.rel, start)?;
    let file = part
        .file
        .try_clone()
        .map_err(|e| Error::write(part.path.clone(), e))?;
    let (tx, rx) = mpsc::channel::<Filled>(PIPELINE);
    let (spare_tx, mut spare) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_blocking(move || write_and_hash(file, hasher, rx, spare_tx));
    let mut at = start;
    let got = loop {
        let end = segment_end(at, size);
        let got = pump(stream, &tx, &mut spare, end - at, observer, report, watch).await;
        if got.is_err() || end == size {
            break got;
        }
        at = end;
        match next_segment(conn, stream, index, at, watch).await {
            Ok(next) => *stream = next,
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(e.to_string()))?;
    // On a write error the part data stays for the next run: the disk is the problem.
    let ours = written.map_err(|e| Error::write(part.path.clone(), e))?;
    let trailer = match got {
        Ok(()) => watch.guard(Waiting::MidFile, read_trailer(stream)).await?,
        Err(Pumped::SourceChanged) => Trailer::SourceChanged,
        Err(Pumped::Failed(e)) => return Err(e),
    };
    let status = match trailer {
        Trailer::SourceChanged => FileStatus::SourceChanged,
        Trailer::Complete(theirs) if theirs != *ours.as_bytes() => {
            tracing::warn!(path = %shown(&c.entry.path), "BLAKE3 mismatch; discarding");
            FileStatus::HashMismatch
        }
        Trailer::Complete(_) => {
            // The flush can take long on a slow disk: off the runtime, which drives the
            // connection (its keep-alives and our heartbeats).
            let (store, rel, entry) = (store.clone(), c.rel.clone(), c.entry.clone());
            let persisted = tokio::task::spawn_blocking(move || store.persist(part, &rel, &entry));
            let at = ctl.busy(persisted).await??;
            return Ok((Outcome::Stored(at), ours));
        }
    };
    store.discard(part);
    Ok((Outcome::Status(status), ours))
}

/// Accepts the next data stream and reads the head it starts with.
async fn accept_data(conn: &Connection) -> Result<(RecvStream, DataHead), Error> {
    let mut stream = conn.accept_uni().await.map_err(|e| closed(&e))?;
    let mut h = [0u8; DATA_HEAD_LEN];
    stream.read_exact(&mut h).await.map_err(read_exact_err)?;
    Ok((stream, DataHead::decode(&h)))
}

/// Checks that a full segment's stream ends there and that the next data stream continues
/// the same file where it ended.
async fn next_segment(
    conn: &Connection,
    stream: &mut RecvStream,
    index: u32,
    at: u64,
    watch: &Watch,
) -> Result<RecvStream, Pumped> {
    let end = watch
        .guard(Waiting::MidFile, async {
            Ok(stream.read_chunk(1, true).await)
        })
        .await
        .map_err(Pumped::Failed)?;
    match end.map_err(read_failed)? {
        None => {}
        Some(_) => {
            return Err(Pumped::Failed(Error::Protocol(
                "the sender put more than a segment on one data stream".into(),
            )))
        }
    }
    let (next, head) = watch
        .guard(Waiting::MidFile, accept_data(conn))
        .await
        .map_err(Pumped::Failed)?;
    if head.index != index || head.start != at {
        return Err(Pumped::Failed(Error::Protocol(format!(
            "the sender interrupted entry {index} at byte {at} with a stream for entry {} at byte {}",
            head.index, head.start
        ))));
    }
    Ok(next)
}

/// Reads the trailer and checks the stream ends right after it.
async fn read_trailer(stream: &mut RecvStream) -> Result<Trailer, Error> {
    let mut t = [0u8; TRAILER_LEN];
    stream.read_exact(&mut t).await.map_err(read_exact_err)?;
    let trailer = Trailer::decode(&t).map_err(wire)?;
    // Anything after the trailer is a lie about the size.
    match stream.read_chunk(1, true).await {
        Ok(None) => Ok(trailer),
        Ok(Some(_)) => Err(Error::Protocol(
            "the sender sent more bytes than it announced".into(),
        )),
        Err(e) => Err(lost_read(e)),
    }
}

enum Pumped {
    SourceChanged,
    Failed(Error),
}

/// What a failed read of a data stream means: the sender resets a stream whose source
/// changed; anything else is a lost connection.
fn read_failed(e: ReadError) -> Pumped {
    match e {
        ReadError::Reset(code) if code == RESET_SOURCE_CHANGED.into() => Pumped::SourceChanged,
        e => Pumped::Failed(lost_read(e)),
    }
}

/// A buffer and how many of its bytes are data.
type Filled = (Vec<u8>, usize);

/// Moves exactly `len` bytes from the stream to the writer.
///
/// QUIC hands data over a packet at a time (about 1.4 KB). Passed on like that, every
/// packet cost a channel hand-over, a write syscall and a hash step too short for BLAKE3's
/// SIMD paths; gathering CHUNK bytes first took the receiver from 3.9 to 1.6 CPU-seconds
/// per GiB on the LAN bench (commit 4eefca9). Buffers come back from the writer through
/// `spare`, so at most PIPELINE + 2 of them ever exist.
async fn pump(
    stream: &mut RecvStream,
    tx: &mpsc::Sender<Filled>,
    spare: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    len: u64,
    observer: &mut dyn Observer,
    report: &mut Report,
    watch: &Watch,
) -> Result<(), Pumped> {
    let mut remaining = len;
    // One timer for the whole segment, not one per read (a read is about a packet), moved
    // on only when it fires and the peer has made progress meanwhile.
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
    let mut dog = watch.start();
    let mut alarm = std::pin::pin!(tokio::time::sleep_until(dog.map_or(far, |d| d.deadline())));
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64) as usize;
        let mut buf = spare.try_recv().unwrap_or_default();
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut filled = 0;
        let mut failed = None;
        while filled < want {
            let read = tokio::select! {
                biased;
                r = stream.read(&mut buf[filled..want]) => r,
                _ = &mut alarm, if dog.is_some() => {
                    let Some(d) = dog.as_mut() else { continue };
                    match watch.check(d, Waiting::MidFile) {
                        Ok(next) => {
                            alarm.as_mut().reset(next);
                            continue;
                        }
                        Err(stall) => {
                            failed = Some(Pumped::Failed(stall));
                            break;
                        }
                    }
                }
            };
            match read {
                Ok(Some(n)) => {
                    filled += n;
                    report.moved(observer, n as u64);
                }
                Ok(None) => {
                    failed = Some(Pumped::Failed(Error::Protocol(format!(
                        "the sender ended a file after {} of {len} bytes",
                        len - remaining + filled as u64
                    ))));
                    break;
                }
                Err(e) => {
                    failed = Some(read_failed(e));
                    break;
                }
            }
        }
        // What arrived before a failure still goes to the part file: a resume needs it.
        if filled > 0 && tx.send((buf, filled)).await.is_err() {
            // The writer failed; its error is reported by the caller.
            return Ok(());
        }
        if let Some(f) = failed {
            return Err(f);
        }
        remaining -= want as u64;
        // Waiting for our own disk is not the peer stalling: watch afresh from here.
        if dog.is_some() {
            dog = watch.start();
            if let Some(d) = &dog {
                alarm.as_mut().reset(d.deadline());
            }
        }
    }
    Ok(())
}

fn write_and_hash(
    mut file: std::fs::File,
    mut hasher: blake3::Hasher,
    mut rx: mpsc::Receiver<Filled>,
    spare: mpsc::UnboundedSender<Vec<u8>>,
) -> io::Result<blake3::Hash> {
    while let Some((buf, n)) = rx.blocking_recv() {
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        let _ = spare.send(buf);
    }
    Ok(hasher.finalize())
}

/// After all files: links (last, so nothing is ever written through one) and folder
/// times, deepest first. Returns the links that got another name.
fn finish_tree(store: &Store, entries: &[Checked]) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut renamed = Vec::new();
    for c in entries
        .iter()
        .filter(|c| c.entry.kind == EntryKind::Symlink)
    {
        store.make_parent(&c.rel)?;
        let at = store.make_link(&c.rel, &c.entry.target)?;
        if at != store.root().join(&c.rel) {
            renamed.push((c.entry.path.clone(), at));
        }
    }
    for c in entries
        .iter()
        .rev()
        .filter(|c| c.entry.kind == EntryKind::Dir)
    {
        store.finish_dir(&c.rel, &c.entry)?;
    }
    Ok(renamed)
}
