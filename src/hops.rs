//! How many NATs stand between this host and the internet, for the openers' TTL.
//!
//! Openers (see [`crate::punch`]) must pass every NAT on our side, so that each one records
//! the flow before the peer's first full probe arrives, and must expire before the peer's
//! NAT. One home NAT needs TTL 2. Behind a carrier-grade NAT too (mobile networks, many
//! ISPs), TTL 2 dies *at* the CGNAT: its filter stays closed, and the peer's first probe
//! makes it move our mapping to another port (measured in the lab: double NAT 0 of 5 with
//! no delay between the NATs). So before punching we send a few datagrams towards a STUN
//! server with TTL 1, 2, 3, … and read who answers "time exceeded" (traceroute over UDP).
//! Routers with private (RFC 1918) or shared (RFC 6598, 100.64.0.0/10) addresses are on
//! the inside of some NAT; the first router with a public address is beyond the last one.
//! [`opener_ttl_for`] turns the answers into a TTL; it is pure and unit-tested.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::punch::DEFAULT_OPENER_TTL;
use crate::sys::{self, IpOption};

/// Hops probed at most; a TTL above this would be guessing.
pub const MAX_HOPS: u32 = 4;
/// How long one hop may take to answer.
const HOP_TIMEOUT: Duration = Duration::from_millis(400);

/// An address that only exists inside some NAT: private, shared (CGNAT) or link-local.
fn inside_a_nat(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b))
}

/// The opener TTL from traceroute answers: `hops[i]` is who answered "time exceeded" to
/// TTL `i + 1` (`None`: nobody, or the probe reached the server).
///
/// Every leading router inside a NAT adds one; the default (one home NAT) is the minimum,
/// so a silent router or a host with no NAT changes nothing.
pub fn opener_ttl_for(hops: &[Option<Ipv4Addr>]) -> u32 {
    let inside = hops
        .iter()
        .take_while(|h| h.is_some_and(inside_a_nat))
        .count() as u32;
    (inside + 1).clamp(DEFAULT_OPENER_TTL, MAX_HOPS)
}

/// Traceroute towards `server` (a STUN server that answered), from a socket of our own.
///
/// Returns the routers that answered, by TTL; empty where this cannot be measured.
pub async fn trace(bind: IpAddr, server: SocketAddr) -> Vec<Option<Ipv4Addr>> {
    match tokio::task::spawn_blocking(move || trace_blocking(bind, server)).await {
        Ok(Ok(hops)) => hops,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot count the NATs on the way out");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// A STUN Binding request (the crate's one STUN codec), so a probe that does reach the
/// server is one it understands.
fn binding_request() -> Vec<u8> {
    crate::stun::message::encode_request(rand::random(), false, false)
}

/// The traceroute itself, blocking; the ICMP errors come from the socket's error queue
/// ([`sys::time_exceeded_from`]), which only Linux has: elsewhere nothing is measured.
fn trace_blocking(bind: IpAddr, server: SocketAddr) -> io::Result<Vec<Option<Ipv4Addr>>> {
    let SocketAddr::V4(_) = server else {
        return Ok(Vec::new());
    };
    let sock = UdpSocket::bind(SocketAddr::new(bind, 0))?;
    sock.connect(server)?;
    sock.set_nonblocking(true)?;
    match sys::set_ip_option(&sock, IpOption::RecvErr, 1) {
        // Reading ICMP errors per socket is Linux's IP_RECVERR; elsewhere the default TTL.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => return Ok(Vec::new()),
        r => r?,
    }
    let mut hops = Vec::new();
    let mut buf = [0u8; 1500];
    for ttl in 1..=MAX_HOPS {
        sys::set_ip_option(&sock, IpOption::Ttl, ttl)?;
        // With IP_RECVERR a queued error may fail the send; it is read below.
        let _ = sock.send(&binding_request());
        let start = Instant::now();
        let answer = loop {
            match sys::time_exceeded_from(&sock) {
                Ok(Some(router)) => break Some(Some(router)),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // The server itself answered: nothing further to count.
            if sock.recv(&mut buf).is_ok() {
                break None;
            }
            if start.elapsed() > HOP_TIMEOUT {
                break Some(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match answer {
            // Beyond the first public router there is no NAT of ours left to count,
            // and a silent one hides what lies beyond it.
            Some(Some(router)) if inside_a_nat(router) => hops.push(Some(router)),
            Some(hop) => {
                hops.push(hop);
                break;
            }
            None => break,
        }
    }
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<Ipv4Addr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn ttl_passes_every_nat_on_our_side() {
        // One home NAT, then the ISP.
        assert_eq!(opener_ttl_for(&[ip("192.168.1.1"), ip("198.51.100.1")]), 2);
        // Home NAT behind a carrier-grade NAT.
        assert_eq!(
            opener_ttl_for(&[ip("10.1.0.1"), ip("100.64.1.1"), ip("198.18.1.1")]),
            3
        );
        // No NAT, nothing measured, a silent first router: the default.
        assert_eq!(opener_ttl_for(&[ip("198.51.100.1")]), DEFAULT_OPENER_TTL);
        assert_eq!(opener_ttl_for(&[]), DEFAULT_OPENER_TTL);
        assert_eq!(
            opener_ttl_for(&[None, ip("100.64.0.1")]),
            DEFAULT_OPENER_TTL
        );
        // Never more than MAX_HOPS, however private the ISP's backbone.
        assert_eq!(opener_ttl_for(&[ip("10.0.0.1"); 4]), MAX_HOPS);
        // 100.64.0.0/10 ends at 100.127.255.255.
        assert_eq!(opener_ttl_for(&[ip("10.0.0.1"), ip("100.128.0.1")]), 2);
    }

    #[tokio::test]
    async fn loopback_has_no_routers() {
        // Reaches the "server" at once (nothing listens: no answer, no router either).
        let hops = trace(IpAddr::from([127, 0, 0, 1]), "127.0.0.1:9".parse().unwrap()).await;
        assert!(hops.iter().all(Option::is_none), "{hops:?}");
    }
}
