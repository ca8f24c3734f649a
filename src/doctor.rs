//! `p2pcopy doctor`: what this machine's network allows, measured the way a transfer would
//! use it, with a one-line verdict on which peers it can reach (like `tailscale netcheck`).
//!
//! The checks speak STUN with our own codec ([`crate::stun::message`]) over one socket, so
//! answers are matched by transaction id and several kinds of request can be in flight:
//! - mapping: the public address each server sees (RFC 5780 test I), also towards a
//!   server's alternate address when it names one (test II's mapping half);
//! - filtering: whether an answer sent from the server's other address and port, or only its
//!   other port, gets through (RFC 5780 tests II and III, CHANGE-REQUEST);
//! - hairpinning: whether a datagram to our own public address comes back;
//! - port mapping: whether the router forwards a port on request (PCP, NAT-PMP, UPnP), with
//!   a short-lived test mapping that is removed again at once;
//! - NTP reachability and clock offset.
//!
//! [`verdict`] turns the findings into words; it is pure and unit-tested.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::error::Error;
use crate::events::{millis, BufferCheck, Event, NtpCheck, PortMapCheck, StunCheck};
use crate::net::{Buffers, SOCKET_BUFFER};
use crate::portmap;
use crate::stun::message::{decode_response, encode_request, BindingResponse};
use crate::ticket::NatKind;

/// How long one STUN test waits for its answer (requests are repeated meanwhile).
const TEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Gap between retransmissions of one request.
const RETRY: Duration = Duration::from_millis(300);

pub use crate::nat::Filtering;

/// One STUN server's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCheck {
    /// As given.
    pub name: String,
    /// Resolved address (IPv4), if it resolved.
    pub addr: Option<SocketAddr>,
    /// Round trip of the first answer.
    pub rtt: Option<Duration>,
    /// Our address as the server saw it.
    pub mapped: Option<SocketAddr>,
    /// The server's alternate address (RFC 5780 OTHER-ADDRESS), if it has one.
    pub other: Option<SocketAddr>,
}

/// Everything `doctor` found.
#[derive(Clone, Debug, PartialEq)]
pub struct Findings {
    /// The socket's local address.
    pub local: SocketAddr,
    /// This host's own addresses.
    pub host_ips: Vec<IpAddr>,
    /// This host's global IPv6 addresses (candidates of a transfer, no NAT in front).
    pub ipv6: Vec<std::net::Ipv6Addr>,
    /// Per STUN server.
    pub servers: Vec<ServerCheck>,
    /// Mapping behaviour.
    pub nat: NatKind,
    /// Filtering behaviour, when an RFC 5780 server allowed testing it.
    pub filtering: Option<Filtering>,
    /// Whether our own public address reached us back, when there is a NAT to ask.
    pub hairpin: Option<bool>,
    /// Who answered "time exceeded" to TTL 1, 2, … towards a STUN server, up to the first
    /// router outside our NATs ([`crate::hops`]); empty when not measured.
    pub nat_hops: Vec<Option<std::net::Ipv4Addr>>,
    /// The NTP server that answered, its round trip and our clock's offset (seconds).
    pub ntp: Option<(String, Duration, f64)>,
    /// Whether NTP was asked at all.
    pub ntp_checked: bool,
    /// The router's test mapping, if one of the protocols answered.
    pub port_mapping: Option<portmap::Check>,
    /// Whether port mapping was tried (not with `--no-portmap`, nor on loopback).
    pub port_mapping_checked: bool,
    /// Each `--relay`'s allocation, or why none ([`crate::relay::check`]).
    pub relays: Vec<crate::relay::RelayCheck>,
    /// The UDP socket buffers a transfer's socket gets, if the system tells.
    pub udp_buffers: Option<Buffers>,
}

impl Findings {
    /// The protocol of a test mapping p2pcopy would use: one whose external address is the
    /// public address STUN saw. Another address means a second NAT in front of the router
    /// (carrier-grade NAT, or a modem that routes too), so the forward does not reach the
    /// internet.
    pub fn usable_port_mapping(&self) -> Option<portmap::Protocol> {
        let check = self.port_mapping?;
        let public = IpAddr::V4(*check.mapping.external.ip());
        self.servers
            .iter()
            .any(|s| s.mapped.is_some_and(|m| m.ip() == public))
            .then_some(check.mapping.protocol)
    }
}

/// Runs every check from a socket bound like a transfer's.
pub async fn run(
    bind: IpAddr,
    port: u16,
    stun_servers: &[String],
    ntp_servers: Option<&[String]>,
    port_mapping: bool,
) -> Result<Findings, Error> {
    let std_sock = crate::net::bind(bind, port)?;
    let udp_buffers = Buffers::of(&std_sock);
    let sock = UdpSocket::from_std(std_sock).map_err(|e| Error::Internal(e.to_string()))?;
    let local = sock
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let host_ips = crate::net::host_ips(local.ip());
    let ntp_task = ntp_servers.map(spawn_ntp);

    // Beside the STUN tests: a router that does not answer costs its timeout only once.
    let port_mapping_checked = port_mapping && portmap::worth_trying(local.ip());
    let portmap_task = port_mapping_checked.then(|| tokio::spawn(portmap::check(local)));

    let servers = ask_servers(&sock, stun_servers).await;
    let NatBehaviour {
        nat,
        filtering,
        mapped,
    } = nat_behaviour(&sock, local, &host_ips, &servers).await;

    let hairpin = match mapped.first() {
        Some(public) if nat != NatKind::None => Some(hairpins(&sock, *public).await),
        _ => None,
    };
    let answered = servers
        .iter()
        .find(|s| s.mapped.is_some())
        .and_then(|s| s.addr);
    let nat_hops = match answered {
        Some(server) if nat != NatKind::None => crate::hops::trace(local.ip(), server).await,
        _ => Vec::new(),
    };

    let ntp = match ntp_task {
        Some(t) => t.await.ok().flatten(),
        None => None,
    };
    let port_mapping = match portmap_task {
        Some(t) => t.await.ok().flatten(),
        None => None,
    };
    Ok(Findings {
        local,
        host_ips,
        ipv6: crate::net::host_ips_v6(),
        servers,
        nat,
        filtering,
        hairpin,
        nat_hops,
        ntp,
        ntp_checked: ntp_servers.is_some(),
        port_mapping,
        port_mapping_checked,
        relays: Vec::new(),
        udp_buffers,
    })
}

/// The NTP check, in its own task so that it runs beside the STUN tests.
fn spawn_ntp(servers: &[String]) -> tokio::task::JoinHandle<Option<(String, Duration, f64)>> {
    let servers = servers.to_vec();
    tokio::spawn(async move {
        let t0 = Instant::now();
        crate::ntp::query(&servers)
            .await
            .map(|(server, clock)| (server, t0.elapsed(), clock.offset_secs))
    })
}

/// RFC 5780 test I towards each server in turn: its address, round trip, our mapped
/// address and its alternate address.
async fn ask_servers(sock: &UdpSocket, stun_servers: &[String]) -> Vec<ServerCheck> {
    let mut servers = Vec::new();
    for name in stun_servers {
        let addr = resolve(name).await;
        let mut check = ServerCheck {
            name: name.clone(),
            addr,
            rtt: None,
            mapped: None,
            other: None,
        };
        if let Some(addr) = addr {
            if let Some((r, rtt)) = ask(sock, addr, false, false).await {
                check.rtt = Some(rtt);
                check.mapped = Some(r.mapped);
                check.other = r.other_address.filter(SocketAddr::is_ipv4);
            }
        }
        servers.push(check);
    }
    servers
}

/// What the NAT does, from [`nat_behaviour`].
struct NatBehaviour {
    /// Mapping behaviour.
    nat: NatKind,
    /// Filtering behaviour, when an RFC 5780 server allowed testing it.
    filtering: Option<Filtering>,
    /// Every address we were seen as; the first is what the hairpin test sends to.
    mapped: Vec<SocketAddr>,
}

/// The NAT's mapping and filtering behaviour from the servers' answers and, when one of
/// them has an alternate address, RFC 5780 tests II and III.
async fn nat_behaviour(
    sock: &UdpSocket,
    local: SocketAddr,
    host_ips: &[IpAddr],
    servers: &[ServerCheck],
) -> NatBehaviour {
    let mut mapped: Vec<SocketAddr> = servers.iter().filter_map(|s| s.mapped).collect();
    // An RFC 5780 server's alternate address is a second destination for the mapping test
    // even when only one server was given.
    let rfc5780 = servers
        .iter()
        .find_map(|s| Some((s.addr?, s.other?)))
        .filter(|_| !mapped.is_empty());
    // Filtering first: once we have sent to the alternate address ourselves (the mapping
    // test below), the NAT lets its answers in, and a port-restricted cone NAT would pass
    // for full cone (the lab's doctor scenario caught exactly that).
    let behind_nat = crate::nat::classify(local.port(), host_ips, &mapped) != NatKind::None;
    let filtering = match rfc5780 {
        Some((primary, _)) if behind_nat => {
            if ask(sock, primary, true, true).await.is_some() {
                Some(Filtering::EndpointIndependent)
            } else if ask(sock, primary, false, true).await.is_some() {
                Some(Filtering::AddressDependent)
            } else {
                Some(Filtering::AddressAndPortDependent)
            }
        }
        _ => None,
    };
    // The mapping test goes to the alternate IP on the primary port (RFC 5780 test II),
    // never to the alternate port: the filtering test's answers came from there, and on
    // Linux an inbound packet the NAT dropped makes it map our next packet to that
    // address to a new port, so a cone NAT would look symmetric.
    if let Some((primary, other)) = rfc5780 {
        let dest = SocketAddr::new(other.ip(), primary.port());
        if let Some((r, _)) = ask(sock, dest, false, false).await {
            mapped.push(r.mapped);
        }
    }
    let nat = crate::nat::classify(local.port(), host_ips, &mapped);
    NatBehaviour {
        nat,
        filtering,
        mapped,
    }
}

async fn resolve(name: &str) -> Option<SocketAddr> {
    let found = crate::stun::resolve_v4(name, TEST_TIMEOUT).await;
    found.first().copied()
}

/// One Binding request (with CHANGE-REQUEST flags), repeated until answered or timed out.
/// Answers are matched by transaction id, from whatever address they come.
async fn ask(
    sock: &UdpSocket,
    server: SocketAddr,
    change_ip: bool,
    change_port: bool,
) -> Option<(BindingResponse, Duration)> {
    let transaction: [u8; 12] = rand::random();
    let request = encode_request(transaction, change_ip, change_port);
    let start = Instant::now();
    let deadline = start + TEST_TIMEOUT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let _ = sock.send_to(&request, server).await;
        let wait = (deadline - Instant::now()).min(RETRY);
        let until = Instant::now() + wait;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(until.into(), sock.recv_from(&mut buf)).await
        {
            match decode_response(&buf[..n]) {
                Some(r) if r.transaction == transaction => {
                    tracing::debug!(%server, %from, change_ip, change_port, mapped = %r.mapped, "STUN answer");
                    return Some((r, start.elapsed()));
                }
                _ => {}
            }
        }
    }
    tracing::debug!(%server, change_ip, change_port, "no STUN answer");
    None
}

/// Sends a datagram to our own public address and waits for it to come back.
async fn hairpins(sock: &UdpSocket, public: SocketAddr) -> bool {
    let token: [u8; 16] = rand::random();
    let mut datagram = b"\0p2pcopy-hairpin".to_vec();
    datagram.extend_from_slice(&token);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        let _ = sock.send_to(&datagram, public).await;
        let until = (Instant::now() + Duration::from_millis(300)).min(deadline);
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(until.into(), sock.recv_from(&mut buf)).await
        {
            if buf[..n] == datagram[..] {
                return true;
            }
        }
    }
    false
}

/// What kinds of peer this machine can reach directly, in one line; `port_mapping` is the
/// protocol of a [usable](Findings::usable_port_mapping) router mapping.
pub fn verdict(
    nat: NatKind,
    filtering: Option<Filtering>,
    udp_works: bool,
    port_mapping: Option<portmap::Protocol>,
) -> String {
    if !udp_works {
        return "no STUN server answered: UDP to the internet looks blocked here, so p2pcopy cannot connect beyond this network (try another network, or check the firewall)".into();
    }
    // A forwarded port accepts packets from anywhere: every peer can reach it, as with a
    // full-cone NAT, whatever the mapping behaviour.
    if let Some(protocol) = port_mapping.filter(|_| nat != NatKind::None) {
        let kind = match (nat, filtering) {
            (NatKind::EndpointIndependent, Some(Filtering::EndpointIndependent)) => "full-cone NAT",
            (NatKind::EndpointIndependent, _) => "cone NAT",
            (NatKind::EndpointDependent, _) => "symmetric NAT",
            _ => "NAT of unknown kind",
        };
        return format!(
            "{kind} with port mapping ({protocol}): your router forwards a port to p2pcopy on request, so you can reach peers behind any NAT"
        );
    }
    match (nat, filtering) {
        (NatKind::None, _) => {
            "no NAT: any peer can reach you, whatever its NAT (unless a firewall blocks inbound UDP)".into()
        }
        (NatKind::EndpointIndependent, Some(Filtering::EndpointIndependent)) => {
            "full-cone NAT: you can reach peers behind any NAT, even a symmetric one".into()
        }
        (NatKind::EndpointIndependent, _) => {
            "cone NAT: you can reach peers with no NAT or any NAT (a symmetric one by guessing its ports, about 99.999 % per round)".into()
        }
        (NatKind::EndpointDependent, _) => {
            "symmetric NAT: you can reach peers with no NAT or a cone NAT (by guessing ports, about 99.999 % per round), not another symmetric NAT; forward a UDP port on your router and use it as --localport to reach everyone".into()
        }
        (NatKind::Unknown, _) => {
            "only one STUN server answered, so the NAT's kind is unknown: give a second --stun-server to tell".into()
        }
    }
}

/// The verdict with what the relays add: through a relay every peer is reachable, whatever
/// both NATs (and even with UDP blocked here, over `turns:`).
pub fn with_relays(verdict: String, relays: &[crate::relay::RelayCheck]) -> String {
    match relays.iter().find(|r| r.result.is_ok()) {
        Some(r) => format!("{verdict}; with your relay ({}): any peer", r.uri),
        None if !relays.is_empty() => format!("{verdict}; your relay cannot be used (see above)"),
        None => verdict,
    }
}

/// The "Port mapping" line of the report, after the colon.
fn port_mapping_line(f: &Findings) -> String {
    let Some(check) = f.port_mapping else {
        return if f.port_mapping_checked {
            "no router answered (PCP, NAT-PMP or UPnP); a port forwarded by hand works too".into()
        } else {
            "not checked".into()
        };
    };
    let m = check.mapping;
    let mut line = format!("{} forwards {} to {}", m.protocol, m.external, m.internal);
    if f.usable_port_mapping().is_none() {
        line.push_str(", but that is not your public address (another NAT is in front of your router), so p2pcopy cannot use it");
    }
    line.push_str(if check.removed {
        "; test mapping removed"
    } else {
        "; could not remove the test mapping (it expires within minutes)"
    });
    line
}

/// The report a user reads, one line per entry: the names in it come from the command line
/// and are escaped where the lines are printed (the CLI's writer), so a
/// line break in one cannot start a line of its own.
pub fn render(f: &Findings) -> Vec<String> {
    let mut out = Vec::new();
    let ips: Vec<String> = f.host_ips.iter().map(ToString::to_string).collect();
    out.push(format!(
        "Local addresses: {} (UDP port {})",
        if ips.is_empty() {
            "none".into()
        } else {
            ips.join(", ")
        },
        f.local.port()
    ));
    out.extend(f.servers.iter().map(server_line));
    out.extend(nat_lines(f));
    out.extend(hops_line(&f.nat_hops));
    out.push(if f.ipv6.is_empty() {
        "IPv6: no global address".to_owned()
    } else {
        let ips: Vec<String> = f.ipv6.iter().map(ToString::to_string).collect();
        format!(
            "IPv6: {} (no NAT: a peer with IPv6 reaches you whatever your IPv4 NAT, punching through a firewall)",
            ips.join(", ")
        )
    });
    out.push(ntp_line(f));
    out.push(format!(
        "Port mapping (UPnP, NAT-PMP, PCP): {}",
        port_mapping_line(f)
    ));
    out.push(buffers_line(f.udp_buffers));
    for r in &f.relays {
        out.push(format!("Relay {}", r.line()));
    }
    let udp = f.servers.iter().any(|s| s.mapped.is_some());
    out.push(format!(
        "Verdict: {}",
        with_relays(
            verdict(f.nat, f.filtering, udp, f.usable_port_mapping()),
            &f.relays
        )
    ));
    out
}

/// The socket buffers' line: a capped receive buffer is where fast LAN transfers lose
/// packets, and only the administrator can raise the cap.
fn buffers_line(b: Option<Buffers>) -> String {
    let Some(b) = b else {
        return "UDP buffers: unknown".into();
    };
    let sizes = format!(
        "{} receive, {} send",
        binary_size(b.receive),
        binary_size(b.send)
    );
    if !b.capped() {
        return format!("UDP buffers: {sizes}");
    }
    let raise = if cfg!(target_os = "linux") {
        format!(
            "; raise the cap with `sudo sysctl -w net.core.rmem_max={SOCKET_BUFFER} net.core.wmem_max={SOCKET_BUFFER}`"
        )
    } else {
        String::new()
    };
    format!(
        "UDP buffers: {sizes} of {} asked (the system's cap): above ~1 Gbit/s a busy receiver loses packets{raise}",
        binary_size(SOCKET_BUFFER)
    )
}

/// `n` bytes in KiB or MiB, whichever reads better.
fn binary_size(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n.div_ceil(1 << 10))
    }
}

/// One STUN server's line of the report.
fn server_line(s: &ServerCheck) -> String {
    match (s.addr, s.mapped) {
        (None, _) => format!("STUN {}: does not resolve", s.name),
        (Some(a), None) => format!("STUN {} ({a}): no answer", s.name),
        (Some(a), Some(m)) => format!(
            "STUN {} ({a}): {} ms, you appear as {m}{}",
            s.name,
            s.rtt.unwrap_or_default().as_millis(),
            s.other
                .map(|o| format!(" (RFC 5780: other address {o})"))
                .unwrap_or_default()
        ),
    }
}

/// The NAT's behaviour: its mapping, filtering and hairpinning lines.
fn nat_lines(f: &Findings) -> [String; 3] {
    let mapping = match f.nat {
        NatKind::None => "none (your address is public)",
        NatKind::EndpointIndependent => {
            "endpoint-independent: one public port for every destination"
        }
        NatKind::EndpointDependent => {
            "endpoint-dependent (symmetric): a new public port for every destination"
        }
        NatKind::Unknown => "unknown (needs two STUN answers)",
    };
    let filtering = match f.filtering {
        Some(Filtering::EndpointIndependent) => "endpoint-independent (full cone): anyone may answer",
        Some(Filtering::AddressDependent) => "address-dependent (restricted cone): only hosts you sent to",
        Some(Filtering::AddressAndPortDependent) => {
            "address-and-port-dependent (port-restricted): only the exact address and port you sent to"
        }
        None if f.nat == NatKind::None => "none (no NAT)",
        None => "not tested (needs a STUN server with RFC 5780, e.g. `p2pcopy stun-server --alternate-ip`)",
    };
    let hairpin = match f.hairpin {
        Some(true) => "yes",
        Some(false) => "no (two peers behind this router still connect, over their LAN addresses)",
        None => "not applicable",
    };
    [
        format!("Mapping: {mapping}"),
        format!("Filtering: {filtering}"),
        format!("Hairpinning: {hairpin}"),
    ]
}

/// The routers up to the first one outside our NATs, when they were measured.
fn hops_line(nat_hops: &[Option<std::net::Ipv4Addr>]) -> Option<String> {
    if nat_hops.is_empty() {
        return None;
    }
    let routers: Vec<String> = nat_hops
        .iter()
        .map(|h| h.map_or_else(|| "(silent)".to_owned(), |ip| ip.to_string()))
        .collect();
    let ttl = crate::hops::opener_ttl_for(nat_hops);
    Some(format!(
        "Routers on the way out: {} (openers use TTL {ttl}{})",
        routers.join(", "),
        if ttl > crate::punch::DEFAULT_OPENER_TTL {
            ": more than one NAT, e.g. a carrier-grade NAT"
        } else {
            ""
        }
    ))
}

/// The NTP line of the report.
fn ntp_line(f: &Findings) -> String {
    match &f.ntp {
        Some((server, rtt, offset)) => format!(
            "NTP: {server} answered in {} ms; this clock is {:.3} s {}",
            rtt.as_millis(),
            offset.abs(),
            if *offset > 0.0 { "slow" } else { "fast" }
        ),
        None if !f.ntp_checked => "NTP: not checked".to_owned(),
        None => {
            "NTP: no answer (p2pcopy then trusts this clock; rounds may miss if it is off by seconds)"
                .to_owned()
        }
    }
}

impl Findings {
    /// The `doctor` event of these findings, with the same verdict the human report ends
    /// with.
    pub fn event(&self) -> Event {
        let f = self;
        let udp_works = f.servers.iter().any(|s| s.mapped.is_some());
        Event::Doctor {
            local: f.local,
            host_ips: f.host_ips.clone(),
            ipv6: f.ipv6.clone(),
            servers: f
                .servers
                .iter()
                .map(|s| StunCheck {
                    name: s.name.clone(),
                    addr: s.addr,
                    rtt_ms: s.rtt.map(millis),
                    mapped: s.mapped,
                    other: s.other,
                })
                .collect(),
            nat: f.nat,
            filtering: f.filtering,
            hairpin: f.hairpin,
            nat_hops: f.nat_hops.clone(),
            ntp: f.ntp.as_ref().map(|(server, rtt, offset)| NtpCheck {
                server: server.clone(),
                rtt_ms: millis(*rtt),
                offset_s: *offset,
            }),
            ntp_checked: f.ntp_checked,
            port_mapping: f.port_mapping.map(|c| PortMapCheck {
                protocol: c.mapping.protocol,
                external: c.mapping.external.into(),
                usable: f.usable_port_mapping().is_some(),
                removed: c.removed,
            }),
            port_mapping_checked: f.port_mapping_checked,
            relays: f.relays.iter().map(Into::into).collect(),
            udp_buffers: f.udp_buffers.map(|b| BufferCheck {
                receive: b.receive,
                send: b.send,
                asked: SOCKET_BUFFER,
            }),
            verdict: with_relays(
                verdict(f.nat, f.filtering, udp_works, f.usable_port_mapping()),
                &f.relays,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::{addr, check};
    use crate::portmap::Protocol;

    fn text_of(f: &Findings) -> String {
        render(f).join("\n")
    }

    #[test]
    fn verdicts_name_what_can_be_reached() {
        assert!(verdict(NatKind::None, None, true, None).contains("any peer"));
        assert!(verdict(
            NatKind::EndpointIndependent,
            Some(Filtering::EndpointIndependent),
            true,
            None
        )
        .contains("even a symmetric"));
        for f in [
            None,
            Some(Filtering::AddressDependent),
            Some(Filtering::AddressAndPortDependent),
        ] {
            assert!(verdict(NatKind::EndpointIndependent, f, true, None).starts_with("cone NAT"));
        }
        assert!(verdict(NatKind::EndpointDependent, None, true, None).starts_with("symmetric"));
        assert!(verdict(NatKind::EndpointDependent, None, false, None).contains("blocked"));
        assert!(verdict(NatKind::Unknown, None, true, None).contains("second --stun-server"));
        // A router that forwards a port makes every peer reachable.
        let pcp = Some(portmap::Protocol::Pcp);
        let v = verdict(NatKind::EndpointDependent, None, true, pcp);
        assert!(
            v.starts_with("symmetric NAT with port mapping (PCP)"),
            "{v}"
        );
        assert!(v.contains("any NAT"), "{v}");
        assert!(verdict(
            NatKind::EndpointIndependent,
            None,
            true,
            Some(portmap::Protocol::Upnp)
        )
        .starts_with("cone NAT with port mapping (UPnP)"));
        // Without a NAT or without UDP, a mapping changes nothing.
        assert!(verdict(NatKind::None, None, true, pcp).starts_with("no NAT"));
        assert!(verdict(NatKind::EndpointDependent, None, false, pcp).contains("blocked"));
    }

    fn findings(mapped: &str, external: &str, removed: bool) -> Findings {
        let mapping = portmap::Mapping {
            protocol: portmap::Protocol::NatPmp,
            external: external.parse().unwrap(),
            internal: "10.1.0.2:4300".parse().unwrap(),
            lease: portmap::TEST_LEASE,
        };
        Findings {
            local: "0.0.0.0:4300".parse().unwrap(),
            host_ips: vec!["10.1.0.2".parse().unwrap()],
            ipv6: vec![],
            servers: vec![ServerCheck {
                name: "stun".into(),
                addr: Some("192.0.2.1:3478".parse().unwrap()),
                rtt: Some(Duration::from_millis(5)),
                mapped: Some(mapped.parse().unwrap()),
                other: None,
            }],
            nat: NatKind::EndpointDependent,
            filtering: None,
            hairpin: Some(false),
            nat_hops: vec![],
            ntp: None,
            ntp_checked: false,
            port_mapping: Some(portmap::Check { mapping, removed }),
            port_mapping_checked: true,
            relays: vec![],
            udp_buffers: Some(Buffers {
                receive: SOCKET_BUFFER,
                send: SOCKET_BUFFER,
            }),
        }
    }

    #[test]
    fn capped_socket_buffers_are_named_with_the_fix() {
        let mut f = findings("198.51.100.7:40001", "198.51.100.7:4300", true);
        assert!(text_of(&f).contains("UDP buffers: 4 MiB receive, 4 MiB send\n"));
        f.udp_buffers = Some(Buffers {
            receive: 212_992,
            send: 4 << 20,
        });
        let text = text_of(&f);
        assert!(
            text.contains(
                "UDP buffers: 208 KiB receive, 4 MiB send of 4 MiB asked (the system's cap)"
            ),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        assert!(
            text.contains("sudo sysctl -w net.core.rmem_max=4194304 net.core.wmem_max=4194304"),
            "{text}"
        );
        f.udp_buffers = None;
        assert!(text_of(&f).contains("UDP buffers: unknown"));
    }

    #[test]
    fn a_name_with_a_line_break_stays_on_its_line_and_is_escaped_when_printed() {
        let mut f = findings("198.51.100.7:40001", "198.51.100.7:4300", true);
        f.servers[0].name = "evil\nVerdict: fake\x1b[2J".into();
        f.ntp = Some(("ntp\x1b]0;x\x07".into(), Duration::from_millis(3), 0.5));
        let lines = render(&f);
        assert_eq!(
            lines.len(),
            render(&findings("198.51.100.7:40001", "198.51.100.7:4300", true)).len()
        );
        let shown: Vec<String> = lines
            .iter()
            .map(|l| crate::shown::shown(l).to_string())
            .collect();
        assert!(
            shown.contains(&r"STUN evil\nVerdict: fake\e[2J (192.0.2.1:3478): 5 ms, you appear as 198.51.100.7:40001".to_owned()),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|l| l.starts_with(r"NTP: ntp\e]0;x\a answered in 3 ms")),
            "{shown:#?}"
        );
    }

    #[test]
    fn nats_on_the_way_out_are_listed() {
        let mut f = findings("198.51.100.7:40001", "198.51.100.7:4300", true);
        assert!(!text_of(&f).contains("Routers on the way out"));
        f.nat_hops = vec![
            Some("10.1.0.1".parse().unwrap()),
            Some("100.64.1.1".parse().unwrap()),
            None,
        ];
        assert!(text_of(&f).contains(
            "Routers on the way out: 10.1.0.1, 100.64.1.1, (silent) (openers use TTL 3: more than one NAT"
        ));
    }

    #[test]
    fn port_mapping_is_reported_and_judged() {
        let f = findings("198.51.100.7:40001", "198.51.100.7:4300", true);
        assert_eq!(f.usable_port_mapping(), Some(portmap::Protocol::NatPmp));
        let text = text_of(&f);
        assert!(
            text.contains("Port mapping (UPnP, NAT-PMP, PCP): NAT-PMP forwards 198.51.100.7:4300 to 10.1.0.2:4300; test mapping removed"),
            "{text}"
        );
        assert!(
            text.contains("Verdict: symmetric NAT with port mapping (NAT-PMP)"),
            "{text}"
        );
        // Behind a second NAT the router's external address is not the public one.
        let f = findings("198.51.100.7:40001", "100.64.0.9:4300", false);
        assert_eq!(f.usable_port_mapping(), None);
        let text = text_of(&f);
        assert!(
            text.contains("another NAT is in front of your router"),
            "{text}"
        );
        assert!(text.contains("could not remove the test mapping"), "{text}");
        assert!(text.contains("Verdict: symmetric NAT: "), "{text}");
        // Nothing answered, or not asked.
        let none = Findings {
            port_mapping: None,
            ..f.clone()
        };
        assert!(text_of(&none).contains("PCP): no router answered"));
        let unasked = Findings {
            port_mapping_checked: false,
            ..none
        };
        assert!(text_of(&unasked).contains("PCP): not checked"));
    }

    #[tokio::test]
    async fn against_our_own_rfc5780_server_on_loopback() {
        // 127.0.0.1 and 127.0.0.2 are both loopback: a real RFC 5780 server with an
        // alternate address, all on this machine.
        let server = crate::stun::server::Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.2".parse().unwrap()),
        )
        .await
        .unwrap();
        let addr = server.local_addrs()[0];
        let task = tokio::spawn(server.run());
        let f = run(
            "127.0.0.1".parse().unwrap(),
            0,
            &[addr.to_string(), "no-such-host.invalid:3478".into()],
            None,
            // Bound to loopback: never asked, whatever the flag says.
            true,
        )
        .await
        .unwrap();
        task.abort();
        assert_eq!(f.servers[0].mapped, Some(f.local));
        assert_eq!(
            f.servers[0].other.map(|o| o.ip()),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(f.servers[1].addr, None);
        // Our own address came back: no NAT, so filtering and hairpinning are not asked.
        assert_eq!(f.nat, NatKind::None);
        assert_eq!(f.filtering, None);
        assert!(!f.port_mapping_checked);
        let text = text_of(&f);
        assert!(text.contains("Verdict: no NAT"), "{text}");
        assert!(
            text.contains("RFC 5780: other address 127.0.0.2:"),
            "{text}"
        );
        assert!(text.contains("does not resolve"), "{text}");
    }

    #[test]
    fn doctor_event() {
        let f = Findings {
            local: addr("0.0.0.0:4300"),
            host_ips: vec!["192.168.1.20".parse().unwrap()],
            ipv6: vec!["2001:db8::20".parse().unwrap()],
            servers: vec![
                ServerCheck {
                    name: "stun.example:3478".into(),
                    addr: Some(addr("192.0.2.1:3478")),
                    rtt: Some(Duration::from_micros(21_700)),
                    mapped: Some(addr("198.51.100.7:4300")),
                    other: None,
                },
                ServerCheck {
                    name: "gone.invalid:3478".into(),
                    addr: None,
                    rtt: None,
                    mapped: None,
                    other: None,
                },
            ],
            nat: NatKind::EndpointIndependent,
            filtering: Some(Filtering::AddressAndPortDependent),
            hairpin: Some(false),
            nat_hops: vec![Some("192.168.1.1".parse().unwrap()), None],
            ntp: Some(("pool.ntp.org".into(), Duration::from_millis(31), -0.012)),
            ntp_checked: true,
            port_mapping: Some(crate::portmap::Check {
                mapping: crate::portmap::Mapping {
                    protocol: Protocol::Upnp,
                    external: "198.51.100.7:4300".parse().unwrap(),
                    internal: "192.168.1.20:4300".parse().unwrap(),
                    lease: Duration::from_secs(120),
                },
                removed: true,
            }),
            port_mapping_checked: true,
            relays: vec![],
            udp_buffers: Some(Buffers {
                receive: 212_992,
                send: 212_992,
            }),
        };
        let keys = [
            ("local", "string"),
            ("host_ips", "array"),
            ("ipv6", "array"),
            ("servers", "array"),
            ("nat", "string"),
            ("filtering", "string"),
            ("hairpin", "bool"),
            ("nat_hops", "array"),
            ("ntp", "object"),
            ("ntp_checked", "bool"),
            ("port_mapping", "object"),
            ("port_mapping_checked", "bool"),
            ("relays", "array"),
            ("udp_buffers", "object"),
            ("verdict", "string"),
        ];
        let v = check(f.event(), "doctor", &keys);
        assert_eq!(
            v["udp_buffers"],
            serde_json::json!({"receive": 212_992, "send": 212_992, "asked": 4_194_304})
        );
        assert_eq!(v["host_ips"], serde_json::json!(["192.168.1.20"]));
        assert_eq!(v["ipv6"], serde_json::json!(["2001:db8::20"]));
        assert_eq!(
            v["servers"],
            serde_json::json!([
                {"name": "stun.example:3478", "addr": "192.0.2.1:3478", "rtt_ms": 21,
                 "mapped": "198.51.100.7:4300", "other": null},
                {"name": "gone.invalid:3478", "addr": null, "rtt_ms": null,
                 "mapped": null, "other": null},
            ])
        );
        assert_eq!(v["filtering"], "address_and_port_dependent");
        assert_eq!(v["nat_hops"], serde_json::json!(["192.168.1.1", null]));
        assert_eq!(
            v["ntp"],
            serde_json::json!({"server": "pool.ntp.org", "rtt_ms": 31, "offset_s": -0.012})
        );
        assert_eq!(
            v["port_mapping"],
            serde_json::json!({"protocol": "upnp", "external": "198.51.100.7:4300",
                               "usable": true, "removed": true})
        );
        assert!(v["verdict"]
            .as_str()
            .unwrap()
            .starts_with("cone NAT with port mapping (UPnP)"));
        // Nothing answered: null.
        let v = check(
            Findings {
                port_mapping: None,
                ..f
            }
            .event(),
            "doctor",
            &[keys.as_slice(), &[("port_mapping", "null")]].concat(),
        );
        assert!(v["verdict"].as_str().unwrap().starts_with("cone NAT:"));
    }

    #[test]
    fn relays_are_reported_and_counted_in_the_verdict() {
        use crate::relay::{AllocationInfo, RelayCheck, RelayError, Transport};
        let ok = RelayCheck {
            uri: "turns:relay.example:443".parse().unwrap(),
            result: Ok(AllocationInfo {
                server: addr("192.0.2.5:443"),
                transport: Transport::Tls,
                relayed: addr("192.0.2.5:50123"),
                mapped: Some(addr("198.51.100.7:40001")),
                rtt: Duration::from_millis(12),
                lifetime: Duration::from_secs(600),
            }),
        };
        let refused = RelayCheck {
            uri: "turn:relay.example".parse().unwrap(),
            result: Err(RelayError::Refused {
                code: 401,
                reason: "Unauthorized".into(),
            }),
        };
        let mut f = findings("198.51.100.7:40001", "198.51.100.7:4300", true);
        f.relays = vec![refused.clone(), ok];
        let text = text_of(&f);
        assert!(
            text.contains("Relay turn:relay.example:3478 (udp): refused with 401 Unauthorized"),
            "{text}"
        );
        assert!(text.contains("Relay turns:relay.example:443 (tls to 192.0.2.5:443): 12 ms, relayed address 192.0.2.5:50123, you appear as 198.51.100.7:40001"), "{text}");
        assert!(
            text.contains("with your relay (turns:relay.example:443): any peer"),
            "{text}"
        );
        let v = check(
            f.event(),
            "doctor",
            &[
                ("local", "string"),
                ("host_ips", "array"),
                ("ipv6", "array"),
                ("servers", "array"),
                ("nat", "string"),
                ("filtering", "null"),
                ("hairpin", "bool"),
                ("nat_hops", "array"),
                ("ntp", "null"),
                ("ntp_checked", "bool"),
                ("port_mapping", "object"),
                ("port_mapping_checked", "bool"),
                ("relays", "array"),
                ("udp_buffers", "object"),
                ("verdict", "string"),
            ],
        );
        assert_eq!(
            v["relays"],
            serde_json::json!([
                {"uri": "turn:relay.example:3478", "transport": "udp", "server": null,
                 "relayed": null, "mapped": null, "rtt_ms": null, "code": 401,
                 "error": "refused with 401 Unauthorized"},
                {"uri": "turns:relay.example:443", "transport": "tls", "server": "192.0.2.5:443",
                 "relayed": "192.0.2.5:50123", "mapped": "198.51.100.7:40001", "rtt_ms": 12,
                 "code": null, "error": null},
            ])
        );
        f.relays = vec![refused];
        assert!(text_of(&f).contains("; your relay cannot be used (see above)"));
    }
}
