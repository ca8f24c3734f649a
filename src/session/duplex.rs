//! A link that stays: after the first connection, both sides send any number of jobs, at
//! any time, in both directions, until one of them closes it.
//!
//! Each job is today's job, unchanged on the wire: the sending side opens a control stream
//! (Offer, manifest, plan, files, verdicts) and the other side accepts it. QUIC keeps the
//! two directions apart by itself (a side accepts only the streams its peer opened), so one
//! job can move each way at once. Within one direction jobs go one at a time, in the order
//! they were asked for: a job's file streams carry no job number, so two jobs the same way
//! would take each other's files. Because nothing changes on the wire, a link that stays
//! also serves a one-shot peer (`p2pcopy sender` or `receiver`): its one job moves, then its
//! close ends the link.
//!
//! Three tasks share the connection: the driver owns the [`Link`], watches the connection
//! and punches a new path when it dies (with no overall limit unless one is given; QUIC
//! keep-alives every 2 s keep the NATs' mappings open meanwhile, see [`crate::quic`]); the
//! sending task runs the queued jobs; the receiving task accepts the peer's jobs into the
//! output folder (jail, no silent overwrite, verified before the final name, resume: the
//! [`Store`]'s rules, as for a one-shot receiver). A job cut by a lost path resumes on the
//! next one; a job whose peer stalls (the connection alive, the job not moving, see
//! [`crate::transfer::watchdog`]) is reported and tried again on the same connection.
//! A deletion ([`Duplex::delete`], `--watch --delete`) is a control stream that starts
//! with `Delete` instead of an offer, queued with the jobs; the receiving task tells the two
//! apart by the first frame and answers it by [`crate::transfer::delete`]'s rules, only for
//! files the peer sent over this link and only with [`DuplexOptions::allow_delete`].
//! Per-file latency and files per second over a link: bench/RESULTS.md ("A link that
//! stays").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use quinn::Connection;
use tokio::sync::{mpsc, oneshot, watch};

mod sending;

use super::link::Link;
use super::Events;
use crate::error::{CloseCode, Error};
use crate::events::Event;
use crate::punch::PathKind;
use crate::transfer::delete::{DeleteAsked, Ledger, Opened};
use crate::transfer::{self, Incoming, Outgoing, Report, Silent, Store};
use crate::wire::DeleteStatus;
use sending::{sending, Request};

/// How a link that stays behaves; [`DuplexOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct DuplexOptions {
    /// Where the peer's jobs land (it must exist).
    pub output: PathBuf,
    /// Replace existing files instead of storing under a numbered name.
    pub overwrite: bool,
    /// How long to keep punching for a new path after the last one died; `None` keeps
    /// trying for ever.
    pub reconnect_for: Option<Duration>,
    /// How often a stalled job is tried again before its `send` fails.
    pub stall_retries: u32,
    /// Honour the peer's requests to delete paths under `output` ([`Duplex::delete`]),
    /// only of files it sent over this link (and the folders they went into); without it
    /// each is refused.
    pub allow_delete: bool,
}

impl DuplexOptions {
    /// Receives into `output`, never overwrites, reconnects for ever, retries a stalled job
    /// three times, refuses the peer's deletions.
    pub fn new(output: PathBuf) -> DuplexOptions {
        DuplexOptions {
            output,
            overwrite: false,
            reconnect_for: None,
            stall_retries: 3,
            allow_delete: false,
        }
    }
}

/// A job the peer sent us, once it ended.
#[derive(Debug)]
pub struct Arrival {
    /// How the job ended: `Ok` when every file arrived and was verified.
    pub result: Result<(), Error>,
    /// What the job did.
    pub report: Report,
    /// Each stored file's path relative to the output folder, with its BLAKE3.
    pub saved: Vec<(String, blake3::Hash)>,
}

/// The peer's jobs as they end, in order ([`Arrivals::next`]).
#[derive(Debug)]
pub struct Arrivals(mpsc::UnboundedReceiver<Arrival>);

impl Arrivals {
    /// The next job the peer sent; `None` once the link has ended.
    pub async fn next(&mut self) -> Option<Arrival> {
        self.0.recv().await
    }
}

/// The state of the link's path, as the driver publishes it.
#[derive(Clone, Debug)]
enum Path {
    /// A connection carries jobs; `gen` counts connections from 1.
    Up {
        gen: u64,
        conn: Connection,
        authenticated: bool,
        kind: PathKind,
        /// The code both users compare when either could not check the other.
        code: Option<String>,
    },
    /// The connection `gen` died and a new path is being punched.
    Down,
    /// The link is over: closed by us (`None`) or for the reason given.
    Ended(Option<Ended>),
}

/// Why the link ended, kept as text so every waiting job can get an error of its own.
#[derive(Clone, Debug)]
struct Ended {
    /// The peer closed it (its reason); otherwise no new path was found.
    by_peer: bool,
    why: String,
}

impl Ended {
    fn error(ended: &Option<Ended>) -> Error {
        match ended {
            None => Error::Usage("the link was closed".into()),
            Some(e) if e.by_peer => Error::PeerStopped(e.why.clone()),
            Some(e) => Error::ConnectionLost(e.why.clone()),
        }
    }
}

/// A link that stays: [`Duplex::send`] any time, the peer's jobs from [`Arrivals`].
///
/// Made by [`Link::into_duplex`] on both sides. Dropping it closes the link as
/// [`Duplex::close`] does, without waiting.
#[derive(Debug)]
pub struct Duplex {
    jobs: mpsc::UnboundedSender<Request>,
    path: watch::Receiver<Path>,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    driver: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Our public address as STUN last saw it, when STUN answered at the start.
    mapping: Option<watch::Receiver<Option<std::net::SocketAddr>>>,
}

impl Link {
    /// Keeps this link for any number of jobs both ways (see [`Duplex`]); the peer must do
    /// the same (or be a one-shot peer, whose single job ends the link). Must be called
    /// inside a Tokio runtime: the link's tasks are spawned on it.
    pub fn into_duplex(self, opts: DuplexOptions) -> (Duplex, Arrivals) {
        let stall = self.stall_timeout();
        let mapping = self.mapping();
        let first = Path::Up {
            gen: 1,
            conn: self.connection().clone(),
            authenticated: self.authenticated(),
            kind: self.path_kind(),
            code: self.code_to_compare(false).map(str::to_owned),
        };
        let (path_tx, path) = watch::channel(first);
        let (jobs, queue) = mpsc::unbounded_channel();
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let (notes, noted) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let store = Store::new(opts.output.clone(), opts.overwrite);
        tokio::spawn(sending(
            queue,
            path.clone(),
            stall,
            opts.stall_retries,
            notes.clone(),
        ));
        let peer_deletes = PeerDeletes {
            allowed: opts.allow_delete,
            notes,
            received: Ledger::default(),
        };
        tokio::spawn(receiving(path.clone(), store, stall, arrived, peer_deletes));
        let driver = tokio::spawn(drive(self, path_tx, stopped, noted, opts.reconnect_for));
        let duplex = Duplex {
            jobs,
            path,
            stop: std::sync::Mutex::new(Some(stop)),
            driver: std::sync::Mutex::new(Some(driver)),
            mapping,
        };
        (duplex, Arrivals(arrivals))
    }
}

impl Duplex {
    /// Sends `paths` (files and folders) as one job and returns once the peer verified every
    /// file, or the job failed. Callable any time and from several tasks at once: jobs this
    /// way go one at a time, in the order asked for.
    pub async fn send(&self, paths: &[PathBuf]) -> Result<Report, Error> {
        self.send_observed(paths, |_: &Event| {}).await
    }

    /// [`Duplex::send`], telling `events` what the job does, as a one-shot sender's
    /// session tells its events: `plan`, `progress`, `file_done`, a `warning` for each
    /// stall retry, and `summary` last when every file was verified.
    pub async fn send_observed(
        &self,
        paths: &[PathBuf],
        events: impl Events + 'static,
    ) -> Result<Report, Error> {
        let paths = paths.to_vec();
        let scan = tokio::task::spawn_blocking(move || crate::manifest::scan(&paths))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        self.send_job_observed(Outgoing::new(scan), events).await
    }

    /// Sends a job already made (a scan of the caller's choice), as [`Duplex::send`].
    pub async fn send_job(&self, job: Outgoing) -> Result<Report, Error> {
        self.send_job_observed(job, |_: &Event| {}).await
    }

    /// [`Duplex::send_job`], telling `events` what the job does (see
    /// [`Duplex::send_observed`]).
    pub async fn send_job_observed(
        &self,
        job: Outgoing,
        events: impl Events + 'static,
    ) -> Result<Report, Error> {
        let (reply, outcome) = oneshot::channel();
        let events = Box::new(events);
        if self
            .jobs
            .send(Request::Send {
                job: Box::new(job),
                events,
                reply,
            })
            .is_err()
        {
            return Err(self.ended());
        }
        outcome.await.unwrap_or_else(|_| Err(self.ended()))
    }

    /// Asks the peer to delete `path` (relative, `/`-separated) under its output folder:
    /// the file, if it still holds `hash` (what we sent), or with `None` the folder, if
    /// empty. Goes in order with the jobs this way (a file sent, then deleted, is deleted
    /// after it arrived); a lost path is waited out as a job's is. The peer decides: it
    /// refuses unless its link allows deletions ([`DuplexOptions::allow_delete`]) and we
    /// sent it that file (that BLAKE3) over this link.
    pub async fn delete(
        &self,
        path: &str,
        hash: Option<blake3::Hash>,
    ) -> Result<DeleteStatus, Error> {
        let (reply, outcome) = oneshot::channel();
        let path = path.to_owned();
        if self
            .jobs
            .send(Request::Delete { path, hash, reply })
            .is_err()
        {
            return Err(self.ended());
        }
        outcome.await.unwrap_or_else(|_| Err(self.ended()))
    }

    /// The connection carrying jobs now, and how its peer address was learned, if the
    /// path is up.
    pub fn connection(&self) -> Option<(Connection, PathKind)> {
        match &*self.path.borrow() {
            Path::Up { conn, kind, .. } => Some((conn.clone(), *kind)),
            _ => None,
        }
    }

    /// Our public address as a STUN server last saw it: the ticket's, until a lost path
    /// made the link ask again (see the `mapping_changed` event); `None` without STUN.
    pub fn mapping(&self) -> Option<std::net::SocketAddr> {
        self.mapping.as_ref().and_then(|m| *m.borrow())
    }

    /// Connections after the first (paths lost and found again).
    pub fn reconnects(&self) -> u64 {
        match &*self.path.borrow() {
            Path::Up { gen, .. } => gen - 1,
            _ => 0,
        }
    }

    /// Waits until the link has ended (closed by the peer, or no new path was found) and
    /// says why.
    pub async fn wait_ended(&self) -> Error {
        let mut path = self.path.clone();
        loop {
            if let Path::Ended(e) = &*path.borrow_and_update() {
                return Ended::error(e);
            }
            if path.changed().await.is_err() {
                return Error::Internal("the link's driver ended".into());
            }
        }
    }

    /// The error for a job asked for after the link ended.
    fn ended(&self) -> Error {
        match &*self.path.borrow() {
            Path::Ended(e) => Ended::error(e),
            _ => Error::Internal("the link's sending task ended".into()),
        }
    }

    /// Closes the link: jobs still queued or moving fail, the peer is told (its link ends
    /// as closed by us, not as lost), and the router's port mapping is removed. Closing
    /// again does nothing.
    pub async fn close(&self) {
        if let Some(stop) = take(&self.stop) {
            let _ = stop.send(());
        }
        if let Some(driver) = take(&self.driver) {
            let _ = driver.await;
        }
    }
}

/// Takes what `m` holds, poisoned or not.
fn take<T>(m: &std::sync::Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// What the driver does after a connection ended.
enum Next {
    Reconnect(String),
    End(Ended),
}

/// Reconnects on a lost path, ends on the peer's close; reads why a connection ended.
fn after_close(e: &quinn::ConnectionError) -> Next {
    if let quinn::ConnectionError::ApplicationClosed(c) = e {
        // A peer that found the path dead first closes it with "lost" before punching.
        if CloseCode::from(c.error_code) == CloseCode::NO_ERROR && &c.reason[..] == b"lost" {
            return Next::Reconnect("your peer lost the path".into());
        }
    }
    match transfer::closed(e) {
        Error::ConnectionLost(why) => Next::Reconnect(why),
        Error::PeerStopped(why) => Next::End(Ended { by_peer: true, why }),
        other => Next::End(Ended {
            by_peer: true,
            why: other.to_string(),
        }),
    }
}

/// The driver: publishes the path, punches a new one when it dies, forwards the workers'
/// notes to the session's events, and closes the link when told or when it ends.
async fn drive(
    mut link: Link,
    path: watch::Sender<Path>,
    mut stop: oneshot::Receiver<()>,
    mut notes: mpsc::UnboundedReceiver<Event>,
    reconnect_for: Option<Duration>,
) {
    let mut gen = 1;
    let outcome = loop {
        let conn = link.connection().clone();
        let why = loop {
            tokio::select! {
                e = conn.closed() => break Some(e),
                _ = &mut stop => break None,
                Some(note) = notes.recv() => link.event(&note),
                // STUN asked when the last path died may answer after it came back.
                () = link.remap_answer() => {}
            }
        };
        let Some(why) = why else {
            path.send_replace(Path::Ended(None));
            break Ok(());
        };
        let reason = match after_close(&why) {
            Next::Reconnect(reason) => reason,
            Next::End(ended) => {
                path.send_replace(Path::Ended(Some(ended)));
                break Ok(());
            }
        };
        path.send_replace(Path::Down);
        let found = tokio::select! {
            r = reconnect(&mut link, reason, reconnect_for) => Some(r),
            _ = &mut stop => None,
        };
        match found {
            Some(Ok(())) => gen += 1,
            Some(Err(e)) => {
                path.send_replace(Path::Ended(Some(Ended {
                    by_peer: false,
                    why: e.to_string(),
                })));
                break Err(e);
            }
            None => {
                path.send_replace(Path::Ended(None));
                break Ok(());
            }
        }
        path.send_replace(Path::Up {
            gen,
            conn: link.connection().clone(),
            authenticated: link.authenticated(),
            kind: link.path_kind(),
            code: link.code_to_compare(false).map(str::to_owned),
        });
    };
    link.close(&outcome).await;
}

/// Punches until a new path is found, or `limit` has passed since the path died.
async fn reconnect(link: &mut Link, why: String, limit: Option<Duration>) -> Result<(), Error> {
    let lost = Instant::now();
    // Once: a link that keeps punching must not say "for up to 120 s" every 120 s.
    link.announce_reconnect(&why, limit);
    loop {
        match link.punch_again(why.clone()).await {
            Err(Error::ConnectionLost(e)) if limit.is_none_or(|l| lost.elapsed() < l) => {
                tracing::info!(error = %e, "no new path yet; punching on");
            }
            other => return other,
        }
    }
}

/// A connection jobs can use now.
struct Carrier {
    gen: u64,
    conn: Connection,
    authenticated: bool,
    code: Option<String>,
}

/// Waits for a connection other than `stale` (any, if `None`); fails once the link ended.
async fn usable(path: &mut watch::Receiver<Path>, stale: Option<u64>) -> Result<Carrier, Error> {
    loop {
        match &*path.borrow_and_update() {
            Path::Up {
                gen,
                conn,
                authenticated,
                code,
                ..
            } if Some(*gen) != stale => {
                return Ok(Carrier {
                    gen: *gen,
                    conn: conn.clone(),
                    authenticated: *authenticated,
                    code: code.clone(),
                })
            }
            Path::Ended(e) => return Err(Ended::error(e)),
            _ => {}
        }
        if path.changed().await.is_err() {
            return Err(Error::Internal("the link's driver ended".into()));
        }
    }
}

/// How the peer's deletions are answered, and where what became of them is told.
struct PeerDeletes {
    allowed: bool,
    notes: mpsc::UnboundedSender<Event>,
    /// What the peer sent us over this link: the only paths it may delete.
    received: Ledger,
}

impl PeerDeletes {
    /// Notes the files of a job that arrived.
    fn arrived(&mut self, saved: &[(String, blake3::Hash)]) {
        for (name, hash) in saved {
            self.received.add(name, *hash);
        }
    }

    async fn answer(&mut self, asked: DeleteAsked, root: &std::path::Path) {
        let (path, here) = (asked.path.clone(), asked.name_here());
        let sent_by_peer = here
            .as_deref()
            .and_then(|h| self.received.deletion(h))
            .is_some_and(|held| held == asked.hash());
        let result = asked.answer(root, self.allowed && sent_by_peer).await;
        if let (DeleteStatus::Deleted | DeleteStatus::Missing, Some(h)) = (result, &here) {
            self.received.forget(h);
        }
        let _ = self.notes.send(Event::Deleted { path, result });
    }
}

/// The receiving task: accepts the peer's jobs into `store`, one at a time, and hands each
/// to the program once it ended. A job cut by a lost path or a stall is not handed over:
/// the peer sends it again and its files resume.
async fn receiving(
    mut path: watch::Receiver<Path>,
    store: Store,
    stall: Option<Duration>,
    arrived: mpsc::UnboundedSender<Arrival>,
    mut deletes: PeerDeletes,
) {
    let mut stale = None;
    loop {
        let Ok(Carrier {
            gen,
            conn,
            authenticated,
            ..
        }) = usable(&mut path, stale).await
        else {
            return;
        };
        // An idle link waits here without a watchdog: no job is no stall.
        let control = tokio::select! {
            c = conn.accept_bi() => c,
            _ = path.changed() => continue,
        };
        let Ok(control) = control else {
            stale = Some(gen);
            continue;
        };
        let opts = transfer::Options {
            stall_timeout: stall,
            ..transfer::Options::new(authenticated)
        };
        let mut job = Incoming::new(store.clone());
        let result = match transfer::delete::opened(&conn, control, stall).await {
            Ok(Opened::Job(started)) => job.run_started(&conn, started, opts, &mut Silent).await,
            Ok(Opened::Delete(asked)) => {
                deletes.answer(asked, store.root()).await;
                stale = None;
                continue;
            }
            Err(e) => Err(e),
        };
        if let Err(Error::ConnectionLost(_) | Error::Stalled(_)) = result {
            stale = conn.close_reason().map(|_| gen);
            continue;
        }
        stale = None;
        let saved: Vec<_> = job.saved_hashes().collect();
        deletes.arrived(&saved);
        let arrival = Arrival {
            saved,
            report: job.report().clone(),
            result,
        };
        // Nobody listening is no reason to refuse the peer's jobs.
        let _ = arrived.send(arrival);
    }
}
