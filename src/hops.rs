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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::punch::DEFAULT_OPENER_TTL;

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
    match tokio::task::spawn_blocking(move || imp::trace(bind, server)).await {
        Ok(Ok(hops)) => hops,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot count the NATs on the way out");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    use super::{HOP_TIMEOUT, MAX_HOPS};

    /// A STUN Binding request, so a probe that does reach the server is one it understands.
    fn binding_request() -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
        b[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
        b[8..20].copy_from_slice(&rand::random::<[u8; 12]>());
        b
    }

    fn set_int(
        sock: &UdpSocket,
        level: libc::c_int,
        name: libc::c_int,
        v: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: a plain setsockopt with a pointer to a local int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// One entry of the socket's error queue: who sent an ICMP "time exceeded", if that is
    /// what it was.
    fn read_error_queue(sock: &UdpSocket) -> io::Result<Option<Ipv4Addr>> {
        let mut data = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // u64 words keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 64];
        // SAFETY: msghdr points at live local buffers of the stated sizes; the kernel fills
        // at most msg_controllen bytes, and each cmsg is read within that range.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let rc = libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            );
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                    let ee = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                    let ee_v = std::ptr::read_unaligned(ee);
                    // ICMP type 11: time exceeded in transit.
                    if ee_v.ee_origin == libc::SO_EE_ORIGIN_ICMP && ee_v.ee_type == 11 {
                        let from = libc::SO_EE_OFFENDER(ee) as *const libc::sockaddr_in;
                        let from = std::ptr::read_unaligned(from);
                        if from.sin_family == libc::AF_INET as libc::sa_family_t {
                            return Ok(Some(Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr))));
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Ok(None)
        }
    }

    pub(super) fn trace(bind: IpAddr, server: SocketAddr) -> io::Result<Vec<Option<Ipv4Addr>>> {
        let SocketAddr::V4(_) = server else {
            return Ok(Vec::new());
        };
        let sock = UdpSocket::bind(SocketAddr::new(bind, 0))?;
        sock.connect(server)?;
        sock.set_nonblocking(true)?;
        set_int(&sock, libc::IPPROTO_IP, libc::IP_RECVERR, 1)?;
        let mut hops = Vec::new();
        let mut buf = [0u8; 1500];
        for ttl in 1..=MAX_HOPS {
            set_int(&sock, libc::IPPROTO_IP, libc::IP_TTL, ttl as libc::c_int)?;
            // With IP_RECVERR a queued error may fail the send; it is read below.
            let _ = sock.send(&binding_request());
            let start = Instant::now();
            let answer = loop {
                match read_error_queue(&sock) {
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
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            match answer {
                // Beyond the first public router there is no NAT of ours left to count,
                // and a silent one hides what lies beyond it.
                Some(Some(router)) if super::inside_a_nat(router) => hops.push(Some(router)),
                Some(hop) => {
                    hops.push(hop);
                    break;
                }
                None => break,
            }
        }
        Ok(hops)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    pub(super) fn trace(_bind: IpAddr, _server: SocketAddr) -> io::Result<Vec<Option<Ipv4Addr>>> {
        // Reading ICMP errors per socket is Linux's IP_RECVERR; elsewhere the default TTL.
        Ok(Vec::new())
    }
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
