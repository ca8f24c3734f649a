//! Receive holds: when a socket's next read waits a moment so that several datagrams come
//! in one wake-up (what NAPI and interrupt moderation do in a NIC driver), as a pure rule.
//!
//! On a paced path (a link slower than the hosts) each of the peer's data datagrams arrives
//! alone, spaced at the link's rate, and each cost the receiver a wake-up from `epoll_wait`,
//! a `recvmmsg` and a pass through quinn: about half of the receiver's CPU went to the
//! context switches alone (bench/RESULTS.md, "Receive coalescing on paced paths"). After a
//! read that brought one or two data datagrams, the socket is taken out of the runtime's
//! `epoll` set and read again after [`HOLD`] on a timer ([`super::held`]): the next few
//! datagrams queue in the socket meanwhile and come in one read, and no arrival wakes the
//! runtime. While the holds keep bringing data the socket stays out and is read on the
//! timer alone; a hold that brings nothing (the flow paused) puts it back.
//!
//! Bounded so it cannot hurt:
//! - only on paths of [`MIN_RTT`] or more: a hold delays ACKs, and so inflates the peer's
//!   RTT samples, by up to two timer ticks (tokio's timer counts whole milliseconds), which
//!   is at most 5 % of such a path's RTT; none while the RTT is unknown (the handshake);
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

/// How long a read waits: one tick of tokio's timer (it fires on the next tick after
/// that, so 1-2 ms in all: ~9-18 datagrams at 100 Mbit/s).
pub const HOLD: Duration = Duration::from_millis(1);
/// Paths shorter than this never hold: two ticks would be more than 5 % of their RTT.
pub const MIN_RTT: Duration = Duration::from_millis(40);
/// A read of this many datagrams or fewer came alone.
const FEW: usize = 2;
/// A read of this many datagrams or more means the link brings bursts by itself: holds
/// stop there (24 datagrams is ~1 ms at ~270 Mbit/s, ~55 KiB of buffer).
const BURST: usize = 24;
/// Datagrams at least this large on average carry data (ACK-only ones are ~50 bytes).
const DATA_SIZE: usize = 1000;

/// The least RTT the connection over these sockets has shown, in microseconds (0:
/// unknown), shared by the demultiplexer ([`super::demux::DemuxSocket::set_rtt`]) with
/// each socket. The least, not the smoothed: a bulk transfer's own queue raises a LAN's
/// smoothed RTT far past [`super::hold::MIN_RTT`].
#[derive(Debug, Default)]
pub struct PathRtt(AtomicU64);

impl PathRtt {
    /// Takes a new RTT sample (`None`: the connection is gone, back to unknown).
    pub fn set(&self, rtt: Option<Duration>) {
        let Some(rtt) = rtt else {
            self.0.store(0, Ordering::Relaxed);
            return;
        };
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let least = match self.0.load(Ordering::Relaxed) {
            0 => us,
            seen => seen.min(us),
        };
        self.0.store(least, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
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

    /// Whether the next read waits [`HOLD`] first, given the least RTT the path has shown
    /// (`None` while unknown); a hold returned is taken to have happened.
    pub fn hold(&mut self, rtt: Option<Duration>) -> bool {
        if !matches!(self.state, State::Few | State::Owed) {
            return false;
        }
        let hold = rtt.is_some_and(|rtt| rtt >= MIN_RTT);
        self.state = match (hold, self.state) {
            (true, _) => State::Held,
            (false, State::Owed) => State::Drained,
            (false, state) => state,
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
        assert!(c.hold(WAN));
        // The hold brought some: no second hold before the socket is found empty...
        c.received(1, DATA);
        assert!(!c.hold(WAN));
        c.received(7, 7 * DATA);
        assert!(!c.hold(WAN));
        // ...then data is flowing: hold again instead of waiting to be woken.
        c.received(0, 0);
        assert!(!c.drained());
        assert!(c.hold(WAN));
        c.received(9, 9 * DATA);
        c.received(0, 0);
        assert!(c.hold(WAN));
        // A hold that brought nothing: the flow paused; back to being woken.
        c.received(0, 0);
        assert!(c.drained());
        assert!(!c.hold(WAN));
        c.received(0, 0);
        assert!(!c.hold(WAN));
        // The next wake-up may hold again.
        c.received(2, 2 * DATA);
        assert!(c.hold(WAN));
    }

    #[test]
    fn bursts_and_small_datagrams_end_a_flow() {
        let mut c = Coalescer::default();
        c.received(5, 5 * DATA);
        c.received(0, 0);
        assert!(!c.hold(WAN));
        assert!(c.drained());
        // A hold that brought only small datagrams does not make a flow.
        c.received(1, DATA);
        assert!(c.hold(WAN));
        c.received(1, 60);
        c.received(0, 0);
        assert!(!c.hold(WAN));
        assert!(c.drained());
        // Nor does a hold that brought a burst: the link is fast.
        c.received(1, DATA);
        assert!(c.hold(WAN));
        c.received(BURST, BURST * DATA);
        c.received(0, 0);
        assert!(!c.hold(WAN));
        c.received(1, DATA);
        assert!(c.hold(WAN));
        c.received(BURST - 1, (BURST - 1) * DATA);
        c.received(BURST, BURST * DATA);
        c.received(0, 0);
        assert!(!c.hold(WAN), "a burst after a flow");
        // Nor does a flow go on when the RTT became unknown.
        c.received(1, DATA);
        assert!(c.hold(WAN));
        c.received(3, 3 * DATA);
        c.received(0, 0);
        assert!(!c.hold(None));
        assert!(c.drained(), "the owed hold is gone");
        assert!(!c.hold(WAN));
    }

    #[test]
    fn bursts_small_datagrams_and_short_or_unknown_rtts_never_hold() {
        let mut c = Coalescer::default();
        assert!(!c.hold(WAN), "nothing read yet");
        c.received(3, 3 * DATA);
        assert!(!c.hold(WAN), "a burst");
        // ACKs (the data sender's side): its pacing must not stall.
        c.received(1, 60);
        assert!(!c.hold(WAN), "an ACK");
        c.received(2, DATA + 60);
        assert!(!c.hold(WAN), "mostly small");
        let just_short = MIN_RTT - Duration::from_micros(1);
        for rtt in [None, Some(Duration::ZERO), Some(just_short)] {
            c.received(1, DATA);
            assert!(!c.hold(rtt), "rtt {rtt:?}");
        }
        c.received(1, DATA);
        assert!(c.hold(Some(MIN_RTT)));
    }
}
