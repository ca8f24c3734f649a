//! When rounds fire and in which lane, and how often an address that is probed at once
//! gets a probe: the timing rules, plain functions of the clock both sides share.

use std::time::Duration;

#[cfg(doc)]
use super::BOUNDARY;
use super::{SocketId, LANES, LEGACY_ROUND_PERIOD, ROUND_LEAD, ROUND_PERIOD};

/// When rounds fire and which lane each uses; both sides derive the same one from the two
/// tickets ([`Schedule::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Time between rounds (a multiple of [`BOUNDARY`]).
    pub period: Duration,
    /// Lanes used in turn; 1 means every round on the main socket.
    pub lanes: usize,
}

impl Schedule {
    /// Without lanes: a round every [`LEGACY_ROUND_PERIOD`] on the main socket.
    pub const LEGACY: Schedule = Schedule {
        period: LEGACY_ROUND_PERIOD,
        lanes: 1,
    };

    /// The schedule for two sides that each map `ours` and `theirs` sockets (main included,
    /// as their tickets say). Symmetric in its arguments, so both sides agree; fewer than
    /// [`LANES`] on either side would reuse a lane while its stale entry may live.
    pub fn new(ours: usize, theirs: usize) -> Schedule {
        let lanes = ours.min(theirs);
        if lanes >= LANES {
            Schedule {
                period: ROUND_PERIOD,
                lanes: LANES,
            }
        } else {
            Schedule::LEGACY
        }
    }

    /// Unix time (NTP-corrected) of the first round a peer that became ready at `now_unix`
    /// fires: the first multiple of the period at least [`ROUND_LEAD`] away, so two peers
    /// with synchronised clocks fire the same rounds whenever they pasted.
    pub fn first_round_unix(&self, now_unix: Duration) -> Duration {
        let earliest = now_unix + ROUND_LEAD;
        let period = self.period.as_nanos();
        let k = earliest.as_nanos().div_ceil(period);
        Duration::from_nanos((k * period) as u64)
    }

    /// The index of the round that starts at Unix time `round_unix` (rounded down).
    pub fn index(&self, round_unix: Duration) -> u64 {
        (round_unix.as_nanos() / self.period.as_nanos()) as u64
    }

    /// The lane the round with Unix-time `index` uses.
    pub fn lane(&self, index: u64) -> usize {
        (index % self.lanes as u64) as usize
    }
}

/// Delay before the `n`th probe (0-based) to an address that is probed at once.
///
/// Quick at first so LAN peers meet in milliseconds, then one per second.
pub fn immediate_probe_delay(n: u32) -> Duration {
    match n {
        0 => Duration::ZERO,
        1 => Duration::from_millis(100),
        2 => Duration::from_millis(200),
        3 => Duration::from_millis(400),
        4 => Duration::from_millis(800),
        _ => Duration::from_secs(1),
    }
}

/// One of the lanes past the first (which is the main socket and the ticket's mapped
/// addresses): our socket for it and the port the peer's NAT maps the peer's socket to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    /// Our socket.
    pub socket: SocketId,
    /// The peer's public port, on the IP address of its mapped candidates.
    pub peer_port: u16,
}
