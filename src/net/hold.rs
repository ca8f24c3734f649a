//! Receive holds: when a socket's next read waits a moment so that several datagrams come
//! in one wake-up (what NAPI and interrupt moderation do in a NIC driver), as a pure rule.
//!
//! On a paced path (a link slower than the hosts) each of the peer's data datagrams arrives
//! alone, spaced at the link's rate, and each cost the receiver a wake-up from `epoll_wait`,
//! a `recvmmsg` and a pass through quinn: about half of the receiver's CPU went to the
//! context switches alone (bench/RESULTS.md, "Receive coalescing on paced paths"). After a
//! read that brought one or two data datagrams, the socket is taken out of the runtime's
//! `epoll` set and read again after a hold on a timer ([`super::held`]): the next few
//! datagrams queue in the socket meanwhile and come in one read, and no arrival wakes the
//! runtime. While the holds keep bringing data the socket stays out and is read on the
//! timer alone; a hold that brings nothing (the flow paused) puts it back.
//!
//! Bounded so it cannot hurt:
//! - at most [`MAX_HOLD`] and 2.5 % of the path's least RTT: a hold delays ACKs, and so
//!   inflates the peer's RTT samples; none on paths under 10 ms (LAN-like RTTs, where
//!   datagrams come in bursts anyway), none while the RTT is unknown (the handshake), and
//!   where the timer counts whole milliseconds (tokio's, off Linux; a hold then lasts up
//!   to two) none under [`MIN_RTT_COARSE`];
//! - none for small datagrams: a side that only receives ACKs is the data sender, whose
//!   pacing must not stall;
//! - none once a read brings a burst ([`BURST`]): the link brings batches by itself, and
//!   holds would only fill the socket buffer.
//!
//! A thread sleep instead of the timer (branch `paced`) stalled every other task on the
//! runtime, and a thread of its own reading the socket (branch `recv`) paid two wake-ups
//! per batch; this costs one timer wake-up per batch and no thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest a read waits (~9 datagrams at 100 Mbit/s).
pub const MAX_HOLD: Duration = Duration::from_millis(1);
/// A hold is at most this share of the path's RTT (1/40: 2.5 %): it delays ACKs, and so
/// inflates the peer's RTT samples.
const RTT_SHARE: u32 = 40;
/// Shorter holds are not worth a wait of their own (paths under 10 ms get none).
const MIN_HOLD: Duration = Duration::from_micros(250);
/// Where the timer counts whole milliseconds (tokio's, off Linux), a hold of
/// [`MAX_HOLD`] lasts up to two: paths shorter than this get none (5 %).
pub const MIN_RTT_COARSE: Duration = Duration::from_millis(40);
/// A read of this many datagrams or fewer came alone.
const FEW: usize = 2;
/// A read of this many datagrams or more means the link brings bursts by itself: holds
/// stop there (24 datagrams is ~1 ms at ~270 Mbit/s, ~55 KiB of buffer).
const BURST: usize = 24;
/// Datagrams at least this large on average carry data (ACK-only ones are ~50 bytes).
const DATA_SIZE: usize = 1000;

/// The least RTT the connection over these sockets has shown, shared by the
/// demultiplexer ([`super::demux::DemuxSocket::set_rtt`]) with each socket. It is fed
/// quinn's minimum RTT, not the smoothed one: a bulk transfer's own queue raises a LAN's
/// smoothed RTT past 10 ms. Unknown until [`PathRtt::CONFIRMED`] samples came: the first,
/// from the handshake, can be far above the path's (a peer busy starting up), and a hold
/// at a LAN's rate would overflow the socket buffer.
#[derive(Debug, Default)]
pub struct PathRtt {
    least_us: AtomicU64,
    samples: AtomicU64,
}

impl PathRtt {
    /// Samples taken before the RTT counts.
    pub const CONFIRMED: u64 = 2;

    /// Takes a new RTT sample (`None`: the connection is gone, back to unknown).
    pub fn set(&self, rtt: Option<Duration>) {
        let Some(rtt) = rtt else {
            self.samples.store(0, Ordering::Relaxed);
            self.least_us.store(0, Ordering::Relaxed);
            return;
        };
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let least = match self.least_us.load(Ordering::Relaxed) {
            0 => us,
            seen => seen.min(us),
        };
        self.least_us.store(least, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// The least RTT, once confirmed.
    pub fn get(&self) -> Option<Duration> {
        if self.samples.load(Ordering::Relaxed) < Self::CONFIRMED {
            return None;
        }
        match self.least_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// Where the reads since the last wake-up stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// The socket was found empty and no hold is owed: the next read follows a wake-up.
    #[default]
    Drained,
    /// The last read brought only one or two data datagrams: hold before the next.
    Few,
    /// The last read brought more, or small datagrams.
    Many,
    /// A hold was taken; the next read tells whether it brought data.
    Held,
    /// The last hold brought data datagrams and the socket is not yet empty.
    Flowing,
    /// The socket is empty after a hold that brought data: data is flowing, so hold
    /// again rather than wait for the next datagram to wake the runtime.
    Owed,
}

/// Decides, read by read, whether a socket's next read should wait first.
#[derive(Debug, Default)]
pub struct Coalescer {
    state: State,
}

impl Coalescer {
    /// A read brought `count` datagrams, `bytes` in all; 0 when the socket was empty.
    pub fn received(&mut self, count: usize, bytes: usize) {
        let data = count > 0 && bytes / count >= DATA_SIZE;
        self.state = match (self.state, count) {
            // A hold that brought nothing: the flow paused, wait to be woken.
            (State::Held, 0) => State::Drained,
            (State::Held | State::Flowing, _) if data && count < BURST => State::Flowing,
            (State::Flowing, 0) => State::Owed,
            (_, 0) => State::Drained,
            _ if data && count <= FEW => State::Few,
            _ => State::Many,
        };
    }

    /// How long the next read waits first, if at all, given the least RTT the path has
    /// shown (`None` while unknown) and whether the timer counts whole milliseconds; a
    /// hold returned is taken to have happened.
    pub fn hold(&mut self, rtt: Option<Duration>, coarse: bool) -> Option<Duration> {
        if !matches!(self.state, State::Few | State::Owed) {
            return None;
        }
        let hold = rtt
            .filter(|rtt| !coarse || *rtt >= MIN_RTT_COARSE)
            .map(|rtt| (rtt / RTT_SHARE).min(MAX_HOLD))
            .filter(|h| *h >= MIN_HOLD);
        self.state = match (hold, self.state) {
            (Some(_), _) => State::Held,
            (None, State::Owed) => State::Drained,
            (None, state) => state,
        };
        hold
    }

    /// Whether the socket should be back in the runtime's `epoll` set, woken by the next
    /// arrival: it was found empty and no hold is owed.
    pub fn drained(&self) -> bool {
        self.state == State::Drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN: Option<Duration> = Some(Duration::from_millis(50));
    const DATA: usize = 1400;

    #[test]
    fn a_lone_data_datagram_on_a_long_path_holds_and_a_flow_keeps_holding() {
        let mut c = Coalescer::default();
        // Woken by one datagram: the next read waits.
        c.received(1, DATA);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        // The hold brought some: no second hold before the socket is found empty...
        c.received(1, DATA);
        assert_eq!(c.hold(WAN, false), None);
        c.received(7, 7 * DATA);
        assert_eq!(c.hold(WAN, false), None);
        // ...then data is flowing: hold again instead of waiting to be woken.
        c.received(0, 0);
        assert!(!c.drained());
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        c.received(9, 9 * DATA);
        c.received(0, 0);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        // A hold that brought nothing: the flow paused; back to being woken.
        c.received(0, 0);
        assert!(c.drained());
        assert_eq!(c.hold(WAN, false), None);
        c.received(0, 0);
        assert_eq!(c.hold(WAN, false), None);
        // The next wake-up may hold again.
        c.received(2, 2 * DATA);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
    }

    #[test]
    fn bursts_and_small_datagrams_end_a_flow() {
        let mut c = Coalescer::default();
        c.received(5, 5 * DATA);
        c.received(0, 0);
        assert_eq!(c.hold(WAN, false), None);
        assert!(c.drained());
        // A hold that brought only small datagrams does not make a flow.
        c.received(1, DATA);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        c.received(1, 60);
        c.received(0, 0);
        assert_eq!(c.hold(WAN, false), None);
        assert!(c.drained());
        // Nor does a hold that brought a burst: the link is fast.
        c.received(1, DATA);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        c.received(BURST, BURST * DATA);
        c.received(0, 0);
        assert_eq!(c.hold(WAN, false), None);
        c.received(1, DATA);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        c.received(BURST - 1, (BURST - 1) * DATA);
        c.received(BURST, BURST * DATA);
        c.received(0, 0);
        assert_eq!(c.hold(WAN, false), None, "a burst after a flow");
        // Nor does a flow go on when the RTT became unknown.
        c.received(1, DATA);
        assert_eq!(c.hold(WAN, false), Some(MAX_HOLD));
        c.received(3, 3 * DATA);
        c.received(0, 0);
        assert_eq!(c.hold(None, false), None);
        assert!(c.drained(), "the owed hold is gone");
        assert_eq!(c.hold(WAN, false), None);
    }

    #[test]
    fn bursts_small_datagrams_and_short_or_unknown_rtts_never_hold() {
        let mut c = Coalescer::default();
        assert_eq!(c.hold(WAN, false), None, "nothing read yet");
        c.received(3, 3 * DATA);
        assert_eq!(c.hold(WAN, false), None, "a burst");
        // ACKs (the data sender's side): its pacing must not stall.
        c.received(1, 60);
        assert_eq!(c.hold(WAN, false), None, "an ACK");
        c.received(2, DATA + 60);
        assert_eq!(c.hold(WAN, false), None, "mostly small");
        for rtt in [None, Some(Duration::ZERO), Some(Duration::from_millis(9))] {
            c.received(1, DATA);
            assert_eq!(c.hold(rtt, false), None, "rtt {rtt:?}");
        }
    }

    #[test]
    fn a_hold_is_a_small_share_of_the_rtt() {
        let mut c = Coalescer::default();
        for (rtt_ms, coarse, hold_us) in [
            (9, false, None),
            (10, false, Some(250)),
            (20, false, Some(500)),
            (200, false, Some(1000)),
            // A coarse timer's hold lasts up to two ticks: only on long paths.
            (20, true, None),
            (39, true, None),
            (40, true, Some(1000)),
        ] {
            c.received(0, 0);
            c.received(1, DATA);
            assert_eq!(
                c.hold(Some(Duration::from_millis(rtt_ms)), coarse),
                hold_us.map(Duration::from_micros),
                "rtt {rtt_ms} ms, coarse {coarse}"
            );
        }
    }

    #[test]
    fn the_path_rtt_counts_from_its_second_sample_and_keeps_the_least() {
        let rtt = PathRtt::default();
        assert_eq!(rtt.get(), None);
        // The handshake's sample alone may be far above the path's.
        rtt.set(Some(Duration::from_millis(80)));
        assert_eq!(rtt.get(), None);
        rtt.set(Some(Duration::from_micros(300)));
        assert_eq!(rtt.get(), Some(Duration::from_micros(300)));
        // A queue of our own raises the smoothed RTT; the least stays.
        rtt.set(Some(Duration::from_millis(30)));
        assert_eq!(rtt.get(), Some(Duration::from_micros(300)));
        // A new connection starts over.
        rtt.set(None);
        rtt.set(Some(Duration::from_millis(50)));
        assert_eq!(rtt.get(), None);
        rtt.set(Some(Duration::from_millis(51)));
        assert_eq!(rtt.get(), Some(Duration::from_millis(50)));
    }
}
