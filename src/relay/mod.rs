//! TURN relays (RFC 8656) of the user's own choosing: the way through when no direct path
//! exists (both peers behind symmetric NATs, or UDP blocked).
//!
//! Rooms:
//! - [`uri`]: `turn:`/`turns:` URIs (RFC 7065);
//! - [`creds`]: long-term and TURN REST credentials, and [`Secret`], which never prints;
//! - [`proto`]: TURN messages on the crate's STUN codec, ChannelData, stream framing;
//! - [`client`]: the TURN client as a sans-IO state machine;
//! - this file also has [`RelayConfig`], a relay with its credentials (the CLI's
//!   `--relay` flags and config file make them);
//! - this file: [`Allocation`], the thin async shell over UDP, TCP or TLS, and
//!   [`RelayError`]; `transport.rs` beside it opens the transport to the server.
//!
//! The relayed address is UDP whatever the transport to the server, so the peer always
//! sends plain UDP (QUIC) to it. The relay sees QUIC ciphertext only; the peers' pinned
//! certificates stay the authentication.

pub mod client;
pub mod creds;
pub mod proto;
mod transport;
pub mod uri;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch, Notify};

pub use client::Failure;
use client::{Client, Event, Grant, Input, State};
pub use creds::{Credentials, Secret};
use transport::{connect, resolve, Reader, Writer};
pub use uri::{RelayUri, Transport, UriError};

/// One relay to use, with what it takes to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Where.
    pub uri: RelayUri,
    /// How to authenticate.
    pub creds: Credentials,
}

/// Datagrams queued for a TCP or TLS relay before more are dropped: about a megabyte, a
/// few round trips of a fast path.
const STREAM_QUEUE: usize = 1024;

/// How long opening an allocation may take, from name lookup to the relayed address.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

// Defined beside the crate's `Error`, which carries it, because `error` sits below every
// I/O shell (tests/layers.rs).
pub use crate::error::RelayError;

impl From<Failure> for RelayError {
    fn from(f: Failure) -> RelayError {
        match f {
            Failure::Refused { code, reason } => RelayError::Refused { code, reason },
            Failure::Timeout => RelayError::Timeout(client::TRANSACTION_TIMEOUT),
            Failure::Protocol(why) => RelayError::Protocol(why.into()),
        }
    }
}

/// What [`Allocation::open`] found out, for `doctor` and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    /// The server's address.
    pub server: SocketAddr,
    /// The transport to it.
    pub transport: Transport,
    /// The address on the relay that peers send to.
    pub relayed: SocketAddr,
    /// Our address as the relay sees it.
    pub mapped: Option<SocketAddr>,
    /// Round trip of the request that made the allocation.
    pub rtt: Duration,
    /// How long the server keeps it between refreshes.
    pub lifetime: Duration,
}

/// One relay as `doctor` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayCheck {
    /// The relay, as configured.
    pub uri: RelayUri,
    /// The allocation it gave, or why not.
    pub result: Result<AllocationInfo, RelayError>,
}

impl RelayCheck {
    /// The report line, after "Relay ".
    pub fn line(&self) -> String {
        match &self.result {
            Ok(a) => format!(
                "{} ({} to {}): {} ms, relayed address {}{}",
                self.uri,
                a.transport,
                a.server,
                a.rtt.as_millis(),
                a.relayed,
                a.mapped
                    .map(|m| format!(", you appear as {m}"))
                    .unwrap_or_default()
            ),
            Err(e) => format!("{} ({}): {e}", self.uri, self.uri.transport),
        }
    }
}

/// Opens an allocation on each relay in turn and releases it again: what `doctor` reports.
pub async fn check(relays: &[RelayConfig]) -> Vec<RelayCheck> {
    let mut found = Vec::new();
    for r in relays {
        let result = match Allocation::open(&r.uri, &r.creds).await {
            Ok(a) => {
                let info = a.info();
                a.close().await;
                Ok(info)
            }
            Err(e) => {
                tracing::info!(relay = %r.uri, error = %e, "relay check failed");
                Err(e)
            }
        };
        found.push(RelayCheck {
            uri: r.uri.clone(),
            result,
        });
    }
    found
}

/// A live allocation on a TURN server, kept refreshed by a background task until dropped
/// or [closed](Allocation::close).
pub struct Allocation {
    info: AllocationInfo,
    shared: Arc<Shared>,
    writer: Writer,
    /// Datagrams [`Allocation::try_send_to`] queued for a stream transport's writer task.
    queue: Option<mpsc::Sender<Vec<u8>>>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: Mutex<Client>,
    /// Set when the transport to the server fails under the client.
    broken: Mutex<Option<RelayError>>,
    /// Wakes the driver after a command queued something to send.
    wake: Notify,
    /// Bumped by the driver after every step, for commands waiting on an answer.
    stepped: watch::Sender<u64>,
}

impl Shared {
    /// Why the transport to the server failed, if it did (the driver has then stopped).
    fn broken(&self) -> Option<RelayError> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        // A panic elsewhere while holding the lock leaves a usable client: its state is
        // only ever changed whole by its own methods.
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Waits, step by step of the driver, until the client holds an allocation; stops the
/// driver when the transport breaks or the client gives up.
async fn allocated(
    shared: &Shared,
    mut steps: watch::Receiver<u64>,
    driver: &tokio::task::JoinHandle<()>,
    server: SocketAddr,
    transport: Transport,
) -> Result<AllocationInfo, RelayError> {
    loop {
        if let Some(e) = shared
            .broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            driver.abort();
            return Err(e);
        }
        {
            let c = shared.client();
            if let (State::Allocated { relayed }, Some(info)) = (c.state(), c.info) {
                return Ok(AllocationInfo {
                    server,
                    transport,
                    relayed,
                    mapped: c.mapped(),
                    rtt: info.0,
                    lifetime: info.1,
                });
            }
            if c.state() == State::Closed {
                driver.abort();
                return Err(c.failure.clone().map_or(RelayError::Closed, Into::into));
            }
        }
        if steps.changed().await.is_err() {
            return Err(RelayError::Closed);
        }
    }
}

impl Allocation {
    /// Connects to the relay `uri` names, authenticates with `creds` and allocates a UDP
    /// relayed address, all within [`OPEN_TIMEOUT`].
    pub async fn open(uri: &RelayUri, creds: &Credentials) -> Result<Allocation, RelayError> {
        match tokio::time::timeout(OPEN_TIMEOUT, Self::open_inner(uri, creds)).await {
            Ok(r) => r,
            Err(_) => Err(RelayError::Timeout(OPEN_TIMEOUT)),
        }
    }

    async fn open_inner(uri: &RelayUri, creds: &Credentials) -> Result<Allocation, RelayError> {
        let server = resolve(uri).await?;
        let (reader, writer) = connect(uri, server).await?;
        let (username, password) = creds.resolve(SystemTime::now());
        let client = Client::new(uri.transport, username, password, Instant::now());
        let renew = Renew::new(creds);
        let (stepped, steps) = watch::channel(0);
        let shared = Arc::new(Shared {
            client: Mutex::new(client),
            broken: Mutex::new(None),
            wake: Notify::new(),
            stepped,
        });
        let (tx, rx) = mpsc::channel(1024);
        let driver = tokio::spawn(drive(shared.clone(), reader, writer.clone(), tx, renew));
        let info = allocated(&shared, steps, &driver, server, uri.transport).await?;
        tracing::info!(relay = %uri, %server, relayed = %info.relayed, rtt_ms = info.rtt.as_millis() as u64, "relay allocation");
        // Over TCP or TLS a send waits for the stream; QUIC's datagrams queue for a task.
        let (queue, writer_task) = match &writer {
            Writer::Udp(_) => (None, None),
            Writer::Stream(_) => {
                let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
                let w = writer.clone();
                let task = tokio::spawn(async move {
                    while let Some(frame) = rx.recv().await {
                        if let Err(e) = w.send(&frame).await {
                            tracing::debug!(error = %e, "cannot send to the relay");
                            return;
                        }
                    }
                });
                (Some(tx), Some(task))
            }
        };
        Ok(Allocation {
            info,
            shared,
            writer,
            queue,
            writer_task,
            incoming: tokio::sync::Mutex::new(rx),
            driver,
        })
    }

    /// What the allocation is.
    pub fn info(&self) -> AllocationInfo {
        self.info
    }

    /// The address on the relay that peers send to.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.info.relayed
    }

    /// Installs (and keeps refreshing) a permission for `peer`: only then does the relay
    /// pass its datagrams in, and ours out to it.
    pub async fn permit(&self, peer: IpAddr) -> Result<(), RelayError> {
        self.shared.client().create_permission(peer, Instant::now());
        self.shared.wake.notify_one();
        let mut steps = self.shared.stepped.subscribe();
        loop {
            if let Some(e) = self.shared.broken() {
                return Err(e);
            }
            {
                let c = self.shared.client();
                match c.permission(peer) {
                    Some(Grant::Ok) => return Ok(()),
                    Some(Grant::Failed(f)) => return Err(f.clone().into()),
                    _ if c.state() == State::Closed => return Err(RelayError::Closed),
                    _ => {}
                }
            }
            if steps.changed().await.is_err() {
                return Err(RelayError::Closed);
            }
        }
    }

    /// Sends `data` to `peer` through the relay (a permission for its IP must exist).
    pub async fn send_to(&self, peer: SocketAddr, data: &[u8]) -> Result<(), RelayError> {
        let wrapped = {
            let c = self.shared.client();
            if c.state() == State::Closed {
                return Err(RelayError::Closed);
            }
            c.wrap(peer, data)
        };
        self.writer
            .send(&wrapped)
            .await
            .map_err(|e| RelayError::Unreachable(e.to_string()))
    }

    /// Binds a channel to `peer` in the background: its data then costs 4 bytes of header
    /// instead of 36, which keeps a full-sized QUIC datagram within a 1500-byte MTU.
    pub fn bind_channel(&self, peer: SocketAddr) {
        self.shared.client().bind_channel(peer, Instant::now());
        self.shared.wake.notify_one();
    }

    /// Sends `data` to `peer` through the relay without waiting (for quinn's socket): over
    /// UDP straight away, over TCP or TLS through a queue. A full socket or queue drops the
    /// datagram, as a congested path would; QUIC sends it again.
    pub fn try_send_to(&self, peer: SocketAddr, data: &[u8]) -> std::io::Result<()> {
        let wrapped = {
            let c = self.shared.client();
            if c.state() == State::Closed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the relay allocation is closed",
                ));
            }
            c.wrap(peer, data)
        };
        match (&self.writer, &self.queue) {
            (Writer::Udp(sock), _) => match sock.try_send(&wrapped) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                other => other.map(|_| ()),
            },
            (_, Some(queue)) => {
                let _ = queue.try_send(wrapped);
                Ok(())
            }
            (_, None) => Ok(()),
        }
    }

    /// The next datagram a peer sent to the relayed address.
    pub async fn recv_from(&self) -> Result<(SocketAddr, Vec<u8>), RelayError> {
        match self.incoming.lock().await.recv().await {
            Some(got) => Ok(got),
            None => Err(self.shared.broken().unwrap_or(RelayError::Closed)),
        }
    }

    /// Releases the allocation on the server (waits up to two seconds for its answer).
    pub async fn close(self) {
        self.release().await;
    }

    /// [`Allocation::close`] for a shared allocation: released on the server; every use
    /// after it fails.
    pub async fn release(&self) {
        self.shared.client().close(Instant::now());
        self.shared.wake.notify_one();
        let mut steps = self.shared.stepped.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.shared.client().state() != State::Closed && self.shared.broken().is_none() {
                if steps.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.driver.abort();
        if let Some(t) = &self.writer_task {
            t.abort();
        }
    }
}

/// TURN REST credentials expire ([`creds::REST_TTL`]): new ones are derived an hour
/// before, so a long transfer's refreshes keep authenticating.
struct Renew {
    creds: Credentials,
    at: Option<SystemTime>,
}

impl Renew {
    const EARLY: Duration = Duration::from_secs(3600);

    fn new(creds: &Credentials) -> Renew {
        let at = matches!(creds, Credentials::Rest { .. })
            .then(|| SystemTime::now() + creds::REST_TTL.saturating_sub(Self::EARLY));
        Renew {
            creds: creds.clone(),
            at,
        }
    }

    /// Gives the client fresh credentials when the old ones near their expiry.
    fn check(&mut self, client: &mut Client) {
        let now = SystemTime::now();
        if self.at.is_some_and(|at| now >= at) {
            let (username, password) = self.creds.resolve(now);
            client.set_credentials(username, password);
            self.at = Some(now + creds::REST_TTL.saturating_sub(Self::EARLY));
            tracing::debug!("TURN REST credentials derived again");
        }
    }
}

/// The background task: reads from the server, feeds the client, sends what it asks, keeps
/// its timers.
async fn drive(
    shared: Arc<Shared>,
    mut reader: Reader,
    writer: Writer,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    mut renew: Renew,
) {
    loop {
        let (out, timeout) = {
            let mut c = shared.client();
            // Checked at every step (the permission refresh wakes it every few minutes); a
            // request already queued with the old credentials gets 401 and is sent again
            // with the new ones.
            renew.check(&mut c);
            let mut out = Vec::new();
            while let Some(t) = c.poll_transmit() {
                out.push(t);
            }
            while let Some(e) = c.poll_event() {
                log_event(&e);
            }
            (out, c.poll_timeout())
        };
        shared.stepped.send_modify(|n| *n += 1);
        for m in out {
            if let Err(e) = writer.send(&m).await {
                tracing::debug!(error = %e, "cannot send to the relay");
            }
        }
        if shared.client().state() == State::Closed {
            return;
        }
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = reader.next() => match got {
                Ok(bytes) => {
                    let mut c = shared.client();
                    if let Input::Data { peer, data } = c.handle_input(&bytes, Instant::now()) {
                        if incoming.try_send((peer, data.to_vec())).is_err() {
                            tracing::trace!(%peer, "relayed datagram dropped: nobody reads fast enough");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relay transport failed");
                    *shared.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    shared.stepped.send_modify(|n| *n += 1);
                    return;
                }
            },
            _ = sleep => shared.client().handle_timeout(Instant::now()),
            _ = shared.wake.notified() => {}
        }
    }
}

fn log_event(e: &Event) {
    match e {
        Event::Allocated { relayed, .. } => tracing::debug!(%relayed, "TURN allocation made"),
        Event::Failed(f) => tracing::debug!(?f, "TURN allocation failed"),
        other => tracing::debug!(event = ?other, "TURN"),
    }
}
