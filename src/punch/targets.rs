//! Which of the peer's addresses to probe, and as what: pure rules over the tickets, beside
//! the puncher that probes them. Gathering the addresses (interfaces, STUN, port mapping)
//! is [`crate::net`]'s and [`crate::stun`]'s; these functions only read what the tickets
//! and the host's interfaces say.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{PathKind, SocketId, Target, V6_SOCKET};
use crate::ticket::{Candidate, CandidateKind, FullTicket, NatKind, Ticket};

/// Whether one of the peer's own (LAN) addresses lies in the network of one of `ours`
/// (each an interface's IPv4 address and netmask). A bare ticket cannot tell: `true`.
pub fn on_our_networks(peer: &Ticket, ours: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    let Ticket::Full(t) = peer else {
        return true;
    };
    let ours: Vec<(u32, u32)> = ours
        .iter()
        .map(|(ip, mask)| (u32::from(*ip), u32::from(*mask)))
        .collect();
    t.candidates
        .iter()
        .filter(|c| c.kind == CandidateKind::Host)
        .any(|c| match c.addr.ip() {
            IpAddr::V4(ip) => ours
                .iter()
                .any(|(net, mask)| net & mask == u32::from(ip) & mask),
            IpAddr::V6(_) => false,
        })
}

/// Whether both tickets carry IPv6 addresses, which no NAT stands in front of.
pub fn both_have_ipv6(ours: &FullTicket, peer: &Ticket) -> bool {
    let has = |c: &[Candidate]| c.iter().any(|c| c.addr.is_ipv6());
    has(&ours.candidates)
        && match peer {
            Ticket::Full(t) => has(&t.candidates),
            Ticket::Bare(a) => a.is_ipv6(),
        }
}

/// The peer's addresses from its ticket, classified for the puncher.
pub fn targets(ticket: &Ticket) -> Vec<Target> {
    match ticket {
        Ticket::Bare(addr) => vec![Target::new(*addr, PathKind::Typed)],
        Ticket::Full(t) => full_targets(t),
    }
}

fn full_targets(t: &FullTicket) -> Vec<Target> {
    let of_kind = |kind: CandidateKind| -> Vec<SocketAddr> {
        t.candidates
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.addr)
            .collect()
    };
    let mapped = of_kind(CandidateKind::Mapped);
    let port_mapped = of_kind(CandidateKind::PortMapped);
    let mut out = Vec::new();
    for c in &t.candidates {
        let kind = match c.kind {
            // Forwarded by the peer's router: reachable from anywhere, so probed at once.
            CandidateKind::PortMapped => PathKind::PortMapped,
            // The same public address as a port mapping (a cone NAT that kept the port):
            // the mapping's at-once probes cover it, and rounds to it would add nothing.
            CandidateKind::Mapped if port_mapped.contains(&c.addr) => continue,
            // A host address that STUN also saw is a public address: no NAT to poison.
            CandidateKind::Host if mapped.contains(&c.addr) || t.nat == NatKind::None => {
                PathKind::Public
            }
            CandidateKind::Host if c.addr.is_ipv6() => PathKind::Ipv6,
            CandidateKind::Host => PathKind::Lan,
            CandidateKind::Mapped
                if t.candidates
                    .iter()
                    .any(|h| h.kind == CandidateKind::Host && h.addr == c.addr) =>
            {
                continue
            }
            CandidateKind::Mapped => PathKind::Mapped,
            // The peer's TURN relay: no hole to punch; the dialer routes QUIC to it.
            CandidateKind::Relayed => continue,
        };
        out.push(Target::new(c.addr, kind));
    }
    out
}

/// The targets of one connect attempt: the ticket's, IPv6 ones probed from the IPv6 socket
/// or (without `has_v6`) not at all, and the path the last connection ran on (our socket,
/// its address), if any, first.
pub fn attempt_targets(
    peer: &Ticket,
    has_v6: bool,
    last_path: Option<(SocketId, SocketAddr)>,
) -> Vec<Target> {
    let mut targets = targets(peer);
    // IPv6 addresses are reached from the IPv6 socket, or not at all.
    targets.retain(|t| t.addr.is_ipv4() || has_v6);
    for t in &mut targets {
        if t.addr.is_ipv6() {
            t.socket = V6_SOCKET;
        }
    }
    if let Some((socket, last)) = last_path {
        targets.retain(|t| t.addr != last);
        targets.insert(
            0,
            Target {
                addr: last,
                kind: PathKind::PeerReflexive,
                socket,
            },
        );
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::punch::MAIN_SOCKET;
    use crate::ticket::Role;

    /// A sender's ticket behind `nat` with `candidates` as (kind, "addr") pairs.
    fn ticket(nat: NatKind, candidates: &[(CandidateKind, &str)]) -> FullTicket {
        FullTicket {
            role: Role::Sender,
            nat,
            fingerprint: crate::fingerprint::Fingerprint::default(),
            candidates: candidates
                .iter()
                .map(|&(kind, addr)| Candidate {
                    kind,
                    addr: addr.parse().unwrap(),
                })
                .collect(),
            lane_ports: Vec::new(),
        }
    }

    #[test]
    fn ticket_addresses_become_targets() {
        let t = ticket(
            NatKind::EndpointIndependent,
            &[
                (CandidateKind::Mapped, "198.18.1.2:4300"),
                (CandidateKind::Host, "10.1.0.2:4300"),
            ],
        );
        let kinds: Vec<PathKind> = full_targets(&t).iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [PathKind::Mapped, PathKind::Lan]);
        // A port mapping comes first and makes a STUN-mapped twin of it redundant.
        let forwarded = ticket(
            t.nat,
            &[
                (CandidateKind::PortMapped, "198.18.1.2:4300"),
                (CandidateKind::Mapped, "198.18.1.2:4300"),
                (CandidateKind::Mapped, "198.18.1.2:51000"),
                (CandidateKind::Host, "10.1.0.2:4300"),
            ],
        );
        let targets = full_targets(&forwarded);
        let kinds: Vec<(PathKind, u16)> = targets.iter().map(|t| (t.kind, t.addr.port())).collect();
        assert_eq!(
            kinds,
            [
                (PathKind::PortMapped, 4300),
                (PathKind::Mapped, 51000),
                (PathKind::Lan, 4300)
            ]
        );
        let public = ticket(
            NatKind::None,
            &[
                (CandidateKind::Mapped, "198.18.5.2:4300"),
                (CandidateKind::Host, "198.18.5.2:4300"),
            ],
        );
        let targets = full_targets(&public);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].kind, PathKind::Public);
        assert_eq!(
            super::targets(&Ticket::Bare("1.2.3.4:5".parse().unwrap()))[0].kind,
            PathKind::Typed
        );
    }

    #[test]
    fn ipv6_candidates_are_their_own_kind() {
        let t = ticket(
            NatKind::EndpointDependent,
            &[
                (CandidateKind::Mapped, "198.18.1.2:4300"),
                (CandidateKind::Host, "[2001:db8:1::2]:4300"),
            ],
        );
        let kinds: Vec<PathKind> = full_targets(&t).iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [PathKind::Mapped, PathKind::Ipv6]);
        let v4_only = FullTicket {
            candidates: t.candidates[..1].to_vec(),
            ..t.clone()
        };
        assert!(both_have_ipv6(&t, &Ticket::Full(t.clone())));
        assert!(!both_have_ipv6(&t, &Ticket::Full(v4_only.clone())));
        assert!(!both_have_ipv6(&v4_only, &Ticket::Full(t.clone())));
    }

    #[test]
    fn an_attempt_probes_the_last_path_first_and_ipv6_from_its_socket() {
        let t = ticket(
            NatKind::EndpointDependent,
            &[
                (CandidateKind::Mapped, "198.18.1.2:4300"),
                (CandidateKind::Host, "[2001:db8:1::2]:4300"),
            ],
        );
        let peer = Ticket::Full(t);
        let plan = |has_v6, last| -> Vec<(SocketAddr, PathKind, SocketId)> {
            attempt_targets(&peer, has_v6, last)
                .iter()
                .map(|t| (t.addr, t.kind, t.socket))
                .collect()
        };
        let (v4, v6) = (
            "198.18.1.2:4300".parse().unwrap(),
            "[2001:db8:1::2]:4300".parse().unwrap(),
        );
        assert_eq!(plan(false, None), [(v4, PathKind::Mapped, MAIN_SOCKET)]);
        assert_eq!(
            plan(true, None),
            [
                (v4, PathKind::Mapped, MAIN_SOCKET),
                (v6, PathKind::Ipv6, V6_SOCKET)
            ]
        );
        assert_eq!(
            plan(true, Some((7, v4))),
            [
                (v4, PathKind::PeerReflexive, 7),
                (v6, PathKind::Ipv6, V6_SOCKET)
            ]
        );
    }

    #[test]
    fn a_shared_network_is_one_of_the_peers_lan_addresses_in_ours() {
        let peer = Ticket::Full(ticket(
            NatKind::EndpointIndependent,
            &[
                (CandidateKind::Mapped, "198.18.1.2:4300"),
                (CandidateKind::Host, "10.1.0.2:4300"),
            ],
        ));
        let net = |ip: &str, mask: &str| (ip.parse().unwrap(), mask.parse().unwrap());
        assert!(on_our_networks(&peer, &[net("10.1.0.9", "255.255.255.0")]));
        assert!(!on_our_networks(&peer, &[net("10.2.0.9", "255.255.255.0")]));
        // The peer's public address is no LAN address, whatever our networks.
        assert!(!on_our_networks(
            &peer,
            &[net("198.18.1.9", "255.255.255.0")]
        ));
        assert!(on_our_networks(
            &Ticket::Bare("1.2.3.4:5".parse().unwrap()),
            &[]
        ));
    }
}
