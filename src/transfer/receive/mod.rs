//! The receiver's half of a job.

mod data;
mod pipeline;
mod tree;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tokio::task::JoinHandle;

use super::control::{self, RecvPhase, Segment};
use super::store::{Held, Store};
use super::watchdog::{heartbeat_every, Waiting, Watch};
use super::{closed, explain, follow, lost_write, read_frame, FileDone, Observer, Options, Report};
use crate::error::Error;
use crate::manifest::confine;
use crate::wire::{Claim, Entry, FileStatus, Frame, FLAG_AUTHENTICATED, FLAG_HEARTBEAT};
use data::{accept_data, receive_file, receive_small, stop_if_store_failed, Outcome};
use pipeline::{Done, Pipeline, SMALL_FILE};
use tree::{finish_tree, prepare};

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
    /// The last connection's disk threads, still naming what they were handed: joined
    /// before a reconnect looks at the disk.
    disk_threads: Vec<std::thread::JoinHandle<()>>,
    /// The finished job's control stream, ended after its last verdict: the peer has them
    /// all once it acknowledged all of it ([`super::linger`]).
    control: Option<SendStream>,
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
    /// Small files' disk work, off this task.
    pipe: Pipeline,
    /// How each file ended, with its hash.
    statuses: Vec<(u32, FileStatus, blake3::Hash)>,
}

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
        let internal = |e: tokio::task::JoinError| Error::Internal(e.to_string());
        self.wait(work).await?.map_err(internal)
    }

    /// [`Control::busy`] for any wait on our own disk.
    async fn wait<T>(&mut self, work: impl std::future::Future<Output = T>) -> Result<T, Error> {
        let mut work = std::pin::pin!(work);
        let Some(every) = self.heartbeat else {
            return Ok(work.await);
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = Vec::new();
        Frame::Busy.encode(&mut beat);
        loop {
            tokio::select! {
                r = &mut work => return Ok(r),
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
            disk_threads: Vec::new(),
            control: None,
        }
    }

    /// What the job did so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The control stream of the job just received, ended after its last verdict, for
    /// [`super::linger`] to tell when the peer has them all.
    pub fn take_control(&mut self) -> Option<SendStream> {
        self.control.take()
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
        match self.run_once(conn, None, None, opts, observer).await {
            Err(e) => Err(explain(conn, e).await),
            ok => ok,
        }
    }

    /// [`Incoming::run_accepted`] on a control stream whose first frame was already read
    /// ([`super::delete::opened`]: a link that stays tells a job from a deletion by it).
    pub async fn run_started(
        &mut self,
        conn: &Connection,
        started: super::delete::Started,
        opts: Options,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let super::delete::Started { send, recv, first } = started;
        let control = Some((send, recv));
        match self
            .run_once(conn, control, Some(first), opts, observer)
            .await
        {
            Err(e) => Err(explain(conn, e).await),
            ok => ok,
        }
    }

    /// [`Incoming::run`] on a control stream already accepted: a persistent link waits
    /// for the next job itself, without the watchdog (an idle link is no stall).
    pub async fn run_accepted(
        &mut self,
        conn: &Connection,
        control: (SendStream, RecvStream),
        opts: Options,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        match self
            .run_once(conn, Some(control), None, opts, observer)
            .await
        {
            Err(e) => Err(explain(conn, e).await),
            ok => ok,
        }
    }

    async fn run_once(
        &mut self,
        conn: &Connection,
        control: Option<(SendStream, RecvStream)>,
        first_frame: Option<Frame>,
        opts: Options,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let first = self.report.connection_started();
        let watch = Watch::new(conn, opts.stall_timeout);
        let threads = std::mem::take(&mut self.disk_threads);
        if !threads.is_empty() {
            let join = move || threads.into_iter().for_each(|t| drop(t.join()));
            let _ = tokio::task::spawn_blocking(join).await;
        }
        let (mut send, mut recv) = match control {
            Some(streams) => streams,
            None => {
                watch
                    .guard(Waiting::Offer, async {
                        conn.accept_bi().await.map_err(|e| closed(&e))
                    })
                    .await?
            }
        };
        let mut seq = control::Receiver::new(opts.flags(), opts.manifest_limit);
        read_manifest(&watch, &mut recv, first_frame, &mut seq).await?;
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
        follow(conn);
        self.report.plan(observer, have);
        let mut rx = Files {
            conn,
            ctl,
            seq,
            held,
            first,
            pipe: Pipeline::start(self.store.clone())?,
            statuses: Vec::new(),
        };
        let received = self.receive_files(&mut rx, &rels, observer).await;
        self.disk_threads = rx.pipe.take_threads();
        received?;

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
        follow(conn);
        self.control = Some(send);
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
    ///
    /// Small files go to the disk pipeline whole and this task goes on to the next one;
    /// their verdicts are sent as their durability rounds finish. Before a large file the
    /// pipeline settles, so its verdicts do not wait for the large file to cross.
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
            let claim = rx.held.remove(&index);
            let (first, path) = (rx.first, &file.entry.path);
            self.report
                .file_started(observer, path, first, claimed, head.start);
            let rest = file.entry.size - head.start;
            // "Already there" needs no disk: the old way answers it at once.
            let proven = claim.as_ref().is_some_and(|h| h.complete && rest == 0);
            let got = if rest <= SMALL_FILE && !proven {
                let report = &mut self.report;
                receive_small(rx, &mut stream, &file, head.start, claim, observer, report).await
            } else {
                let (start, rest) = (head.start, (rels, claim));
                self.receive_large(rx, &mut stream, &file, start, rest, observer)
                    .await
            };
            got.inspect_err(|e| stop_if_store_failed(&mut stream, e))?;
            while let Some(done) = rx.pipe.try_next() {
                self.verdict(rx, rels, done, observer)?;
            }
            rx.flush().await?;
        }
        self.settle(rx, rels, observer).await?;
        rx.flush().await
    }

    /// Receives a large file (or proves one already there) the old way, once the
    /// pipeline has settled, and makes it durable on its own.
    async fn receive_large(
        &mut self,
        rx: &mut Files<'_, '_>,
        stream: &mut RecvStream,
        file: &FileRef<'_>,
        start: u64,
        (rels, claim): (&[PathBuf], Option<Held>),
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        // Proving a file already there touches no disk: nothing to settle for.
        let proven = claim.as_ref().is_some_and(|h| h.complete) && start == file.entry.size;
        if !proven {
            self.settle(rx, rels, observer).await?;
        }
        let got = receive_file(
            &self.store,
            rx,
            stream,
            file,
            start,
            claim,
            observer,
            &mut self.report,
        )
        .await;
        let (outcome, hash) = got?;
        rx.seq.file_received(file.index)?;
        let saved = match outcome {
            Outcome::Verified(part) => {
                let (rel, entry) = (file.rel.to_owned(), file.entry.clone());
                // Flushing can take long on a slow disk: off the runtime, which drives
                // the connection (its keep-alives and our heartbeats).
                let store = self.store.clone();
                let persisted =
                    tokio::task::spawn_blocking(move || store.persist(part, &rel, &entry));
                Ok(rx.ctl.busy(persisted).await??)
            }
            Outcome::Status(status) => Err(status),
        };
        let status = self.record(file, saved, hash, observer);
        rx.statuses.push((file.index, status, hash));
        rx.seq.file_finished(file.index, status)
    }

    /// Waits until every file handed to the pipeline has its verdict queued.
    async fn settle(
        &mut self,
        rx: &mut Files<'_, '_>,
        rels: &[PathBuf],
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        rx.pipe.settle()?;
        while rx.pipe.settling() > 0 {
            let pipe = &mut rx.pipe;
            let done = rx.ctl.wait(pipe.next()).await?;
            self.verdict(rx, rels, done, observer)?;
        }
        Ok(())
    }

    /// Takes in one report of the pipeline: a file's verdict is recorded and queued.
    fn verdict(
        &mut self,
        rx: &mut Files<'_, '_>,
        rels: &[PathBuf],
        done: Done,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let (index, saved, hash) = match done {
            Done::File { index, saved, hash } => (index, saved, hash),
            Done::Settled => return Ok(()),
            Done::Failed(e) => return Err(e),
        };
        let entries = Arc::clone(rx.seq.manifest());
        let file = FileRef {
            index,
            entry: &entries[index as usize],
            rel: &rels[index as usize],
        };
        let status = self.record(&file, saved, hash, observer);
        rx.statuses.push((index, status, hash));
        rx.seq.file_finished(index, status)
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
    first: Option<Frame>,
    seq: &mut control::Receiver,
) -> Result<(), Error> {
    let offer = match first {
        Some(f) => f,
        None => watch.guard(Waiting::Offer, read_frame(recv)).await?,
    };
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
