//! The puncher itself: the paths to probe, rounds as they come, and the probes that arrive.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::birthday::Spray;
use super::{
    immediate_probe_delay, Birthday, PathKind, PunchConfig, PunchEvent, Schedule, SocketId, Target,
    Transmit, KEEPALIVE_INTERVAL, MAIN_SOCKET, ROUND_PROBE_INTERVAL,
};
use crate::wire::{Probe, ProbeKind};

/// One of our sockets and one of the peer's addresses, and how that pair is probed.
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

/// The hole-punching state machine for one session.
///
/// Drive it like quinn-proto: after every `handle_*` call, drain [`Puncher::poll_transmit`]
/// and [`Puncher::poll_event`], then sleep until [`Puncher::poll_timeout`] and call
/// [`Puncher::handle_timeout`].
#[derive(Debug)]
pub struct Puncher {
    pub(super) cfg: PunchConfig,
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
    pub(super) selected: Option<SocketId>,
    /// Birthday, symmetric side: next ping from the extra sockets.
    pub(super) next_birthday_ping: Instant,
    /// Birthday, cone side.
    pub(super) spray: Option<Spray>,
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
        // A clock without NTP may be ahead: the round whose boundary just passed on it may
        // not have begun for the peer.
        let previous = cfg.first_round.checked_sub(cfg.schedule.period);
        if let Some(previous) = previous.filter(|p| *p + cfg.timing.join_late > now) {
            if cfg.first_index > 0 {
                cfg.first_round = previous;
                cfg.first_index -= 1;
            }
        }
        let early = cfg.timing.early;
        let next_round_tick = cfg.first_round.checked_sub(early).unwrap_or(now).max(now);
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

    /// The boundary of round `n` (it starts [`super::RoundTiming::early`] before).
    pub fn round_start(&self, n: u32) -> Instant {
        self.cfg.first_round + self.cfg.schedule.period * n
    }

    /// When round `n` starts on our clock.
    fn round_begins(&self, n: u32) -> Instant {
        let boundary = self.round_start(n);
        boundary
            .checked_sub(self.cfg.timing.early)
            .unwrap_or(boundary)
    }

    /// The lane of round `n`.
    fn lane_of(&self, n: u32) -> usize {
        self.cfg.schedule.lane(self.cfg.first_index + n as u64)
    }

    /// Our socket in `lane`.
    pub(super) fn lane_socket(&self, lane: usize) -> SocketId {
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
        if !self.is_ours(&probe) {
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
        let i = self.path_for(now, socket, from);
        // The peer's NAT has let this packet out towards us, so probing this address any time
        // cannot poison anything.
        if !self.paths[i].at_once {
            self.paths[i].at_once = true;
            self.paths[i].next_probe = now;
        }
        match probe.kind {
            ProbeKind::Ping if answer => self.send_pong(socket, from, &probe),
            ProbeKind::Ping => {}
            ProbeKind::Pong => self.confirm(now, i, &probe),
        }
        true
    }

    /// Whether a probe is from the peer (any sender but us, for a bare ticket) and to us.
    fn is_ours(&self, probe: &Probe) -> bool {
        if self.cfg.peer_id.is_some_and(|id| id != probe.from) || probe.from == self.cfg.local_id {
            return false;
        }
        probe.to == [0; 8] || probe.to == self.cfg.local_id
    }

    /// The index of the path a probe from `from` arrived on at `socket`; a pair no target
    /// named is added, probed at once, of the kind its address was listed as if it was.
    fn path_for(&mut self, now: Instant, socket: SocketId, from: SocketAddr) -> usize {
        match self
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
        }
    }

    /// Answers `ping` from `from`, telling the peer where it came from.
    fn send_pong(&mut self, socket: SocketId, from: SocketAddr, ping: &Probe) {
        let pong = Probe {
            kind: ProbeKind::Pong,
            from: self.cfg.local_id,
            to: ping.from,
            seq: ping.seq,
            observed: Some(from),
        };
        self.transmits.push_back(Transmit {
            socket,
            destination: from,
            ttl: None,
            contents: pong.encode(),
        });
    }

    /// A pong came back on path `i`: both directions work, which the first pong reports.
    fn confirm(&mut self, now: Instant, i: usize, pong: &Probe) {
        let path = &mut self.paths[i];
        if !path.confirmed {
            path.confirmed = true;
            let rtt = self
                .sent_at
                .get(&pong.seq)
                .map(|t| now.saturating_duration_since(*t))
                .unwrap_or_default();
            let (socket, remote) = (path.target.socket, path.target.addr);
            tracing::debug!(%remote, socket, ?rtt, "path confirmed");
            self.events.push_back(PunchEvent::Confirmed {
                socket,
                remote,
                kind: path.target.kind,
                rtt,
                observed: pong.observed,
            });
        }
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
        let timing = self.cfg.timing;
        let since_first = (now + timing.early).saturating_duration_since(self.cfg.first_round);
        let n = (since_first.as_nanos() / self.cfg.schedule.period.as_nanos()) as u32;
        let lane = self.lane_of(n);
        let start = self.round_begins(n);
        let offset = now.saturating_duration_since(start);
        if offset >= timing.length {
            self.next_round_tick = self.round_begins(n + 1);
            return;
        }
        if self.rounds_started <= n {
            self.rounds_started = n + 1;
            self.events.push_back(PunchEvent::RoundStarted { round: n });
        }
        let ttl = if offset < timing.openers {
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
        self.next_round_tick = if next >= start + timing.length {
            self.round_begins(n + 1)
        } else {
            next
        };
    }

    pub(super) fn send_ping(
        &mut self,
        now: Instant,
        socket: SocketId,
        to: SocketAddr,
        ttl: Option<u32>,
    ) {
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
