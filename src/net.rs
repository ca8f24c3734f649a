//! The async shell around the puncher: one UDP socket shared by hole punching and QUIC.
//!
//! quinn owns the socket through [`DemuxSocket`], which hands every probe datagram to the
//! puncher task and everything else to QUIC, so probes keep flowing while the handshake runs
//! and the NAT mapping that STUN measured is the one QUIC uses.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit as QuinnTransmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use tokio::sync::{mpsc, watch};

use crate::error::Error;
use crate::guard::{self, DropLog, Dropped, SessionTag, Verdict};
use crate::nat::BirthdayPart;
use crate::punch::{
    Birthday, PathKind, PunchConfig, PunchEvent, Puncher, SocketId, Target, Transmit,
    BIRTHDAY_SOCKETS, MAIN_SOCKET, V6_SOCKET,
};
use crate::shown::shown;
use crate::ticket::{CandidateKind, FullTicket, Ticket};

/// Socket buffer size asked for; fast paths drop packets in the receive buffer otherwise.
const SOCKET_BUFFER: usize = 4 << 20;

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
    let Ticket::Full(t) = peer else {
        return true;
    };
    let ours: Vec<(u32, u32)> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) if !a.ip.is_loopback() => {
                Some((u32::from(a.ip), u32::from(a.netmask)))
            }
            _ => None,
        })
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

/// Whether both tickets carry IPv6 addresses, which no NAT stands in front of.
pub fn both_have_ipv6(ours: &FullTicket, peer: &Ticket) -> bool {
    let has = |c: &[crate::ticket::Candidate]| c.iter().any(|c| c.addr.is_ipv6());
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
            CandidateKind::Host
                if mapped.contains(&c.addr) || t.nat == crate::ticket::NatKind::None =>
            {
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
        };
        out.push(Target::new(c.addr, kind));
    }
    out
}

/// One of the sockets quinn reads through the [`DemuxSocket`].
#[derive(Clone)]
struct Slot {
    id: SocketId,
    io: Arc<dyn AsyncUdpSocket>,
}

/// quinn's socket with probes filtered out and forwarded to the puncher.
///
/// Only this session's probes reach the puncher, and only QUIC from addresses the peer's
/// probes came from reaches quinn; the rest is dropped here and counted ([`guard`]), so a
/// flood from someone who read a ticket costs a look at each datagram and nothing more.
///
/// Usually it wraps just the main socket. For the birthday technique it also reads the
/// extra sockets, and QUIC then sends from whichever socket the puncher kept (the
/// "primary"), so the connection uses the NAT mapping that worked.
pub struct DemuxSocket {
    /// Every socket read, the main one first; replaced whole, so a read holds no lock.
    slots: RwLock<Arc<[Slot]>>,
    /// The socket QUIC sends IPv4 from.
    primary: RwLock<Slot>,
    /// The socket QUIC sends IPv6 from, if this host has one.
    v6: RwLock<Option<Slot>>,
    /// Whether QUIC's last send went to an IPv6 address: the writability poller follows it.
    sending_v6: AtomicBool,
    /// quinn's receive task, woken when a socket is added while it waits.
    waker: Mutex<Option<Waker>>,
    /// Where the next read starts, so no socket starves the others.
    next: AtomicUsize,
    probes: mpsc::Sender<(SocketId, SocketAddr, Vec<u8>)>,
    /// What a probe of this session carries.
    tag: SessionTag,
    /// Where the peer's probes came from (as received, IPv4 as IPv4): QUIC from elsewhere
    /// never reaches quinn.
    peers: RwLock<Vec<SocketAddr>>,
    drops: Mutex<DropLog>,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket").finish_non_exhaustive()
    }
}

impl DemuxSocket {
    fn new(
        main: Arc<dyn AsyncUdpSocket>,
        probes: mpsc::Sender<(SocketId, SocketAddr, Vec<u8>)>,
        tag: SessionTag,
    ) -> Self {
        let slot = Slot {
            id: MAIN_SOCKET,
            io: main,
        };
        DemuxSocket {
            slots: RwLock::new(Arc::from(vec![slot.clone()])),
            primary: RwLock::new(slot),
            v6: RwLock::new(None),
            sending_v6: AtomicBool::new(false),
            waker: Mutex::new(None),
            next: AtomicUsize::new(0),
            probes,
            tag,
            peers: RwLock::new(Vec::new()),
            drops: Mutex::new(DropLog::default()),
        }
    }

    /// Whether the peer's probes came from `addr` (IPv4 as IPv4).
    fn is_peer(&self, addr: SocketAddr) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&addr)
    }

    fn drop_log(&self) -> std::sync::MutexGuard<'_, DropLog> {
        self.drops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a handshake quinn was asked to start from an address that is no peer path.
    fn count_stranger(&self, from: SocketAddr) {
        let now = Instant::now();
        let mut log = self.drop_log();
        log.record(now, Dropped::QuicStranger, from.ip(), 1);
        if let Some(s) = log.poll_summary(now) {
            tracing::info!("{s}");
        }
    }

    /// Logs what is left of the drop tally and the run's totals.
    fn report_drops(&self) {
        let mut log = self.drop_log();
        if let Some(s) = log.flush(Instant::now()) {
            tracing::info!("{s}");
        }
        if let Some(s) = log.totals() {
            tracing::info!("{s}");
        }
    }

    fn slots(&self) -> Arc<[Slot]> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts reading another socket.
    fn add(&self, id: SocketId, io: Arc<dyn AsyncUdpSocket>) {
        let mut slots = self.slots().to_vec();
        slots.push(Slot { id, io });
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(slots);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// Starts reading the IPv6 socket and sends IPv6 from it.
    fn add_v6(&self, io: Arc<dyn AsyncUdpSocket>) {
        *self.v6.write().unwrap_or_else(|e| e.into_inner()) = Some(Slot {
            id: V6_SOCKET,
            io: io.clone(),
        });
        self.add(V6_SOCKET, io);
    }

    /// Whether quinn sees one IPv6 socket (IPv4 as mapped addresses) rather than IPv4 only.
    fn dual_stack(&self) -> bool {
        self.v6.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The socket QUIC sends IPv6 (`v6`) or IPv4 from.
    fn sender(&self, v6: bool) -> Slot {
        if v6 {
            if let Some(v6) = &*self.v6.read().unwrap_or_else(|e| e.into_inner()) {
                return v6.clone();
            }
        }
        self.primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes every extra socket but the primary.
    fn prune(&self) {
        let primary = self.primary_id();
        let slots: Vec<Slot> = self
            .slots()
            .iter()
            .filter(|s| s.id == MAIN_SOCKET || s.id == V6_SOCKET || s.id == primary)
            .cloned()
            .collect();
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(slots);
    }

    fn primary_id(&self) -> SocketId {
        self.primary.read().unwrap_or_else(|e| e.into_inner()).id
    }

    /// Makes QUIC send IPv4 from socket `id` from now on.
    fn set_primary(&self, id: SocketId) {
        if self.primary_id() == id || id == V6_SOCKET {
            return;
        }
        if let Some(slot) = self.slots().iter().find(|s| s.id == id) {
            tracing::debug!(socket = id, "QUIC now sends from this socket");
            *self.primary.write().unwrap_or_else(|e| e.into_inner()) = slot.clone();
        }
    }

    /// Sends a probe from an extra socket (the main one sends its own, with TTLs).
    fn send_extra(&self, tx: &Transmit) -> io::Result<()> {
        let slots = self.slots();
        let slot = slots
            .iter()
            .find(|s| s.id == tx.socket)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "socket closed"))?;
        // No per-packet TTL here: extra sockets never send openers.
        slot.io.try_send(&QuinnTransmit {
            destination: tx.destination,
            ecn: None,
            contents: &tx.contents,
            segment_size: None,
            src_ip: None,
        })
    }

    /// Removes probes (forwarded to the puncher) and everything [`guard`] rejects from a
    /// batch of received buffers, compacting what is left.
    ///
    /// With GRO one buffer holds several datagrams of `stride` bytes (the last may be
    /// shorter) from one source; removing any of them keeps that shape, so compaction is
    /// safe. The source is looked up once per buffer; QUIC from the peer then costs a look
    /// at each datagram's first byte.
    fn filter(
        &self,
        socket: SocketId,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        n: usize,
    ) -> usize {
        let mut kept = 0;
        // Taken at the first drop only: the clean path reads no clock and takes no lock.
        let mut drops: Option<(Instant, std::sync::MutexGuard<'_, DropLog>)> = None;
        for i in 0..n {
            let m = meta[i];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut known = self.is_peer(m.addr);
            let buf = &mut bufs[i][..m.len];
            let (mut read, mut write) = (0, 0);
            while read < m.len {
                let seg = read..(read + stride).min(m.len);
                let len = seg.len();
                match guard::classify_from(&self.tag, known, &buf[seg.clone()]) {
                    Verdict::Quic => {
                        if write != read {
                            buf.copy_within(seg, write);
                        }
                        write += len;
                    }
                    Verdict::Probe => {
                        if !known {
                            let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
                            if guard::remember(&mut peers, m.addr) {
                                tracing::debug!(from = %m.addr, "peer path: QUIC from it reaches quinn");
                            }
                            known = true;
                        }
                        // A full channel means a flood; dropping probes then is fine.
                        let _ = self.probes.try_send((socket, m.addr, buf[seg].to_vec()));
                    }
                    Verdict::Drop(why) => {
                        let (now, log) =
                            drops.get_or_insert_with(|| (Instant::now(), self.drop_log()));
                        log.record(*now, why, m.addr.ip(), 1);
                    }
                }
                read += len;
            }
            if write > 0 {
                meta[i].len = write;
                meta.swap(kept, i);
                bufs.swap(kept, i);
                kept += 1;
            }
        }
        if let Some((now, mut log)) = drops {
            if let Some(s) = log.poll_summary(now) {
                tracing::info!("{s}");
            }
        }
        kept
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(PrimaryPoller {
            demux: self,
            current: None,
        })
    }

    fn try_send(&self, transmit: &QuinnTransmit) -> io::Result<()> {
        let destination = canonical(transmit.destination);
        let slot = self.sender(destination.is_ipv6());
        self.sending_v6
            .store(slot.id == V6_SOCKET, Ordering::Relaxed);
        if destination == transmit.destination {
            return slot.io.try_send(transmit);
        }
        slot.io.try_send(&QuinnTransmit {
            destination,
            src_ip: transmit.src_ip.map(|ip| ip.to_canonical()),
            ..*transmit
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        {
            let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        let slots = self.slots();
        let n = slots.len();
        let first = self.next.load(Ordering::Relaxed) % n;
        for k in 0..n {
            let slot = &slots[(first + k) % n];
            loop {
                match slot.io.poll_recv(cx, bufs, meta) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) if slot.id == MAIN_SOCKET => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(e)) => {
                        // An extra socket's trouble must not stop the endpoint.
                        tracing::debug!(socket = slot.id, error = %e, "receive failed");
                        break;
                    }
                    Poll::Ready(Ok(got)) => {
                        let kept = self.filter(slot.id, bufs, meta, got);
                        if kept > 0 {
                            if self.dual_stack() {
                                for m in &mut meta[..kept] {
                                    m.addr = SocketAddr::V6(to_v6(m.addr));
                                    m.dst_ip = m.dst_ip.map(|ip| match ip {
                                        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                                        v6 => v6,
                                    });
                                }
                            }
                            self.next.store((first + k + 1) % n, Ordering::Relaxed);
                            return Poll::Ready(Ok(kept));
                        }
                    }
                }
            }
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        let v4 = self
            .primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .io
            .local_addr()?;
        // quinn dials IPv6 only from an endpoint that says it is IPv6.
        Ok(if self.dual_stack() {
            SocketAddr::V6(to_v6(v4))
        } else {
            v4
        })
    }

    fn max_transmit_segments(&self) -> usize {
        self.primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .io
            .max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        // Every socket is made alike; quinn sizes its buffers once, from this.
        self.slots()[0].io.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .io
            .may_fragment()
    }
}

/// An address as quinn sees it on a dual-stack endpoint.
fn to_v6(addr: SocketAddr) -> std::net::SocketAddrV6 {
    match addr {
        SocketAddr::V4(a) => std::net::SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => a,
    }
}

/// An address as the rest of p2pcopy sees it: IPv4 as IPv4, even when quinn mapped it.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Waits for the socket QUIC last sent from to be writable, following it when it changes.
struct PrimaryPoller {
    demux: Arc<DemuxSocket>,
    current: Option<(SocketId, Pin<Box<dyn UdpPoller>>)>,
}

impl fmt::Debug for PrimaryPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrimaryPoller").finish_non_exhaustive()
    }
}

impl UdpPoller for PrimaryPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let primary = self
            .demux
            .sender(self.demux.sending_v6.load(Ordering::Relaxed));
        let this = &mut *self;
        let poller = match &mut this.current {
            Some((id, poller)) if *id == primary.id => poller,
            _ => {
                &mut this
                    .current
                    .insert((primary.id, primary.io.create_io_poller()))
                    .1
            }
        };
        poller.as_mut().poll_writable(cx)
    }
}

/// Sends one probe, with a custom TTL where asked (per packet, so QUIC packets sharing the
/// socket are never affected).
fn send_probe(sock: &tokio::net::UdpSocket, tx: &Transmit) -> io::Result<()> {
    match tx.ttl {
        None => sock.try_send_to(&tx.contents, tx.destination).map(drop),
        Some(ttl) => sock.try_io(tokio::io::Interest::WRITABLE, || {
            let sent = crate::sys::send_with_ttl(
                socket2::SockRef::from(sock),
                tx.destination,
                &tx.contents,
                ttl,
            );
            match sent {
                // Without per-packet TTL the opener is a plain probe; rounds still work, minus
                // the protection against the other side's first probe arriving first.
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    sock.try_send_to(&tx.contents, tx.destination).map(drop)
                }
                sent => sent,
            }
        }),
    }
}

/// The probe side of the sockets, handed to each punching run and back.
struct ProbeIo {
    /// A second handle on the main socket, for probes with their own TTL.
    socket: tokio::net::UdpSocket,
    /// Probes that arrived on any socket.
    incoming: mpsc::Receiver<(SocketId, SocketAddr, Vec<u8>)>,
    demux: Arc<DemuxSocket>,
}

/// Runs the puncher until told to stop or it finishes, forwarding its events; gives the
/// probe I/O back for the next run.
async fn drive(
    mut puncher: Puncher,
    mut io: ProbeIo,
    events: mpsc::UnboundedSender<PunchEvent>,
    mut stop: watch::Receiver<bool>,
) -> ProbeIo {
    loop {
        while let Some(tx) = puncher.poll_transmit() {
            let sent = if tx.socket == MAIN_SOCKET {
                send_probe(&io.socket, &tx)
            } else {
                io.demux.send_extra(&tx)
            };
            if let Err(e) = sent {
                // A full socket buffer or an unreachable LAN address: the next probe retries.
                tracing::trace!(to = %tx.destination, socket = tx.socket, error = %e, "probe not sent");
            }
        }
        while let Some(ev) = puncher.poll_event() {
            if let PunchEvent::Confirmed { socket, .. } = ev {
                // Before the peer can confirm this path too and start its handshake, so
                // QUIC's first answer already leaves from the socket that works.
                io.demux.set_primary(socket);
            }
            if events.send(ev).is_err() {
                return io;
            }
        }
        let Some(deadline) = puncher.poll_timeout() else {
            return io;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => puncher.handle_timeout(Instant::now()),
            got = io.incoming.recv() => match got {
                Some((socket, from, data)) => { puncher.handle_datagram(Instant::now(), socket, from, &data); }
                None => return io,
            },
            _ = stop.changed() => return io,
        }
    }
}

/// Progress notes for the user while connecting.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// A synchronised round started.
    Round(u32),
}

/// An established, authenticated (or, for bare tickets, encrypted-only) QUIC connection.
pub struct Link {
    /// The connection.
    pub connection: quinn::Connection,
    /// The peer's address (IPv4 as IPv4, whatever quinn reports).
    pub remote: SocketAddr,
    /// How the peer's address was learned.
    pub kind: PathKind,
    /// Our own address as the peer saw it on this path (from its answer to our probe), when
    /// the puncher confirmed the path: tells whether the path runs through our router's
    /// port mapping.
    pub observed: Option<SocketAddr>,
    /// Whether we checked the peer's certificate against its ticket.
    pub authenticated: bool,
    /// The code both users compare when either side used a bare `ip:port`.
    pub verification_code: String,
}

/// Why connecting failed.
#[derive(Debug)]
pub enum ConnectFailure {
    /// No path before the deadline.
    TimedOut {
        /// Rounds fired.
        rounds: u32,
        /// Whether any probe of the peer arrived.
        heard_peer: bool,
    },
    /// Setup error.
    Fatal(Error),
}

/// One run's socket as a QUIC endpoint, able to punch and connect to the peer as often as
/// needed: first after the tickets are exchanged, again whenever a path dies mid-transfer.
pub struct Dialer {
    endpoint: quinn::Endpoint,
    probes: Option<ProbeIo>,
    demux: Arc<DemuxSocket>,
    runtime: Arc<TokioRuntime>,
    /// Address the extra sockets bind to: the main socket's, with any port.
    bind_ip: IpAddr,
    next_socket: SocketId,
    birthday: Option<BirthdayPart>,
    is_client: bool,
    identity: crate::tls::Identity,
    peer: Ticket,
    peer_fp: Option<[u8; 32]>,
    client_cfg: Option<quinn::ClientConfig>,
    opener_ttl: Option<u32>,
    /// Where the last connection ran (our socket, its address); probed at once on a
    /// reconnect.
    last_path: Option<(SocketId, SocketAddr)>,
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.demux.report_drops();
    }
}

impl Dialer {
    /// Makes the bound socket (STUN already done on it) a QUIC endpoint for talking to
    /// `peer`: a client for the sender (`is_client`), a server for the receiver.
    /// `v6` is the IPv6 socket, if this host has global IPv6 addresses; `birthday` is this
    /// side's part in the birthday technique, if the NATs call for it.
    pub fn new(
        socket: std::net::UdpSocket,
        v6: Option<std::net::UdpSocket>,
        is_client: bool,
        identity: crate::tls::Identity,
        peer: Ticket,
        opener_ttl: Option<u32>,
        birthday: Option<BirthdayPart>,
    ) -> Result<Dialer, Error> {
        let peer_fp = peer.fingerprint();
        let bind_ip = socket
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?
            .ip();
        let probe_socket = socket
            .try_clone()
            .map_err(|e| Error::Internal(format!("cannot clone socket: {e}")))?;
        let probe_socket = tokio::net::UdpSocket::from_std(probe_socket)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (probe_tx, probe_rx) = mpsc::channel(1024);
        let runtime = Arc::new(TokioRuntime);
        let inner = runtime
            .wrap_udp_socket(socket)
            .map_err(|e| Error::Internal(format!("socket: {e}")))?;
        let tag = SessionTag {
            local: identity.short_id(),
            peer: peer_fp.as_ref().map(crate::tls::short_id),
        };
        let demux = Arc::new(DemuxSocket::new(inner, probe_tx, tag));
        if let Some(v6) = v6 {
            let io = runtime
                .wrap_udp_socket(v6)
                .map_err(|e| Error::Internal(format!("socket: {e}")))?;
            demux.add_v6(io);
        }
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        // Greased QUIC packets could start with our probe magic's first byte.
        endpoint_cfg.grease_quic_bit(false);
        let server_cfg = if is_client {
            None
        } else {
            Some(crate::tls::server_config(&identity, peer_fp)?)
        };
        let client_cfg = if is_client {
            Some(crate::tls::client_config(&identity, peer_fp)?)
        } else {
            None
        };
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_cfg,
            server_cfg,
            demux.clone(),
            runtime.clone(),
        )
        .map_err(|e| Error::Internal(format!("QUIC endpoint: {e}")))?;
        Ok(Dialer {
            endpoint,
            probes: Some(ProbeIo {
                socket: probe_socket,
                incoming: probe_rx,
                demux: demux.clone(),
            }),
            demux,
            runtime,
            bind_ip,
            next_socket: V6_SOCKET + 1,
            birthday,
            is_client,
            identity,
            peer,
            peer_fp,
            client_cfg,
            opener_ttl,
            last_path: None,
        })
    }

    /// The QUIC endpoint (close it when the run ends).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Opens the symmetric side's extra sockets for one connect attempt; fewer when the
    /// system runs short of sockets (each one still helps).
    fn open_extra_sockets(&mut self) -> Vec<SocketId> {
        // The usual soft limit of 1024 open files is too tight for a few hundred sockets plus
        // what tokio and quinn hold.
        let limit = crate::sys::raise_open_file_limit(4096);
        // Leave room for everything else this process holds open.
        let count = BIRTHDAY_SOCKETS.min(limit.saturating_sub(256) as usize);
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let io = bind(self.bind_ip, 0).and_then(|s| {
                self.runtime
                    .wrap_udp_socket(s)
                    .map_err(|e| Error::Internal(e.to_string()))
            });
            match io {
                Ok(io) => {
                    let id = self.next_socket;
                    self.next_socket += 1;
                    self.demux.add(id, io);
                    ids.push(id);
                }
                Err(e) => {
                    tracing::info!(opened = ids.len(), error = %e, "no more extra sockets");
                    break;
                }
            }
        }
        tracing::info!(
            sockets = ids.len(),
            "birthday technique: extra sockets open"
        );
        ids
    }

    /// Punches a path to the peer and establishes QUIC over it. Rounds start at
    /// `first_round`; after a lost connection the last working address is probed at once
    /// as well, which reconnects within a round trip when the NATs kept their mappings.
    pub async fn connect(
        &mut self,
        first_round: Instant,
        deadline: Instant,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Link, ConnectFailure> {
        let fatal = ConnectFailure::Fatal;
        let has_v6 = self
            .demux
            .v6
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let mut targets = targets(&self.peer);
        // IPv6 addresses are reached from the IPv6 socket, or not at all.
        targets.retain(|t| t.addr.is_ipv4() || has_v6);
        for t in &mut targets {
            if t.addr.is_ipv6() {
                t.socket = V6_SOCKET;
            }
        }
        if let Some((socket, last)) = self.last_path {
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
        let birthday = match self.birthday {
            None => None,
            Some(BirthdayPart::Spray) => Some(Birthday::Spray {
                seed: rand::random(),
            }),
            Some(BirthdayPart::Open) => Some(Birthday::Open {
                sockets: self.open_extra_sockets(),
            }),
        };
        let cfg = PunchConfig {
            local_id: self.identity.short_id(),
            peer_id: self.peer_fp.as_ref().map(crate::tls::short_id),
            targets: targets.clone(),
            first_round,
            deadline,
            opener_ttl: self.opener_ttl,
            birthday,
        };
        let puncher = Puncher::new(cfg, Instant::now());
        let mut io = self.probes.take().ok_or_else(|| {
            fatal(Error::Internal(
                "a connect attempt is already running".into(),
            ))
        })?;
        // Probes queued during the transfer are stale; a new puncher counts its sequence
        // numbers from zero again, so an old pong could otherwise confirm a dead path.
        while io.incoming.try_recv().is_ok() {}
        // Unbounded: events are a handful per run, and a full queue must never stop probing.
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let driver = tokio::spawn(drive(puncher, io, ev_tx, stop_rx));

        let mut known: Vec<(SocketAddr, PathKind)> =
            targets.iter().map(|t| (t.addr, t.kind)).collect();
        let mut observed_on: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        let mut pending: Vec<SocketAddr> = Vec::new();
        let mut handshakes = tokio::task::JoinSet::new();
        let endpoint = &self.endpoint;
        let result = loop {
            // The client dials each confirmed path in turn; the server waits for the dial.
            if let (Some(cfg), Some(remote)) = (self.client_cfg.as_ref(), pending.first().copied())
            {
                pending.remove(0);
                match dial(endpoint, cfg, remote, deadline).await {
                    Ok(Some(conn)) => break Ok(conn),
                    Ok(None) => continue,
                    Err(e) => break Err(fatal(e)),
                }
            }
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(PunchEvent::RoundStarted { round }) => on_progress(Progress::Round(round)),
                    Some(PunchEvent::Confirmed { socket, remote, kind, rtt, observed }) => {
                        tracing::info!(%remote, socket, ?kind, ?rtt, ?observed, "path confirmed");
                        if !known.iter().any(|(a, _)| *a == remote) {
                            known.push((remote, kind));
                        }
                        if let Some(us) = observed {
                            observed_on.push((remote, canonical(us)));
                        }
                        pending.push(remote);
                    }
                    Some(PunchEvent::TimedOut { rounds, heard_peer }) => break Err(ConnectFailure::TimedOut { rounds, heard_peer }),
                    None => break Err(ConnectFailure::TimedOut { rounds: 0, heard_peer: false }),
                },
                incoming = endpoint.accept(), if !self.is_client => {
                    let Some(incoming) = incoming else { break Err(fatal(Error::Internal("endpoint closed".into()))) };
                    let from = incoming.remote_address();
                    // The socket passes QUIC from peer paths only; this catches whatever
                    // slips past it (a path forgotten since), before quinn does any work.
                    if !self.demux.is_peer(canonical(from)) {
                        self.demux.count_stranger(canonical(from));
                        incoming.ignore();
                        continue;
                    }
                    // Handshakes run side by side: one that stalls (a stranger's, or a first
                    // attempt whose packets were lost) must not hold up the real one.
                    handshakes.spawn(async move { (from, incoming.await) });
                }
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                    Ok((_, Ok(conn))) => break Ok(conn),
                    // Someone who is not the ticket's owner, or a broken handshake: keep waiting.
                    // A stranger's close reason is in `e`, shown by default: escaped.
                    Ok((from, Err(e))) => tracing::warn!(%from, error = %shown(&e.to_string()), "rejected a connection attempt"),
                    Err(e) => tracing::warn!(error = %e, "handshake task failed"),
                },
            }
        };
        let _ = stop_tx.send(true);
        match driver.await {
            Ok(io) => self.probes = Some(io),
            Err(e) => return Err(fatal(Error::Internal(format!("puncher task: {e}")))),
        }
        self.demux.prune();
        let connection = result?;
        let remote = canonical(connection.remote_address());
        self.last_path = Some((self.demux.primary_id(), remote));
        let kind = known
            .iter()
            .find(|(a, _)| *a == remote)
            .map(|(_, k)| *k)
            .unwrap_or(PathKind::PeerReflexive);
        let observed = observed_on
            .iter()
            .find(|(a, _)| *a == remote)
            .map(|(_, us)| *us);
        let theirs = crate::tls::peer_fingerprint(&connection).unwrap_or_default();
        let verification_code = crate::tls::verification_code(self.identity.fingerprint(), &theirs);
        Ok(Link {
            connection,
            remote,
            kind,
            observed,
            authenticated: self.peer_fp.is_some(),
            verification_code,
        })
    }
}

/// One QUIC handshake to a confirmed path: `Ok(None)` to try the next path, an error when
/// retrying cannot help.
async fn dial(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    remote: SocketAddr,
    deadline: Instant,
) -> Result<Option<quinn::Connection>, Error> {
    let connecting = endpoint
        .connect_with(cfg.clone(), remote, crate::tls::SERVER_NAME)
        .map_err(|e| Error::Internal(format!("connect: {e}")))?;
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(10));
    match tokio::time::timeout(budget, connecting).await {
        Ok(Ok(conn)) => Ok(Some(conn)),
        Ok(Err(
            e @ (quinn::ConnectionError::TransportError(_)
            | quinn::ConnectionError::ConnectionClosed(_)),
        )) => {
            // Certificate mismatch shows up here: it will not get better by retrying.
            Err(Error::Protocol(format!(
                "the peer at {remote} failed the handshake: {e}"
            )))
        }
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %shown(&e.to_string()), "handshake failed; trying other paths");
            Ok(None)
        }
        Err(_) => {
            tracing::info!(%remote, "handshake timed out; trying other paths");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{Candidate, NatKind, Role};

    #[test]
    fn ticket_addresses_become_targets() {
        let t = FullTicket {
            role: Role::Sender,
            nat: NatKind::EndpointIndependent,
            fingerprint: [0; 32],
            candidates: vec![
                Candidate {
                    kind: CandidateKind::Mapped,
                    addr: "198.18.1.2:4300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "10.1.0.2:4300".parse().unwrap(),
                },
            ],
        };
        let kinds: Vec<PathKind> = full_targets(&t).iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [PathKind::Mapped, PathKind::Lan]);
        // A port mapping comes first and makes a STUN-mapped twin of it redundant.
        let forwarded = FullTicket {
            candidates: vec![
                Candidate {
                    kind: CandidateKind::PortMapped,
                    addr: "198.18.1.2:4300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Mapped,
                    addr: "198.18.1.2:4300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Mapped,
                    addr: "198.18.1.2:51000".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "10.1.0.2:4300".parse().unwrap(),
                },
            ],
            ..t.clone()
        };
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
        let public = FullTicket {
            nat: NatKind::None,
            candidates: vec![
                Candidate {
                    kind: CandidateKind::Mapped,
                    addr: "198.18.5.2:4300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "198.18.5.2:4300".parse().unwrap(),
                },
            ],
            ..t
        };
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
        let t = FullTicket {
            role: Role::Sender,
            nat: NatKind::EndpointDependent,
            fingerprint: [0; 32],
            candidates: vec![
                Candidate {
                    kind: CandidateKind::Mapped,
                    addr: "198.18.1.2:4300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "[2001:db8:1::2]:4300".parse().unwrap(),
                },
            ],
        };
        let kinds: Vec<PathKind> = full_targets(&t).iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [PathKind::Mapped, PathKind::Ipv6]);
        let v4_only = FullTicket {
            candidates: t.candidates[..1].to_vec(),
            ..t.clone()
        };
        assert!(both_have_ipv6(&t, &Ticket::Full(t.clone())));
        assert!(!both_have_ipv6(&t, &Ticket::Full(v4_only.clone())));
        assert!(!both_have_ipv6(&v4_only, &Ticket::Full(t.clone())));
        assert_eq!(
            canonical("[::ffff:198.18.1.2]:4300".parse().unwrap()),
            "198.18.1.2:4300".parse::<SocketAddr>().unwrap()
        );
    }

    /// Reads one batch from the demux, as quinn would.
    async fn recv_one(demux: &DemuxSocket) -> (SocketAddr, Vec<u8>) {
        let mut buf = vec![0u8; 65536];
        let mut meta = [RecvMeta::default()];
        let n = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            demux.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .unwrap();
        assert_eq!(n, 1);
        (meta[0].addr, buf[..meta[0].len].to_vec())
    }

    #[tokio::test]
    async fn demux_reads_every_socket_and_sends_quic_from_the_primary() {
        let runtime = TokioRuntime;
        let wrap = |s: std::net::UdpSocket| runtime.wrap_udp_socket(s).unwrap();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let main = bind(loopback, 0).unwrap();
        let extra = bind(loopback, 0).unwrap();
        let (main_addr, extra_addr) = (main.local_addr().unwrap(), extra.local_addr().unwrap());
        let (tx, mut probes) = mpsc::channel(8);
        let tag = SessionTag {
            local: [2; 8],
            peer: Some([1; 8]),
        };
        let demux = DemuxSocket::new(wrap(main), tx, tag);
        demux.add(7, wrap(extra));
        let peer = tokio::net::UdpSocket::bind((loopback, 0)).await.unwrap();
        let peer_addr = peer.local_addr().unwrap();

        // A probe to the extra socket goes to the puncher, tagged with that socket; QUIC
        // bytes to either socket go to quinn.
        let probe = crate::wire::Probe {
            kind: crate::wire::ProbeKind::Ping,
            from: [1; 8],
            to: [2; 8],
            seq: 1,
            observed: None,
        }
        .encode();
        peer.send_to(&probe, extra_addr).await.unwrap();
        peer.send_to(b"\x40quic", extra_addr).await.unwrap();
        assert_eq!(recv_one(&demux).await, (peer_addr, b"\x40quic".to_vec()));
        let (socket, from, data) = probes.recv().await.unwrap();
        assert_eq!((socket, from, &data[..]), (7, peer_addr, &probe[..]));
        peer.send_to(b"\x40main", main_addr).await.unwrap();
        assert_eq!(recv_one(&demux).await, (peer_addr, b"\x40main".to_vec()));

        // A stranger's Initial, forged probe and junk reach neither quinn nor the puncher:
        // the next thing either sees is the peer's.
        let stranger = tokio::net::UdpSocket::bind((loopback, 0)).await.unwrap();
        let mut initial = vec![0xc3, 0, 0, 0, 1];
        initial.resize(1200, 7);
        let forged = crate::wire::Probe {
            from: [9; 8],
            ..crate::wire::Probe::decode(&probe).unwrap()
        }
        .encode();
        for d in [&initial[..], &forged[..], b"junk"] {
            stranger.send_to(d, main_addr).await.unwrap();
        }
        peer.send_to(&probe, main_addr).await.unwrap();
        peer.send_to(b"\x40after", main_addr).await.unwrap();
        assert_eq!(recv_one(&demux).await, (peer_addr, b"\x40after".to_vec()));
        assert_eq!(probes.recv().await.unwrap().1, peer_addr);
        let totals = demux.drop_log().totals().unwrap();
        assert_eq!(totals.counts, [1, 1, 1, 0]);

        // QUIC leaves from the main socket until the puncher picks another.
        let send = |d: &DemuxSocket| {
            d.try_send(&QuinnTransmit {
                destination: peer_addr,
                ecn: None,
                contents: b"\x40out",
                segment_size: None,
                src_ip: None,
            })
            .unwrap()
        };
        let mut buf = [0u8; 64];
        send(&demux);
        assert_eq!(peer.recv_from(&mut buf).await.unwrap().1, main_addr);
        demux.set_primary(7);
        send(&demux);
        assert_eq!(peer.recv_from(&mut buf).await.unwrap().1, extra_addr);
        // Pruning keeps the main socket and the primary.
        demux.add(8, wrap(bind(loopback, 0).unwrap()));
        demux.prune();
        let ids: Vec<SocketId> = demux.slots().iter().map(|s| s.id).collect();
        assert_eq!(ids, [MAIN_SOCKET, 7]);
    }
}
