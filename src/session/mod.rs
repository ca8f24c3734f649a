//! A run as a library: bind and gather, exchange tickets, connect, move a job, close.
//!
//! ```text
//! Session::bind(config, events) -> session.ticket()   give it to the peer
//! session.connect(peer_ticket)  -> Link                punch, connect (QUIC, pinned)
//! link.send(&mut job, observer) / link.receive(..)     reconnects when the path dies
//! link.finish(report) then link.close(&outcome)        tell the peer how it ended
//! link.into_duplex(opts) -> (Duplex, Arrivals)          or keep it: jobs both ways, any time
//! ```
//!
//! Everything that happens is told to one [`Events`] as an [`Event`], the schema `--json`
//! prints, the way ripgrep's searcher reports to a `Sink`; the session knows no screen and
//! no words for a person. The CLI renders its human lines and its JSON lines from these
//! same events.
//!
//! Rooms: `gather` (the socket, STUN, the router's port mapping, IPv6, the candidates),
//! this file (the config, the peer checks and the first connection), `link` (the
//! connection, reconnects, closing), `remap` (STUN asked again after a lost path: has our
//! NAT moved us?), `observe` (a job's plan, progress and files as events).

mod duplex;
mod gather;
mod link;
mod observe;
mod remap;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use duplex::{Arrival, Arrivals, Duplex, DuplexOptions};
pub(crate) use gather::or_defaults;
pub use link::{Job, Link};

use crate::error::Error;
use crate::events::Event;
use crate::net::{self, Dialer};
use crate::punch::{PathKind, RoundTiming, CLOCK_SLACK, DEFAULT_OPENER_TTL};
use crate::rate_memory::RateMemory;
use crate::relay::{Allocation, RelayConfig};
use crate::ticket::{CandidateKind, FullTicket, Role, Ticket};
use crate::tls::Identity;
use crate::{nat, ntp, portmap, transfer};

/// Where a session reports what happens: every [`Event`] in the order it happens.
///
/// A closure `FnMut(&Event) + Send` is one.
pub trait Events: Send {
    /// One thing that happened.
    fn event(&mut self, event: &Event);
}

impl<F: FnMut(&Event) + Send> Events for F {
    fn event(&mut self, event: &Event) {
        self(event)
    }
}

/// What a session needs to know; [`SessionConfig::new`] gives the defaults the CLI uses
/// without flags.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Which side this is: the sender dials (QUIC client), the receiver accepts.
    pub role: Role,
    /// Local address to bind (unspecified: all interfaces, and IPv6 beside it).
    pub bind: IpAddr,
    /// Local UDP port (0 picks a free one).
    pub local_port: u16,
    /// STUN servers (`host:port`); empty: [`crate::stun::DEFAULT_SERVERS`].
    pub stun_servers: Vec<String>,
    /// NTP servers for the shared round clock; empty: [`crate::ntp::DEFAULT_SERVERS`].
    pub ntp_servers: Vec<String>,
    /// Skip STUN: only local addresses go into the ticket (and no port mapping).
    pub no_stun: bool,
    /// Skip NTP and trust this computer's clock.
    pub no_ntp: bool,
    /// Do not ask the router to forward a port.
    pub no_portmap: bool,
    /// How long connecting may take from [`Session::connect`], and reconnecting from the
    /// moment a path is lost.
    pub timeout: Duration,
    /// How long the peer may keep the connection alive without moving the job; `None`
    /// waits for ever.
    pub stall_timeout: Option<Duration>,
    /// TURN relays of the user's own, tried in order at bind: the first that gives an
    /// allocation puts its relayed address into the ticket.
    pub relays: Vec<RelayConfig>,
    /// A link that stays ([`Link::into_duplex`]) with a peer doing the same: both tickets
    /// say "receiver" (so a one-shot `p2pcopy sender` may send into it too), and of two such
    /// peers the one with the smaller certificate fingerprint dials ([`dials`]).
    pub link: bool,
    /// A file where what each path delivered is remembered between runs, so that the
    /// next connection to the same peer address starts near that rate instead of from ten
    /// packets ([`crate::rate_memory`]); `None`: every connection starts afresh.
    pub rate_memory: Option<PathBuf>,
}

impl SessionConfig {
    /// The defaults for `role`: all interfaces, any port, public STUN and NTP servers, a
    /// port mapping if the router offers one, 120 s to connect, the default stall timeout.
    pub fn new(role: Role) -> SessionConfig {
        SessionConfig {
            role,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            local_port: 0,
            stun_servers: Vec::new(),
            ntp_servers: Vec::new(),
            no_stun: false,
            no_ntp: false,
            no_portmap: false,
            timeout: Duration::from_secs(120),
            stall_timeout: Some(transfer::DEFAULT_STALL_TIMEOUT),
            relays: Vec::new(),
            link: false,
            rate_memory: None,
        }
    }

    /// The defaults for one side of a link that stays: a receiver's, with [`Self::link`].
    pub fn link() -> SessionConfig {
        SessionConfig {
            link: true,
            ..SessionConfig::new(Role::Receiver)
        }
    }
}

impl Default for SessionConfig {
    /// A sender's defaults ([`SessionConfig::new`]).
    fn default() -> SessionConfig {
        SessionConfig::new(Role::Sender)
    }
}

/// The router's port mapping of a run's socket, which must be removed when the run ends.
///
/// A session keeps it and [`Link::close`] removes it. Removing takes a round trip to the
/// router, which a dropped future cannot wait for: a program that may drop a session midway
/// (Ctrl-C) passes a clone to [`Session::bind_with`] and calls [`Cleanup::release`] itself
/// once the run is over, however it ended. A session or link dropped without one is
/// released in the background, if the runtime lives long enough.
#[derive(Clone, Debug, Default)]
pub struct Cleanup(Arc<tokio::sync::Mutex<Option<portmap::Mapper>>>);

impl Cleanup {
    /// Removes the mapping, if there is one (bounded; see [`portmap::Mapper::release`]).
    pub async fn release(&self) {
        let mapper = self.0.lock().await.take();
        if let Some(mapper) = mapper {
            mapper.release().await;
        }
    }
}

/// A session's or link's own hold on its [`Cleanup`].
#[derive(Debug)]
struct Owned(Cleanup);

impl Drop for Owned {
    fn drop(&mut self) {
        // A program holding a clone releases it itself, and must find the mapping still
        // there to wait for its removal; otherwise nobody else will.
        if Arc::strong_count(&(self.0).0) > 1 {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cleanup = self.0.clone();
            runtime.spawn(async move { cleanup.release().await });
        }
    }
}

/// A bound socket with its ticket, waiting for the peer's.
pub struct Session {
    config: SessionConfig,
    events: Box<dyn Events>,
    cleanup: Owned,
    identity: Identity,
    socket: std::net::UdpSocket,
    v6_socket: Option<std::net::UdpSocket>,
    ours: FullTicket,
    ntp_task: Option<tokio::task::JoinHandle<Option<(String, ntp::Clock)>>>,
    hops_task: Option<tokio::task::JoinHandle<Vec<Option<Ipv4Addr>>>>,
    /// The extra sockets whose ports the ticket lists, for rounds every 10 s.
    lanes: Option<net::LaneSockets>,
    /// Our allocation on the user's relay, if one was configured and gave one.
    relay: Option<Allocation>,
    /// Why the configured relays gave no allocation (the last one's failure), for the
    /// message when no path is found.
    relay_failure: Option<String>,
    /// Which STUN servers answered and where they saw the main socket: the ticket's
    /// mapped addresses, checked again after a lost path.
    stun_answers: Vec<crate::stun::Mapping>,
}

impl Session {
    /// Binds the socket and gathers our addresses (STUN, the router's port mapping, IPv6);
    /// NTP and the count of NATs on the way out run on while the users exchange tickets.
    /// Reports `bound`, `measured`, `port_mapping` and last `ticket`.
    pub async fn bind(
        config: SessionConfig,
        events: impl Events + 'static,
    ) -> Result<Session, Error> {
        Session::bind_with(config, events, &Cleanup::default()).await
    }

    /// [`Session::bind`], keeping the port mapping in `cleanup` (see [`Cleanup`]).
    pub async fn bind_with(
        config: SessionConfig,
        events: impl Events + 'static,
        cleanup: &Cleanup,
    ) -> Result<Session, Error> {
        gather::bind(config, Box::new(events), cleanup.clone()).await
    }

    /// Our ticket, for the peer.
    pub fn ticket(&self) -> &FullTicket {
        &self.ours
    }

    /// Refuses a ticket that cannot lead anywhere: our own, or one of the same role.
    pub fn check_peer(&self, peer: &Ticket) -> Result<(), Error> {
        check_peer_for(peer, &self.ours, self.config.link)
    }

    /// Checks the peer's ticket against ours and what the NATs allow, then punches and
    /// connects; reports `nat`, maybe a `warning`, `connecting`, `punch_round`s and
    /// `connected`. Fails when no path is found within the config's timeout.
    pub async fn connect(mut self, peer: Ticket) -> Result<Link, Error> {
        check_peer_for(&peer, &self.ours, self.config.link)?;
        let dials = dials(&self.ours, &peer, self.config.link);
        let pasted = Instant::now();
        let (nat_kind, peer_nat) = (self.ours.nat, peer.nat());
        // A router's port mapping on either side reaches through any NAT, symmetric included:
        // it is probed at once, so it is no reason to fail, nor to warn.
        let port_mapped = self.ours.has_port_mapping() || peer.has_port_mapping();
        // Both symmetric: rounds cannot help, only addresses probed at once (a shared local
        // network, IPv6, a port mapping); without any, say so now rather than after minutes
        // of rounds that cannot succeed.
        let lan_only = nat::both_symmetric(nat_kind, peer_nat);
        // A relay on either side carries the data whatever the NATs.
        let relayed =
            self.relay.is_some() || matches!(&peer, Ticket::Full(t) if t.relayed().is_some());
        if lan_only
            && !relayed
            && !port_mapped
            && !net::shares_a_network(&peer)
            && !net::both_have_ipv6(&self.ours, &peer)
        {
            return Err(self.no_path(nat::explain_failure(
                nat_kind,
                peer_nat,
                false,
                0,
                self.config.timeout.as_secs(),
            )));
        }
        let warning = (!port_mapped && !relayed)
            .then(|| nat::warn_before(nat_kind, peer_nat))
            .flatten();
        self.events.event(&Event::Nat {
            ours: nat_kind,
            peer: peer_nat,
            warning,
        });
        let deadline = pasted + self.config.timeout;
        let (clock, timing) = self.clock().await;
        let opener_ttl = match self.hops_task.take() {
            Some(task) => {
                let hops = task.await.unwrap_or_default();
                let ttl = crate::hops::opener_ttl_for(&hops);
                tracing::info!(?hops, opener_ttl = ttl, "routers on the way out");
                ttl
            }
            None => DEFAULT_OPENER_TTL,
        };
        let needs_rounds = !lan_only
            && net::targets(&peer)
                .iter()
                .any(|t| matches!(t.kind, PathKind::Mapped | PathKind::Typed));
        let plan = link::Plan {
            role: self.config.role,
            clock,
            timeout: self.config.timeout,
            stall_timeout: self.config.stall_timeout,
            needs_rounds,
            nat: nat_kind,
            peer_nat,
            port_mapping: self
                .ours
                .candidates
                .iter()
                .find(|c| c.kind == CandidateKind::PortMapped)
                .map(|c| c.addr),
            // A symmetric NAT maps each destination apart: what a STUN server sees says
            // nothing about the address the peer must reach.
            stun_answers: if nat_kind == crate::ticket::NatKind::EndpointDependent {
                Vec::new()
            } else {
                std::mem::take(&mut self.stun_answers)
            },
        };
        let mut dialer = Dialer::new(
            self.socket,
            self.v6_socket,
            dials,
            self.identity,
            peer,
            Some(opener_ttl),
            // A port mapping connects at once, without guessing ports (both sides see both
            // tickets, so they agree).
            nat::birthday_part(nat_kind, peer_nat).filter(|_| !port_mapped),
            self.lanes,
            self.relay,
        )?;
        dialer.set_round_timing(timing);
        if let Some(file) = self.config.rate_memory.clone() {
            let memory = tokio::task::spawn_blocking(move || RateMemory::load(file))
                .await
                .map_err(|e| Error::Internal(format!("rate memory: {e}")))?;
            dialer.set_rate_memory(memory);
        }
        let relay_failure = self.relay_failure.take();
        Link::first(dialer, plan, self.events, self.cleanup, deadline)
            .await
            .map_err(|e| match (e, relay_failure) {
                (Error::Connect(why), Some(relay)) => {
                    Error::Connect(with_relay_failure(why, &relay))
                }
                (e, _) => e,
            })
    }

    /// The error when no path can be found, saying why the relay could not help if one
    /// was configured and failed.
    fn no_path(&self, why: String) -> Error {
        match &self.relay_failure {
            Some(relay) => Error::Connect(with_relay_failure(why, relay)),
            None => Error::Connect(why),
        }
    }

    /// The shared round clock: this computer's, corrected by NTP when a server answered,
    /// and how rounds lie around it (wider when no server answered: see [`RoundTiming`]).
    /// With `--no-ntp` the user vouches for the clock.
    async fn clock(&mut self) -> (ntp::Clock, RoundTiming) {
        let Some(task) = self.ntp_task.take() else {
            return (ntp::Clock::default(), RoundTiming::SYNCED);
        };
        match task.await.ok().flatten() {
            Some((_, clock)) => (clock, RoundTiming::SYNCED),
            None => {
                let message = format!(
                    "no NTP server answered; using this computer's clock: rounds are widened to meet a peer whose clock is up to {} s off, and a cone NAT cannot be crossed if they differ more",
                    CLOCK_SLACK.as_secs()
                );
                self.events.event(&Event::Warning { message });
                (ntp::Clock::default(), RoundTiming::UNSYNCED)
            }
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.config.role)
            .field("local", &self.socket.local_addr().ok())
            .field("ticket", &self.ours.to_string())
            .finish_non_exhaustive()
    }
}

/// `why` no path was found, and that the relay that could have carried the data failed
/// (`relay`: "relay URI failed: why").
fn with_relay_failure(why: String, relay: &str) -> String {
    format!("{why}; the {relay}")
}

/// Whether we dial (the QUIC client): a sender does; on a link facing another link (both
/// tickets say "receiver") the side with the smaller fingerprint does, which both compute
/// alike; facing a one-shot sender, the sender does.
pub fn dials(ours: &FullTicket, peer: &Ticket, link: bool) -> bool {
    match peer {
        Ticket::Full(t) if link && t.role == Role::Receiver => ours.fingerprint < t.fingerprint,
        _ => ours.role == Role::Sender,
    }
}

/// Refuses tickets that cannot lead anywhere: our own, or one of the same role.
pub fn check_peer(peer: &Ticket, ours: &FullTicket) -> Result<(), Error> {
    check_peer_for(peer, ours, false)
}

/// [`check_peer`], where on a `link` two receivers' tickets are two links.
fn check_peer_for(peer: &Ticket, ours: &FullTicket, link: bool) -> Result<(), Error> {
    if let Ticket::Full(t) = peer {
        if t.fingerprint == ours.fingerprint {
            return Err(Error::Roles(
                "that is your own ticket; paste the one your peer sent you".into(),
            ));
        }
        if t.role == ours.role && !(link && t.role == Role::Receiver) {
            return Err(Error::Roles(format!(
                "your peer also ran `p2pcopy {}`; one of you must run `p2pcopy {}`",
                ours.role,
                ours.role.opposite()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::ticket::{Candidate, NatKind};

    #[test]
    fn same_role_and_own_ticket_are_refused() {
        let ours = FullTicket {
            role: Role::Sender,
            nat: NatKind::Unknown,
            fingerprint: Fingerprint::from_bytes([1; 32]),
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr: "10.0.0.1:1".parse().unwrap(),
            }],
            lane_ports: Vec::new(),
        };
        let same = Ticket::Full(FullTicket {
            fingerprint: Fingerprint::from_bytes([2; 32]),
            ..ours.clone()
        });
        assert!(matches!(check_peer(&same, &ours), Err(Error::Roles(m)) if m.contains("receiver")));
        assert!(
            matches!(check_peer(&Ticket::Full(ours.clone()), &ours), Err(Error::Roles(m)) if m.contains("own ticket"))
        );
        let good = Ticket::Full(FullTicket {
            fingerprint: Fingerprint::from_bytes([2; 32]),
            role: Role::Receiver,
            ..ours.clone()
        });
        assert!(check_peer(&good, &ours).is_ok());
    }

    #[test]
    fn of_two_links_exactly_one_dials() {
        let link = |b| FullTicket {
            role: Role::Receiver,
            nat: NatKind::Unknown,
            fingerprint: Fingerprint::from_bytes([b; 32]),
            candidates: Vec::new(),
            lane_ports: Vec::new(),
        };
        let (a, b) = (link(1), link(2));
        assert!(check_peer_for(&Ticket::Full(b.clone()), &a, true).is_ok());
        assert!(check_peer_for(&Ticket::Full(b.clone()), &a, false).is_err());
        assert!(dials(&a, &Ticket::Full(b.clone()), true));
        assert!(!dials(&b, &Ticket::Full(a.clone()), true));
        // A one-shot sender dials into a link; a one-shot receiver never dials.
        let sender = FullTicket {
            role: Role::Sender,
            ..link(0)
        };
        assert!(!dials(&b, &Ticket::Full(sender.clone()), true));
        assert!(dials(&sender, &Ticket::Full(b.clone()), false));
        assert!(!dials(&a, &Ticket::Full(b), false));
    }
}
