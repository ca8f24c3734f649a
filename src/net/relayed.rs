//! The relay under quinn's socket: the [`Router`]'s decisions applied to real datagrams.
//! The [`DemuxSocket`](super::DemuxSocket) asks it where each QUIC datagram to the peer
//! goes and hands it what arrives through our allocation; quinn sees the peer at one
//! address ([`RelayPath::peer`]) whichever way the data goes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::Transmit as QuinnTransmit;
use tokio::sync::{mpsc, watch};

use super::demux::DemuxSocket;
use super::driver::ProbeIo;
use super::guard::{self, SessionTag, Verdict};
use super::route::{Route, Router};
use crate::punch::{PathKind, PunchEvent};
use crate::relay::Allocation;
use crate::ticket::{CandidateKind, FullTicket, Ticket};

/// How long connecting waits for the relay to let the peer's addresses in.
const PERMIT_WAIT: Duration = Duration::from_secs(3);

/// What a side without an allocation sends to the peer's relayed address so that the peer
/// learns where it is: not QUIC (first byte zero), dropped on arrival.
const RELAY_OPENER: &[u8] = b"\0p2pcopy relay opener";

/// How often a side without an allocation sends [`RELAY_OPENER`] while connecting.
const OPENER_INTERVAL: Duration = Duration::from_millis(500);

/// Which way the data goes now, for the session's `path_changed` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathNow {
    /// [`PathKind::Relayed`], or how the direct path's address was learned.
    pub kind: PathKind,
    /// Where our datagrams go: the relay's address for the peer, or the peer's own.
    pub remote: SocketAddr,
}

/// A run's relay routing: the router, our allocation (if we hold one) and what arrives
/// through it.
pub(super) struct RelayPath {
    router: Mutex<Router>,
    alloc: Option<Arc<Allocation>>,
    incoming: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    now: watch::Sender<PathNow>,
    tag: SessionTag,
    /// How the direct path's address was learned.
    direct_kind: Mutex<PathKind>,
}

impl RelayPath {
    /// Routing for `router`; reads what arrives through `alloc` (a task forwards it).
    pub(super) fn new(router: Router, alloc: Option<Arc<Allocation>>, tag: SessionTag) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        if let Some(a) = alloc.clone() {
            tokio::spawn(async move {
                while let Ok(got) = a.recv_from().await {
                    // Full: quinn reads too slowly, a loss like any other.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(got) {
                        return;
                    }
                }
            });
        }
        let first = PathNow {
            kind: PathKind::Relayed,
            remote: router.peer(),
        };
        RelayPath {
            router: Mutex::new(router),
            alloc,
            incoming: Mutex::new(rx),
            now: watch::channel(first).0,
            tag,
            direct_kind: Mutex::new(PathKind::PeerReflexive),
        }
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address quinn sees the peer at.
    pub(super) fn peer(&self) -> SocketAddr {
        self.router().peer()
    }

    /// Our allocation, if we hold one.
    pub(super) fn allocation(&self) -> Option<&Arc<Allocation>> {
        self.alloc.as_ref()
    }

    /// Whether datagrams from `from` on our own sockets come from the peer's relay.
    pub(super) fn is_peers_relay(&self, from: SocketAddr) -> bool {
        self.router().is_peers_relay(from)
    }

    /// QUIC of the peer arrived on our own sockets from `from`.
    pub(super) fn heard_directly(&self, from: SocketAddr) {
        self.router().heard_directly(from, Instant::now());
    }

    /// The puncher confirmed a direct path to `addr`, an address of this `kind`.
    pub(super) fn confirmed(&self, addr: SocketAddr, kind: PathKind) {
        tracing::info!(%addr, ?kind, "direct path confirmed: the data moves onto it");
        *self.direct_kind.lock().unwrap_or_else(|e| e.into_inner()) = kind;
        self.router().confirmed(addr, Instant::now());
    }

    /// Which way the data goes now.
    pub(super) fn current(&self) -> PathNow {
        self.routes();
        *self.now.borrow()
    }

    /// Which way the data goes now, and a receiver told of each change.
    pub(super) fn watch(&self) -> watch::Receiver<PathNow> {
        self.now.subscribe()
    }

    /// Where the next datagram to the peer goes, and where a copy of it goes while the
    /// direct path is in doubt (noting a change for the watchers).
    pub(super) fn routes(&self) -> (Route, Option<Route>) {
        let (route, copy) = self.router().routes(Instant::now());
        let now = match route {
            Route::Direct(a) => PathNow {
                kind: *self.direct_kind.lock().unwrap_or_else(|e| e.into_inner()),
                remote: a,
            },
            Route::OurRelay(_) | Route::PeerRelay(_) | Route::None => PathNow {
                kind: PathKind::Relayed,
                remote: self.alloc.as_ref().map_or_else(
                    || match route {
                        Route::PeerRelay(r) => r,
                        _ => self.router().peer(),
                    },
                    |a| a.relayed_addr(),
                ),
            },
        };
        self.now.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                tracing::debug!(?route, "the data to the peer goes another way");
            }
            *old = now;
            changed
        });
        (route, copy)
    }

    /// Sends quinn's `transmit` through our allocation to `to`, one datagram per segment.
    pub(super) fn send_via_ours(&self, to: SocketAddr, transmit: &QuinnTransmit) -> io::Result<()> {
        let Some(alloc) = &self.alloc else {
            return Ok(());
        };
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            if let Err(e) = alloc.try_send_to(to, segment) {
                // Lost like any datagram; quinn must not stop sending over other paths.
                tracing::debug!(error = %e, "relay send failed");
            }
        }
        Ok(())
    }

    /// The next QUIC datagram that came through our allocation, copied into `buf`; what is
    /// not QUIC (the peer's openers) only shows where the peer is.
    pub(super) fn poll_incoming(&self, cx: &mut Context, buf: &mut [u8]) -> Poll<usize> {
        let mut rx = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let Poll::Ready(Some((from, data))) = rx.poll_recv(cx) else {
                return Poll::Pending;
            };
            // Only addresses we permitted get through the relay: the peer's, from its
            // ticket. Pinning stays the authentication.
            if self.router().heard_via_relay(from, Instant::now()) {
                if let Some(a) = &self.alloc {
                    a.bind_channel(from);
                }
            }
            let quic = matches!(guard::classify_from(&self.tag, true, &data), Verdict::Quic);
            if !quic || data.len() > buf.len() {
                continue;
            }
            buf[..data.len()].copy_from_slice(&data);
            return Poll::Ready(data.len());
        }
    }
}

/// The relay routing for a run where we hold `ours` and/or the peer's ticket lists a
/// relayed address; `None` when neither side has a relay.
pub(super) fn relay_path(
    ours: Option<&Arc<Allocation>>,
    peer: &Ticket,
    tag: SessionTag,
) -> Option<RelayPath> {
    let Ticket::Full(t) = peer else {
        return None;
    };
    // Our allocation sends to the peer's public addresses until the peer is heard.
    let fallback = t
        .candidates
        .iter()
        .filter(|c| c.kind != CandidateKind::Relayed && c.addr.is_ipv4())
        .map(|c| c.addr)
        .collect();
    let router = Router::new(ours.map(|a| a.relayed_addr()), t.relayed(), fallback)?;
    tracing::info!(peer = %router.peer(), ours = ?ours.map(|a| a.relayed_addr()), "QUIC starts over the relay");
    Some(RelayPath::new(router, ours.cloned(), tag))
}

/// Lets every IP address of the peer's ticket in through our allocation (TURN permissions
/// are per IP, so a symmetric NAT's any port gets through; nobody else does), and binds a
/// channel to its relayed address; waits at most [`PERMIT_WAIT`].
pub(super) async fn permit(alloc: &Arc<Allocation>, peer: &FullTicket) {
    let family = alloc.relayed_addr().is_ipv4();
    let mut ips: Vec<IpAddr> = Vec::new();
    for c in &peer.candidates {
        if c.addr.is_ipv4() == family && !ips.contains(&c.addr.ip()) {
            ips.push(c.addr.ip());
        }
    }
    if let Some(r) = peer.relayed() {
        alloc.bind_channel(r);
    }
    let mut asks = tokio::task::JoinSet::new();
    for ip in ips {
        let a = alloc.clone();
        asks.spawn(async move { (ip, a.permit(ip).await) });
    }
    let _ = tokio::time::timeout(PERMIT_WAIT, async {
        while let Some(done) = asks.join_next().await {
            match done {
                Ok((ip, Err(e))) => tracing::info!(%ip, error = %e, "relay permission refused"),
                Ok((ip, Ok(()))) => tracing::debug!(%ip, "relay permission"),
                Err(_) => {}
            }
        }
    })
    .await;
}

/// Sends openers to the peer's relayed address `to` until `deadline`: the peer's
/// allocation learns from them where we are (a QUIC server sends nothing first).
pub(super) fn opener(
    demux: Arc<DemuxSocket>,
    to: SocketAddr,
    deadline: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while Instant::now() < deadline {
            let _ = demux.send_plain(to, RELAY_OPENER);
            tokio::time::sleep(OPENER_INTERVAL).await;
        }
    })
}

/// A puncher left running after a relayed connection stood, moving the data onto the
/// direct path it confirms.
pub(super) struct Background {
    stop: watch::Sender<bool>,
    driver: tokio::task::JoinHandle<ProbeIo>,
    forward: tokio::task::JoinHandle<()>,
}

impl Background {
    /// Follows the puncher (`driver`, told to stop through `stop`) and hands each path it
    /// confirms to the relay routing.
    pub(super) fn start(
        mut events: mpsc::UnboundedReceiver<PunchEvent>,
        stop: watch::Sender<bool>,
        driver: tokio::task::JoinHandle<ProbeIo>,
        demux: Arc<DemuxSocket>,
    ) -> Background {
        let forward = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    PunchEvent::Confirmed { remote, kind, .. } => {
                        if let Some(r) = demux.relay() {
                            r.confirmed(remote, kind);
                        }
                    }
                    PunchEvent::TimedOut { .. } => return,
                    PunchEvent::RoundStarted { .. } => {}
                }
            }
        });
        Background {
            stop,
            driver,
            forward,
        }
    }

    /// Stops punching and gives the probe I/O back.
    pub(super) async fn stop(self) -> Result<ProbeIo, tokio::task::JoinError> {
        let _ = self.stop.send(true);
        self.forward.abort();
        self.driver.await
    }

    /// Stops both tasks at once (the dialer is dropped).
    pub(super) fn abort(&self) {
        self.driver.abort();
        self.forward.abort();
    }
}
