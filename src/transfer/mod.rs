//! Moving a job (files, folders, links) over an established QUIC connection, resumably.
//!
//! One bidirectional control stream carries the manifest and the receiver's resume claims
//! (see [`crate::wire::Frame`] for the order); each file's bytes then travel on a
//! unidirectional stream of their own, framed by a [`crate::wire::DataHead`] and a
//! [`crate::wire::Trailer`] with the file's BLAKE3.
//! The order of it all is [`control`]'s, a sans-IO state machine per side that the
//! sending and receiving halves feed what they read and obey.
//!
//! [`Outgoing`] and [`Incoming`] keep a job's state across connections: when a path dies and
//! the CLI reconnects, calling `run` again with the new connection resumes from what the
//! receiver holds, exactly as a new run of both commands would. File I/O and hashing run on
//! blocking threads behind small bounded channels, so memory stays at a few chunks and the
//! network task never waits for the disk.
//!
//! The engine knows nothing of terminals or JSON: it tells an [`Observer`] what happens (the
//! plan, bytes moving, each verified file), the way ripgrep's searcher reports to a `Sink`.
//! The CLI's observer draws the progress bar and prints `--json` events; [`Silent`] ignores
//! everything, for a program that only wants the [`Report`].

pub mod control;
pub mod delete;
mod receive;
mod send;
mod store;
pub mod watchdog;
pub mod window;

pub use receive::Incoming;
pub use send::Outgoing;
pub use store::{check_output_dir, numbered, part_name, Store};
pub use watchdog::{Waiting, DEFAULT_STALL_TIMEOUT};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, ReadError, ReadExactError, RecvStream, WriteError};

use crate::error::{CloseCode, Error};
use crate::wire::{
    Entry, EntryKind, FileStatus, Frame, WireError, FLAG_AUTHENTICATED, FLAG_HEARTBEAT,
    FRAME_HEADER_LEN, MAX_MANIFEST_COST, STOP_STORE_FAILED,
};

/// Size of one chunk read from disk and handed to QUIC.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight between a disk thread and the network task.
const PIPELINE: usize = 4;

/// Options for one side of a transfer.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// We checked the peer's certificate against its ticket.
    pub authenticated: bool,
    /// How long a peer may keep the connection alive without moving the job before the
    /// run ends with [`Error::Stalled`]; `None` waits for ever.
    pub stall_timeout: Option<Duration>,
    /// Most memory the receiver lets a manifest cost (see [`crate::wire::entry_cost`]);
    /// the sender checks its job against [`MAX_MANIFEST_COST`] while scanning instead.
    pub manifest_limit: u64,
}

impl Options {
    /// Options with the defaults: [`DEFAULT_STALL_TIMEOUT`], [`MAX_MANIFEST_COST`].
    pub fn new(authenticated: bool) -> Options {
        Options {
            authenticated,
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
            manifest_limit: MAX_MANIFEST_COST,
        }
    }

    /// The `FLAG_*` bits this side announces.
    fn flags(&self) -> u8 {
        let auth = if self.authenticated {
            FLAG_AUTHENTICATED
        } else {
            0
        };
        auth | FLAG_HEARTBEAT
    }
}

/// What a transfer tells the program running it, as it happens; every method does nothing
/// unless implemented.
///
/// One observer serves a job across its connections: after a reconnect the engine starts
/// again with [`Observer::plan`], its byte count back at what the receiver holds.
pub trait Observer: Send {
    /// Both sides agreed what moves on this connection; no byte has moved yet, and the job
    /// stands at `plan.held` bytes.
    fn plan(&mut self, plan: &Plan) {
        let _ = plan;
    }

    /// The file announced as `path` starts moving, with the job at `done` bytes: fewer than
    /// before when the receiver claimed part of this file and the sender's hash of that
    /// part differed, so the file moves again from the start.
    fn file_started(&mut self, path: &str, done: u64) {
        let _ = (path, done);
    }

    /// `n` more bytes of the current file crossed the network; the job is at `done` bytes.
    fn moved(&mut self, n: u64, done: u64) {
        let _ = (n, done);
    }

    /// A file arrived and the receiver verified it (or already had it, identical); told
    /// once per file and run, a reconnect does not repeat it.
    fn file_done(&mut self, file: &FileDone<'_>) {
        let _ = file;
    }

    /// No more bytes move: every file is verified or failed, and `run` returns next.
    fn finish(&mut self) {}
}

/// An [`Observer`] that ignores everything, for programs and tests that only want the
/// [`Report`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Observer for Silent {}

/// What moves on a connection, as both sides agreed it ([`Observer::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Regular files in the job.
    pub files: u64,
    /// Folders in the job.
    pub dirs: u64,
    /// Links in the job.
    pub links: u64,
    /// Sum of all file sizes.
    pub total: u64,
    /// Bytes the receiver says it already holds; the sender checks each claim by hash and
    /// sends a file again from the start if it differs.
    pub held: u64,
}

/// A file that arrived and was verified ([`Observer::file_done`]).
#[derive(Clone, Copy, Debug)]
pub struct FileDone<'a> {
    /// The file's path as announced (relative, `/`-separated).
    pub path: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its BLAKE3: the sender's, which the receiver found equal to its own.
    pub hash: blake3::Hash,
    /// [`FileStatus::Stored`] or [`FileStatus::AlreadyThere`].
    pub status: FileStatus,
    /// Receiver: where the file is on disk; sender: `None`.
    pub saved_as: Option<&'a Path>,
}

/// What a job did, summed over all connections of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Regular files in the job.
    pub files: u64,
    /// Folders in the job.
    pub dirs: u64,
    /// Links in the job.
    pub links: u64,
    /// Sum of all file sizes.
    pub total: u64,
    /// File bytes that crossed the network in this run.
    pub moved: u64,
    /// Bytes the receiver already held from an earlier run (proven by hash) when this run
    /// started, so they were not sent again.
    pub resumed: u64,
    /// Files the receiver already had, identical, so nothing was written.
    pub already_there: u64,
    /// Connections after the first (path lost and found again).
    pub reconnects: u32,
    /// Time from the first connection to the end.
    pub elapsed: Duration,
    /// Each file's path (relative, as announced) and BLAKE3, in job order.
    pub hashes: Vec<(String, blake3::Hash)>,
    /// Files stored under another name than announced, and that name (receiver only).
    pub renamed: Vec<(String, PathBuf)>,
    /// Files that did not arrive, and why.
    pub failed: Vec<(String, String)>,
    /// Whether the peer checked our certificate against our ticket.
    pub peer_authenticated: bool,
    /// When the run's first connection started.
    started: Option<Instant>,
    /// Bytes of the job the receiver has now, as the observer was told.
    done: u64,
    /// The next connection to carry the job is the last one again (a retry after a
    /// stall), which is no reconnect.
    again: bool,
}

impl Report {
    /// Counts a manifest's entries and bytes.
    fn tally(&mut self, entries: &[Entry]) {
        let count = |kind| entries.iter().filter(|e| e.kind == kind).count() as u64;
        self.files = count(EntryKind::File);
        self.dirs = count(EntryKind::Dir);
        self.links = count(EntryKind::Symlink);
        self.total = entries.iter().map(|e| e.size).sum();
    }

    /// Notes that a connection starts carrying the job; true for the run's first.
    fn connection_started(&mut self) -> bool {
        if self.started.is_none() {
            self.started = Some(Instant::now());
            true
        } else {
            if !std::mem::take(&mut self.again) {
                self.reconnects += 1;
            }
            false
        }
    }

    /// Tells `observer` the plan of a connection on which the receiver holds `held` bytes.
    fn plan(&mut self, observer: &mut dyn Observer, held: u64) {
        self.done = held;
        observer.plan(&Plan {
            files: self.files,
            dirs: self.dirs,
            links: self.links,
            total: self.total,
            held,
        });
    }

    /// Notes that the file `path` starts at `start` where `claimed` bytes were claimed: a
    /// refused claim moves the count back, and on the run's first connection the proven
    /// bytes count as resumed from an earlier run.
    fn file_started(
        &mut self,
        observer: &mut dyn Observer,
        path: &str,
        first: bool,
        claimed: u64,
        start: u64,
    ) {
        self.done = self.done.saturating_sub(claimed.saturating_sub(start));
        if first {
            self.resumed += start;
        }
        observer.file_started(path, self.done);
    }

    /// Notes that `n` more bytes crossed the network.
    fn moved(&mut self, observer: &mut dyn Observer, n: u64) {
        self.moved += n;
        self.done += n;
        observer.moved(n, self.done);
    }

    /// Notes that the job is done, for `elapsed`.
    fn finished(&mut self) {
        self.elapsed = self.started.map(|s| s.elapsed()).unwrap_or_default();
    }
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::ConnectionLost(e.to_string())
}

/// The error for a connection that ended under us.
///
/// A p2pcopy peer that fails closes the connection with its own exit code and its error
/// message as reason, so a full disk or a failed verification on the other side is reported
/// as such here, not as a lost connection ([`Error::from_peer_close`]).
pub fn closed(e: &ConnectionError) -> Error {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            Error::from_peer_close(c.error_code.into(), &c.reason)
        }
        ConnectionError::TimedOut => Error::ConnectionLost(format!(
            "no answer from your peer for {} s (network gone, or the peer's computer asleep?)",
            crate::quic::IDLE_TIMEOUT.as_secs()
        )),
        ConnectionError::Reset => Error::PeerStopped(
            "the peer no longer knows this connection (it was restarted?)".into(),
        ),
        ConnectionError::ConnectionClosed(c) => Error::PeerStopped(c.to_string()),
        ConnectionError::VersionMismatch | ConnectionError::TransportError(_) => {
            Error::Protocol(e.to_string())
        }
        // Only a lost path is worth reconnecting for; see the CLI's transfer loop.
        other => Error::ConnectionLost(other.to_string()),
    }
}

fn lost_read(e: ReadError) -> Error {
    match e {
        ReadError::ConnectionLost(c) => closed(&c),
        other => lost(other),
    }
}

fn peer_cannot_store() -> Error {
    Error::PeerStore("its disk is full or its output folder is not writable".into())
}

fn lost_write(e: WriteError) -> Error {
    match e {
        WriteError::Stopped(code) if code == STOP_STORE_FAILED.into() => peer_cannot_store(),
        WriteError::ConnectionLost(c) => closed(&c),
        other => lost(other),
    }
}

fn read_exact_err(e: ReadExactError) -> Error {
    match e {
        ReadExactError::FinishedEarly(_) => Error::Protocol("the peer ended a stream early".into()),
        ReadExactError::ReadError(e) => lost_read(e),
    }
}

fn wire(e: WireError) -> Error {
    Error::Protocol(e.to_string())
}

/// Reads one control frame, refusing oversized ones before reading their payload.
async fn read_frame(recv: &mut RecvStream) -> Result<Frame, Error> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut h).await.map_err(read_exact_err)?;
    let (ty, len) = Frame::decode_header(&h).map_err(wire)?;
    let mut p = vec![0u8; len];
    recv.read_exact(&mut p).await.map_err(read_exact_err)?;
    Frame::decode_payload(ty, &p).map_err(wire)
}

/// Replaces a protocol error with the peer's own reason when the peer is closing.
///
/// A peer that stops (Ctrl-C, a full disk, any error) drops its streams, which ends them
/// cleanly, and closes the connection with its exit code right behind; we may read the
/// early end first. Waiting a moment for the close turns "a stream ended early" into
/// what really happened.
async fn explain(conn: &Connection, e: Error) -> Error {
    if !matches!(e, Error::Protocol(_)) {
        return e;
    }
    match tokio::time::timeout(Duration::from_millis(500), conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(c))
            if CloseCode::from(c.error_code) != CloseCode::NO_ERROR =>
        {
            closed(&ConnectionError::ApplicationClosed(c))
        }
        _ => e,
    }
}

/// Keeps the connection open until the peer has read our last frame and closed it, or
/// has acknowledged all of `control` (the receiver's control stream, ended after its last
/// verdict) and a round trip passed without its close. Returns true in that last case:
/// the peer has everything, and its close was lost. The close is a single packet that
/// QUIC repeats only when we send again; waiting it out for the full 5 s made one run in
/// five on the bench's 2 %-lossy 200 ms path take ~6 s longer (bench/RESULTS.md,
/// "Startup's loss exit, a lost close, and the issue's own clock").
pub async fn linger(conn: &Connection, control: Option<quinn::SendStream>) -> bool {
    let acknowledged = async {
        match control {
            Some(s) if s.stopped().await.is_ok() => {
                // Its close leaves as it reads our last verdict, right after acknowledging
                // it.
                tokio::time::sleep(conn.rtt().max(Duration::from_millis(10))).await;
            }
            // A lost connection ends `closed` below.
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = conn.closed() => false,
        () = acknowledged => true,
        () = tokio::time::sleep(Duration::from_secs(5)) => false,
    }
}

/// Sends two one-byte DATAGRAM frames after control frames the peer must answer before
/// anything else moves (the manifest, the plan, the last verdicts), each in a packet of its
/// own. Until the peer answers they are all we send; lost with nothing after them, those
/// frames wait for QUIC's probe timeout, where a later packet's ACK shows the loss after
/// 9/8 RTT (RFC 9002, 6.1.2). On a 200 ms path each loss cost 0.65-0.77 s without them and
/// 0.23-0.25 s with them (the test
/// `a_lost_manifest_plan_or_last_verdict_is_found_by_the_packets_after_it`); at 2 % loss
/// about one job in 17 loses one of the three. Two, spaced, since one can be lost too.
/// The peer reads none ([`crate::quic::DATAGRAM_BUFFER`]); a peer that takes no datagrams
/// gets none.
pub(crate) fn follow(conn: &Connection) {
    if conn.max_datagram_size().is_none() {
        return;
    }
    let conn = conn.clone();
    let stream_frames = conn.stats().frame_tx.stream;
    tokio::spawn(async move {
        // Not in the frames' packet: wait (a little) for it to leave.
        for _ in 0..10 {
            if conn.stats().frame_tx.stream > stream_frames {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let gap = (conn.rtt() / 8).clamp(Duration::from_millis(1), Duration::from_millis(25));
        let one = || conn.send_datagram(bytes::Bytes::from_static(&[0]));
        if one().is_ok() {
            tokio::time::sleep(gap).await;
            let _ = one();
        }
    });
}

/// Logs what QUIC saw on the connection's path (with `-v`): when a transfer runs slower
/// than the link, these figures say whether congestion control, loss or flow control held
/// it back.
pub fn log_path_stats(conn: &Connection) {
    let s = conn.stats();
    tracing::info!(
        rtt_ms = s.path.rtt.as_secs_f64() * 1e3,
        cwnd = s.path.cwnd,
        mtu = s.path.current_mtu,
        sent_packets = s.path.sent_packets,
        lost_packets = s.path.lost_packets,
        lost_bytes = s.path.lost_bytes,
        congestion_events = s.path.congestion_events,
        data_blocked_sent = s.frame_tx.data_blocked,
        stream_data_blocked_sent = s.frame_tx.stream_data_blocked,
        max_data_sent = s.frame_tx.max_data,
        udp_rx_datagrams = s.udp_rx.datagrams,
        udp_tx_datagrams = s.udp_tx.datagrams,
        // Sends per GSO batch. (quinn counts a receive "io" per packet, not per recvmsg,
        // so its receive count would only repeat udp_rx_datagrams; GRO merging shows in
        // the namespace's /proc/net/snmp instead.)
        udp_tx_ios = s.udp_tx.ios,
        "path stats"
    );
}
