//! One Binding request asked again on a socket that QUIC already reads: which public address
//! our NAT maps a link's socket to now, after its path died and its mappings may be gone.
//!
//! Sans-IO, in quinn's manner: time is an argument, the caller sends what
//! [`Query::poll_transmit`] gives, wakes at [`Query::poll_timeout`] and hands in every STUN
//! datagram that arrives ([`Query::handle_datagram`]). Only a success answer with our
//! transaction id, from the server we asked, before the query gave up, counts: anyone who
//! read a ticket can aim a Binding response at our port, and a forged one would make us tell
//! the user a false address. Retransmits follow RFC 8489 section 6.2.1 (doubling from the
//! first interval) with a much shorter start than its 500 ms, since the answer is wanted
//! while the first punching round runs and the whole query stays within [`GIVE_UP`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::{encode_request, error_transaction};

/// When each request goes out, counted from the start: 250 ms, then doubling.
pub const SENDS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(750),
];

/// When the query gives up, counted from the start.
pub const GIVE_UP: Duration = Duration::from_millis(1500);

/// What a datagram handed to [`Query::handle_datagram`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Our answer: the address the server saw. The query is over.
    Mapped(SocketAddr),
    /// The server we asked refused our request (a Binding error response with our
    /// transaction id). The query is over.
    Refused,
    /// Not an answer to this query (another transaction, another source, too late, not
    /// STUN): whoever passed it on drops it as before.
    NotOurs,
}

/// One outstanding Binding request to one server.
#[derive(Clone, Debug)]
pub struct Query {
    server: SocketAddr,
    transaction: [u8; 12],
    started: Instant,
    /// Requests sent so far.
    sent: usize,
    over: bool,
}

impl Query {
    /// A query to `server` with id `transaction` (random, from the caller), starting `now`.
    pub fn new(server: SocketAddr, transaction: [u8; 12], now: Instant) -> Query {
        Query {
            server,
            transaction,
            started: now,
            sent: 0,
            over: false,
        }
    }

    /// The server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Whether the query ended: answered, refused, or given up.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The request to send to [`Query::server`] now, if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.handle_timeout(now);
        let due = *SENDS.get(self.sent)?;
        if self.over || now < self.started + due {
            return None;
        }
        self.sent += 1;
        Some(encode_request(self.transaction, false, false))
    }

    /// When to call back: the next request, or giving up; `None` once over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.over {
            return None;
        }
        let next = SENDS.get(self.sent).copied().unwrap_or(GIVE_UP);
        Some(self.started + next.min(GIVE_UP))
    }

    /// Gives up once [`GIVE_UP`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.started + GIVE_UP {
            self.over = true;
        }
    }

    /// Looks at one STUN datagram from `from` (see [`Answer`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Answer {
        self.handle_timeout(now);
        if self.over || from != self.server {
            return Answer::NotOurs;
        }
        if let Some(mapped) = super::answer(self.server, &self.transaction, from, data) {
            self.over = true;
            return Answer::Mapped(mapped);
        }
        if error_transaction(data) == Some(self.transaction) {
            self.over = true;
            return Answer::Refused;
        }
        Answer::NotOurs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{
        decode_request, encode_error, encode_response, BindingResponse, Rejected, RequestError,
    };

    const TXN: [u8; 12] = [7; 12];

    fn server() -> SocketAddr {
        "198.19.0.1:3478".parse().unwrap()
    }

    fn mapped() -> SocketAddr {
        "198.18.1.2:40000".parse().unwrap()
    }

    fn success(transaction: [u8; 12]) -> Vec<u8> {
        encode_response(&BindingResponse {
            transaction,
            mapped: mapped(),
            response_origin: None,
            other_address: None,
        })
    }

    /// Requests go out at 0, 250 and 750 ms, each with our transaction id; the query gives
    /// up at 1.5 s and asks for nothing after.
    #[test]
    fn retransmits_then_gives_up() {
        let t0 = Instant::now();
        let mut q = Query::new(server(), TXN, t0);
        let mut sent = Vec::new();
        let mut now = t0;
        while let Some(wake) = q.poll_timeout() {
            now = wake;
            q.handle_timeout(now);
            if let Some(req) = q.poll_transmit(now) {
                assert_eq!(decode_request(&req).unwrap().transaction, TXN);
                sent.push(now - t0);
            }
        }
        let ms = |m| Duration::from_millis(m);
        assert_eq!(sent, [ms(0), ms(250), ms(750)]);
        assert_eq!(now - t0, GIVE_UP);
        assert!(q.is_over());
        assert_eq!(q.poll_transmit(now + ms(1)), None);
        // Nothing is due between two sends.
        let mut fresh = Query::new(server(), TXN, t0);
        assert!(fresh.poll_transmit(t0).is_some());
        assert_eq!(fresh.poll_transmit(t0 + ms(249)), None);
        assert_eq!(fresh.poll_timeout(), Some(t0 + ms(250)));
    }

    #[test]
    fn only_our_answer_from_our_server_in_time_counts() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(30);
        let mut q = Query::new(server(), TXN, t0);
        let mut other_txn = TXN;
        other_txn[11] ^= 1;
        assert_eq!(
            q.handle_datagram(soon, server(), &success(other_txn)),
            Answer::NotOurs,
            "wrong transaction id"
        );
        let elsewhere: SocketAddr = "198.19.0.2:3478".parse().unwrap();
        assert_eq!(
            q.handle_datagram(soon, elsewhere, &success(TXN)),
            Answer::NotOurs,
            "right id, wrong server"
        );
        let other_port: SocketAddr = "198.19.0.1:3479".parse().unwrap();
        assert_eq!(
            q.handle_datagram(soon, other_port, &success(TXN)),
            Answer::NotOurs,
            "right id, the server's other port"
        );
        assert_eq!(
            q.handle_datagram(soon, server(), &encode_request(TXN, false, false)),
            Answer::NotOurs,
            "a request, not an answer"
        );
        assert_eq!(q.handle_datagram(soon, server(), b"junk"), Answer::NotOurs);
        assert!(!q.is_over());
        assert_eq!(
            q.handle_datagram(soon, server(), &success(TXN)),
            Answer::Mapped(mapped())
        );
        assert!(q.is_over());
        // Answered once: a second copy (a retransmit's answer) is nobody's.
        assert_eq!(
            q.handle_datagram(soon, server(), &success(TXN)),
            Answer::NotOurs
        );
        assert_eq!(q.poll_timeout(), None);
    }

    #[test]
    fn a_late_answer_is_not_ours() {
        let t0 = Instant::now();
        let mut q = Query::new(server(), TXN, t0);
        assert_eq!(
            q.handle_datagram(t0 + GIVE_UP, server(), &success(TXN)),
            Answer::NotOurs
        );
        assert!(q.is_over());
    }

    #[test]
    fn an_error_answer_ends_the_query_without_an_address() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(10);
        let refusal = |transaction| {
            encode_error(
                &Rejected {
                    transaction,
                    cookie: crate::stun::message::MAGIC_COOKIE.to_be_bytes(),
                    error: RequestError::Malformed("test"),
                },
                usize::MAX,
            )
        };
        let mut q = Query::new(server(), TXN, t0);
        let mut other_txn = TXN;
        other_txn[0] ^= 1;
        assert_eq!(
            q.handle_datagram(now, server(), &refusal(other_txn)),
            Answer::NotOurs
        );
        assert_eq!(
            q.handle_datagram(now, server(), &refusal(TXN)),
            Answer::Refused
        );
        assert!(q.is_over());
        assert_eq!(q.poll_transmit(now + GIVE_UP), None);
    }
}
