//! The birthday technique (see the module doc of [`super`]): which part this side plays,
//! and its share of each round, for one symmetric NAT facing a cone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[cfg(doc)]
use super::MAIN_SOCKET;
use super::{
    PathKind, Puncher, SocketId, BIRTHDAY_PING_INTERVAL, BIRTHDAY_PORTS, BIRTHDAY_PORT_RANGE,
    ROUND_PROBE_INTERVAL, SPRAY_PHASE,
};

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

/// Birthday state of the cone side: this round's port guesses.
#[derive(Debug)]
pub(super) struct Spray {
    pub(super) rng: rand::rngs::StdRng,
    pub(super) round: Option<u32>,
    pub(super) guesses: Vec<SocketAddr>,
    pub(super) sent: usize,
}

impl Puncher {
    /// The birthday technique's share of a round tick in round `n` (in `lane`), `offset`
    /// into it (from its start: the spray first, the pings once the openers are over).
    pub(super) fn birthday_tick(&mut self, now: Instant, n: u32, lane: usize, offset: Duration) {
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
            if offset < self.cfg.timing.openers
                || self.selected.is_some()
                || now < self.next_birthday_ping
            {
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
}
