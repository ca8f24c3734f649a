//! Binding and gathering: the run's socket, our public addresses (STUN), the router's port
//! mapping, IPv6 beside IPv4, an allocation on the user's TURN relay, and the ticket that
//! carries them.

use std::net::{IpAddr, SocketAddr};

use super::{Cleanup, Events, Owned, Session, SessionConfig};
use crate::error::Error;
use crate::events::Event;
use crate::net;
use crate::relay::{Allocation, RelayConfig};
use crate::ticket::{Candidate, CandidateKind, FullTicket, NatKind};
use crate::tls::Identity;
use crate::{nat, ntp, portmap, stun};

/// See [`Session::bind_with`].
pub(super) async fn bind(
    config: SessionConfig,
    mut events: Box<dyn Events>,
    cleanup: Cleanup,
) -> Result<Session, Error> {
    let identity = Identity::generate()?;
    let socket = net::bind(config.bind, config.local_port)?;
    net::log_capped_buffers(&socket);
    let local = socket
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    events.event(&Event::Bound {
        local_port: local.port(),
    });

    // The router is asked while STUN runs (no STUN means local addresses only).
    if !config.no_portmap && !config.no_stun && portmap::worth_trying(local.ip()) {
        *cleanup.0.lock().await = Some(portmap::Mapper::start(local));
    }
    // NTP runs while the users exchange tickets.
    let ntp_task = (!config.no_ntp).then(|| {
        let servers = or_defaults(&config.ntp_servers, ntp::DEFAULT_SERVERS);
        tokio::spawn(async move { ntp::query(&servers).await })
    });

    let host_ips = net::host_ips(local.ip());
    let gather = async {
        if config.no_stun {
            Ok((NatKind::Unknown, socket, Vec::new(), None, None, Vec::new()))
        } else {
            let servers = or_defaults(&config.stun_servers, stun::DEFAULT_SERVERS);
            public(socket, &servers, &host_ips, &cleanup, &mut *events).await
        }
    };
    // The relay is asked while STUN runs: a slow or dead relay delays only itself.
    let (gathered, opened) = tokio::join!(gather, open_relay(&config.relays));
    let (relay, failures) = opened;
    let (nat_kind, socket, mut candidates, hops_task, lanes, stun_answers) = match gathered {
        Ok(g) => g,
        // UDP blocked (an office, a hotel): the relay over TCP or TLS is the way out.
        Err((e, socket)) if relay.is_some() => {
            events.event(&Event::Warning {
                message: format!("{e}; going on through the relay"),
            });
            (NatKind::Unknown, socket, Vec::new(), None, None, Vec::new())
        }
        Err((e, _)) => return Err(e),
    };
    for failure in &failures {
        events.event(&Event::Warning {
            message: format!("{failure}; going on without it"),
        });
    }
    // The relayed address first: the peer reads it as the way that works at once.
    if let Some(a) = &relay {
        candidates.insert(
            0,
            Candidate {
                kind: CandidateKind::Relayed,
                addr: a.relayed_addr(),
            },
        );
    }
    // IPv6 next to IPv4: both are tried together and the first path that works wins.
    let v6_socket = ipv6(local, &mut candidates);
    for ip in &host_ips {
        candidates.push(Candidate {
            kind: CandidateKind::Host,
            addr: SocketAddr::new(*ip, local.port()),
        });
    }
    candidates.truncate(crate::ticket::MAX_CANDIDATES);
    if candidates.is_empty() {
        return Err(Error::Usage(
            "this computer has no usable IP address; use --bind or connect to a network".into(),
        ));
    }
    let ours = FullTicket {
        role: config.role,
        nat: nat_kind,
        fingerprint: *identity.fingerprint(),
        candidates,
        lane_ports: lanes.as_ref().map(|l| l.ports.clone()).unwrap_or_default(),
    };
    events.event(&Event::Ticket {
        role: config.role,
        ticket: ours.to_string(),
        local_port: local.port(),
        nat: nat_kind,
        candidates: ours.candidates.clone(),
        lane_ports: ours.lane_ports.clone(),
    });
    Ok(Session {
        config,
        events,
        cleanup: Owned(cleanup),
        identity,
        socket,
        v6_socket,
        ours,
        ntp_task,
        hops_task,
        lanes,
        relay,
        relay_failure: failures.last().cloned(),
        stun_answers,
    })
}

/// An allocation on the first of `relays` that gives one (tried in order), and one line
/// for each relay before it that failed, naming it and why (never a credential).
async fn open_relay(relays: &[RelayConfig]) -> (Option<Allocation>, Vec<String>) {
    let mut failures = Vec::new();
    for r in relays {
        match Allocation::open(&r.uri, &r.creds).await {
            Ok(a) => return (Some(a), failures),
            Err(e) => {
                tracing::info!(relay = %r.uri, error = %e, "relay failed");
                failures.push(format!("relay {} failed: {e}", r.uri));
            }
        }
    }
    (None, failures)
}

/// What STUN and the router tell about our public side: the NAT's kind, the socket back,
/// our public candidates, the task counting the NATs on the way out, the lane sockets and
/// the STUN answers (asked again after a lost path: [`super::remap`]). When no STUN
/// server answered, why, with the socket back.
async fn public(
    socket: std::net::UdpSocket,
    servers: &[String],
    host_ips: &[IpAddr],
    cleanup: &Cleanup,
    events: &mut dyn Events,
) -> Result<Public, (Error, std::net::UdpSocket)> {
    let internal = |e: std::io::Error| Error::Internal(e.to_string());
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(e) => return Err((internal(e), socket)),
    };
    let tokio_sock = match socket.try_clone().and_then(tokio::net::UdpSocket::from_std) {
        Ok(s) => s,
        Err(e) => return Err((internal(e), socket)),
    };
    // The lane sockets are mapped side by side with the main one.
    let (mappings, lanes) = tokio::join!(
        stun::discover(&tokio_sock, servers),
        net::LaneSockets::map(local.ip(), servers)
    );
    drop(tokio_sock);
    let mappings = match mappings {
        Ok(m) => m,
        Err(e) => return Err((e, socket)),
    };
    let mapped: Vec<SocketAddr> = mappings.iter().map(|m| m.mapped).collect();
    let kind = nat::classify(local.port(), host_ips, &mapped);
    events.event(&Event::Measured { nat: kind });
    // Counting the NATs on the way out takes up to a few hundred ms per silent router and is
    // needed only for punching, so it runs while the users exchange tickets.
    let hops_task = (kind != NatKind::None)
        .then(|| tokio::spawn(crate::hops::trace(local.ip(), mappings[0].server)));
    let forwarded = port_mapping(cleanup, &mapped, events).await;
    Ok((
        kind,
        socket,
        public_candidates(forwarded, &mapped),
        hops_task,
        lanes,
        mappings,
    ))
}

/// What [`public`] finds.
type Public = (
    NatKind,
    std::net::UdpSocket,
    Vec<Candidate>,
    Option<tokio::task::JoinHandle<Vec<Option<std::net::Ipv4Addr>>>>,
    Option<net::LaneSockets>,
    Vec<stun::Mapping>,
);

/// Our public candidates, most preferred first: a forwarded port reaches us from behind any
/// NAT, then each address STUN saw.
fn public_candidates(forwarded: Option<portmap::Mapping>, mapped: &[SocketAddr]) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    if let Some(m) = forwarded {
        candidates.push(Candidate {
            kind: CandidateKind::PortMapped,
            addr: m.external.into(),
        });
    }
    for m in mapped {
        let c = Candidate {
            kind: CandidateKind::Mapped,
            addr: *m,
        };
        // A cone NAT that kept the port shows STUN the forwarded address itself.
        let forwarded = candidates
            .iter()
            .any(|p| p.kind == CandidateKind::PortMapped && p.addr == *m);
        if !candidates.contains(&c) && !forwarded {
            candidates.push(c);
        }
    }
    candidates
}

/// The IPv6 socket, on our port if it is free, when this host has global IPv6 addresses
/// (and we bound all interfaces); adds its host candidates.
fn ipv6(local: SocketAddr, candidates: &mut Vec<Candidate>) -> Option<std::net::UdpSocket> {
    let v6_ips = if local.ip().is_unspecified() {
        net::host_ips_v6()
    } else {
        Vec::new()
    };
    if v6_ips.is_empty() {
        return None;
    }
    let unspecified = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let socket = net::bind(unspecified, local.port())
        .or_else(|_| net::bind(unspecified, 0))
        .inspect_err(|e| tracing::info!(error = %e, "no IPv6 socket"))
        .ok()?;
    if let Ok(port) = socket.local_addr().map(|a| a.port()) {
        for ip in &v6_ips {
            candidates.push(Candidate {
                kind: CandidateKind::Host,
                addr: SocketAddr::new(IpAddr::V6(*ip), port),
            });
        }
    }
    Some(socket)
}

/// The mapper's result, if it is one a peer can use: its external address must be the public
/// address STUN saw (`mapped`), else another NAT sits in front of the router and the forward
/// leads nowhere; such a mapping is removed at once. Reports a usable one.
async fn port_mapping(
    cleanup: &Cleanup,
    mapped: &[SocketAddr],
    events: &mut dyn Events,
) -> Option<portmap::Mapping> {
    let mut slot = cleanup.0.lock().await;
    let m = slot.as_mut()?.mapping().await?;
    if !mapped
        .iter()
        .any(|a| a.ip() == IpAddr::V4(*m.external.ip()))
    {
        tracing::info!(protocol = %m.protocol, external = %m.external, ?mapped, "the router's port mapping is not on the public address STUN saw (another NAT in front of it?); not using it");
        if let Some(mapper) = slot.take() {
            mapper.release().await;
        }
        return None;
    }
    events.event(&Event::PortMapping {
        protocol: m.protocol,
        external: m.external.into(),
        lease_s: m.lease.as_secs(),
    });
    Some(m)
}

/// `given`, or `defaults` when nothing was given.
pub(crate) fn or_defaults(given: &[String], defaults: &[&str]) -> Vec<String> {
    if given.is_empty() {
        defaults.iter().map(|s| s.to_string()).collect()
    } else {
        given.to_vec()
    }
}
