//! The dialer: one run's socket as a QUIC endpoint that punches (through the driver's
//! task) and then connects or accepts, as often as the run needs a connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Runtime, TokioRuntime};
use tokio::sync::{mpsc, watch};

use super::demux::{canonical, DemuxSocket};
use super::driver::{drive, ProbeIo};
use super::guard::SessionTag;
use super::hold::PathRtt;
use super::relayed::{self, relay_path, Background, PathNow};
use super::socket::bind;
use crate::error::Error;
use crate::nat::BirthdayPart;
use crate::punch::{
    attempt_targets, Birthday, Lane, PathKind, PunchConfig, PunchEvent, Puncher, RoundTiming,
    Schedule, SocketId, BIRTHDAY_SOCKETS, V6_SOCKET,
};
use crate::relay::Allocation;
use crate::shown::shown;
use crate::ticket::Ticket;

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
    /// Which way the data goes, told of each change, when a relay is in play.
    pub path: Option<watch::Receiver<PathNow>>,
    /// Tells the sockets this connection's RTT while the link lives (receive holds).
    _rtt: RttFeed,
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
    peer_fp: Option<crate::fingerprint::Fingerprint>,
    client_cfg: Option<quinn::ClientConfig>,
    server_cfg: Option<quinn::ServerConfig>,
    /// What paths delivered before ([`Dialer::set_rate_memory`]).
    memory: Option<Arc<std::sync::Mutex<crate::rate_memory::RateMemory>>>,
    opener_ttl: Option<u32>,
    /// Where the last connection ran (our socket, its address); probed at once on a
    /// reconnect.
    last_path: Option<(SocketId, SocketAddr)>,
    /// The rounds both sides follow, from the lanes both tickets list.
    schedule: Schedule,
    /// Lanes past the main socket's: ours and the peer's port (empty without lanes).
    lanes: Vec<Lane>,
    /// Our allocation on the user's relay, kept (and refreshed) for the whole run.
    relay: Option<Arc<Allocation>>,
    /// Whether our allocation lets the peer's addresses in yet.
    permitted: bool,
    /// Punching that goes on beside a connection that started over the relay.
    background: Option<Background>,
    /// The task sending openers to the peer's relay (see [`super::relayed::opener`]).
    opener: Option<tokio::task::JoinHandle<()>>,
    /// How rounds lie around their boundaries ([`Dialer::set_round_timing`]).
    timing: RoundTiming,
}

/// Puts the main socket (and the IPv6 one) behind the demultiplexer quinn and the puncher
/// share, keeping a second handle on the main socket for probes with their own TTL; the
/// lanes come later ([`add_lanes`]).
fn share_sockets(
    runtime: &Arc<TokioRuntime>,
    socket: std::net::UdpSocket,
    v6: Option<std::net::UdpSocket>,
    tag: SessionTag,
) -> Result<ProbeIo, Error> {
    let probe_socket = socket
        .try_clone()
        .map_err(|e| Error::Internal(format!("cannot clone socket: {e}")))?;
    let (probe_tx, probe_rx) = mpsc::channel(1024);
    let rtt = Arc::<PathRtt>::default();
    let inner = wrap(runtime, socket, &rtt)?;
    let demux = Arc::new(DemuxSocket::with_rtt(inner, probe_tx, tag, rtt));
    if let Some(v6) = v6 {
        demux.add_v6(wrap(runtime, v6, demux.path_rtt())?);
    }
    Ok(ProbeIo {
        socket: probe_socket,
        lanes: Vec::new(),
        incoming: probe_rx,
        demux,
    })
}

/// quinn's view of one of the run's sockets that may carry the connection: with receive
/// holds on Unix ([`super::held`]), quinn's own wrapper elsewhere.
fn wrap(
    runtime: &Arc<TokioRuntime>,
    sock: std::net::UdpSocket,
    rtt: &Arc<PathRtt>,
) -> Result<Arc<dyn quinn::AsyncUdpSocket>, Error> {
    let err = |e: std::io::Error| Error::Internal(format!("socket: {e}"));
    #[cfg(unix)]
    {
        let _ = runtime;
        let held = super::held::HeldSocket::new(sock, rtt.clone()).map_err(err)?;
        Ok(Arc::new(held))
    }
    #[cfg(not(unix))]
    {
        let _ = rtt;
        runtime.wrap_udp_socket(sock).map_err(err)
    }
}

/// Copies the connection's RTT to the sockets every [`RTT_FEED_EVERY`] from a fresh start
/// (the least RTT of this connection's path, not an earlier one's) until the connection
/// closes, then says it is unknown; ends when the returned handle is dropped.
fn feed_rtt(conn: &quinn::Connection, demux: &Arc<DemuxSocket>) -> RttFeed {
    let conn = conn.clone();
    let demux = demux.clone();
    demux.set_rtt(None);
    let task = tokio::spawn(async move {
        loop {
            // The minimum, not the smoothed RTT: see `PathRtt`.
            demux.set_rtt(Some(conn.min_rtt()));
            tokio::select! {
                _ = conn.closed() => break,
                _ = tokio::time::sleep(RTT_FEED_EVERY) => {}
            }
        }
        demux.set_rtt(None);
    });
    RttFeed(task.abort_handle())
}

/// How often the connection's RTT is copied to the sockets.
const RTT_FEED_EVERY: Duration = Duration::from_millis(250);

/// Stops [`feed_rtt`]'s task when dropped (it holds the connection, which must not
/// outlive the link).
#[derive(Debug)]
struct RttFeed(tokio::task::AbortHandle);

impl Drop for RttFeed {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The lane sockets as the dialer keeps them, from [`add_lanes`].
struct LaneSetup {
    /// Each lane socket's id and its clone for the puncher's probes.
    probes: Vec<(SocketId, std::net::UdpSocket)>,
    /// The lanes the schedule uses, each with the peer's port in it.
    lanes: Vec<Lane>,
    /// The id the next extra socket gets.
    next_socket: SocketId,
}

/// Hands our lane sockets to the demultiplexer and pairs them with the peer's lane ports,
/// in order, as far as the schedule has lanes.
fn add_lanes(
    demux: &DemuxSocket,
    runtime: &Arc<TokioRuntime>,
    ours: Vec<std::net::UdpSocket>,
    peer_lanes: &[u16],
    schedule: Schedule,
) -> Result<LaneSetup, Error> {
    let mut next_socket = V6_SOCKET + 1;
    let mut lane_io = Vec::new();
    let mut our_lanes = Vec::new();
    // Bound for the whole run, used or not, so that the ports our ticket lists stay
    // mapped to us.
    for (sock, peer_port) in ours
        .into_iter()
        .zip(peer_lanes.iter().copied().chain(std::iter::repeat(0)))
    {
        let id = next_socket;
        next_socket += 1;
        let probe = sock
            .try_clone()
            .map_err(|e| Error::Internal(format!("cannot clone socket: {e}")))?;
        demux.add_lane(id, wrap(runtime, sock, demux.path_rtt())?);
        lane_io.push((id, probe));
        if our_lanes.len() + 1 < schedule.lanes {
            our_lanes.push(Lane {
                socket: id,
                peer_port,
            });
        }
    }
    Ok(LaneSetup {
        probes: lane_io,
        lanes: our_lanes,
        next_socket,
    })
}

impl Drop for Dialer {
    fn drop(&mut self) {
        if let Some(bg) = &self.background {
            bg.abort();
        }
        if let Some(opener) = &self.opener {
            opener.abort();
        }
        self.demux.report_drops();
    }
}

impl Dialer {
    /// Makes the bound socket (STUN already done on it) a QUIC endpoint for talking to
    /// `peer`: a client for the sender (`is_client`), a server for the receiver.
    /// `v6` is the IPv6 socket, if this host has global IPv6 addresses; `birthday` is this
    /// side's part in the birthday technique, if the NATs call for it; `lanes` are the
    /// extra sockets whose ports our ticket lists ([`super::LaneSockets`]); `relay` is our
    /// allocation on the user's TURN relay, if we have one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        socket: std::net::UdpSocket,
        v6: Option<std::net::UdpSocket>,
        is_client: bool,
        identity: crate::tls::Identity,
        peer: Ticket,
        opener_ttl: Option<u32>,
        birthday: Option<BirthdayPart>,
        lanes: Option<super::LaneSockets>,
        relay: Option<Allocation>,
    ) -> Result<Dialer, Error> {
        let peer_fp = peer.fingerprint();
        let auth = crate::tls::PeerAuth::for_ticket(&peer);
        let bind_ip = socket
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?
            .ip();
        let runtime = Arc::new(TokioRuntime);
        let tag = SessionTag {
            local: identity.short_id(),
            peer: peer_fp.as_ref().map(crate::tls::short_id),
        };
        let mut probes = share_sockets(&runtime, socket, v6, tag)?;
        let demux = probes.demux.clone();
        let relay = relay.map(Arc::new);
        if let Some(path) = relay_path(relay.as_ref(), &peer, tag) {
            demux.set_relay(path);
        }
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        // Greased QUIC packets could start with our probe magic's first byte.
        endpoint_cfg.grease_quic_bit(false);
        let server_cfg = if is_client {
            None
        } else {
            Some(crate::tls::server_config(&identity, auth)?)
        };
        let client_cfg = if is_client {
            Some(crate::tls::client_config(&identity, auth)?)
        } else {
            None
        };
        let peer_lanes = match &peer {
            Ticket::Full(t) => t.lane_ports.clone(),
            Ticket::Bare(_) => Vec::new(),
        };
        let ours = lanes.map(|l| l.sockets).unwrap_or_default();
        let schedule = Schedule::new(ours.len() + 1, peer_lanes.len() + 1);
        let LaneSetup {
            probes: lane_io,
            lanes: our_lanes,
            next_socket,
        } = add_lanes(&demux, &runtime, ours, &peer_lanes, schedule)?;
        probes.lanes = lane_io;
        tracing::info!(?schedule, lanes = our_lanes.len(), "round schedule");
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_cfg,
            server_cfg.clone(),
            demux.clone(),
            runtime.clone(),
        )
        .map_err(|e| Error::Internal(format!("QUIC endpoint: {e}")))?;
        Ok(Dialer {
            endpoint,
            probes: Some(probes),
            demux,
            runtime,
            bind_ip,
            next_socket,
            birthday,
            is_client,
            identity,
            peer,
            peer_fp,
            client_cfg,
            server_cfg,
            memory: None,
            opener_ttl,
            last_path: None,
            schedule,
            lanes: our_lanes,
            relay,
            permitted: false,
            background: None,
            opener: None,
            timing: RoundTiming::SYNCED,
        })
    }

    /// Starts each connection from what its path delivered before, as `memory` remembers
    /// it, and remembers what it delivered ([`Dialer::remember`]).
    pub fn set_rate_memory(&mut self, memory: crate::rate_memory::RateMemory) {
        self.memory = Some(Arc::new(std::sync::Mutex::new(memory)));
    }

    /// Transport settings for a connection to `remote` that start from what the path
    /// delivered before; `None` when nothing is remembered (the configs' own apply).
    fn resumed_transport(&self, remote: SocketAddr) -> Option<Arc<quinn::TransportConfig>> {
        let memory = self.memory.as_ref()?;
        let r = memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recall(canonical(remote).ip())?;
        tracing::info!(%remote, rate_mbit = r.rate * 8e-6, rtt_ms = r.min_rtt.as_secs_f64() * 1e3, "remembered rate");
        Some(Arc::new(crate::quic::transport_config(Some(r))))
    }

    /// Notes what `connection`'s path delivered, for the next connection over it (when a
    /// memory is set and the connection sent enough to have found its path's rate).
    pub async fn remember(&self, connection: &quinn::Connection) {
        let Some(memory) = self.memory.clone() else {
            return;
        };
        let Ok(pace) = connection
            .congestion_state()
            .into_any()
            .downcast::<crate::congestion::Pace>()
        else {
            return;
        };
        let Some(r) = pace.remembered() else {
            return;
        };
        let peer = canonical(connection.remote_address()).ip();
        tracing::debug!(%peer, rate_mbit = r.rate * 8e-6, rtt_ms = r.min_rtt.as_secs_f64() * 1e3, "remembering the path's rate");
        let _ = tokio::task::spawn_blocking(move || {
            memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remember(peer, r)
        })
        .await;
    }

    /// Widens the rounds for a clock NTP did not correct ([`RoundTiming::UNSYNCED`]).
    pub fn set_round_timing(&mut self, timing: RoundTiming) {
        self.timing = timing;
    }

    /// When rounds fire: every 10 s in lanes when both tickets list them, else every 40 s.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Our allocation on the user's relay, if we have one.
    pub fn relay(&self) -> Option<&Allocation> {
        self.relay.as_deref()
    }

    /// Releases our allocation on the relay, if we hold one (bounded: two seconds), once
    /// the connection is closed: the server would otherwise keep it for its lifetime.
    pub async fn release_relay(&self) {
        if let Some(a) = &self.relay {
            a.release().await;
        }
    }

    /// The QUIC endpoint (close it when the run ends).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Asks STUN servers again from the main socket while QUIC holds it (see
    /// [`super::Restun`]).
    pub fn restun(&self) -> super::Restun {
        super::Restun(self.demux.clone())
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
    /// `first_round`, whose [`Schedule::index`] is `first_index`; after a lost connection
    /// the last working address is probed at once as well, which reconnects within a round
    /// trip when the NATs kept their mappings.
    pub async fn connect(
        &mut self,
        first_round: Instant,
        first_index: u64,
        deadline: Instant,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Link, ConnectFailure> {
        let fatal = ConnectFailure::Fatal;
        self.reclaim().await?;
        let relayed = self.demux.relay().map(|r| r.peer());
        if relayed.is_some() {
            self.open_relay_paths(deadline).await;
        }
        let cfg = self.punch_config(first_round, first_index, deadline);
        let mut paths = Paths {
            known: cfg.targets.iter().map(|t| (t.addr, t.kind)).collect(),
            observed_on: Vec::new(),
            // With a relay the client dials at once, through it; the puncher's paths take
            // over the same connection later.
            pending: relayed.filter(|_| self.is_client).into_iter().collect(),
            relayed,
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

        let result = self
            .wait_for_connection(&mut ev_rx, &mut paths, deadline, &mut on_progress)
            .await;
        if let (Ok(_), Some(_)) = (&result, relayed) {
            // Punching goes on beside the relayed connection.
            let demux = self.demux.clone();
            self.background = Some(Background::start(ev_rx, stop_tx, driver, demux));
            return Ok(self.link(result?, &paths));
        }
        let _ = stop_tx.send(true);
        match driver.await {
            Ok(io) => self.probes = Some(io),
            Err(e) => return Err(fatal(Error::Internal(format!("puncher task: {e}")))),
        }
        self.demux.prune();
        Ok(self.link(result?, &paths))
    }

    /// Stops the punching left running beside the last connection, taking its sockets
    /// back for the next attempt.
    async fn reclaim(&mut self) -> Result<(), ConnectFailure> {
        let Some(bg) = self.background.take() else {
            return Ok(());
        };
        match bg.stop().await {
            Ok(io) => self.probes = Some(io),
            Err(e) => {
                return Err(ConnectFailure::Fatal(Error::Internal(format!(
                    "puncher task: {e}"
                ))))
            }
        }
        self.demux.prune();
        Ok(())
    }

    /// Lets the peer's addresses in through our allocation (once: permissions are kept
    /// refreshed) and, without one of ours, opens the way from the peer's relay to us.
    async fn open_relay_paths(&mut self, deadline: Instant) {
        let Ticket::Full(t) = &self.peer else {
            return;
        };
        if let (Some(alloc), false) = (&self.relay, self.permitted) {
            self.permitted = true;
            relayed::permit(alloc, t).await;
        }
        if let (None, Some(theirs)) = (&self.relay, t.relayed()) {
            if let Some(old) = self.opener.take() {
                old.abort();
            }
            self.opener = Some(relayed::opener(self.demux.clone(), theirs, deadline));
        }
    }

    /// The puncher's settings for one connect attempt: the peer's addresses to probe, and
    /// this side's part in the birthday technique (opening its extra sockets now).
    fn punch_config(
        &mut self,
        first_round: Instant,
        first_index: u64,
        deadline: Instant,
    ) -> PunchConfig {
        let targets = attempt_targets(&self.peer, self.demux.dual_stack(), self.last_path);
        let birthday = match self.birthday {
            None => None,
            Some(BirthdayPart::Spray) => Some(Birthday::Spray {
                seed: rand::random(),
            }),
            Some(BirthdayPart::Open) => Some(Birthday::Open {
                sockets: self.open_extra_sockets(),
            }),
        };
        PunchConfig {
            local_id: self.identity.short_id(),
            peer_id: self.peer_fp.as_ref().map(crate::tls::short_id),
            targets,
            first_round,
            deadline,
            opener_ttl: self.opener_ttl,
            birthday,
            schedule: self.schedule,
            first_index,
            lanes: self.lanes.clone(),
            timing: self.timing,
        }
    }

    /// Follows the puncher's events until a QUIC connection stands: the client dials each
    /// confirmed path in turn, the server accepts the peer's dial.
    async fn wait_for_connection(
        &self,
        ev_rx: &mut mpsc::UnboundedReceiver<PunchEvent>,
        paths: &mut Paths,
        deadline: Instant,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<quinn::Connection, ConnectFailure> {
        let fatal = ConnectFailure::Fatal;
        let mut handshakes = tokio::task::JoinSet::new();
        let endpoint = &self.endpoint;
        loop {
            // The client dials each confirmed path in turn; the server waits for the dial.
            if let (Some(cfg), Some(remote)) =
                (self.client_cfg.as_ref(), paths.pending.first().copied())
            {
                paths.pending.remove(0);
                let mut cfg = cfg.clone();
                if let Some(t) = self.resumed_transport(remote) {
                    cfg.transport_config(t);
                }
                match dial(endpoint, &cfg, remote, deadline).await {
                    Ok(Some(conn)) => break Ok(conn),
                    // Through the relay again, until the deadline.
                    Ok(None) if paths.relayed == Some(remote) && Instant::now() < deadline => {
                        paths.pending.push(remote);
                        continue;
                    }
                    Ok(None) => continue,
                    Err(e) => break Err(fatal(e)),
                }
            }
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(PunchEvent::RoundStarted { round }) => on_progress(Progress::Round(round)),
                    Some(PunchEvent::Confirmed { socket, remote, kind, rtt, observed }) => {
                        tracing::info!(%remote, socket, ?kind, ?rtt, ?observed, "path confirmed");
                        match (paths.relayed, self.demux.relay()) {
                            (Some(_), Some(r)) => r.confirmed(remote, kind),
                            _ => paths.confirmed(remote, kind, observed),
                        }
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
                    let connecting = match (&self.server_cfg, self.resumed_transport(from)) {
                        (Some(cfg), Some(t)) => {
                            let mut cfg = cfg.clone();
                            cfg.transport_config(t);
                            incoming.accept_with(Arc::new(cfg))
                        }
                        _ => incoming.accept(),
                    };
                    let connecting = match connecting {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(%from, error = %shown(&e.to_string()), "rejected a connection attempt");
                            continue;
                        }
                    };
                    // Handshakes run side by side: one that stalls (a stranger's, or a first
                    // attempt whose packets were lost) must not hold up the real one.
                    handshakes.spawn(async move { (from, connecting.await) });
                }
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                    Ok((_, Ok(conn))) => break Ok(conn),
                    // Someone who is not the ticket's owner, or a broken handshake: keep waiting.
                    // A stranger's close reason is in `e`, shown by default: escaped.
                    Ok((from, Err(e))) => tracing::warn!(%from, error = %shown(&e.to_string()), "rejected a connection attempt"),
                    Err(e) => tracing::warn!(error = %e, "handshake task failed"),
                },
            }
        }
    }

    /// The established connection as a [`Link`], remembered as the path to probe first on
    /// a reconnect.
    fn link(&mut self, connection: quinn::Connection, paths: &Paths) -> Link {
        let mut remote = canonical(connection.remote_address());
        let mut kind = paths
            .known
            .iter()
            .find(|(a, _)| *a == remote)
            .map(|(_, k)| *k)
            .unwrap_or(PathKind::PeerReflexive);
        let path = self.demux.relay().map(|r| {
            let now = r.current();
            (remote, kind) = (now.remote, now.kind);
            r.watch()
        });
        if path.is_none() {
            self.last_path = Some((self.demux.socket_for(remote), remote));
        }
        let observed = paths
            .observed_on
            .iter()
            .find(|(a, _)| *a == remote)
            .map(|(_, us)| *us);
        let theirs = crate::tls::peer_fingerprint(&connection).unwrap_or_default();
        let verification_code = crate::tls::verification_code(self.identity.fingerprint(), &theirs);
        let rtt = feed_rtt(&connection, &self.demux);
        Link {
            connection,
            remote,
            kind,
            observed,
            authenticated: self.peer_fp.is_some(),
            verification_code,
            path,
            _rtt: rtt,
        }
    }
}

/// What one connect attempt learned about the peer's addresses.
struct Paths {
    /// Every address of the peer we know, and how we learned it: the targets, then the
    /// addresses paths were confirmed to.
    known: Vec<(SocketAddr, PathKind)>,
    /// Our own address as the peer saw it, per confirmed peer address.
    observed_on: Vec<(SocketAddr, SocketAddr)>,
    /// Confirmed paths the client has yet to dial.
    pending: Vec<SocketAddr>,
    /// The address quinn sees the peer at when a relay is in play.
    relayed: Option<SocketAddr>,
}

impl Paths {
    /// Notes a path the puncher confirmed.
    fn confirmed(&mut self, remote: SocketAddr, kind: PathKind, observed: Option<SocketAddr>) {
        if !self.known.iter().any(|(a, _)| *a == remote) {
            self.known.push((remote, kind));
        }
        if let Some(us) = observed {
            self.observed_on.push((remote, canonical(us)));
        }
        self.pending.push(remote);
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
