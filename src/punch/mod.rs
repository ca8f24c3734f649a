//! Hole punching as a sans-IO state machine.
//!
//! No sockets and no clock in here: the caller feeds datagrams and the current time in and
//! takes probes to send and events out, like `quinn-proto`. The async shell lives in
//! [`crate::net`]; the timing rules below are plain functions so they can be tested alone.
//!
//! # Why the rounds look the way they do
//! A Linux NAT (the core of most home routers) that receives a probe before its own host has
//! sent anything to that peer records the inbound flow; the host's own later packets to that
//! peer then leave from a *different* public port, and the entry lives for 30 s after the last
//! such probe. So a probe sent while the peer has not yet pasted our ticket poisons the path
//! for 30 s, and rounds fired every 10 s by only one side would keep it poisoned for ever.
//! Hence:
//! - probes to NAT-mapped addresses are sent only in short rounds (5 s) that fire on shared
//!   wall-clock boundaries of NTP-corrected time, every [`ROUND_PERIOD`] (every 10-second
//!   boundary);
//! - each side maps [`LANES`] sockets (the main one and `LANES - 1` extra ones) and lists
//!   their public ports in its ticket; the round starting at Unix second `10 k` probes only
//!   from our socket `k mod LANES` to the peer's port `k mod LANES` (a *lane*). A lone
//!   round's poison (5 s of probes + 30 s) sits on one pair of ports, which is not used
//!   again for 40 s, so both users meet at the first boundary after the later paste. A peer
//!   whose ticket lists no lanes (an older p2pcopy) gets the old schedule: one round every
//!   [`LEGACY_ROUND_PERIOD`] on the main socket, which outlives the poison the same way;
//! - each round opens with [`OPENER_PHASE`] of low-TTL "openers" that pass our own NAT
//!   (creating its mapping) but expire in the network before they reach the peer's NAT, so
//!   whichever side's first full probe arrives first finds the other NAT already open, even
//!   with zero delay between the NATs or clocks that differ by up to that phase;
//! - addresses that cannot be poisoned (the peer's LAN addresses, a peer with no NAT, and any
//!   address a valid probe has already come from) are probed at once and throughout;
//! - a side whose clock no NTP server corrected widens its rounds ([`RoundTiming`]) so that
//!   it meets a peer whose clock is up to [`CLOCK_SLACK`] off either way.
//!
//! # One symmetric side: the birthday technique
//! A symmetric NAT gives every destination a new random public port, so the port in its
//! ticket is useless to the peer, and a port-restricted peer NAT drops whatever arrives from
//! the ports it never sent to. In each round the cone side therefore opens its NAT towards
//! [`BIRTHDAY_PORTS`] random ports of the symmetric side's address, with openers only (a
//! full probe reaching the symmetric NAT would make it skip that port), during
//! [`SPRAY_PHASE`]; from [`OPENER_PHASE`] on, the symmetric side pings the cone side's
//! mapped address from [`BIRTHDAY_SOCKETS`] extra sockets, each of which its NAT maps to a
//! new random port. One match is enough. With Linux's 64512 candidate ports a round
//! succeeds with probability 1 − (1 − 1024/64512)^769 ≈ 99.9995 %: a miss costs a whole
//! round (10 s, past the 15 s target), which with 256 sockets happened in 1.7 % of rounds
//! (bench/RESULTS.md). Each socket pings every [`BIRTHDAY_PING_INTERVAL`], so the three
//! times as many sockets send as many packets per round as 256 did at 0.5 s. The symmetric side keeps the
//! socket that hears the first pong and answers pings on that socket only, so both sides
//! confirm the same pair of addresses.
//!
//! # How fast
//! Seconds from the later paste to a connection for cone–cone, cone–full, full–symmetric
//! and cone–symmetric over paste gaps of 0–60 s, in the lab and in the simulator (`sim.rs`),
//! with and without NTP: bench/RESULTS.md, "Punching targets for all four pairs".
//!
//! # Rooms
//! This file has the constants and the types the shell sees; beside it, `schedule.rs` has
//! when rounds fire and in which lane, `birthday.rs` the birthday technique, `puncher.rs`
//! the [`Puncher`] itself, and `targets.rs` which of the peer's addresses it probes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::PROBE_LEN;
// The tests build and read probes.
#[cfg(test)]
use crate::wire::{Probe, ProbeKind};

mod birthday;
mod puncher;
mod schedule;
pub mod targets;

pub use birthday::Birthday;
pub use puncher::Puncher;
pub use schedule::{immediate_probe_delay, Lane, RoundTiming, Schedule};
pub use targets::{attempt_targets, both_have_ipv6, on_our_networks, targets};

/// Wall-clock boundaries are multiples of this (what the original p2pcopy used).
pub const BOUNDARY: Duration = Duration::from_secs(10);
/// Time between two rounds when both tickets list lanes: every boundary.
pub const ROUND_PERIOD: Duration = BOUNDARY;
/// Pairs of sockets used in turn, one per round: a lane comes back after
/// `LANES * ROUND_PERIOD` (40 s), longer than a round plus the 30 s a stale NAT entry lives.
pub const LANES: usize = 4;
/// Most lanes a ticket may list (ours lists [`LANES`]); more only lengthens the ticket.
pub const MAX_LANES: usize = crate::ticket::MAX_LANE_PORTS + 1;
/// Time between two rounds without lanes (a peer's ticket from an older p2pcopy): every
/// fourth boundary, longer than the 30 s a stale NAT entry lives plus one round.
pub const LEGACY_ROUND_PERIOD: Duration = Duration::from_secs(40);
/// How far apart the two clocks may be when ours has no NTP answer and the peer's has
/// (see [`RoundTiming`]); the target is system clocks ±3 s apart.
pub const CLOCK_SLACK: Duration = Duration::from_secs(3);
/// Part of a round spent sending low-TTL openers only.
pub const OPENER_PHASE: Duration = Duration::from_secs(2);
/// Length of a round; nothing is sent to NAT-mapped addresses after this until the next one.
pub const ROUND_LENGTH: Duration = Duration::from_secs(5);
/// Pacing of probes inside a round.
pub const ROUND_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Time-to-live of openers: passes one home NAT, expires at the first router behind it.
pub const DEFAULT_OPENER_TTL: u32 = 2;
/// Keep-alive probes to a confirmed path until the shell stops the puncher.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// The shell needs this long after a paste to be ready for a round (it has NTP and the
/// sockets by then; what is left takes milliseconds, and starting late only shortens the
/// opener phase). Every tenth of a second here is a tenth off the average connect time.
pub const ROUND_LEAD: Duration = Duration::from_millis(250);
// The birthday technique's sizes are `nat`'s, which decides who plays which part and
// states the odds; the puncher plays it with them.
pub use crate::nat::{BIRTHDAY_PORTS, BIRTHDAY_SOCKETS};
/// Ports a NAT picks from at random: Linux uses 1024-65535 for a source port above 1023.
pub const BIRTHDAY_PORT_RANGE: std::ops::RangeInclusive<u16> = 1024..=65535;
/// Part of a round in which the cone side sends its birthday openers; the symmetric side's
/// sockets start at [`OPENER_PHASE`], so the two clocks may differ by the gap between them.
pub const SPRAY_PHASE: Duration = Duration::from_secs(1);
/// How often each extra socket of the symmetric side pings during a round: twice in the
/// round's last 3 s, the second for a lost ping or answer.
pub const BIRTHDAY_PING_INTERVAL: Duration = Duration::from_millis(1500);

/// Identifies one of the shell's UDP sockets; [`MAIN_SOCKET`] is the one the user's
/// `--localport` names, others are the extra sockets of the birthday technique.
pub type SocketId = u32;
/// The socket that STUN measured and the ticket names.
pub const MAIN_SOCKET: SocketId = 0;
/// The IPv6 socket, on the same port number as the main one where possible.
pub const V6_SOCKET: SocketId = 1;

/// How a candidate address of the peer was learned; shown to the user once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// One of the peer's own interface addresses on a private network.
    Lan,
    /// The peer's address when it has no NAT.
    Public,
    /// The peer's NAT-mapped address as a STUN server saw it.
    Mapped,
    /// A public address the peer's router forwards to it on request (PCP, NAT-PMP, UPnP).
    PortMapped,
    /// An address a valid probe came from that no ticket listed (a NAT's new mapping).
    PeerReflexive,
    /// An `ip:port` the user typed (bare ticket).
    Typed,
    /// One of the peer's global IPv6 addresses (no NAT, at most a stateful firewall).
    Ipv6,
    /// Through a TURN relay (ours or the peer's): no hole punched.
    Relayed,
}

impl PathKind {
    /// Words for the user.
    pub fn describe(self) -> &'static str {
        match self {
            PathKind::Lan => "local network",
            PathKind::Public => "peer's public address",
            PathKind::Mapped => "peer's NAT-mapped address",
            PathKind::PortMapped => "peer's router port mapping",
            PathKind::PeerReflexive => "address learned from the peer's probes",
            PathKind::Typed => "address you entered",
            PathKind::Ipv6 => "peer's IPv6 address",
            PathKind::Relayed => "TURN relay",
        }
    }

    /// Addresses of this kind cannot be poisoned by an early probe, so they are probed at once.
    fn probe_at_once(self) -> bool {
        match self {
            // A port mapping forwards packets from anywhere, like a host without NAT: an
            // early probe just arrives (and the peer's replies leave through the mapping).
            // IPv6 has no NAT to remap anything, at most a firewall that probing opens.
            PathKind::Lan
            | PathKind::Public
            | PathKind::PortMapped
            | PathKind::PeerReflexive
            | PathKind::Ipv6
            // Never a target (the dialer routes to relays), but nothing to poison either.
            | PathKind::Relayed => true,
            // A NAT's mapping, and an address we cannot tell is not one, only in rounds.
            PathKind::Mapped | PathKind::Typed => false,
        }
    }
}

/// One address of the peer to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The address.
    pub addr: SocketAddr,
    /// How we learned it.
    pub kind: PathKind,
    /// Our socket to probe it from.
    pub socket: SocketId,
}

impl Target {
    /// A target probed from the main socket.
    pub fn new(addr: SocketAddr, kind: PathKind) -> Target {
        Target {
            addr,
            kind,
            socket: MAIN_SOCKET,
        }
    }
}

/// Everything a [`Puncher`] needs to start.
#[derive(Clone, Debug)]
pub struct PunchConfig {
    /// Our short id (first bytes of our certificate fingerprint).
    pub local_id: [u8; 8],
    /// The peer's short id; `None` for a bare ticket.
    pub peer_id: Option<[u8; 8]>,
    /// The peer's addresses, most preferred first.
    pub targets: Vec<Target>,
    /// When the first round starts (a shared wall-clock boundary turned into an `Instant`).
    pub first_round: Instant,
    /// Give up at this time.
    pub deadline: Instant,
    /// TTL of openers; `None` disables them.
    pub opener_ttl: Option<u32>,
    /// Our part in the birthday technique, when exactly one side's NAT is symmetric.
    pub birthday: Option<Birthday>,
    /// The round period and lane count both sides follow.
    pub schedule: Schedule,
    /// [`Schedule::index`] of the first round: picks its lane.
    pub first_index: u64,
    /// Lanes 1.. (`schedule.lanes - 1` of them); lane 0 is the main socket.
    pub lanes: Vec<Lane>,
    /// How rounds lie around their boundaries: wider when NTP did not answer.
    pub timing: RoundTiming,
}

/// A probe to send.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Which of our sockets sends it.
    pub socket: SocketId,
    /// Where to.
    pub destination: SocketAddr,
    /// IP time-to-live to use instead of the socket's default.
    pub ttl: Option<u32>,
    /// The datagram.
    pub contents: [u8; PROBE_LEN],
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum PunchEvent {
    /// A synchronised round began (0-based).
    RoundStarted {
        /// Round number.
        round: u32,
    },
    /// Both directions work on this path: a pong came back from `remote`.
    Confirmed {
        /// Our socket on this path; QUIC must use it.
        socket: SocketId,
        /// The peer's address on this path.
        remote: SocketAddr,
        /// How that address was learned.
        kind: PathKind,
        /// Round-trip time of the probe that confirmed it.
        rtt: Duration,
        /// Our own address as the peer saw it.
        observed: Option<SocketAddr>,
    },
    /// The deadline passed before any path was confirmed.
    TimedOut {
        /// Rounds fired.
        rounds: u32,
        /// Whether any valid probe from the peer arrived at all.
        heard_peer: bool,
    },
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_round_is_on_a_shared_boundary() {
        for schedule in [Schedule::new(LANES, LANES), Schedule::LEGACY] {
            let period = schedule.period.as_secs();
            let r = schedule.first_round_unix(Duration::from_secs(1_700_000_001));
            assert_eq!(r.as_secs() % period, 0);
            assert_eq!(r.as_secs() % BOUNDARY.as_secs(), 0);
            assert!(r >= Duration::from_secs(1_700_000_001) + ROUND_LEAD);
            // Two peers who paste anywhere in the same window meet at the same boundary.
            let a = schedule.first_round_unix(Duration::from_millis(1_700_000_000_100));
            let b = schedule.first_round_unix(Duration::from_millis(
                1_700_000_000_100 + (period * 1000 * 3 / 4),
            ));
            assert_eq!(a, b, "{schedule:?}");
            // Too close to a boundary: the next one.
            let edge = Duration::from_secs(1_700_000_040) - ROUND_LEAD / 2;
            assert_eq!(
                schedule.first_round_unix(edge),
                Duration::from_secs(1_700_000_040 + period)
            );
        }
    }

    #[test]
    fn schedules_both_sides_agree_on() {
        // (our sockets, the peer's) -> (period in s, lanes)
        let table = [
            ((4, 4), (10, 4)),
            ((8, 4), (10, 4)),
            ((4, 8), (10, 4)),
            // An older peer's ticket lists no lanes.
            ((4, 1), (40, 1)),
            ((1, 4), (40, 1)),
            // Too few lanes would reuse one while its stale entry may live.
            ((3, 4), (40, 1)),
            ((1, 1), (40, 1)),
        ];
        for ((ours, theirs), (period, lanes)) in table {
            let s = Schedule::new(ours, theirs);
            assert_eq!(
                (s.period.as_secs(), s.lanes),
                (period, lanes),
                "{ours}/{theirs}"
            );
            assert_eq!(s, Schedule::new(theirs, ours));
        }
        // Lanes follow Unix time: the round at second 10 k uses lane k mod 4.
        let s = Schedule::new(LANES, LANES);
        let lanes: Vec<usize> = [
            1_700_000_000u64,
            1_700_000_010,
            1_700_000_020,
            1_700_000_030,
            1_700_000_040,
        ]
        .iter()
        .map(|&t| s.lane(s.index(Duration::from_secs(t))))
        .collect();
        assert_eq!(lanes, [0, 1, 2, 3, 0]);
        assert_eq!(Schedule::LEGACY.lane(12345), 0);
    }

    #[test]
    fn round_spacing_outlives_stale_nat_entries() {
        const CONNTRACK_UDP_UNREPLIED: Duration = Duration::from_secs(30);
        let margin = Duration::from_secs(2);
        // A lane (or, without lanes, the one pair) comes back only after the poison of a
        // lone round on it has expired.
        let lane_back = ROUND_PERIOD * LANES as u32;
        assert!(lane_back > ROUND_LENGTH + CONNTRACK_UDP_UNREPLIED + margin);
        assert!(LEGACY_ROUND_PERIOD > ROUND_LENGTH + CONNTRACK_UDP_UNREPLIED + margin);
        assert_eq!(ROUND_PERIOD.as_nanos() % BOUNDARY.as_nanos(), 0);
        assert_eq!(LEGACY_ROUND_PERIOD.as_nanos() % BOUNDARY.as_nanos(), 0);
        assert!(ROUND_LENGTH < ROUND_PERIOD);
        assert!(OPENER_PHASE < ROUND_LENGTH);
        const { assert!(LANES <= MAX_LANES) };
    }

    #[test]
    fn wide_rounds_absorb_the_clock_slack() {
        // RoundTiming's doc, on the peer's clock (NTP time), ours up to CLOCK_SLACK off
        // either way; times from the round's boundary.
        const CONNTRACK_UDP_UNREPLIED: Duration = Duration::from_secs(30);
        let t = RoundTiming::UNSYNCED;
        let slack = CLOCK_SLACK.as_secs_f64();
        let (start, full, end) = (
            -t.early.as_secs_f64(),
            t.openers.as_secs_f64() - t.early.as_secs_f64(),
            t.length.as_secs_f64() - t.early.as_secs_f64(),
        );
        // Our NAT is open and our spray done before the peer's first full probe, even with
        // our clock behind.
        assert!(start + SPRAY_PHASE.as_secs_f64() + slack <= OPENER_PHASE.as_secs_f64());
        // Our full probes and birthday pings come after the peer opened and sprayed, even
        // with our clock ahead.
        assert!(full - slack >= SPRAY_PHASE.as_secs_f64());
        // A lone round's stale entries expire before the lane comes back.
        let lane_back = (ROUND_PERIOD * LANES as u32).as_secs_f64();
        assert!(end + slack + CONNTRACK_UDP_UNREPLIED.as_secs_f64() < lane_back);
        // One round is over before the next starts.
        assert!(t.length < ROUND_PERIOD);
        assert!(t.openers < t.length && RoundTiming::SYNCED.early.is_zero());
        // A round joined late is still in its openers.
        assert!(t.early + t.join_late < t.openers);
        assert!(RoundTiming::SYNCED.join_late.is_zero());
    }

    #[test]
    fn immediate_delays() {
        let d: Vec<u64> = (0..7)
            .map(|n| immediate_probe_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1000, 1000]);
    }

    fn cfg(now: Instant, targets: Vec<Target>) -> PunchConfig {
        PunchConfig {
            local_id: [1; 8],
            peer_id: Some([2; 8]),
            targets,
            first_round: now + Duration::from_secs(10),
            deadline: now + Duration::from_secs(100),
            opener_ttl: Some(2),
            birthday: None,
            schedule: Schedule::LEGACY,
            first_index: 0,
            lanes: Vec::new(),
            timing: RoundTiming::SYNCED,
        }
    }

    fn drain(p: &mut Puncher) -> Vec<Transmit> {
        std::iter::from_fn(|| p.poll_transmit()).collect()
    }

    #[test]
    fn mapped_addresses_wait_for_the_round_and_open_with_low_ttl() {
        let t0 = Instant::now();
        let mapped: SocketAddr = "198.18.2.2:21300".parse().unwrap();
        let lan: SocketAddr = "10.2.0.2:21300".parse().unwrap();
        let mut p = Puncher::new(
            cfg(
                t0,
                vec![
                    Target::new(mapped, PathKind::Mapped),
                    Target::new(lan, PathKind::Lan),
                ],
            ),
            t0,
        );
        p.handle_timeout(t0);
        let tx = drain(&mut p);
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].destination, lan);
        // Nothing to the mapped address before the round, however often we are woken.
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            p.handle_timeout(now);
            assert!(drain(&mut p).iter().all(|t| t.destination == lan));
            now = p
                .poll_timeout()
                .unwrap()
                .max(now + Duration::from_millis(1));
        }
        p.handle_timeout(t0 + Duration::from_secs(10));
        let tx = drain(&mut p);
        let to_mapped: Vec<_> = tx.iter().filter(|t| t.destination == mapped).collect();
        assert_eq!(to_mapped.len(), 1);
        assert_eq!(to_mapped[0].ttl, Some(2));
        assert_eq!(p.poll_event(), Some(PunchEvent::RoundStarted { round: 0 }));
        // After the opener phase: full TTL.
        p.handle_timeout(t0 + Duration::from_secs(10) + OPENER_PHASE);
        assert!(drain(&mut p)
            .iter()
            .any(|t| t.destination == mapped && t.ttl.is_none()));
        // After the round: silence towards the mapped address until the next round.
        let quiet_from = t0 + Duration::from_secs(10) + ROUND_LENGTH;
        let mut now = quiet_from;
        while now < t0 + Duration::from_secs(10) + LEGACY_ROUND_PERIOD {
            p.handle_timeout(now);
            assert!(
                drain(&mut p).iter().all(|t| t.destination != mapped),
                "probe at {:?}",
                now - t0
            );
            now = p
                .poll_timeout()
                .unwrap()
                .max(now + Duration::from_millis(1));
        }
    }

    #[test]
    fn each_round_probes_its_lane_only() {
        let t0 = Instant::now();
        let mapped: SocketAddr = "198.18.2.2:21300".parse().unwrap();
        let lanes = vec![
            Lane {
                socket: 7,
                peer_port: 30001,
            },
            Lane {
                socket: 8,
                peer_port: 30002,
            },
            Lane {
                socket: 9,
                peer_port: 30003,
            },
        ];
        let mut c = cfg(t0, vec![Target::new(mapped, PathKind::Mapped)]);
        c.schedule = Schedule::new(LANES, LANES);
        // The first round is Unix round 170_000_002: lane 2.
        c.first_index = 170_000_002;
        c.lanes = lanes;
        let mut p = Puncher::new(c, t0);
        // (round, our socket, the peer's port) for the first six rounds.
        let expected = [
            (0, 8, 30002),
            (1, 9, 30003),
            (2, 0, 21300),
            (3, 7, 30001),
            (4, 8, 30002),
            (5, 9, 30003),
        ];
        for (n, socket, port) in expected {
            let start = t0 + Duration::from_secs(10) + ROUND_PERIOD * n;
            let mut seen = Vec::new();
            let mut now = start;
            while now < start + ROUND_PERIOD {
                p.handle_timeout(now);
                seen.extend(drain(&mut p).into_iter().map(|t| (now, t)));
                now = p
                    .poll_timeout()
                    .unwrap()
                    .max(now + Duration::from_millis(1));
            }
            assert!(!seen.is_empty(), "round {n}");
            for (at, t) in &seen {
                assert_eq!(
                    (t.socket, t.destination.port()),
                    (socket, port),
                    "round {n}"
                );
                assert!(
                    *at < start + ROUND_LENGTH,
                    "round {n}: probe after the round"
                );
            }
            assert_eq!(seen[0].1.ttl, Some(2), "round {n} opens with openers");
        }
    }

    #[test]
    fn the_birthday_technique_follows_the_lanes() {
        let t0 = Instant::now();
        let mapped: SocketAddr = "198.18.2.2:21300".parse().unwrap();
        let lanes = vec![
            Lane {
                socket: 7,
                peer_port: 30001,
            },
            Lane {
                socket: 8,
                peer_port: 30002,
            },
            Lane {
                socket: 9,
                peer_port: 30003,
            },
        ];
        // (our part, lane of the first round) -> (socket, destination port, TTL) of what
        // goes to the peer's address in the round, apart from the lane's own probes.
        for (birthday, first_index) in [
            (Birthday::Spray { seed: 3 }, 1),
            (
                Birthday::Open {
                    sockets: vec![100, 101],
                },
                2,
            ),
        ] {
            let mut c = cfg(t0, vec![Target::new(mapped, PathKind::Mapped)]);
            c.schedule = Schedule::new(LANES, LANES);
            c.first_index = first_index;
            c.lanes = lanes.clone();
            c.birthday = Some(birthday.clone());
            let mut p = Puncher::new(c, t0);
            let start = t0 + Duration::from_secs(10);
            let mut now = start;
            let mut extra = Vec::new();
            while now < start + ROUND_LENGTH {
                p.handle_timeout(now);
                extra.extend(drain(&mut p).into_iter().filter(|t| {
                    t.socket >= 100 || t.destination.port() != 30000 + first_index as u16
                }));
                now = p
                    .poll_timeout()
                    .unwrap()
                    .max(now + Duration::from_millis(1));
            }
            let lane = &lanes[first_index as usize - 1];
            match birthday {
                Birthday::Spray { .. } => {
                    assert_eq!(extra.len(), BIRTHDAY_PORTS);
                    assert!(extra.iter().all(|t| t.socket == lane.socket
                        && t.ttl == Some(2)
                        && t.destination.ip() == mapped.ip()));
                }
                Birthday::Open { .. } => {
                    assert!(!extra.is_empty());
                    assert!(extra.iter().all(|t| (t.socket == 100 || t.socket == 101)
                        && t.destination == SocketAddr::new(mapped.ip(), lane.peer_port)));
                }
            }
        }
    }

    #[test]
    fn lanes_that_do_not_match_the_schedule_fall_back_to_one() {
        let t0 = Instant::now();
        let mapped: SocketAddr = "198.18.2.2:21300".parse().unwrap();
        let mut c = cfg(t0, vec![Target::new(mapped, PathKind::Mapped)]);
        c.schedule = Schedule::new(LANES, LANES);
        c.lanes = vec![Lane {
            socket: 7,
            peer_port: 30001,
        }];
        let mut p = Puncher::new(c, t0);
        p.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            p.round_start(1),
            t0 + Duration::from_secs(10) + LEGACY_ROUND_PERIOD
        );
        assert!(drain(&mut p)
            .iter()
            .all(|t| t.socket == MAIN_SOCKET && t.destination == mapped));
    }

    #[test]
    fn port_mappings_are_probed_at_once_at_full_ttl() {
        let t0 = Instant::now();
        let forwarded: SocketAddr = "198.18.1.2:4300".parse().unwrap();
        let mapped: SocketAddr = "198.18.1.2:51000".parse().unwrap();
        let mut p = Puncher::new(
            cfg(
                t0,
                vec![
                    Target::new(forwarded, PathKind::PortMapped),
                    Target::new(mapped, PathKind::Mapped),
                ],
            ),
            t0,
        );
        p.handle_timeout(t0);
        let tx = drain(&mut p);
        assert_eq!(tx.len(), 1, "{tx:?}");
        assert_eq!((tx[0].destination, tx[0].ttl), (forwarded, None));
    }

    #[test]
    fn ping_gets_pong_and_pong_confirms() {
        let t0 = Instant::now();
        let peer: SocketAddr = "198.18.2.2:21300".parse().unwrap();
        let mut p = Puncher::new(cfg(t0, vec![Target::new(peer, PathKind::Lan)]), t0);
        p.handle_timeout(t0);
        let ping = drain(&mut p).remove(0);
        let seq = Probe::decode(&ping.contents).unwrap().seq;
        // A ping from the peer via an unknown address: answered, and the address remembered.
        let other: SocketAddr = "198.18.2.2:40000".parse().unwrap();
        let theirs = Probe {
            kind: ProbeKind::Ping,
            from: [2; 8],
            to: [1; 8],
            seq: 9,
            observed: None,
        };
        assert!(p.handle_datagram(t0, MAIN_SOCKET, other, &theirs.encode()));
        let pong = drain(&mut p).remove(0);
        assert_eq!(pong.destination, other);
        let decoded = Probe::decode(&pong.contents).unwrap();
        assert_eq!(
            (decoded.kind, decoded.seq, decoded.observed),
            (ProbeKind::Pong, 9, Some(other))
        );
        // Our ping answered.
        let reply = Probe {
            kind: ProbeKind::Pong,
            from: [2; 8],
            to: [1; 8],
            seq,
            observed: Some("198.18.1.2:4300".parse().unwrap()),
        };
        assert!(p.handle_datagram(
            t0 + Duration::from_millis(30),
            MAIN_SOCKET,
            peer,
            &reply.encode()
        ));
        match p.poll_event() {
            Some(PunchEvent::Confirmed {
                remote, kind, rtt, ..
            }) => {
                assert_eq!(
                    (remote, kind, rtt),
                    (peer, PathKind::Lan, Duration::from_millis(30))
                );
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn foreign_probes_are_ignored() {
        let t0 = Instant::now();
        let peer: SocketAddr = "198.18.2.2:21300".parse().unwrap();
        let mut p = Puncher::new(cfg(t0, vec![Target::new(peer, PathKind::Mapped)]), t0);
        let stranger = Probe {
            kind: ProbeKind::Ping,
            from: [3; 8],
            to: [1; 8],
            seq: 1,
            observed: None,
        };
        assert!(!p.handle_datagram(t0, MAIN_SOCKET, peer, &stranger.encode()));
        let misaddressed = Probe {
            kind: ProbeKind::Ping,
            from: [2; 8],
            to: [4; 8],
            seq: 1,
            observed: None,
        };
        assert!(!p.handle_datagram(t0, MAIN_SOCKET, peer, &misaddressed.encode()));
        assert!(!p.handle_datagram(t0, MAIN_SOCKET, peer, b"\xc0 a QUIC initial"));
        assert!(drain(&mut p).is_empty());
        assert!(!p.heard_peer());
    }

    #[test]
    fn times_out_once() {
        let t0 = Instant::now();
        let mut p = Puncher::new(cfg(t0, vec![]), t0);
        p.handle_timeout(t0 + Duration::from_secs(100));
        assert_eq!(
            p.poll_event(),
            Some(PunchEvent::TimedOut {
                rounds: 0,
                heard_peer: false
            })
        );
        assert_eq!(p.poll_timeout(), None);
        p.handle_timeout(t0 + Duration::from_secs(200));
        assert_eq!(p.poll_event(), None);
    }
}
