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
use super::socket::bind;
use crate::error::Error;
use crate::nat::BirthdayPart;
use crate::punch::{
    attempt_targets, Birthday, Lane, PathKind, PunchConfig, PunchEvent, Puncher, Schedule,
    SocketId, BIRTHDAY_SOCKETS, V6_SOCKET,
};
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
    opener_ttl: Option<u32>,
    /// Where the last connection ran (our socket, its address); probed at once on a
    /// reconnect.
    last_path: Option<(SocketId, SocketAddr)>,
    /// The rounds both sides follow, from the lanes both tickets list.
    schedule: Schedule,
    /// Lanes past the main socket's: ours and the peer's port (empty without lanes).
    lanes: Vec<Lane>,
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
    /// side's part in the birthday technique, if the NATs call for it; `lanes` are the
    /// extra sockets whose ports our ticket lists ([`super::LaneSockets`]).
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
    ) -> Result<Dialer, Error> {
        let peer_fp = peer.fingerprint();
        let auth = crate::tls::PeerAuth::for_ticket(&peer);
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
                .and_then(tokio::net::UdpSocket::from_std)
                .map_err(|e| Error::Internal(format!("cannot clone socket: {e}")))?;
            let io = runtime
                .wrap_udp_socket(sock)
                .map_err(|e| Error::Internal(format!("socket: {e}")))?;
            demux.add_lane(id, io);
            lane_io.push((id, probe));
            if our_lanes.len() + 1 < schedule.lanes {
                our_lanes.push(Lane {
                    socket: id,
                    peer_port,
                });
            }
        }
        tracing::info!(?schedule, lanes = our_lanes.len(), "round schedule");
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
                lanes: lane_io,
                incoming: probe_rx,
                demux: demux.clone(),
            }),
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
            opener_ttl,
            last_path: None,
            schedule,
            lanes: our_lanes,
        })
    }

    /// When rounds fire: every 10 s in lanes when both tickets list them, else every 40 s.
    pub fn schedule(&self) -> Schedule {
        self.schedule
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
        let cfg = PunchConfig {
            local_id: self.identity.short_id(),
            peer_id: self.peer_fp.as_ref().map(crate::tls::short_id),
            targets: targets.clone(),
            first_round,
            deadline,
            opener_ttl: self.opener_ttl,
            birthday,
            schedule: self.schedule,
            first_index,
            lanes: self.lanes.clone(),
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
        self.last_path = Some((self.demux.socket_for(remote), remote));
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
