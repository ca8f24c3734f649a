//! The receiver's half of a job.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ReadError, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::control::{self, RecvPhase, Segment};
use super::store::{Held, Part, Store};
use super::watchdog::{heartbeat_every, Waiting, Watch};
use super::{
    closed, explain, lost_read, lost_write, read_exact_err, read_frame, wire, FileDone, Observer,
    Options, Report, CHUNK, PIPELINE,
};
use crate::error::Error;
use crate::manifest::{confine, link_stays_inside};
use crate::shown::shown;
use crate::wire::{
    segment_end, Claim, DataHead, Entry, EntryKind, FileStatus, Frame, Trailer, DATA_HEAD_LEN,
    FLAG_AUTHENTICATED, FLAG_HEARTBEAT, RESET_SOURCE_CHANGED, STOP_STORE_FAILED, TRAILER_LEN,
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

/// One announced file: its index, its entry, and its path under the output folder.
struct FileRef<'a> {
    index: u32,
    entry: &'a Entry,
    rel: &'a Path,
}

/// What receiving a connection's files needs: the control stream, and the sequence that
/// checks every data stream against the plan.
struct Files<'a, 'b> {
    conn: &'a Connection,
    ctl: Control<'b>,
    seq: control::Receiver,
    /// What we claimed to hold, by entry, until its file starts.
    held: HashMap<u32, Held>,
    /// This is the run's first connection.
    first: bool,
    /// Verified files waiting for their durability round, in the order they arrived.
    batch: Vec<(u32, Part, blake3::Hash)>,
    /// How each file ended, with its hash.
    statuses: Vec<(u32, FileStatus, blake3::Hash)>,
}

/// Files at most this large wait for a durability round with others (see
/// [`Store::persist_all`]); a larger one is flushed on its own, and the waiting ones are
/// named before it starts, so no verdict waits for a large file to cross.
const SMALL_FILE: u64 = 1 << 20;
/// Most files in one durability round: each is an open part file until it is named.
const BATCH_FILES: usize = 32;

impl Files<'_, '_> {
    /// Sends what the sequence has queued.
    async fn flush(&mut self) -> Result<(), Error> {
        self.ctl.flush(&mut self.seq).await
    }
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

    /// Sends the frames `seq` has queued, in one write.
    async fn flush(&mut self, seq: &mut control::Receiver) -> Result<(), Error> {
        let mut buf = Vec::new();
        while let Some(f) = seq.poll_transmit() {
            f.encode(&mut buf);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.write(&buf).await
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
        let mut seq = control::Receiver::new(opts.flags(), opts.manifest_limit);
        read_manifest(&watch, &mut recv, &mut seq).await?;
        let offer = seq
            .offer()
            .ok_or_else(|| Error::Internal("manifest without an offer".into()))?;
        self.report.peer_authenticated = offer.flags & FLAG_AUTHENTICATED != 0;
        self.report.tally(seq.manifest());
        let mut ctl = Control {
            send: &mut send,
            watch: &watch,
            heartbeat: (offer.flags & FLAG_HEARTBEAT != 0)
                .then(|| heartbeat_every(opts.stall_timeout)),
        };
        let (rels, held, have) = self.plan(&mut ctl, &mut seq, offer.total).await?;
        self.report.plan(observer, have);
        let mut rx = Files {
            conn,
            ctl,
            seq,
            held,
            first,
            batch: Vec::new(),
            statuses: Vec::new(),
        };
        self.receive_files(&mut rx, &rels, observer).await?;

        let (store, entries) = (self.store.clone(), Arc::clone(rx.seq.manifest()));
        let link_renames = rx
            .ctl
            .busy(tokio::task::spawn_blocking(move || {
                finish_tree(&store, &entries, &rels)
            }))
            .await??;
        for (path, at) in link_renames {
            self.renamed.insert(path, at);
        }
        rx.seq.tree_finished()?;
        rx.flush().await?;
        let entries = Arc::clone(rx.seq.manifest());
        let mut statuses = std::mem::take(&mut rx.statuses);
        drop(rx);
        let _ = send.finish();
        observer.finish();
        self.report.finished();
        // Job order, as the files were sent: a batch's verdicts come after a later file's
        // failure.
        statuses.sort_by_key(|&(index, _, _)| index);
        self.summarise(&entries, &statuses)
    }

    /// Prepares the disk for the manifest (folders, what is already here), checks the free
    /// space, and sends the plan. Returns each entry's confined path, what we hold (by
    /// entry) and its byte count.
    async fn plan(
        &mut self,
        ctl: &mut Control<'_>,
        seq: &mut control::Receiver,
        total: u64,
    ) -> Result<(Vec<PathBuf>, HashMap<u32, Held>, u64), Error> {
        // Folders first, then what is already here: both touch the disk, off the runtime.
        let (store, entries) = (self.store.clone(), Arc::clone(seq.manifest()));
        // Lent to the disk thread rather than copied: it holds a path per file. Lost only
        // if this connection fails meanwhile; a reconnect then hashes those files again.
        let verified = std::mem::take(&mut self.verified);
        let (prepared, verified) = ctl
            .busy(tokio::task::spawn_blocking(move || {
                let prepared = prepare(&store, &entries, &verified);
                (prepared, verified)
            }))
            .await?;
        self.verified = verified;
        let (rels, held) = prepared?;

        let have: u64 = held.values().map(|h| h.offset).sum();
        let need = total.saturating_sub(have);
        if let Some(free) = self.store.free_space() {
            if need > free {
                return Err(Error::NoSpace {
                    path: self.store.root().to_owned(),
                    need,
                    free,
                });
            }
        }
        let claims = held.iter().map(|(&index, h)| Claim {
            index,
            offset: h.offset,
            hash: *h.hash.as_bytes(),
        });
        seq.prepared(claims.collect())?;
        ctl.flush(seq).await?;
        Ok((rels, held, have))
    }

    /// Receives the files in the order the sender sends them, telling it how each ended.
    async fn receive_files(
        &mut self,
        rx: &mut Files<'_, '_>,
        rels: &[PathBuf],
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let entries = Arc::clone(rx.seq.manifest());
        rx.statuses.reserve(rx.seq.pending());
        while rx.seq.pending() > 0 {
            let watch = rx.ctl.watch;
            let (mut stream, head) = watch.guard(Waiting::NextFile, accept_data(rx.conn)).await?;
            let Segment::First { claimed } = rx.seq.handle_data_head(head)? else {
                return Err(Error::Internal(
                    "a file's next segment between files".into(),
                ));
            };
            let index = head.index;
            let file = FileRef {
                index,
                entry: &entries[index as usize],
                rel: &rels[index as usize],
            };
            let large = file.entry.size - head.start > SMALL_FILE;
            if large {
                self.commit(rx, rels, observer)
                    .await
                    .inspect_err(|e| stop_if_store_failed(&mut stream, e))?;
            }
            let claim = rx.held.remove(&index);
            let (first, path) = (rx.first, &file.entry.path);
            self.report
                .file_started(observer, path, first, claimed, head.start);
            let got = receive_file(
                &self.store,
                rx,
                &mut stream,
                &file,
                head.start,
                claim,
                observer,
                &mut self.report,
            )
            .await;
            let (outcome, hash) = got.inspect_err(|e| stop_if_store_failed(&mut stream, e))?;
            rx.seq.file_received(index)?;
            match outcome {
                Outcome::Verified(part) => {
                    rx.batch.push((index, part, hash));
                    if large || rx.batch.len() >= BATCH_FILES || rx.seq.pending() == 0 {
                        self.commit(rx, rels, observer)
                            .await
                            .inspect_err(|e| stop_if_store_failed(&mut stream, e))?;
                    }
                }
                Outcome::Status(status) => {
                    let status = self.record(&file, Err(status), hash, observer);
                    rx.statuses.push((index, status, hash));
                    rx.seq.file_finished(index, status)?;
                }
            }
            rx.flush().await?;
        }
        self.commit(rx, rels, observer).await?;
        rx.flush().await
    }

    /// Gives the verified files of the batch their final names after one durability round,
    /// and queues their verdicts.
    async fn commit(
        &mut self,
        rx: &mut Files<'_, '_>,
        rels: &[PathBuf],
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        if rx.batch.is_empty() {
            return Ok(());
        }
        let entries = Arc::clone(rx.seq.manifest());
        let mut verified = Vec::with_capacity(rx.batch.len());
        let mut parts = Vec::with_capacity(rx.batch.len());
        for (index, part, hash) in rx.batch.drain(..) {
            let i = index as usize;
            verified.push((index, hash));
            parts.push((part, rels[i].clone(), entries[i].clone()));
        }
        // Flushing can take long on a slow disk: off the runtime, which drives the
        // connection (its keep-alives and our heartbeats).
        let store = self.store.clone();
        let persisted = tokio::task::spawn_blocking(move || store.persist_all(parts));
        let saved = rx.ctl.busy(persisted).await??;
        for ((index, hash), at) in verified.into_iter().zip(saved) {
            let file = FileRef {
                index,
                entry: &entries[index as usize],
                rel: &rels[index as usize],
            };
            let status = self.record(&file, Ok(at), hash, observer);
            rx.statuses.push((index, status, hash));
            rx.seq.file_finished(index, status)?;
        }
        Ok(())
    }

    /// Notes where a file ended (stored where `saved` says, or not stored with that
    /// status), and tells the observer of a verified one (once per run).
    fn record(
        &mut self,
        file: &FileRef<'_>,
        saved: Result<PathBuf, FileStatus>,
        hash: blake3::Hash,
        observer: &mut dyn Observer,
    ) -> FileStatus {
        let (entry, own_name) = (file.entry, self.store.root().join(file.rel));
        let (status, saved_as) = match saved {
            Ok(p) => {
                if p != own_name {
                    self.renamed.insert(entry.path.clone(), p.clone());
                }
                self.stored_now.insert(file.index);
                (FileStatus::Stored, p)
            }
            Err(s) => (s, own_name),
        };
        if matches!(status, FileStatus::Stored | FileStatus::AlreadyThere) {
            self.verified
                .insert((file.rel.to_owned(), entry.size), hash);
            if self.reported.insert(file.index) {
                observer.file_done(&FileDone {
                    path: &entry.path,
                    size: entry.size,
                    hash,
                    status,
                    saved_as: Some(&saved_as),
                });
            }
        }
        status
    }

    fn summarise(
        &mut self,
        entries: &[Entry],
        statuses: &[(u32, FileStatus, blake3::Hash)],
    ) -> Result<(), Error> {
        let r = &mut self.report;
        r.hashes.clear();
        r.hashes.reserve_exact(statuses.len());
        r.failed.clear();
        r.already_there = 0;
        for &(index, status, hash) in statuses {
            let path = entries[index as usize].path.clone();
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

/// Reads the sender's offer and entries into `seq`, which checks them as they arrive;
/// nothing touches the disk yet.
async fn read_manifest(
    watch: &Watch,
    recv: &mut RecvStream,
    seq: &mut control::Receiver,
) -> Result<(), Error> {
    let offer = watch.guard(Waiting::Offer, read_frame(recv)).await?;
    seq.handle_frame(offer)?;
    watch
        .guard(Waiting::Manifest, async {
            while seq.phase() == RecvPhase::Manifest {
                seq.handle_frame(read_frame(recv).await?)?;
            }
            Ok(())
        })
        .await
}

/// Confines every path, creates the folders, and finds what is already here. Runs on a
/// blocking thread.
fn prepare(
    store: &Store,
    entries: &[Entry],
    verified: &HashMap<(PathBuf, u64), blake3::Hash>,
) -> Result<(Vec<PathBuf>, HashMap<u32, Held>), Error> {
    let mut rels = Vec::with_capacity(entries.len());
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
        rels.push(rel);
    }
    // Sorted indices find a path announced twice without a second copy of every path.
    let mut order: Vec<u32> = (0..rels.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| rels[a as usize].cmp(&rels[b as usize]));
    if let Some(w) = order
        .windows(2)
        .find(|w| rels[w[0] as usize] == rels[w[1] as usize])
    {
        return Err(Error::Protocol(format!(
            "refused an unsafe entry: \"{}\" is announced twice",
            entries[w[1] as usize].path
        )));
    }
    drop(order);
    let mut held = HashMap::new();
    for (i, (e, rel)) in entries.iter().zip(&rels).enumerate() {
        match e.kind {
            EntryKind::Dir => {
                store.make_dir(rel)?;
            }
            EntryKind::File => {
                store.make_parent(rel)?;
                let h = match verified.get(&(rel.clone(), e.size)) {
                    Some(hash) => Some(Held {
                        offset: e.size,
                        hash: *hash,
                        hasher: None,
                        complete: true,
                    }),
                    None => store.held(rel, e)?,
                };
                if let Some(h) = h {
                    held.insert(i as u32, h);
                }
            }
            EntryKind::Symlink => {}
        }
    }
    Ok((rels, held))
}

/// How one file ended.
enum Outcome {
    /// Verified, still in its part file.
    Verified(Part),
    /// Anything else the sender is told.
    Status(FileStatus),
}

/// Receives one file's data streams, the first already past its head; an error ends the
/// job. `stream` is left at the file's last segment, which the caller stops on a store
/// error.
#[allow(clippy::too_many_arguments)]
async fn receive_file(
    store: &Store,
    rx: &mut Files<'_, '_>,
    stream: &mut RecvStream,
    file: &FileRef<'_>,
    start: u64,
    claim: Option<Held>,
    observer: &mut dyn Observer,
    report: &mut Report,
) -> Result<(Outcome, blake3::Hash), Error> {
    let size = file.entry.size;
    // "Already there": the sender proved our complete copy; nothing is written.
    let watch = rx.ctl.watch;
    if let Some(h) = claim.as_ref().filter(|h| h.complete && start == size) {
        let status = match watch.guard(Waiting::MidFile, read_trailer(stream)).await? {
            Trailer::Complete(theirs) if theirs == *h.hash.as_bytes() => FileStatus::AlreadyThere,
            Trailer::Complete(_) => {
                return Err(Error::Protocol(format!(
                    "the sender skipped {} but its hash differs from ours",
                    file.entry.path
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
    let part = store.open_part(file.rel, start)?;
    let out = part
        .file
        .try_clone()
        .map_err(|e| Error::write(part.path.clone(), e))?;
    let (tx, chunks) = mpsc::channel::<Filled>(PIPELINE);
    let (spare_tx, mut spare) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_blocking(move || write_and_hash(out, hasher, chunks, spare_tx));
    let mut at = start;
    let got = loop {
        let end = segment_end(at, size);
        let got = pump(stream, &tx, &mut spare, end - at, observer, report, watch).await;
        if got.is_err() || end == size {
            break got;
        }
        at = end;
        match next_segment(rx.conn, stream, &mut rx.seq, watch).await {
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
            tracing::warn!(path = %shown(&file.entry.path), "BLAKE3 mismatch; discarding");
            FileStatus::HashMismatch
        }
        // Its final name comes with the next durability round (`Incoming::commit`).
        Trailer::Complete(_) => return Ok((Outcome::Verified(part), ours)),
    };
    store.discard(part);
    Ok((Outcome::Status(status), ours))
}

/// Stops a data stream when we cannot store its file, so the sender stops sending at once
/// and can say why.
fn stop_if_store_failed(stream: &mut RecvStream, e: &Error) {
    if matches!(
        e,
        Error::DiskFull { .. } | Error::Write { .. } | Error::Output { .. }
    ) {
        let _ = stream.stop(STOP_STORE_FAILED.into());
    }
}

/// Accepts the next data stream and reads the head it starts with.
async fn accept_data(conn: &Connection) -> Result<(RecvStream, DataHead), Error> {
    let mut stream = conn.accept_uni().await.map_err(|e| closed(&e))?;
    let mut h = [0u8; DATA_HEAD_LEN];
    stream.read_exact(&mut h).await.map_err(read_exact_err)?;
    Ok((stream, DataHead::decode(&h)))
}

/// Checks that a full segment's stream ends there, and has `seq` check that the next data
/// stream continues the same file where it ended.
async fn next_segment(
    conn: &Connection,
    stream: &mut RecvStream,
    seq: &mut control::Receiver,
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
    match seq.handle_data_head(head).map_err(Pumped::Failed)? {
        Segment::Next => Ok(next),
        Segment::First { .. } => Err(Pumped::Failed(Error::Internal(
            "a new file in the middle of one".into(),
        ))),
    }
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
fn finish_tree(
    store: &Store,
    entries: &[Entry],
    rels: &[PathBuf],
) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut renamed = Vec::new();
    let tree = || entries.iter().zip(rels);
    for (e, rel) in tree().filter(|(e, _)| e.kind == EntryKind::Symlink) {
        store.make_parent(rel)?;
        let at = store.make_link(rel, &e.target)?;
        if at != store.root().join(rel) {
            renamed.push((e.path.clone(), at));
        }
    }
    for (e, rel) in tree().rev().filter(|(e, _)| e.kind == EntryKind::Dir) {
        store.finish_dir(rel, e)?;
    }
    Ok(renamed)
}
