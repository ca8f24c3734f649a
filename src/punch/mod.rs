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
//!   address a valid probe has already come from) are probed at once and throughout.
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
//! succeeds with probability 1 − (1 − 1024/64512)^257 ≈ 98 %. The symmetric side keeps the
//! socket that hears the first pong and answers pings on that socket only, so both sides
//! confirm the same pair of addresses.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{Probe, ProbeKind, PROBE_LEN};

pub mod targets;
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
/// Extra sockets a symmetric side opens for the birthday technique.
pub const BIRTHDAY_SOCKETS: usize = 256;
/// Random ports of a symmetric peer's address the cone side opens its NAT towards per round.
pub const BIRTHDAY_PORTS: usize = 1024;
/// Ports a NAT picks from at random: Linux uses 1024-65535 for a source port above 1023.
pub const BIRTHDAY_PORT_RANGE: std::ops::RangeInclusive<u16> = 1024..=65535;
/// Part of a round in which the cone side sends its birthday openers; the symmetric side's
/// sockets start at [`OPENER_PHASE`], so the two clocks may differ by the gap between them.
pub const SPRAY_PHASE: Duration = Duration::from_secs(1);
/// How often each extra socket of the symmetric side pings during a round.
pub const BIRTHDAY_PING_INTERVAL: Duration = Duration::from_millis(500);

/// Identifies one of the shell's UDP sockets; [`MAIN_SOCKET`] is the one the user's
/// `--localport` names, others are the extra sockets of the birthday technique.
pub type SocketId = u32;
/// The socket that STUN measured and the ticket names.
pub const MAIN_SOCKET: SocketId = 0;
/// The IPv6 socket, on the same port number as the main one where possible.
pub const V6_SOCKET: SocketId = 1;

/// The part this side plays in the birthday technique, from the two tickets' NAT kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Birthday {
    /// Our NAT is symmetric and the peer's is a cone: ping the peer's NAT-mapped addresses
    /// from each of these extra sockets in every round, and keep the first that hears back.
    Open {
        /// The extra sockets (never [`MAIN_SOCKET`], which probes as usual).
        sockets: Vec<SocketId>,
    },
    /// The peer's NAT is symmetric and ours is a cone: in every round, open our NAT towards
    /// random ports of the peer's NAT-mapped address with openers.
    Spray {
        /// Seeds the port guesses, so a test can replay them.
        seed: u64,
    },
}

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
            | PathKind::Ipv6 => true,
            // A NAT's mapping, and an address we cannot tell is not one, only in rounds.
            PathKind::Mapped | PathKind::Typed => false,
        }
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

#[derive(Clone, Copy, Debug)]
struct Path {
    target: Target,
    /// Probe at once and throughout, not just in rounds.
    at_once: bool,
    /// Probed in the rounds of this lane only; `None`: in every round.
    lane: Option<usize>,
    probes_sent: u32,
    next_probe: Instant,
    confirmed: bool,
}

/// Birthday state of the cone side: this round's port guesses.
#[derive(Debug)]
struct Spray {
    rng: rand::rngs::StdRng,
    round: Option<u32>,
    guesses: Vec<SocketAddr>,
    sent: usize,
}

/// The hole-punching state machine for one session.
///
/// Drive it like quinn-proto: after every `handle_*` call, drain [`Puncher::poll_transmit`]
/// and [`Puncher::poll_event`], then sleep until [`Puncher::poll_timeout`] and call
/// [`Puncher::handle_timeout`].
#[derive(Debug)]
pub struct Puncher {
    cfg: PunchConfig,
    paths: Vec<Path>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PunchEvent>,
    next_round_tick: Instant,
    rounds_started: u32,
    seq: u32,
    sent_at: HashMap<u32, Instant>,
    heard_peer: bool,
    finished: bool,
    /// Birthday, symmetric side: the socket kept, chosen by the first pong.
    selected: Option<SocketId>,
    /// Birthday, symmetric side: next ping from the extra sockets.
    next_birthday_ping: Instant,
    /// Birthday, cone side.
    spray: Option<Spray>,
}

impl Puncher {
    /// Creates the state machine at time `now`.
    pub fn new(mut cfg: PunchConfig, now: Instant) -> Self {
        if cfg.lanes.len() + 1 != cfg.schedule.lanes {
            // Not what the schedule promised the peer: follow the old one rather than probe
            // ports of the peer nobody listed.
            tracing::warn!(
                lanes = cfg.lanes.len(),
                "lanes do not match the schedule; using one lane"
            );
            cfg.schedule = Schedule::LEGACY;
            cfg.lanes.clear();
        }
        let mut paths = Vec::new();
        let mut add = |target: Target, lane: Option<usize>| {
            if paths
                .iter()
                .any(|p: &Path| p.target.addr == target.addr && p.target.socket == target.socket)
            {
                return;
            }
            paths.push(Path {
                target,
                at_once: target.kind.probe_at_once(),
                lane,
                probes_sent: 0,
                next_probe: now,
                confirmed: false,
            });
        };
        for t in &cfg.targets {
            let lanes =
                t.kind == PathKind::Mapped && t.socket == MAIN_SOCKET && !cfg.lanes.is_empty();
            add(*t, lanes.then_some(0));
            if lanes {
                for (i, lane) in cfg.lanes.iter().enumerate() {
                    let target = Target {
                        addr: SocketAddr::new(t.addr.ip(), lane.peer_port),
                        kind: PathKind::Mapped,
                        socket: lane.socket,
                    };
                    add(target, Some(i + 1));
                }
            }
        }
        let next_round_tick = cfg.first_round.max(now);
        let spray = match cfg.birthday {
            Some(Birthday::Spray { seed }) => Some(Spray {
                rng: rand::SeedableRng::seed_from_u64(seed),
                round: None,
                guesses: Vec::new(),
                sent: 0,
            }),
            _ => None,
        };
        Puncher {
            cfg,
            paths,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_round_tick,
            rounds_started: 0,
            seq: 0,
            sent_at: HashMap::new(),
            heard_peer: false,
            finished: false,
            selected: None,
            next_birthday_ping: now,
            spray,
        }
    }

    /// Start time of round `n`.
    pub fn round_start(&self, n: u32) -> Instant {
        self.cfg.first_round + self.cfg.schedule.period * n
    }

    /// The lane of round `n`.
    fn lane_of(&self, n: u32) -> usize {
        self.cfg.schedule.lane(self.cfg.first_index + n as u64)
    }

    /// Our socket in `lane`.
    fn lane_socket(&self, lane: usize) -> SocketId {
        match lane {
            0 => MAIN_SOCKET,
            l => self.cfg.lanes.get(l - 1).map_or(MAIN_SOCKET, |l| l.socket),
        }
    }

    /// Rounds fired so far.
    pub fn rounds_started(&self) -> u32 {
        self.rounds_started
    }

    /// Whether a valid probe from the peer has arrived.
    pub fn heard_peer(&self) -> bool {
        self.heard_peer
    }

    /// Whether we play the symmetric side of the birthday technique.
    fn opens(&self) -> bool {
        matches!(self.cfg.birthday, Some(Birthday::Open { .. }))
    }

    /// Whether a socket may still be used: on the symmetric side of the birthday technique,
    /// only the one kept once a pong chose it.
    fn socket_live(&self, socket: SocketId) -> bool {
        !self.opens() || self.selected.is_none_or(|s| s == socket)
    }

    /// Offers a datagram that arrived on `socket`; returns false when it is not a probe of
    /// this session (the caller then hands it elsewhere or drops it).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Some(probe) = Probe::decode(data) else {
            return false;
        };
        if self.cfg.peer_id.is_some_and(|id| id != probe.from) || probe.from == self.cfg.local_id {
            return false;
        }
        if probe.to != [0; 8] && probe.to != self.cfg.local_id {
            return false;
        }
        if self.finished {
            return true;
        }
        self.heard_peer = true;
        if !self.socket_live(socket) {
            return true;
        }
        // Birthday, symmetric side: the first pong picks the socket to keep; until then no
        // ping is answered, so the peer can only confirm the pair of addresses we keep.
        if self.opens() && probe.kind == ProbeKind::Pong && self.selected.is_none() {
            tracing::debug!(socket, %from, "first pong: keeping this socket");
            self.selected = Some(socket);
        }
        let answer = self.selected == Some(socket) || !self.opens();
        if socket != MAIN_SOCKET && !answer {
            return true;
        }
        let i = match self
            .paths
            .iter()
            .position(|p| p.target.addr == from && p.target.socket == socket)
        {
            Some(i) => i,
            None => {
                let kind = self
                    .paths
                    .iter()
                    .find(|p| p.target.addr == from)
                    .map_or(PathKind::PeerReflexive, |p| p.target.kind);
                tracing::debug!(%from, socket, ?kind, "probe on a new pair of addresses");
                self.paths.push(Path {
                    target: Target {
                        addr: from,
                        kind,
                        socket,
                    },
                    at_once: true,
                    lane: None,
                    probes_sent: 0,
                    next_probe: now,
                    confirmed: false,
                });
                self.paths.len() - 1
            }
        };
        // The peer's NAT has let this packet out towards us, so probing this address any time
        // cannot poison anything.
        if !self.paths[i].at_once {
            self.paths[i].at_once = true;
            self.paths[i].next_probe = now;
        }
        match probe.kind {
            ProbeKind::Ping if answer => {
                let pong = Probe {
                    kind: ProbeKind::Pong,
                    from: self.cfg.local_id,
                    to: probe.from,
                    seq: probe.seq,
                    observed: Some(from),
                };
                self.transmits.push_back(Transmit {
                    socket,
                    destination: from,
                    ttl: None,
                    contents: pong.encode(),
                });
            }
            ProbeKind::Ping => {}
            ProbeKind::Pong => {
                let path = &mut self.paths[i];
                if !path.confirmed {
                    path.confirmed = true;
                    let rtt = self
                        .sent_at
                        .get(&probe.seq)
                        .map(|t| now.saturating_duration_since(*t))
                        .unwrap_or_default();
                    tracing::debug!(remote = %from, socket, ?rtt, "path confirmed");
                    self.events.push_back(PunchEvent::Confirmed {
                        socket,
                        remote: from,
                        kind: path.target.kind,
                        rtt,
                        observed: probe.observed,
                    });
                }
            }
        }
        true
    }

    /// Advances timers to `now`, queueing whatever probes are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if now >= self.cfg.deadline {
            self.finished = true;
            self.transmits.clear();
            self.events.push_back(PunchEvent::TimedOut {
                rounds: self.rounds_started,
                heard_peer: self.heard_peer,
            });
            return;
        }
        // Probes that may go out at any time.
        for i in 0..self.paths.len() {
            let p = self.paths[i];
            if !p.at_once || now < p.next_probe || !self.socket_live(p.target.socket) {
                continue;
            }
            self.send_ping(now, p.target.socket, p.target.addr, None);
            let p = &mut self.paths[i];
            p.probes_sent += 1;
            let delay = if p.confirmed {
                KEEPALIVE_INTERVAL
            } else {
                immediate_probe_delay(p.probes_sent)
            };
            p.next_probe = now + delay;
        }
        // Rounds.
        if now >= self.next_round_tick {
            self.round_tick(now);
        }
    }

    fn round_tick(&mut self, now: Instant) {
        let since_first = now.saturating_duration_since(self.cfg.first_round);
        let n = (since_first.as_nanos() / self.cfg.schedule.period.as_nanos()) as u32;
        let lane = self.lane_of(n);
        let start = self.round_start(n);
        let offset = now.saturating_duration_since(start);
        if offset >= ROUND_LENGTH {
            self.next_round_tick = self.round_start(n + 1);
            return;
        }
        if self.rounds_started <= n {
            self.rounds_started = n + 1;
            self.events.push_back(PunchEvent::RoundStarted { round: n });
        }
        let ttl = if offset < OPENER_PHASE {
            self.cfg.opener_ttl
        } else {
            None
        };
        let round_targets: Vec<(SocketId, SocketAddr)> = self
            .paths
            .iter()
            .filter(|p| {
                !p.at_once && p.lane.is_none_or(|l| l == lane) && self.socket_live(p.target.socket)
            })
            .map(|p| (p.target.socket, p.target.addr))
            .collect();
        for (socket, addr) in round_targets {
            self.send_ping(now, socket, addr, ttl);
        }
        if !self.paths.iter().any(|p| p.confirmed) {
            self.birthday_tick(now, n, lane, offset);
        }
        let next = now + ROUND_PROBE_INTERVAL;
        self.next_round_tick = if next >= start + ROUND_LENGTH {
            self.round_start(n + 1)
        } else {
            next
        };
    }

    /// The birthday technique's share of a round tick in round `n` (in `lane`), `offset`
    /// into it.
    fn birthday_tick(&mut self, now: Instant, n: u32, lane: usize, offset: Duration) {
        // Only the peer's NAT-mapped addresses in this lane: the technique is about its
        // NAT's ports.
        let mut mapped: Vec<SocketAddr> = self
            .cfg
            .targets
            .iter()
            .filter(|t| t.kind == PathKind::Mapped)
            .map(|t| match (lane, self.cfg.lanes.get(lane.wrapping_sub(1))) {
                (0, _) | (_, None) => t.addr,
                (_, Some(l)) => SocketAddr::new(t.addr.ip(), l.peer_port),
            })
            .collect();
        mapped.dedup();
        let from = self.lane_socket(lane);
        if mapped.is_empty() {
            return;
        }
        if let Some(Birthday::Open { sockets }) = &self.cfg.birthday {
            if offset < OPENER_PHASE || self.selected.is_some() || now < self.next_birthday_ping {
                return;
            }
            let sockets = sockets.clone();
            for socket in sockets {
                for addr in &mapped {
                    self.send_ping(now, socket, *addr, None);
                }
            }
            self.next_birthday_ping = now + BIRTHDAY_PING_INTERVAL;
            return;
        }
        let Some(spray) = self.spray.as_mut() else {
            return;
        };
        if spray.round != Some(n) {
            // Fresh guesses every round: last round's misses may be stale entries now.
            spray.round = Some(n);
            spray.sent = 0;
            spray.guesses.clear();
            let mut ips: Vec<std::net::IpAddr> = mapped.iter().map(|a| a.ip()).collect();
            ips.dedup();
            let per_ip = BIRTHDAY_PORTS / ips.len();
            let lo = *BIRTHDAY_PORT_RANGE.start();
            let span = BIRTHDAY_PORT_RANGE.len();
            for ip in ips {
                for i in rand::seq::index::sample(&mut spray.rng, span, per_ip) {
                    spray.guesses.push(SocketAddr::new(ip, lo + i as u16));
                }
            }
        }
        // Spread evenly over the phase, a batch per tick.
        let due = if offset >= SPRAY_PHASE {
            spray.guesses.len()
        } else {
            let reached = (offset + ROUND_PROBE_INTERVAL).as_nanos();
            (spray.guesses.len() as u128 * reached / SPRAY_PHASE.as_nanos()) as usize
        }
        .min(spray.guesses.len());
        let batch: Vec<SocketAddr> = spray.guesses[spray.sent..due].to_vec();
        spray.sent = due;
        for addr in batch {
            // Openers only: a guess that reached the peer's NAT would make it skip that port.
            self.send_ping(now, from, addr, self.cfg.opener_ttl);
        }
    }

    fn send_ping(&mut self, now: Instant, socket: SocketId, to: SocketAddr, ttl: Option<u32>) {
        self.seq = self.seq.wrapping_add(1);
        if self.sent_at.len() >= 8192 {
            self.sent_at.clear();
        }
        self.sent_at.insert(self.seq, now);
        let ping = Probe {
            kind: ProbeKind::Ping,
            from: self.cfg.local_id,
            to: self.cfg.peer_id.unwrap_or([0; 8]),
            seq: self.seq,
            observed: None,
        };
        self.transmits.push_back(Transmit {
            socket,
            destination: to,
            ttl,
            contents: ping.encode(),
        });
    }

    /// Next probe to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    /// When [`Puncher::handle_timeout`] must be called next; `None` once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut t = self.cfg.deadline.min(self.next_round_tick);
        for p in self.paths.iter().filter(|p| p.at_once) {
            t = t.min(p.next_probe);
        }
        Some(t)
    }
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
