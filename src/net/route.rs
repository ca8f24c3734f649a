//! Which way each QUIC datagram to the peer goes when a TURN relay is in play: pure rules
//! over what the tickets say and what arrived when, so the demultiplexer stays a thin
//! shell.
//!
//! quinn sees the peer at one address for the whole connection (the relay's, see
//! [`Router::peer`]); underneath, every datagram to it goes the best way known now (iroh's
//! "magicsock" idea: QUIC v1 lets a client never change the server's address):
//! - **direct**, once the puncher confirmed a path and as long as the peer's datagrams keep
//!   arriving on it (QUIC's keep-alives come every 2 s); silent for [`DIRECT_DOUBT`], each
//!   datagram also goes the relay's way, and the first word of the peer through the relay
//!   (or [`DIRECT_STALE`] of silence) gives the direct path up;
//! - else **through our allocation**, to the peer's relayed address if it has one, else to
//!   where the peer's datagrams to our relayed address came from (its NAT's mapping towards
//!   the relay), else to its ticket's public addresses (a peer without NAT);
//! - else **plain UDP to the peer's relayed address**, when only the peer has a relay.
//!
//! Our allocation comes first when we have one: it works even where our host cannot send
//! UDP at all (TURN over TLS on port 443), where plain UDP to the peer's relay would not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a direct path carries the data after the last datagram that came in on it:
/// longer than two of QUIC's keep-alive intervals (2 s), so an idle connection keeps it.
pub const DIRECT_STALE: Duration = Duration::from_secs(5);

/// How long the direct path may be silent before each datagram to the peer also goes
/// through the relay, until [`DIRECT_STALE`] gives the direct path up. Longer than QUIC's
/// keep-alive interval (2 s), so an idle healthy path sends nothing twice; short enough that
/// a probe reaches the peer before the idle timeout (10 s): quinn's probes back off
/// exponentially, and under load their gaps can straddle the whole span from 3 to 10 s,
/// so waiting for `DIRECT_STALE` alone lost the connection (tests/relay_session.rs, about
/// 1 run in 10 with both cores busy).
pub const DIRECT_DOUBT: Duration = Duration::from_secs(3);

/// Where one datagram to the peer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to the peer's address, from our own socket.
    Direct(SocketAddr),
    /// Through our allocation to this address (the peer's relayed address or its NAT's).
    OurRelay(SocketAddr),
    /// Plain UDP from our socket to the peer's relayed address.
    PeerRelay(SocketAddr),
    /// Nowhere yet: our allocation has no address of the peer to send to.
    None,
}

impl Route {
    /// Whether the datagram goes through a relay.
    pub fn relayed(self) -> bool {
        matches!(self, Route::OurRelay(_) | Route::PeerRelay(_))
    }
}

/// The routing state of one run with a relay (see the module docs).
#[derive(Clone, Debug)]
pub struct Router {
    /// What quinn sees the peer at.
    peer: SocketAddr,
    /// Our relayed address, if we hold an allocation.
    ours: Option<SocketAddr>,
    /// The peer's relayed address, from its ticket.
    peers_relay: Option<SocketAddr>,
    /// The peer's public addresses from its ticket, for our allocation until the peer's
    /// own datagrams show where it is.
    fallback: Vec<SocketAddr>,
    /// Where the peer's datagrams through our allocation last came from.
    learned: Option<SocketAddr>,
    /// The confirmed direct path, and when something last arrived on it.
    direct: Option<(SocketAddr, Instant)>,
    /// When the peer's QUIC last came through a relay (ours or its own).
    relay_heard: Option<Instant>,
}

impl Router {
    /// A router for a run where we hold the allocation `ours` and/or the peer's ticket
    /// lists `peers_relay`; `fallback` are the peer's other public addresses. `None` when
    /// neither side has a relay: then there is nothing to route.
    pub fn new(
        ours: Option<SocketAddr>,
        peers_relay: Option<SocketAddr>,
        fallback: Vec<SocketAddr>,
    ) -> Option<Router> {
        Some(Router {
            peer: peers_relay.or(ours)?,
            ours,
            peers_relay,
            fallback,
            learned: None,
            direct: None,
            relay_heard: None,
        })
    }

    /// The address quinn sees the peer at, whichever way the data goes: the peer's relayed
    /// address, else ours.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether QUIC from `from` (on our own sockets) comes from the peer's relay.
    pub fn is_peers_relay(&self, from: SocketAddr) -> bool {
        self.peers_relay == Some(from)
    }

    /// The way through a relay, ignoring any direct path.
    pub fn relay_route(&self) -> Route {
        if self.ours.is_some() {
            match self.peers_relay.or(self.learned) {
                Some(to) => Route::OurRelay(to),
                None => self
                    .fallback
                    .first()
                    .map_or(Route::None, |a| Route::OurRelay(*a)),
            }
        } else {
            self.peers_relay.map_or(Route::None, Route::PeerRelay)
        }
    }

    /// Where a datagram to the peer goes now, and a second way for a copy of it while the
    /// direct path is in doubt: silent for [`DIRECT_DOUBT`] and no word of the peer
    /// through the relay since, the relay's (QUIC drops the copy that arrives second). The
    /// direct path is given up after [`DIRECT_STALE`], or at once when the peer was heard
    /// through the relay in doubt (the relay works and the direct path does not).
    pub fn routes(&self, now: Instant) -> (Route, Option<Route>) {
        let relay = self.relay_route();
        let Some((addr, last)) = self.direct else {
            return (relay, None);
        };
        let silent = now.saturating_duration_since(last);
        // A stale direct path still beats no way at all.
        if silent < DIRECT_DOUBT || relay == Route::None {
            (Route::Direct(addr), None)
        } else if silent < DIRECT_STALE && self.relay_heard.is_none_or(|t| t <= last) {
            (Route::Direct(addr), Some(relay))
        } else {
            (relay, None)
        }
    }

    /// Where a datagram to the peer goes now (see [`Router::routes`]).
    pub fn route(&self, now: Instant) -> Route {
        self.routes(now).0
    }

    /// The way for a copy of each datagram while the direct path is in doubt (see
    /// [`Router::routes`]).
    pub fn doubt_route(&self, now: Instant) -> Option<Route> {
        self.routes(now).1
    }

    /// Every address our allocation sends to before the peer's own datagrams show the way:
    /// the fallback addresses (see [`Router::relay_route`]).
    pub fn fallback(&self) -> &[SocketAddr] {
        &self.fallback
    }

    /// A datagram of the peer came in through our allocation from `from`; returns whether
    /// this is a new address to send to.
    pub fn heard_via_relay(&mut self, from: SocketAddr, now: Instant) -> bool {
        self.relay_heard = Some(now);
        if self.learned == Some(from) {
            return false;
        }
        self.learned = Some(from);
        self.peers_relay.is_none()
    }

    /// The puncher confirmed a path to `addr`: the data moves onto it.
    pub fn confirmed(&mut self, addr: SocketAddr, now: Instant) {
        self.direct = Some((addr, now));
    }

    /// A datagram of the peer arrived on our own sockets from `from`: it keeps the direct
    /// path alive when that is where it came from, and shows the peer's relay works when
    /// it came from there.
    pub fn heard_directly(&mut self, from: SocketAddr, now: Instant) {
        match &mut self.direct {
            Some((addr, last)) if *addr == from => *last = now,
            _ if self.peers_relay == Some(from) => self.relay_heard = Some(now),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_relay_no_router() {
        assert!(Router::new(None, None, vec![a("203.0.113.1:1")]).is_none());
    }

    #[test]
    fn our_allocation_sends_to_the_peers_relay_else_where_the_peer_was_heard() {
        let ours = a("198.51.100.5:50000");
        let mut r = Router::new(Some(ours), None, vec![a("203.0.113.7:4000")]).unwrap();
        assert_eq!(r.peer(), ours);
        // Until the peer is heard: its ticket's public address.
        assert_eq!(r.relay_route(), Route::OurRelay(a("203.0.113.7:4000")));
        // A symmetric peer's NAT maps it to another port towards the relay.
        assert!(r.heard_via_relay(a("203.0.113.7:61000"), Instant::now()));
        assert!(!r.heard_via_relay(a("203.0.113.7:61000"), Instant::now()));
        assert_eq!(
            r.route(Instant::now()),
            Route::OurRelay(a("203.0.113.7:61000"))
        );
        // With the peer's relay in its ticket, that is where our allocation sends.
        let theirs = a("198.51.100.9:50001");
        let mut both = Router::new(Some(ours), Some(theirs), vec![]).unwrap();
        assert_eq!(both.peer(), theirs);
        assert!(!both.heard_via_relay(a("203.0.113.7:61000"), Instant::now()));
        assert_eq!(both.relay_route(), Route::OurRelay(theirs));
        // Nothing known at all: nowhere yet.
        let none = Router::new(Some(ours), None, vec![]).unwrap();
        assert_eq!(none.route(Instant::now()), Route::None);
    }

    #[test]
    fn without_an_allocation_plain_udp_goes_to_the_peers_relay() {
        let theirs = a("198.51.100.9:50001");
        let r = Router::new(None, Some(theirs), vec![a("203.0.113.7:4000")]).unwrap();
        assert_eq!(r.route(Instant::now()), Route::PeerRelay(theirs));
        assert!(r.is_peers_relay(theirs));
        assert!(!r.is_peers_relay(a("203.0.113.7:4000")));
        assert!(r.route(Instant::now()).relayed());
    }

    #[test]
    fn a_confirmed_path_carries_the_data_while_the_peer_is_heard_on_it() {
        let t0 = Instant::now();
        let theirs = a("198.51.100.9:50001");
        let direct = a("203.0.113.7:4000");
        let mut r = Router::new(None, Some(theirs), vec![]).unwrap();
        r.confirmed(direct, t0);
        assert_eq!(r.route(t0), Route::Direct(direct));
        assert!(!r.route(t0).relayed());
        // Heard on it: stays direct past the first stale time.
        r.heard_directly(direct, t0 + Duration::from_secs(4));
        // Datagrams from elsewhere do not keep it alive.
        r.heard_directly(a("203.0.113.8:4000"), t0 + Duration::from_secs(8));
        assert_eq!(r.route(t0 + Duration::from_secs(8)), Route::Direct(direct));
        // In doubt: direct, and a copy through the relay.
        let doubt = t0 + Duration::from_secs(4) + DIRECT_DOUBT;
        assert_eq!(r.route(doubt), Route::Direct(direct));
        assert_eq!(r.doubt_route(doubt), Some(Route::PeerRelay(theirs)));
        assert_eq!(r.doubt_route(t0 + Duration::from_secs(5)), None);
        // Silent for longer than DIRECT_STALE: back to the relay.
        assert_eq!(
            r.route(t0 + Duration::from_secs(4) + DIRECT_STALE),
            Route::PeerRelay(theirs)
        );
        assert_eq!(
            r.doubt_route(t0 + Duration::from_secs(4) + DIRECT_STALE),
            None
        );
        // And direct again as soon as the peer is heard on it.
        let later = t0 + Duration::from_secs(30);
        r.heard_directly(direct, later);
        assert_eq!(r.route(later), Route::Direct(direct));
        // A new confirmation replaces the path.
        let other = a("203.0.113.7:4001");
        r.confirmed(other, later);
        assert_eq!(r.route(later), Route::Direct(other));
    }

    #[test]
    fn in_doubt_the_first_word_through_the_relay_moves_the_data_onto_it() {
        let t0 = Instant::now();
        let theirs = a("198.51.100.9:50001");
        let direct = a("203.0.113.7:4000");
        let mut r = Router::new(None, Some(theirs), vec![]).unwrap();
        r.confirmed(direct, t0);
        // Heard through the relay while the direct path is healthy: nothing changes.
        r.heard_directly(theirs, t0 + Duration::from_secs(1));
        r.heard_directly(direct, t0 + Duration::from_secs(2));
        assert_eq!(r.route(t0 + Duration::from_secs(2)), Route::Direct(direct));
        // Silent on the direct path since, then the relay's copy is answered.
        let doubt = t0 + Duration::from_secs(2) + DIRECT_DOUBT;
        assert_eq!(r.route(doubt), Route::Direct(direct));
        assert!(r.doubt_route(doubt).is_some());
        r.heard_directly(theirs, doubt);
        assert_eq!(r.route(doubt), Route::PeerRelay(theirs));
        assert_eq!(r.doubt_route(doubt), None);
        // The direct path heard again: back on it.
        let back = doubt + Duration::from_secs(1);
        r.heard_directly(direct, back);
        assert_eq!(r.route(back), Route::Direct(direct));
        // Our allocation's word counts the same way.
        let ours = a("198.51.100.5:50000");
        let mut o = Router::new(Some(ours), None, vec![a("203.0.113.7:61000")]).unwrap();
        o.confirmed(direct, t0);
        o.heard_via_relay(a("203.0.113.7:61000"), doubt);
        assert_eq!(o.route(doubt), Route::OurRelay(a("203.0.113.7:61000")));
    }

    #[test]
    fn a_stale_direct_path_beats_no_way_at_all() {
        let t0 = Instant::now();
        let mut r = Router::new(Some(a("198.51.100.5:50000")), None, vec![]).unwrap();
        r.confirmed(a("203.0.113.7:4000"), t0);
        // Nothing to send a copy through.
        assert_eq!(r.doubt_route(t0 + DIRECT_DOUBT), None);
        assert_eq!(
            r.route(t0 + DIRECT_STALE * 3),
            Route::Direct(a("203.0.113.7:4000"))
        );
    }
}
