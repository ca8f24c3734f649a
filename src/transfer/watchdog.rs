//! Noticing a peer that keeps the connection alive but stops moving the job.
//!
//! QUIC keep-alives stop the idle timeout, so a peer that never sends its file list, stops
//! mid-file or never confirms would hold us for ever. Each wait on the peer is watched: no
//! sign of the peer working for `bound` ends it with [`Error::Stalled`].
//!
//! "A sign of the peer working" is read from QUIC's frame counters rather than marked by
//! hand at every await: STREAM frames (control frames, file data, heartbeats) and flow
//! control credit (MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS: the peer read what we sent).
//! ACKs and PINGs are left out, since keep-alives produce them from an idle peer. Time
//! spent on our own disk is not watched: only waits on the peer are.
//!
//! A dead path looks like a stall at first: nothing arrives. It is the idle timeout's to
//! notice (the CLI then reconnects and resumes), so a stall is declared only once a
//! datagram from the peer (a keep-alive will do) shows the path still works after the
//! bound ran out: a stall is a live connection without progress.
//!
//! [`Watchdog`] is the sans-IO rule, with time as an argument; [`Watch`] is the tokio shell.

use std::future::Future;
use std::time::Duration;

use quinn::Connection;
use tokio::time::Instant;

use crate::error::Error;

/// Default `--stall-timeout`: clearly longer than the receiver's final flush of a large file
/// to a slow disk (which the receiver covers with heartbeats anyway) and than any network
/// hiccup that does not end the connection (the idle timeout catches those in 10 s).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest gap between heartbeats a side sends while its own disk is busy (hashing what it
/// holds, flushing a file, proving a resume claim), so that the peer's watchdog sees it
/// alive even if the peer's `--stall-timeout` is much shorter than ours (down to ~5 s).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// What we were waiting for when the peer stopped; names the stall in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Receiver: the sender's offer (it connected and said nothing).
    Offer,
    /// Receiver: the rest of the sender's file list.
    Manifest,
    /// Receiver: the next file's data.
    NextFile,
    /// Receiver: more of the file being received.
    MidFile,
    /// Either side: the peer to read our control messages.
    Reading,
    /// Sender: the receiver's answer to the offer.
    Accept,
    /// Sender: the receiver to read the file being sent (flow control credit).
    Credit,
    /// Sender: the receiver's verdict on the files sent.
    Verdict,
}

impl Waiting {
    /// A clause for the one-line message: "your peer sent no file data for 60 s mid-file".
    pub fn describe(self, secs: u64) -> String {
        match self {
            Waiting::Offer => format!("your peer connected but sent no offer for {secs} s"),
            Waiting::Manifest => format!("your peer stopped sending its file list for {secs} s"),
            Waiting::NextFile => format!("your peer sent no data for {secs} s between files"),
            Waiting::MidFile => format!("your peer sent nothing for {secs} s mid-file"),
            Waiting::Reading => format!("your peer read nothing for {secs} s"),
            Waiting::Accept => format!("your peer did not answer the offer for {secs} s"),
            Waiting::Credit => format!("your peer stopped reading for {secs} s mid-file"),
            Waiting::Verdict => format!("your peer did not confirm the files for {secs} s"),
        }
    }
}

/// How often an overdue wait looks for a sign of life on the path (keep-alives come every
/// 2 s).
pub const RECHECK: Duration = Duration::from_millis(250);

/// The rule: a wait fails once `bound` has passed since it started or since the peer's
/// progress count last changed, whichever is later, and a datagram from the peer has
/// arrived since then (the path is alive).
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    bound: Duration,
    last: Instant,
    seen: u64,
    /// The peer's datagram count when the bound ran out.
    overdue: Option<u64>,
}

/// What a wait should do after a look at the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Look again at this time.
    WakeAt(Instant),
    /// The peer is alive and has made no progress for the bound.
    Stalled,
}

impl Watchdog {
    /// A wait starting at `now`, when the peer's progress count is `seen`.
    pub fn new(now: Instant, bound: Duration, seen: u64) -> Watchdog {
        Watchdog {
            bound,
            last: now,
            seen,
            overdue: None,
        }
    }

    /// When the bound runs out unless progress is seen first.
    pub fn deadline(&self) -> Instant {
        self.last + self.bound
    }

    /// Looks at the peer's progress count `seen` and datagram count `alive` at `now`.
    pub fn check(&mut self, now: Instant, seen: u64, alive: u64) -> Check {
        if seen != self.seen {
            self.seen = seen;
            self.last = now;
            self.overdue = None;
        }
        if now < self.deadline() {
            return Check::WakeAt(self.deadline());
        }
        match self.overdue {
            Some(before) if before != alive => Check::Stalled,
            Some(_) => Check::WakeAt(now + RECHECK),
            None => {
                self.overdue = Some(alive);
                Check::WakeAt(now + RECHECK)
            }
        }
    }
}

/// The count of frames from the peer that only a working peer sends, and the count of all
/// its datagrams.
fn activity(conn: &Connection) -> (u64, u64) {
    let s = conn.stats();
    let f = s.frame_rx;
    let work = f.stream
        + f.max_data
        + f.max_stream_data
        + f.max_streams_uni
        + f.max_streams_bidi
        + f.reset_stream
        + f.stop_sending;
    (work, s.udp_rx.datagrams)
}

/// Watches the waits on one connection; `bound` `None` watches nothing.
#[derive(Clone)]
pub struct Watch {
    conn: Connection,
    bound: Option<Duration>,
}

impl Watch {
    /// A watch over `conn`.
    pub fn new(conn: &Connection, bound: Option<Duration>) -> Watch {
        Watch {
            conn: conn.clone(),
            bound,
        }
    }

    /// A [`Watchdog`] for a wait starting now, or `None` when off.
    pub fn start(&self) -> Option<Watchdog> {
        let bound = self.bound?;
        Some(Watchdog::new(Instant::now(), bound, activity(&self.conn).0))
    }

    /// Checks a wait's watchdog whose alarm went off: when to look again, or `Err` when
    /// the peer stalled.
    pub fn check(&self, dog: &mut Watchdog, waiting: Waiting) -> Result<Instant, Error> {
        let (work, alive) = activity(&self.conn);
        match dog.check(Instant::now(), work, alive) {
            Check::WakeAt(t) => Ok(t),
            Check::Stalled => Err(self.stalled(waiting)),
        }
    }

    /// The error for a stall while `waiting`.
    pub fn stalled(&self, waiting: Waiting) -> Error {
        let secs = self.bound.map_or(0, |b| b.as_secs_f64().round() as u64);
        tracing::info!(?waiting, secs, "the peer made no progress");
        Error::Stalled(waiting.describe(secs))
    }

    /// Runs `fut`, a wait on the peer, failing it if the peer makes no progress for the
    /// bound. `fut` is dropped on a stall, so it must be safe to cancel.
    pub async fn guard<T>(
        &self,
        waiting: Waiting,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(mut dog) = self.start() else {
            return fut.await;
        };
        let mut fut = std::pin::pin!(fut);
        let sleep = tokio::time::sleep_until(dog.deadline());
        let mut sleep = std::pin::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return r,
                _ = &mut sleep => {
                    let next = self.check(&mut dog, waiting)?;
                    sleep.as_mut().reset(next);
                }
            }
        }
    }
}

/// How often to send heartbeats, if the peer understands them: a third of our own bound
/// (the peer's is usually the same), at most [`HEARTBEAT`].
pub fn heartbeat_every(bound: Option<Duration>) -> Duration {
    bound.map_or(HEARTBEAT, |b| (b / 3).min(HEARTBEAT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn no_progress_on_a_live_path_is_a_stall() {
        let t0 = Instant::now();
        let mut d = Watchdog::new(t0, 60 * S, 7);
        assert_eq!(d.deadline(), t0 + 60 * S);
        // The same progress count is no progress, however often it is looked at.
        assert_eq!(d.check(t0 + 30 * S, 7, 100), Check::WakeAt(t0 + 60 * S));
        assert_eq!(d.check(t0 + 59 * S, 7, 120), Check::WakeAt(t0 + 60 * S));
        // Overdue: one more datagram from the peer (a keep-alive) proves the path works.
        let t = t0 + 60 * S;
        assert_eq!(d.check(t, 7, 130), Check::WakeAt(t + RECHECK));
        assert_eq!(d.check(t + RECHECK, 7, 130), Check::WakeAt(t + 2 * RECHECK));
        assert_eq!(d.check(t + 2 * RECHECK, 7, 131), Check::Stalled);
    }

    #[test]
    fn a_dead_path_is_not_a_stall() {
        // Nothing at all arrives: the idle timeout's case (reconnect), never a stall.
        let t0 = Instant::now();
        let mut d = Watchdog::new(t0, 5 * S, 7);
        let mut t = t0;
        for _ in 0..100 {
            t += RECHECK;
            assert_ne!(d.check(t, 7, 40), Check::Stalled);
        }
    }

    #[test]
    fn progress_moves_the_deadline() {
        let t0 = Instant::now();
        let mut d = Watchdog::new(t0, 60 * S, 7);
        assert_eq!(d.check(t0 + 50 * S, 8, 1), Check::WakeAt(t0 + 110 * S));
        // Progress after the bound ran out clears the overdue state.
        let t = t0 + 110 * S;
        assert_eq!(d.check(t, 8, 2), Check::WakeAt(t + RECHECK));
        assert_eq!(
            d.check(t + RECHECK, 9, 3),
            Check::WakeAt(t + RECHECK + 60 * S)
        );
        // Any change counts, even a smaller number (a new connection's counters).
        assert_eq!(
            d.check(t + 2 * RECHECK, 0, 4),
            Check::WakeAt(t + 2 * RECHECK + 60 * S)
        );
    }

    #[test]
    fn heartbeats_come_well_within_the_bound() {
        assert_eq!(heartbeat_every(None), HEARTBEAT);
        assert_eq!(heartbeat_every(Some(Duration::from_secs(120))), HEARTBEAT);
        assert_eq!(
            heartbeat_every(Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_every(Some(Duration::from_secs(1))),
            Duration::from_millis(333) + Duration::from_nanos(333_333)
        );
    }

    #[test]
    fn every_wait_has_a_message() {
        for w in [
            Waiting::Offer,
            Waiting::Manifest,
            Waiting::NextFile,
            Waiting::MidFile,
            Waiting::Reading,
            Waiting::Accept,
            Waiting::Credit,
            Waiting::Verdict,
        ] {
            let m = w.describe(60);
            assert!(m.starts_with("your peer ") && m.contains("60 s"), "{m}");
        }
    }
}
