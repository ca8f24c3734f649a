//! The sender's half of a job.

mod disk;
mod out;

use std::collections::{HashMap, HashSet};

use quinn::Connection;
use tokio::sync::mpsc;

use super::control::{self, SendEvent};
use super::watchdog::{heartbeat_every, Waiting, Watch};
use super::{
    closed, explain, follow, lost_write, read_frame, FileDone, Observer, Options, Report, PIPELINE,
};
use crate::error::Error;
use crate::manifest::Scan;
use crate::wire::{Claim, EntryKind, FileStatus, Frame, FLAG_AUTHENTICATED, FLAG_HEARTBEAT};
use disk::{read_all, DiskEvent, Job};
use out::Out;

/// A job being sent: the scan, plus what this run learned, kept across reconnects.
pub struct Outgoing {
    scan: Scan,
    /// Full-file hashes computed in this run, to check "already there" claims without
    /// reading the file again.
    known: HashMap<u32, blake3::Hash>,
    /// How each file ended on the receiver, as far as it told us.
    status: HashMap<u32, FileStatus>,
    /// Files the observer was told are done, so a reconnect does not repeat them.
    reported: HashSet<u32>,
    report: Report,
}

impl Outgoing {
    /// A job for the entries of `scan`.
    pub fn new(scan: Scan) -> Outgoing {
        let mut report = Report::default();
        report.tally(&scan.entries);
        Outgoing {
            scan,
            known: HashMap::new(),
            status: HashMap::new(),
            reported: HashSet::new(),
            report,
        }
    }

    /// What the job did so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Says that the next [`Outgoing::run`] is on the connection the last one ran on (a
    /// retry after a stall), so the report does not count it as a reconnect.
    pub fn retry_on_same_connection(&mut self) {
        self.report.again = true;
    }

    /// Sends the job over `conn` until the receiver confirms every entry, telling `observer`
    /// how it goes. Called again with a new connection after a lost one, it continues where
    /// the receiver stands.
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
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
        let manifest = self.send_manifest(&watch, &mut send, opts).await?;
        warm_up(conn, manifest);
        follow(conn);
        let mut ctl = control::Sender::new(&self.scan.entries);
        let claims = loop {
            let frame = watch.guard(Waiting::Accept, read_frame(&mut recv)).await?;
            if let Some(SendEvent::Plan(claims)) = ctl.handle_frame(frame)? {
                break claims;
            }
        };
        self.report.peer_authenticated = ctl.peer_flags() & FLAG_AUTHENTICATED != 0;
        let mut link = Link {
            conn,
            watch,
            send,
            recv,
            // While our disk is slow (proving a large claim, say) the receiver hears
            // nothing from us: a receiver that understands it is told we are busy.
            beats: ctl.peer_flags() & FLAG_HEARTBEAT != 0,
        };
        let outcome = self
            .stream(&mut link, &mut ctl, claims, first, opts, observer)
            .await;
        outcome?;
        for &(index, status) in ctl.verdicts() {
            // A file stored on an earlier connection is reported "already there" now.
            let keep = matches!(self.status.get(&index), Some(FileStatus::Stored))
                && status == FileStatus::AlreadyThere;
            if !keep {
                self.status.insert(index, status);
            }
        }
        observer.finish();
        self.finish_report();
        self.report.finished();
        if self.report.failed.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.report.failed.iter().map(|(p, _)| p.as_str()).collect();
        Err(Error::Verify(format!(
            "{} file{} changed while being sent and did not arrive ({}); run both commands again to send {}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" },
        )))
    }

    /// Writes the offer and the manifest; returns their size in bytes.
    async fn send_manifest(
        &self,
        watch: &Watch,
        send: &mut quinn::SendStream,
        opts: Options,
    ) -> Result<u64, Error> {
        let entries = &self.scan.entries;
        let mut buf = Vec::with_capacity(64 << 10);
        let mut written = 0;
        Frame::Offer(control::Sender::offer(entries, opts.flags())).encode(&mut buf);
        for e in entries {
            Frame::Entry(e.clone()).encode(&mut buf);
            if buf.len() >= 60 << 10 {
                write_control(watch, send, &buf).await?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        write_control(watch, send, &buf).await?;
        Ok(written + buf.len() as u64)
    }

    /// The disk thread's work for a plan with `claims`, and the bytes the receiver holds.
    fn jobs(&self, claims: &HashMap<u32, Claim>) -> (Vec<Job>, u64) {
        let jobs: Vec<Job> = self
            .scan
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::File)
            .map(|(i, e)| Job {
                index: i as u32,
                path: self.scan.sources[i].clone(),
                size: e.size,
                mtime: (e.mtime_secs, e.mtime_nanos),
                claim: claims.get(&(i as u32)).copied(),
                known: self.known.get(&(i as u32)).copied(),
            })
            .collect();
        // The count starts at what the receiver says it holds; a claim that fails its proof
        // moves it back when that file starts.
        let held: u64 = jobs
            .iter()
            .filter_map(|j| j.claim.map(|c| c.offset.min(j.size)))
            .sum();
        (jobs, held)
    }

    /// Streams every file of the plan while reading the receiver's verdicts, until it says
    /// the job is done.
    async fn stream(
        &mut self,
        link: &mut Link<'_>,
        ctl: &mut control::Sender,
        claims: HashMap<u32, Claim>,
        first: bool,
        opts: Options,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let (jobs, held) = self.jobs(&claims);
        self.report.plan(observer, held);
        let (tx, mut rx) = mpsc::channel::<DiskEvent>(PIPELINE);
        let reader = tokio::task::spawn_blocking(move || read_all(jobs, tx));
        // The receiver's verdicts are reported as they come, not when the job ends.
        let (verdict_tx, mut verdicts) = mpsc::unbounded_channel();
        let mut results = std::pin::pin!(collect(&mut link.recv, ctl, verdict_tx));
        let mut out = Out::new(link.conn, &link.watch);
        let mut sending_done = false;
        let every = heartbeat_every(opts.stall_timeout);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = Vec::new();
        Frame::Busy.encode(&mut beat);
        // Once everything is sent, the receiver's verdicts are what we wait for.
        let mut verdict_dog = None;
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 86_400);
        let mut verdict_alarm = std::pin::pin!(tokio::time::sleep_until(far));
        let outcome = loop {
            tokio::select! {
                r = &mut results => break r,
                _ = heartbeat.tick(), if link.beats && !sending_done => {
                    write_control(&link.watch, &mut link.send, &beat).await?;
                }
                _ = &mut verdict_alarm, if verdict_dog.is_some() => {
                    if let Some(d) = verdict_dog.as_mut() {
                        let next = link.watch.check(d, Waiting::Verdict)?;
                        verdict_alarm.as_mut().reset(next);
                    }
                }
                Some((index, status)) = verdicts.recv() => self.file_done(observer, index, status),
                ev = rx.recv(), if !sending_done => match ev {
                    None => {
                        sending_done = true;
                        verdict_dog = link.watch.start();
                        if let Some(d) = &verdict_dog {
                            verdict_alarm.as_mut().reset(d.deadline());
                        }
                    }
                    Some(DiskEvent::Start(head)) => {
                        let entry = &self.scan.entries[head.index as usize];
                        let claimed = claims.get(&head.index).map_or(0, |c| c.offset.min(entry.size));
                        self.report.file_started(observer, &entry.path, first, claimed, head.start);
                        out.start(head, entry.size).await?;
                    }
                    Some(DiskEvent::Data(chunk)) => {
                        let n = chunk.len() as u64;
                        out.data(chunk).await?;
                        self.report.moved(observer, n);
                    }
                    Some(DiskEvent::End(trailer)) => {
                        if let Some((index, hash)) = out.end(trailer).await? {
                            self.known.insert(index, hash);
                        }
                    }
                    Some(DiskEvent::Failed(path, source)) => break Err(Error::Input { path, source }),
                },
            }
        };
        drop(rx);
        let _ = reader.await;
        while let Ok((index, status)) = verdicts.try_recv() {
            self.file_done(observer, index, status);
        }
        outcome
    }

    /// Tells the observer of a file the receiver verified (or already had), once per file
    /// and run; the hash is ours, which the receiver found equal to its own.
    fn file_done(&mut self, observer: &mut dyn Observer, index: u32, status: FileStatus) {
        if !matches!(status, FileStatus::Stored | FileStatus::AlreadyThere) {
            return;
        }
        let entry = self.scan.entries.get(index as usize);
        let (Some(entry), Some(hash)) = (entry, self.known.get(&index)) else {
            return;
        };
        if self.reported.insert(index) {
            observer.file_done(&FileDone {
                path: &entry.path,
                size: entry.size,
                hash: *hash,
                status,
                saved_as: None,
            });
        }
    }

    fn finish_report(&mut self) {
        let r = &mut self.report;
        r.already_there = 0;
        r.failed.clear();
        r.hashes.clear();
        for (i, e) in self.scan.entries.iter().enumerate() {
            if e.kind != EntryKind::File {
                continue;
            }
            let i = i as u32;
            match self.status.get(&i) {
                Some(FileStatus::AlreadyThere) => r.already_there += 1,
                Some(FileStatus::HashMismatch) => r
                    .failed
                    .push((e.path.clone(), "the receiver's copy did not match".into())),
                Some(FileStatus::SourceChanged) => r
                    .failed
                    .push((e.path.clone(), "changed while being sent".into())),
                _ => {}
            }
            if let Some(h) = self.known.get(&i) {
                r.hashes.push((e.path.clone(), *h));
            }
        }
    }
}

/// Padding datagrams sent beside a `manifest` of that many bytes on a connection whose
/// controller has not grown yet: the round trip to the plan would otherwise carry little
/// more than the manifest, and startup doubles only what is acknowledged. Acknowledged with
/// the plan, they let the first data round start at about twice the initial window, one
/// round trip of startup less (bench/RESULTS.md, "Packet conservation after startup, and
/// startup during the plan's round trip").
/// Only what the window holds beside the manifest: quinn puts DATAGRAM frames before
/// stream data, so more would hold the manifest back, or go out with the first data. The
/// receiver never reads them ([`crate::quic::DATAGRAM_BUFFER`]).
fn warm_up(conn: &Connection, manifest: u64) {
    const MOST: u64 = 8;
    const SIZE: usize = 1200;
    /// A datagram's packet with QUIC's headers, and room for a few ACKs beside them.
    const PACKET: u64 = SIZE as u64 + 60;
    const SLACK: u64 = 1500;
    let Some(max) = conn.max_datagram_size() else {
        return;
    };
    let cwnd = conn.stats().path.cwnd;
    if cwnd > 2 * MOST * PACKET {
        return;
    }
    let n = (cwnd.saturating_sub(manifest + SLACK) / PACKET).min(MOST);
    tracing::debug!(
        cwnd,
        manifest,
        datagrams = n,
        "padding the plan's round trip"
    );
    let pad = bytes::Bytes::from(vec![0u8; max.min(SIZE)]);
    for _ in 0..n {
        if conn.send_datagram(pad.clone()).is_err() {
            break;
        }
    }
}

/// One connection's control stream, and how to keep the receiver informed.
struct Link<'a> {
    conn: &'a Connection,
    watch: Watch,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The receiver understands heartbeats.
    beats: bool,
}

/// Writes control frames, watching that the receiver reads them.
async fn write_control(
    watch: &Watch,
    send: &mut quinn::SendStream,
    frames: &[u8],
) -> Result<(), Error> {
    watch
        .guard(Waiting::Reading, async {
            send.write_all(frames).await.map_err(lost_write)
        })
        .await
}

/// Reads the receiver's control frames until it says the job is done, passing each verdict
/// to `verdicts` as it arrives.
async fn collect(
    recv: &mut quinn::RecvStream,
    ctl: &mut control::Sender,
    verdicts: mpsc::UnboundedSender<(u32, FileStatus)>,
) -> Result<(), Error> {
    loop {
        match ctl.handle_frame(read_frame(recv).await?)? {
            Some(SendEvent::Verdict { index, status }) => {
                let _ = verdicts.send((index, status));
            }
            Some(SendEvent::JobDone) => return Ok(()),
            _ => {}
        }
    }
}
