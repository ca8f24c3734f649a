//! The TURN client as a sans-IO state machine (quinn's shape): no sockets, no clock.
//!
//! The caller feeds it what the server sent ([`Client::handle_input`], only datagrams or
//! frames that came from the server), and the time ([`Client::handle_timeout`] when
//! [`Client::poll_timeout`] says), sends what [`Client::poll_transmit`] gives to the server,
//! and reads [`Client::poll_event`]. After every call that changes it, drain the polls.
//!
//! It allocates (an unauthenticated Allocate, the 401 that names realm and nonce, the
//! authenticated Allocate; a 438 stale nonce is retried with the new one), refreshes the
//! allocation, permissions and channels before they expire, and wraps and unwraps the data
//! of the peers (Send/Data indications, or ChannelData once a channel is bound).
//!
//! On a shared socket, datagrams that are not TURN come back as [`Input::NotTurn`], so the
//! caller can hand them to whoever else reads that socket (QUIC, the puncher).
//!
//! This file has the client's state and its calls; `transaction.rs` beside it builds the
//! requests, matches their answers and applies them.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::creds::{long_term_key, Secret};
use super::proto::{self, Message};
use super::Transport;

mod transaction;

use transaction::{Kind, Pending};

/// First retransmission of a request over UDP; doubled each time (RFC 8489 section 6.2.1
/// says 500 ms for the internet at large; a relay the user chose is usually near).
const RTO: Duration = Duration::from_millis(250);
/// How long a request may go unanswered before it has failed. RFC 8489's 39.5 s is meant for
/// a background agent; a person waiting for a transfer or `doctor` is better served by an
/// answer within seconds, and a relay that slow would be no use for a transfer anyway.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(8);
/// How many stale-nonce (438) answers in a row a request survives.
const MAX_STALE: u8 = 3;
/// Permissions last 300 s and channels 600 s (RFC 8656 sections 9 and 12); refreshed a
/// minute early.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// The allocation lifetime when the server does not say (RFC 8656 section 3.2).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Why a request (or the whole allocation) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with an error (401 Unauthorized, 403 Forbidden, 437 Allocation
    /// Mismatch, 486 Allocation Quota Reached, ...).
    Refused {
        /// The STUN error code.
        code: u16,
        /// The server's reason phrase (printable characters only).
        reason: String,
    },
    /// No answer within [`TRANSACTION_TIMEOUT`].
    Timeout,
    /// The server broke the protocol (e.g. a success without a relayed address).
    Protocol(&'static str),
}

/// What happened, for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The allocation exists.
    Allocated {
        /// The address on the relay that peers send to.
        relayed: SocketAddr,
        /// Our address as the relay sees it.
        mapped: Option<SocketAddr>,
        /// How long the server keeps it without a refresh.
        lifetime: Duration,
        /// Round trip of the request that created it.
        rtt: Duration,
    },
    /// The allocation could not be made, or is lost (a refresh failed).
    Failed(Failure),
    /// A permission for this peer IP is installed (or refreshed).
    Permitted(IpAddr),
    /// A permission could not be installed.
    PermissionFailed(IpAddr, Failure),
    /// A channel to this peer is bound; its data now goes as ChannelData.
    ChannelBound(SocketAddr),
    /// A channel could not be bound (data keeps going in Send indications).
    ChannelFailed(SocketAddr, Failure),
    /// The allocation was released ([`Client::close`]).
    Closed,
}

/// What a datagram or frame from the server was.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Not TURN: someone else's on a shared socket.
    NotTurn,
    /// A TURN message, taken in.
    Handled,
    /// A peer's data, relayed.
    Data {
        /// The peer (its address as the relay saw it).
        peer: SocketAddr,
        /// The data.
        data: &'a [u8],
    },
}

/// The allocation's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Allocate sent, no final answer yet.
    Allocating,
    /// The allocation exists.
    Allocated {
        /// The address on the relay that peers send to.
        relayed: SocketAddr,
    },
    /// Failed, lost or released: the client does nothing more.
    Closed,
}

/// A permission's or channel's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Asked for, not yet answered.
    Pending,
    /// In place.
    Ok,
    /// Refused or unanswered.
    Failed(Failure),
}

struct Permission {
    grant: Grant,
    refresh_at: Option<Instant>,
}

struct Channel {
    number: u16,
    grant: Grant,
    refresh_at: Option<Instant>,
}

/// A TURN client for one allocation on one server.
pub struct Client {
    transport: Transport,
    username: String,
    password: Secret,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
    state: State,
    mapped: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    pending: Vec<Pending>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    permissions: HashMap<IpAddr, Permission>,
    channels: HashMap<SocketAddr, Channel>,
    by_number: HashMap<u16, SocketAddr>,
    next_channel: u16,
    /// Round trip and lifetime of the allocation, once made.
    pub(crate) info: Option<(Duration, Duration)>,
    /// Why the allocation failed or was lost.
    pub(crate) failure: Option<Failure>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key, nonce or password: only what helps reading a log.
        f.debug_struct("Client")
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that asks for an allocation at once (the first Allocate is in
    /// [`Client::poll_transmit`]).
    pub fn new(transport: Transport, username: String, password: Secret, now: Instant) -> Client {
        let mut c = Client {
            transport,
            username,
            password,
            realm: None,
            nonce: None,
            key: None,
            state: State::Allocating,
            mapped: None,
            refresh_at: None,
            pending: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_number: HashMap::new(),
            next_channel: *proto::CHANNELS.start(),
            info: None,
            failure: None,
        };
        c.request(Kind::Allocate, now, 0);
        c
    }

    /// The allocation's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our address as the relay sees it, once allocated.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The realm the server named.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Authenticates every request from now on with `username` and `password`: fresh TURN
    /// REST credentials before the old ones expire (a refresh with expired ones gets 401).
    pub fn set_credentials(&mut self, username: String, password: Secret) {
        if let Some(realm) = &self.realm {
            self.key = Some(long_term_key(&username, realm, &password));
        }
        self.username = username;
        self.password = password;
    }

    /// The state of the permission for `peer`, if one was asked for.
    pub fn permission(&self, peer: IpAddr) -> Option<&Grant> {
        self.permissions.get(&peer).map(|p| &p.grant)
    }

    /// The state of the channel to `peer`, if one was asked for.
    pub fn channel(&self, peer: SocketAddr) -> Option<&Grant> {
        self.channels.get(&peer).map(|c| &c.grant)
    }

    /// Lets `peer`'s datagrams in through the relay, and ours out to it (RFC 8656 section
    /// 9: per IP address, any port). Kept refreshed until the client closes.
    pub fn create_permission(&mut self, peer: IpAddr, now: Instant) {
        let p = self.permissions.entry(peer).or_insert(Permission {
            grant: Grant::Pending,
            refresh_at: None,
        });
        if p.grant == Grant::Ok {
            return;
        }
        p.grant = Grant::Pending;
        self.request(Kind::Permission(peer), now, 0);
    }

    /// Binds a channel to `peer`, so its data costs 4 bytes of header instead of 36. Also
    /// installs the permission for its IP.
    pub fn bind_channel(&mut self, peer: SocketAddr, now: Instant) {
        if self.channels.contains_key(&peer) {
            return;
        }
        if !proto::CHANNELS.contains(&self.next_channel) {
            self.events.push_back(Event::ChannelFailed(
                peer,
                Failure::Protocol("no channel numbers left"),
            ));
            return;
        }
        let number = self.next_channel;
        self.next_channel += 1;
        self.channels.insert(
            peer,
            Channel {
                number,
                grant: Grant::Pending,
                refresh_at: None,
            },
        );
        self.by_number.insert(number, peer);
        self.request(Kind::Channel { peer, number }, now, 0);
    }

    /// `data` for `peer`, wrapped for the relay: ChannelData once a channel is bound, a Send
    /// indication before. Send it to the server.
    pub fn wrap(&self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        if let Some(c) = self.channels.get(&peer).filter(|c| c.grant == Grant::Ok) {
            return proto::channel_data(c.number, data, self.transport != Transport::Udp);
        }
        let transaction: [u8; 12] = rand::random();
        let mut attrs = Vec::with_capacity(data.len() + 24);
        proto::addr_attr(&mut attrs, proto::ATTR_XOR_PEER_ADDRESS, peer, &transaction);
        proto::attr(&mut attrs, proto::ATTR_DATA, data);
        proto::build(proto::SEND | proto::INDICATION, &transaction, &attrs, None)
    }

    /// Releases the allocation (a Refresh with lifetime 0); [`Event::Closed`] follows.
    pub fn close(&mut self, now: Instant) {
        if matches!(self.state, State::Allocated { .. }) {
            self.pending
                .retain(|p| matches!(p.kind, Kind::Refresh { .. }));
            self.request(Kind::Refresh { lifetime: 0 }, now, 0);
        } else {
            self.finish(Event::Closed);
        }
    }

    /// Takes in a datagram (or stream frame) that came from the server.
    pub fn handle_input<'a>(&mut self, data: &'a [u8], now: Instant) -> Input<'a> {
        if let Some((number, payload)) = proto::parse_channel_data(data) {
            return match self.by_number.get(&number) {
                Some(&peer) => Input::Data {
                    peer,
                    data: payload,
                },
                // A greased QUIC packet can look like ChannelData (first byte 0x40-0x4f).
                None => Input::NotTurn,
            };
        }
        let Some(m) = Message::parse(data) else {
            return Input::NotTurn;
        };
        match (m.method(), m.class()) {
            (proto::DATA, proto::INDICATION) => {
                match (
                    m.address(proto::ATTR_XOR_PEER_ADDRESS),
                    m.get(proto::ATTR_DATA),
                ) {
                    (Some(peer), Some(data)) => Input::Data { peer, data },
                    _ => Input::Handled,
                }
            }
            (_, proto::SUCCESS | proto::ERROR) => {
                self.on_response(&m, now);
                Input::Handled
            }
            _ => Input::Handled,
        }
    }

    /// Retransmits, gives up on unanswered requests, and refreshes what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (i, p) in self.pending.iter_mut().enumerate() {
            if now >= p.deadline {
                expired.push(i);
            } else if p.next_retransmit.is_some_and(|t| now >= t) {
                p.retransmits += 1;
                p.last_sent = now;
                p.next_retransmit = Some(now + RTO * 2u32.saturating_pow(p.retransmits));
                self.transmits.push_back(p.bytes.clone());
            }
        }
        // Taken out before any is failed: failing the allocation or a refresh closes the
        // client and empties `pending` under the indices (found by the turn_client fuzz
        // target: two requests expiring together panicked).
        let expired: Vec<_> = expired
            .into_iter()
            .rev()
            .map(|i| self.pending.remove(i))
            .collect();
        for p in expired.into_iter().rev() {
            if matches!(self.state, State::Closed) {
                break;
            }
            self.fail(p.kind, Failure::Timeout);
        }
        if !matches!(self.state, State::Allocated { .. }) {
            return;
        }
        if self.refresh_at.is_some_and(|t| now >= t) {
            self.refresh_at = None;
            self.request(
                Kind::Refresh {
                    lifetime: DEFAULT_LIFETIME.as_secs() as u32,
                },
                now,
                0,
            );
        }
        let due: Vec<IpAddr> = self
            .permissions
            .iter_mut()
            .filter(|(_, p)| p.refresh_at.is_some_and(|t| now >= t))
            .map(|(ip, p)| {
                p.refresh_at = None;
                *ip
            })
            .collect();
        for ip in due {
            self.request(Kind::Permission(ip), now, 0);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter_mut()
            .filter(|(_, c)| c.refresh_at.is_some_and(|t| now >= t))
            .map(|(peer, c)| {
                c.refresh_at = None;
                (*peer, c.number)
            })
            .collect();
        for (peer, number) in due {
            self.request(Kind::Channel { peer, number }, now, 0);
        }
    }

    /// The next message for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// When [`Client::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let pending = self
            .pending
            .iter()
            .map(|p| p.next_retransmit.map_or(p.deadline, |t| t.min(p.deadline)));
        let refreshes = self
            .permissions
            .values()
            .filter_map(|p| p.refresh_at)
            .chain(self.channels.values().filter_map(|c| c.refresh_at))
            .chain(self.refresh_at);
        pending.chain(refreshes).min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
