//! The run's sockets and the host's own addresses: binding with the options a fast path
//! needs, and the interface addresses that become host candidates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::Error;
use crate::ticket::Ticket;

/// Socket buffer size asked for; fast paths drop packets in the receive buffer otherwise.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// What the kernel granted of the [`SOCKET_BUFFER`]s asked for, in bytes.
///
/// Linux caps both at `net.core.rmem_max`/`wmem_max`, which most distributions leave at
/// 208 KiB: then a receiver that is late by a millisecond at a few Gbit/s loses packets in
/// its socket (15-31 % of them on loopback at 2-5 Gbit/s: bench/RESULTS.md, "UDP buffers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffers {
    /// The receive buffer.
    pub receive: usize,
    /// The send buffer.
    pub send: usize,
}

impl Buffers {
    /// The buffers `sock` has.
    pub fn of(sock: &std::net::UdpSocket) -> Option<Buffers> {
        let sock = socket2::SockRef::from(sock);
        let (receive, send) = (sock.recv_buffer_size().ok()?, sock.send_buffer_size().ok()?);
        // Linux reports twice what was asked (the other half is its bookkeeping).
        let k = if cfg!(target_os = "linux") { 2 } else { 1 };
        Some(Buffers {
            receive: receive / k,
            send: send / k,
        })
    }

    /// Whether the system gave less than asked.
    pub fn capped(&self) -> bool {
        self.receive < SOCKET_BUFFER || self.send < SOCKET_BUFFER
    }
}

/// Binds the one UDP socket of a run.
pub fn bind(ip: IpAddr, port: u16) -> Result<std::net::UdpSocket, Error> {
    let err = |source| Error::Bind { port, source };
    let addr = SocketAddr::new(ip, port);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(err)?;
    if addr.is_ipv6() {
        // The IPv4 socket may hold the same port number; a dual-stack socket would clash.
        sock.set_only_v6(true).map_err(err)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into()).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    Ok(sock.into())
}

/// Logs (once per run: the run's main socket) when the system gave `sock` less buffer than
/// asked. Not in [`bind`], which also opens the lanes and up to hundreds of birthday sockets.
pub fn log_capped_buffers(sock: &std::net::UdpSocket) {
    if let Some(b) = Buffers::of(sock).filter(Buffers::capped) {
        tracing::info!(
            receive = b.receive,
            send = b.send,
            asked = SOCKET_BUFFER,
            "the system caps UDP socket buffers (net.core.rmem_max, wmem_max): fast paths may lose packets at the receiver; `p2pcopy doctor` says how to raise them"
        );
    }
}

/// The host's own addresses that a peer on the same network could reach us at.
pub fn host_ips(bound: IpAddr) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            // IPv6 candidates come with dual-stack sockets; this socket is IPv4.
            IpAddr::V6(_) => false,
        })
        .collect();
    ips.dedup();
    ips
}

/// Whether one of the peer's own (LAN) addresses lies in the network of one of our
/// interfaces, so that a direct path exists whatever the NATs do. A bare ticket cannot tell.
pub fn shares_a_network(peer: &Ticket) -> bool {
    let Ticket::Full(_) = peer else {
        return true;
    };
    crate::punch::on_our_networks(peer, &interface_networks())
}

/// Our IPv4 interfaces but loopback, each as its address and netmask.
fn interface_networks() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) if !a.ip.is_loopback() => Some((a.ip, a.netmask)),
            _ => None,
        })
        .collect()
}

/// The host's global IPv6 addresses (at most a few: temporary addresses multiply them).
///
/// No NAT stands in front of these, only (usually) a stateful firewall, which punching
/// opens like a cone NAT, so they become candidates as they are.
pub fn host_ips_v6() -> Vec<Ipv6Addr> {
    let mut ips: Vec<Ipv6Addr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.ip() {
            // 2000::/3: global unicast; link-local, unique-local and the rest do not cross.
            IpAddr::V6(v6) if v6.segments()[0] & 0xe000 == 0x2000 => Some(v6),
            _ => None,
        })
        .collect();
    ips.dedup();
    ips.truncate(2);
    ips
}
