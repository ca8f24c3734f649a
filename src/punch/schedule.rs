//! When rounds fire and in which lane, and how often an address that is probed at once
//! gets a probe: the timing rules, plain functions of the clock both sides share.

use std::time::Duration;

use super::{
    SocketId, CLOCK_SLACK, LANES, LEGACY_ROUND_PERIOD, OPENER_PHASE, ROUND_LEAD, ROUND_LENGTH,
    ROUND_PERIOD,
};
#[cfg(doc)]
use super::{BOUNDARY, SPRAY_PHASE};

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

/// How a round lies around its boundary on our clock.
///
/// With NTP both clocks agree to milliseconds and a round is [`OPENER_PHASE`] of openers
/// and full probes until [`ROUND_LENGTH`], from the boundary on. Without an NTP answer our
/// clock may be up to [`CLOCK_SLACK`] off the peer's (which NTP corrected), either way, and
/// the opener phase alone absorbs only 2 s: the round then starts earlier and sends full
/// probes later, so that whichever way our clock is off
/// - our NAT is open (and, on the cone side of the birthday technique, our guesses sprayed)
///   before the peer's first full probe arrives: we start `CLOCK_SLACK - OPENER_PHASE +
///   SPRAY_PHASE` (2 s) before the boundary, which is at most 1 s after it on the peer's
///   clock, well before its full probes at 2 s;
/// - our full probes (or the symmetric side's birthday pings) reach the peer's NAT after it
///   opened (and sprayed): they start `SPRAY_PHASE + CLOCK_SLACK` (4 s) after the boundary;
/// - a lone round's stale entries are gone when its lane comes back 40 s later: the round
///   ends 6.5 s after the boundary, at most 9.5 s on the peer's clock, plus 30 s;
/// - a round whose boundary passed on our clock up to `CLOCK_SLACK` ago may not have begun
///   on the peer's: we join it (still in its openers) rather than wait for the next.
///
/// The peer with NTP meets us in its own full phase, as usual; we gain nothing when both
/// lack NTP, but then tolerate clocks 5 s apart instead of 2 s, and the rounds start later
/// into their full probes (about 2 s more to connect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundTiming {
    /// How long before its boundary a round starts.
    pub early: Duration,
    /// From the round's start: only openers (and the cone side's spray) until this.
    pub openers: Duration,
    /// From the round's start: the round ends here.
    pub length: Duration,
    /// A round whose boundary passed this long ago is still joined.
    pub join_late: Duration,
}

impl RoundTiming {
    /// With an NTP-corrected clock.
    pub const SYNCED: RoundTiming = RoundTiming {
        early: Duration::ZERO,
        openers: OPENER_PHASE,
        length: ROUND_LENGTH,
        join_late: Duration::ZERO,
    };
    /// Without one: see the type's doc (the figures are checked in the tests).
    pub const UNSYNCED: RoundTiming = RoundTiming {
        early: Duration::from_secs(2),
        openers: Duration::from_secs(6),
        length: Duration::from_millis(8500),
        join_late: CLOCK_SLACK,
    };

    /// For a clock NTP corrected (`true`) or not.
    pub fn for_clock(synced: bool) -> RoundTiming {
        if synced {
            RoundTiming::SYNCED
        } else {
            RoundTiming::UNSYNCED
        }
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
