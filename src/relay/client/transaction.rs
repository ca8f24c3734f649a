//! The client's transactions: building a request, matching its answer (with the 401 and
//! 438 dances), and what a success or a failure changes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{
    Client, Event, Failure, Grant, State, Transport, CHANNEL_REFRESH, DEFAULT_LIFETIME, MAX_STALE,
    PERMISSION_REFRESH, RTO, TRANSACTION_TIMEOUT,
};
use crate::relay::creds::long_term_key;
use crate::relay::proto::{self, Message};

/// What a request asks for.
#[derive(Clone, Debug)]
pub(super) enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    Permission(IpAddr),
    Channel { peer: SocketAddr, number: u16 },
}

/// A request waiting for its answer, retransmitted over UDP until then.
pub(super) struct Pending {
    pub(super) transaction: [u8; 12],
    pub(super) kind: Kind,
    pub(super) bytes: Vec<u8>,
    pub(super) authenticated: bool,
    pub(super) stale: u8,
    pub(super) last_sent: Instant,
    pub(super) retransmits: u32,
    pub(super) next_retransmit: Option<Instant>,
    pub(super) deadline: Instant,
}

impl Client {
    /// Sends a request of `kind`, authenticated once the realm and nonce are known.
    pub(super) fn request(&mut self, kind: Kind, now: Instant, stale: u8) {
        let transaction: [u8; 12] = rand::random();
        let mut attrs = Vec::new();
        let method = match &kind {
            Kind::Allocate => {
                proto::attr(
                    &mut attrs,
                    proto::ATTR_REQUESTED_TRANSPORT,
                    &proto::TRANSPORT_UDP,
                );
                proto::ALLOCATE
            }
            Kind::Refresh { lifetime } => {
                proto::attr(&mut attrs, proto::ATTR_LIFETIME, &lifetime.to_be_bytes());
                proto::REFRESH
            }
            Kind::Permission(ip) => {
                let peer = SocketAddr::new(*ip, 0);
                proto::addr_attr(&mut attrs, proto::ATTR_XOR_PEER_ADDRESS, peer, &transaction);
                proto::CREATE_PERMISSION
            }
            Kind::Channel { peer, number } => {
                let mut v = number.to_be_bytes().to_vec();
                v.extend_from_slice(&[0, 0]);
                proto::attr(&mut attrs, proto::ATTR_CHANNEL_NUMBER, &v);
                proto::addr_attr(
                    &mut attrs,
                    proto::ATTR_XOR_PEER_ADDRESS,
                    *peer,
                    &transaction,
                );
                proto::CHANNEL_BIND
            }
        };
        proto::attr(&mut attrs, proto::ATTR_SOFTWARE, b"p2pcopy");
        let authenticated = match (&self.realm, &self.nonce, &self.key) {
            (Some(realm), Some(nonce), Some(_)) => {
                proto::attr(&mut attrs, proto::ATTR_USERNAME, self.username.as_bytes());
                proto::attr(&mut attrs, proto::ATTR_REALM, realm.as_bytes());
                proto::attr(&mut attrs, proto::ATTR_NONCE, nonce);
                true
            }
            _ => false,
        };
        let key = self.key.filter(|_| authenticated);
        let bytes = proto::build(method | proto::REQUEST, &transaction, &attrs, key.as_ref());
        self.transmits.push_back(bytes.clone());
        self.pending.push(Pending {
            transaction,
            kind,
            bytes,
            authenticated,
            stale,
            last_sent: now,
            retransmits: 0,
            // Streams are reliable: RFC 8489 section 6.2.2 has no retransmissions there.
            next_retransmit: (self.transport == Transport::Udp).then(|| now + RTO),
            deadline: now + TRANSACTION_TIMEOUT,
        });
    }

    pub(super) fn on_response(&mut self, m: &Message<'_>, now: Instant) {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.transaction == m.transaction)
        else {
            // A late answer to a retransmission already answered, or not ours.
            return;
        };
        if m.class() == proto::SUCCESS {
            // An answer to an authenticated request must prove it knows the key: anyone on
            // the path can forge an unauthenticated one.
            if self.pending[i].authenticated {
                let Some(key) = self.key else { return };
                if !m.integrity_ok(&key) {
                    tracing::debug!("TURN response with bad MESSAGE-INTEGRITY dropped");
                    return;
                }
            }
            let p = self.pending.remove(i);
            let rtt = now.saturating_duration_since(p.last_sent);
            self.on_success(p.kind, m, now, rtt);
            return;
        }
        let (code, reason) = m.error().unwrap_or((0, "error without a code".into()));
        let realm = m.get(proto::ATTR_REALM);
        let nonce = m.get(proto::ATTR_NONCE);
        let p = &self.pending[i];
        let retry = match code {
            // The first request goes without credentials to learn realm and nonce; a 401 to
            // an authenticated one means the credentials are wrong.
            401 if !p.authenticated && realm.is_some() && nonce.is_some() => true,
            438 if p.stale < MAX_STALE && nonce.is_some() => true,
            _ => false,
        };
        let p = self.pending.remove(i);
        if !retry {
            self.fail(p.kind, Failure::Refused { code, reason });
            return;
        }
        if let Some(realm) = realm {
            let realm = String::from_utf8_lossy(realm).into_owned();
            self.key = Some(long_term_key(&self.username, &realm, &self.password));
            self.realm = Some(realm);
        }
        self.nonce = nonce.map(<[u8]>::to_vec);
        let stale = p.stale + u8::from(code == 438);
        self.request(p.kind, now, stale);
    }

    fn on_success(&mut self, kind: Kind, m: &Message<'_>, now: Instant, rtt: Duration) {
        match kind {
            Kind::Allocate => {
                let Some(relayed) = m.address(proto::ATTR_XOR_RELAYED_ADDRESS) else {
                    self.fail(kind, Failure::Protocol("no relayed address in the answer"));
                    return;
                };
                let lifetime = m
                    .u32(proto::ATTR_LIFETIME)
                    .map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(s.into()));
                self.mapped = m.mapped();
                self.state = State::Allocated { relayed };
                self.refresh_at = Some(now + refresh_after(lifetime));
                self.info = Some((rtt, lifetime));
                self.events.push_back(Event::Allocated {
                    relayed,
                    mapped: self.mapped,
                    lifetime,
                    rtt,
                });
            }
            Kind::Refresh { lifetime: 0 } => self.finish(Event::Closed),
            Kind::Refresh { .. } => {
                let lifetime = m
                    .u32(proto::ATTR_LIFETIME)
                    .map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(s.into()));
                self.refresh_at = Some(now + refresh_after(lifetime));
            }
            Kind::Permission(ip) => {
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.grant = Grant::Ok;
                    p.refresh_at = Some(now + PERMISSION_REFRESH);
                }
                self.events.push_back(Event::Permitted(ip));
            }
            Kind::Channel { peer, .. } => {
                if let Some(c) = self.channels.get_mut(&peer) {
                    c.grant = Grant::Ok;
                    c.refresh_at = Some(now + CHANNEL_REFRESH);
                }
                self.events.push_back(Event::ChannelBound(peer));
            }
        }
    }

    pub(super) fn fail(&mut self, kind: Kind, why: Failure) {
        match kind {
            Kind::Allocate => self.finish(Event::Failed(why)),
            // 437 Allocation Mismatch or no answer: the allocation is gone or unreachable.
            Kind::Refresh { lifetime: 0 } => self.finish(Event::Closed),
            Kind::Refresh { .. } => self.finish(Event::Failed(why)),
            Kind::Permission(ip) => {
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.grant = Grant::Failed(why.clone());
                }
                self.events.push_back(Event::PermissionFailed(ip, why));
            }
            Kind::Channel { peer, number } => {
                self.channels.remove(&peer);
                self.by_number.remove(&number);
                self.events.push_back(Event::ChannelFailed(peer, why));
            }
        }
    }

    pub(super) fn finish(&mut self, event: Event) {
        if let Event::Failed(f) = &event {
            self.failure = Some(f.clone());
        }
        self.state = State::Closed;
        self.pending.clear();
        self.refresh_at = None;
        self.events.push_back(event);
    }
}

/// When to refresh an allocation of `lifetime`: a minute early, or halfway for short ones.
fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime > Duration::from_secs(120) {
        lifetime - Duration::from_secs(60)
    } else {
        lifetime / 2
    }
}
