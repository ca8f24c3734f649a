//! The socket shared by the puncher and quinn: every datagram is looked at once, probes
//! go to the puncher, QUIC from the peer's paths to quinn, and the rest is dropped here
//! ([`super::guard`] decides which).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit as QuinnTransmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::guard::{self, DropLog, Dropped, SessionTag, Verdict};
use super::hold::PathRtt;
use super::relayed::RelayPath;
use super::restun::Pending;
use super::route::Route;
use crate::punch::{SocketId, Transmit, MAIN_SOCKET, V6_SOCKET};

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
/// "primary"), so the connection uses the NAT mapping that worked. It also reads the lane
/// sockets (see [`crate::punch`]): QUIC to an address of the peer whose probes arrived on
/// the main socket or a lane socket leaves from that socket, since each pair of sockets
/// has its own NAT mappings, and the QUIC server must answer from the socket the client's
/// lane reaches, whichever lane its own puncher confirmed first.
pub struct DemuxSocket {
    /// Every socket read, the main one first; replaced whole, so a read holds no lock.
    slots: RwLock<Arc<[Slot]>>,
    /// The socket QUIC sends IPv4 from.
    primary: RwLock<Slot>,
    /// The socket QUIC sends IPv6 from, if this host has one.
    v6: RwLock<Option<Slot>>,
    /// Whether QUIC's last send went to an IPv6 address: the writability poller follows it.
    sending_v6: AtomicBool,
    /// The socket of QUIC's last send when it was a lane's (else `u32::MAX`): the
    /// writability poller follows it.
    sending_lane: AtomicU32,
    /// The lane sockets past the main one: read for the whole run, never pruned.
    lanes: RwLock<Vec<SocketId>>,
    /// Where probes from each peer address last arrived, on the main or a lane socket.
    routes: RwLock<HashMap<SocketAddr, Slot>>,
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
    /// The relay under quinn's view of the peer, when either side has one: QUIC to and
    /// from the peer then always uses one address, routed underneath.
    relay: std::sync::OnceLock<RelayPath>,
    /// The STUN query asked from the main socket, if one is outstanding
    /// ([`super::restun`]).
    stun: Pending,
    /// The connection's least RTT, which the sockets read to decide on receive holds
    /// ([`super::hold`]).
    rtt: Arc<PathRtt>,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket").finish_non_exhaustive()
    }
}

impl DemuxSocket {
    #[cfg(test)]
    pub(super) fn new(
        main: Arc<dyn AsyncUdpSocket>,
        probes: mpsc::Sender<(SocketId, SocketAddr, Vec<u8>)>,
        tag: SessionTag,
    ) -> Self {
        Self::with_rtt(main, probes, tag, Arc::default())
    }

    /// Over `main`, whose receive holds (like every socket's wrapped with the same
    /// `rtt`) follow the RTT given to [`DemuxSocket::set_rtt`].
    pub(super) fn with_rtt(
        main: Arc<dyn AsyncUdpSocket>,
        probes: mpsc::Sender<(SocketId, SocketAddr, Vec<u8>)>,
        tag: SessionTag,
        rtt: Arc<PathRtt>,
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
            sending_lane: AtomicU32::new(u32::MAX),
            lanes: RwLock::new(Vec::new()),
            routes: RwLock::new(HashMap::new()),
            waker: Mutex::new(None),
            next: AtomicUsize::new(0),
            probes,
            tag,
            peers: RwLock::new(Vec::new()),
            drops: Mutex::new(DropLog::default()),
            relay: std::sync::OnceLock::new(),
            stun: Pending::default(),
            rtt,
        }
    }

    /// The RTT the sockets' receive holds follow, for the sockets added later.
    pub(super) fn path_rtt(&self) -> &Arc<PathRtt> {
        &self.rtt
    }

    /// Tells the sockets the connection's RTT (`None`: no connection, no holds).
    pub(super) fn set_rtt(&self, rtt: Option<std::time::Duration>) {
        self.rtt.set(rtt);
    }

    /// Routes QUIC to the peer through `path` from now on (see [`super::route`]).
    pub(super) fn set_relay(&self, path: RelayPath) {
        let peer = path.peer();
        if self.relay.set(path).is_ok() {
            // quinn's handshakes from the peer come from this address.
            guard::remember(
                &mut self.peers.write().unwrap_or_else(|e| e.into_inner()),
                peer,
            );
        }
    }

    /// The relay routing, if either side has a relay.
    pub(super) fn relay(&self) -> Option<&RelayPath> {
        self.relay.get()
    }

    /// Whether the peer's probes came from `addr` (IPv4 as IPv4).
    pub(super) fn is_peer(&self, addr: SocketAddr) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&addr)
    }

    fn drop_log(&self) -> std::sync::MutexGuard<'_, DropLog> {
        self.drops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a handshake quinn was asked to start from an address that is no peer path.
    pub(super) fn count_stranger(&self, from: SocketAddr) {
        let now = Instant::now();
        let mut log = self.drop_log();
        log.record(now, Dropped::QuicStranger, from.ip(), 1);
        if let Some(s) = log.poll_summary(now) {
            tracing::info!("{s}");
        }
    }

    /// STUN datagrams dropped so far (for tests).
    #[cfg(test)]
    pub(super) fn stun_drops(&self) -> u64 {
        self.drop_log().totals().map_or(0, |t| t.counts[3])
    }

    /// Logs what is left of the drop tally and the run's totals.
    pub(super) fn report_drops(&self) {
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
    pub(super) fn add(&self, id: SocketId, io: Arc<dyn AsyncUdpSocket>) {
        let mut slots = self.slots().to_vec();
        slots.push(Slot { id, io });
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(slots);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// Starts reading a lane socket, for the rest of the run.
    pub(super) fn add_lane(&self, id: SocketId, io: Arc<dyn AsyncUdpSocket>) {
        self.lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        self.add(id, io);
    }

    fn is_lane(&self, id: SocketId) -> bool {
        id == MAIN_SOCKET
            || self
                .lanes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
    }

    /// Remembers that a probe from `from` arrived on `socket`, when that is the main or a
    /// lane socket: QUIC to `from` leaves from it.
    fn route(&self, socket: SocketId, from: SocketAddr) {
        let known = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .is_some_and(|s| s.id == socket);
        if known || !self.is_lane(socket) {
            return;
        }
        let Some(slot) = self.slots().iter().find(|s| s.id == socket).cloned() else {
            return;
        };
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        // Bounded like the peer paths: a flood of forged sources cannot grow it.
        if routes.len() >= 4 * guard::MAX_PEER_PATHS {
            routes.clear();
        }
        routes.insert(from, slot);
    }

    /// The socket QUIC to `destination` (IPv4 as IPv4) leaves from.
    pub(super) fn socket_for(&self, destination: SocketAddr) -> SocketId {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&destination)
            .map_or_else(|| self.sender(destination.is_ipv6()).id, |s| s.id)
    }

    /// Starts reading the IPv6 socket and sends IPv6 from it.
    pub(super) fn add_v6(&self, io: Arc<dyn AsyncUdpSocket>) {
        *self.v6.write().unwrap_or_else(|e| e.into_inner()) = Some(Slot {
            id: V6_SOCKET,
            io: io.clone(),
        });
        self.add(V6_SOCKET, io);
    }

    /// Whether quinn sees one IPv6 socket (IPv4 as mapped addresses) rather than IPv4 only.
    pub(super) fn dual_stack(&self) -> bool {
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
    pub(super) fn prune(&self) {
        let primary = self.primary_id();
        let slots: Vec<Slot> = self
            .slots()
            .iter()
            .filter(|s| {
                s.id == MAIN_SOCKET || s.id == V6_SOCKET || s.id == primary || self.is_lane(s.id)
            })
            .cloned()
            .collect();
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(slots);
    }

    pub(super) fn primary_id(&self) -> SocketId {
        self.primary.read().unwrap_or_else(|e| e.into_inner()).id
    }

    /// Makes QUIC send IPv4 from socket `id` from now on.
    pub(super) fn set_primary(&self, id: SocketId) {
        if self.primary_id() == id || id == V6_SOCKET {
            return;
        }
        if let Some(slot) = self.slots().iter().find(|s| s.id == id) {
            tracing::debug!(socket = id, "QUIC now sends from this socket");
            *self.primary.write().unwrap_or_else(|e| e.into_inner()) = slot.clone();
        }
    }

    /// Sends a probe from an extra socket (the main and lane sockets send their own, with
    /// TTLs).
    pub(super) fn send_extra(&self, tx: &Transmit) -> io::Result<()> {
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

    /// The STUN query slot of the main socket.
    pub(super) fn pending_stun(&self) -> &Pending {
        &self.stun
    }

    /// Sends `contents` to `destination` from the main socket, whose NAT mapping the
    /// ticket announced.
    pub(super) fn send_from_main(
        &self,
        destination: SocketAddr,
        contents: &[u8],
    ) -> io::Result<()> {
        self.slots()[0].io.try_send(&QuinnTransmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        })
    }

    /// Sends `contents` to `destination` from the socket QUIC sends IPv4 (or IPv6) from.
    pub(super) fn send_plain(&self, destination: SocketAddr, contents: &[u8]) -> io::Result<()> {
        self.sender(destination.is_ipv6())
            .io
            .try_send(&QuinnTransmit {
                destination,
                ecn: None,
                contents,
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
            let relay = self.relay.get();
            let mut known = self.is_peer(m.addr) || relay.is_some_and(|r| r.is_peers_relay(m.addr));
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
                        self.route(socket, m.addr);
                        // A full channel means a flood; dropping probes then is fine.
                        let _ = self.probes.try_send((socket, m.addr, buf[seg].to_vec()));
                    }
                    // The answer to our own STUN query (at most one, on the main socket).
                    Verdict::Drop(Dropped::StunNotOurs)
                        if socket == MAIN_SOCKET && self.stun.answer(m.addr, &buf[seg.clone()]) => {
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
                if let Some(r) = relay {
                    // quinn sees the peer at one address, whichever way it came.
                    r.heard_directly(m.addr);
                    meta[i].addr = r.peer();
                }
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

    /// Sends quinn's `transmit` the way `route` says.
    fn send_routed(
        &self,
        relay: &RelayPath,
        route: Route,
        transmit: &QuinnTransmit,
    ) -> io::Result<()> {
        match route {
            Route::Direct(a) | Route::PeerRelay(a) => self.send_to(a, transmit),
            Route::OurRelay(to) => relay.send_via_ours(to, transmit),
            // Nowhere to send yet: lost, and sent again by quinn.
            Route::None => Ok(()),
        }
    }

    /// Sends quinn's `transmit` to `destination` from the socket its route names.
    fn send_to(&self, destination: SocketAddr, transmit: &QuinnTransmit) -> io::Result<()> {
        let routed = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&destination)
            .cloned();
        self.sending_lane.store(
            routed.as_ref().map_or(u32::MAX, |s| s.id),
            Ordering::Relaxed,
        );
        let slot = routed.unwrap_or_else(|| self.sender(destination.is_ipv6()));
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
        let Some(relay) = self.relay.get().filter(|r| r.peer() == destination) else {
            return self.send_to(destination, transmit);
        };
        let (route, copy) = relay.routes();
        if let Some(copy) = copy {
            // Best effort: the datagram's own way below decides what quinn is told.
            let _ = self.send_routed(relay, copy, transmit);
        }
        self.send_routed(relay, route, transmit)
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
        self.poll_relay(cx, bufs, meta)
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

impl DemuxSocket {
    /// The next QUIC datagram that came through our allocation, as from the peer's one
    /// address.
    fn poll_relay(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Some(relay) = self.relay.get().filter(|r| r.allocation().is_some()) else {
            return Poll::Pending;
        };
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Pending;
        };
        let Poll::Ready(len) = relay.poll_incoming(cx, buf) else {
            return Poll::Pending;
        };
        let peer = relay.peer();
        *m = RecvMeta::default();
        m.addr = if self.dual_stack() {
            SocketAddr::V6(to_v6(peer))
        } else {
            peer
        };
        m.len = len;
        m.stride = len;
        Poll::Ready(Ok(1))
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
        let lane = self.demux.sending_lane.load(Ordering::Relaxed);
        let routed = (lane != u32::MAX)
            .then(|| self.demux.slots().iter().find(|s| s.id == lane).cloned())
            .flatten();
        let primary = routed.unwrap_or_else(|| {
            self.demux
                .sender(self.demux.sending_v6.load(Ordering::Relaxed))
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::bind;
    use quinn::{Runtime, TokioRuntime};

    #[test]
    fn quinns_mapped_addresses_are_ipv4_again() {
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

        // QUIC to an address whose probes arrived on the main socket leaves from it; to
        // others, from the main socket until the puncher picks another.
        let other = tokio::net::UdpSocket::bind((loopback, 0)).await.unwrap();
        let send = |d: &DemuxSocket, to: SocketAddr| {
            d.try_send(&QuinnTransmit {
                destination: to,
                ecn: None,
                contents: b"\x40out",
                segment_size: None,
                src_ip: None,
            })
            .unwrap()
        };
        let mut buf = [0u8; 64];
        send(&demux, other.local_addr().unwrap());
        assert_eq!(other.recv_from(&mut buf).await.unwrap().1, main_addr);
        demux.set_primary(7);
        send(&demux, other.local_addr().unwrap());
        assert_eq!(other.recv_from(&mut buf).await.unwrap().1, extra_addr);
        send(&demux, peer_addr);
        assert_eq!(peer.recv_from(&mut buf).await.unwrap().1, main_addr);
        assert_eq!(demux.socket_for(peer_addr), MAIN_SOCKET);

        // A lane socket: QUIC to whoever probed it leaves from it, and it is never pruned.
        let lane = bind(loopback, 0).unwrap();
        let lane_addr = lane.local_addr().unwrap();
        demux.add_lane(3, wrap(lane));
        other.send_to(&probe, lane_addr).await.unwrap();
        other.send_to(b"\x40lane", lane_addr).await.unwrap();
        assert_eq!(
            recv_one(&demux).await,
            (other.local_addr().unwrap(), b"\x40lane".to_vec())
        );
        assert_eq!(probes.recv().await.unwrap().0, 3);
        send(&demux, other.local_addr().unwrap());
        assert_eq!(other.recv_from(&mut buf).await.unwrap().1, lane_addr);
        assert_eq!(demux.socket_for(other.local_addr().unwrap()), 3);
        // Pruning keeps the main socket, the lanes and the primary.
        demux.add(8, wrap(bind(loopback, 0).unwrap()));
        demux.prune();
        let ids: Vec<SocketId> = demux.slots().iter().map(|s| s.id).collect();
        assert_eq!(ids, [MAIN_SOCKET, 7, 3]);
    }
}
