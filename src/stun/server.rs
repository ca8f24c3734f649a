//! A small STUN server: RFC 5389 Binding, and RFC 5780 (CHANGE-REQUEST, RESPONSE-PORT,
//! OTHER-ADDRESS, RESPONSE-ORIGIN) when given two addresses, so teams in closed networks can
//! run their own and tell their NATs' behaviour. RFC 3489 clients (no magic cookie) get the
//! RFC 3489 attributes.
//!
//! Made for public addresses: it keeps nothing about clients but the rate limiter's buckets
//! ([`super::limit`]), answers each request with at most twice its size
//! ([`super::message::answer_limit`]), and drops whatever is not a Binding request. What to
//! answer is the pure [`reply`]; [`Server::run`] is the socket shell around it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::limit::{DropLog, Limits, RateLimiter, Verdict};
use super::message::{
    answer_limit, encode_error, encode_success, parse_request, Rejected, RequestError, Success,
    ATTR_CHANGE_REQUEST,
};
use crate::error::Error;

/// The port used next to the main one for RFC 5780 "change port" answers.
pub fn alternate_port(port: u16) -> u16 {
    if port == u16::MAX {
        port - 1
    } else {
        port + 1
    }
}

/// Which of the server's sockets answers a request, RFC 5780 style.
///
/// Sockets are indexed `ip * 2 + port`: ip 0/1 is the primary/alternate address, port 0/1
/// the primary/alternate port. Without an alternate address, the one socket answers (and
/// [`reply`] refuses change requests).
pub fn answering_socket(
    received_on: usize,
    change_ip: bool,
    change_port: bool,
    has_alternate: bool,
) -> usize {
    if !has_alternate {
        return received_on;
    }
    let ip = (received_on / 2) ^ usize::from(change_ip);
    let port = (received_on % 2) ^ usize::from(change_port);
    ip * 2 + port
}

/// One answer to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Index of the socket to send it from (see [`answering_socket`]).
    pub socket: usize,
    /// Where to.
    pub to: SocketAddr,
    /// The message.
    pub bytes: Vec<u8>,
}

/// How the server answers `datagram`, which its socket `received_on` got from `from`; `None`
/// if it does not answer.
///
/// `addrs` are the server's addresses, indexed as in [`answering_socket`]: one (RFC 5389
/// only) or four (RFC 5780).
///
/// - Not a Binding request: no answer (RFC 5389 section 7.3).
/// - Unknown comprehension-required attributes: 420 listing them; a malformed request: 400.
///   Errors go back to where the request came from, from where it arrived.
/// - CHANGE-REQUEST with a flag set but no alternate address: 420 naming CHANGE-REQUEST
///   (RFC 5780 section 6.1). Answering from the same address would tell the client that its
///   NAT lets in what it does not.
/// - Otherwise a success from the socket CHANGE-REQUEST asks for, to the source address, or
///   to its RESPONSE-PORT if given (RFC 5780 section 6.1). OTHER-ADDRESS is the address
///   that changes both IP and port relative to the one the request arrived on (RFC 5780
///   section 7.4); RESPONSE-ORIGIN the socket that answers. Both only with an alternate
///   address, and only as far as the size limit allows.
pub fn reply(
    received_on: usize,
    from: SocketAddr,
    datagram: &[u8],
    addrs: &[SocketAddr],
) -> Option<Reply> {
    let has_alternate = addrs.len() == 4;
    let limit = answer_limit(datagram.len());
    let error = |rejected: &Rejected| Reply {
        socket: received_on,
        to: from,
        bytes: encode_error(rejected, limit),
    };
    let req = match parse_request(datagram)? {
        Ok(req) => req,
        Err(rejected) => return Some(error(&rejected)),
    };
    if (req.change_ip || req.change_port) && !has_alternate {
        return Some(error(&Rejected {
            transaction: req.transaction,
            cookie: req.cookie,
            error: RequestError::UnknownAttributes(vec![ATTR_CHANGE_REQUEST]),
        }));
    }
    let socket = answering_socket(received_on, req.change_ip, req.change_port, has_alternate);
    let success = Success {
        mapped: from,
        response_origin: has_alternate.then(|| addrs[socket]),
        other_address: has_alternate.then(|| addrs[received_on ^ 3]),
    };
    Some(Reply {
        socket,
        to: SocketAddr::new(from.ip(), req.response_port.unwrap_or(from.port())),
        bytes: encode_success(&req, &success, limit),
    })
}

/// How often the rate limiter forgets sources that have been quiet long enough.
const FORGET_INTERVAL: Duration = Duration::from_secs(10);

/// How often, at most, a line says that requests went unanswered because of the rate limit.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The biggest datagram read: RFC 5780 PADDING makes requests bigger than an MTU on purpose.
const MAX_DATAGRAM: usize = 65536;

/// A bound STUN server.
pub struct Server {
    sockets: Vec<Arc<UdpSocket>>,
    addrs: Vec<SocketAddr>,
    limits: Limits,
}

impl Server {
    /// Binds `primary` (and, with RFC 5780, `alternate` IP on the same two ports).
    pub async fn bind(primary: SocketAddr, alternate: Option<IpAddr>) -> Result<Server, Error> {
        let bind = |a: SocketAddr| async move {
            UdpSocket::bind(a).await.map_err(|source| Error::Bind {
                port: a.port(),
                source,
            })
        };
        let first = bind(primary).await?;
        let primary = first
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut sockets = vec![Arc::new(first)];
        if let Some(alt_ip) = alternate {
            let alt_port = alternate_port(primary.port());
            for a in [
                SocketAddr::new(primary.ip(), alt_port),
                SocketAddr::new(alt_ip, primary.port()),
                SocketAddr::new(alt_ip, alt_port),
            ] {
                sockets.push(Arc::new(bind(a).await?));
            }
        }
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Server {
            sockets,
            addrs,
            limits: Limits::default(),
        })
    }

    /// Replaces the default rate limits.
    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// The addresses served: the primary first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Answers requests until the task is dropped.
    pub async fn run(self) -> Result<(), Error> {
        // One limiter for all sockets: a client must not get four times the answers by
        // asking each of them.
        let limiter = Arc::new(Mutex::new((
            RateLimiter::new(self.limits, Instant::now()),
            DropLog::new(DROP_LOG_INTERVAL),
        )));
        let mut tasks = tokio::task::JoinSet::new();
        let forgetter = limiter.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(FORGET_INTERVAL);
            loop {
                tick.tick().await;
                let mut guard = forgetter.lock().unwrap_or_else(PoisonError::into_inner);
                guard.0.forget_quiet(Instant::now());
            }
        });
        for i in 0..self.sockets.len() {
            let sockets = self.sockets.clone();
            let addrs = self.addrs.clone();
            let limiter = limiter.clone();
            tasks.spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let (n, from) = match sockets[i].recv_from(&mut buf).await {
                        Ok(x) => x,
                        // ICMP errors from earlier answers surface here on some systems.
                        Err(_) => continue,
                    };
                    let Some(answer) = reply(i, from, &buf[..n], &addrs) else {
                        tracing::trace!(%from, len = n, "not a STUN Binding request: ignored");
                        continue;
                    };
                    let verdict = {
                        let now = Instant::now();
                        let mut guard = limiter.lock().unwrap_or_else(PoisonError::into_inner);
                        let (limiter, log) = &mut *guard;
                        let verdict = limiter.check(now, from.ip());
                        if verdict != Verdict::Allow {
                            if let Some(dropped) = log.dropped(now) {
                                tracing::info!(
                                    dropped,
                                    last = %from.ip(),
                                    why = ?verdict,
                                    "STUN requests over the rate limit left unanswered"
                                );
                            }
                        }
                        verdict
                    };
                    if verdict != Verdict::Allow {
                        tracing::trace!(%from, len = n, why = ?verdict, "STUN request dropped");
                        continue;
                    }
                    tracing::trace!(
                        %from,
                        to = %answer.to,
                        via = %addrs[answer.socket],
                        len = n,
                        answer_len = answer.bytes.len(),
                        "STUN answer"
                    );
                    if let Err(e) = sockets[answer.socket]
                        .send_to(&answer.bytes, answer.to)
                        .await
                    {
                        tracing::debug!(to = %answer.to, error = %e, "STUN answer not sent");
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::Internal(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::limit::Rate;
    use crate::stun::message::{decode_response, encode_request, BindingRequest};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn four(ip: &str, alt: &str) -> Vec<SocketAddr> {
        let (ip, alt): (IpAddr, IpAddr) = (ip.parse().unwrap(), alt.parse().unwrap());
        vec![
            SocketAddr::new(ip, 3478),
            SocketAddr::new(ip, 3479),
            SocketAddr::new(alt, 3478),
            SocketAddr::new(alt, 3479),
        ]
    }

    /// Type and value of each attribute of a message.
    fn attrs(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &b[20..];
        while rest.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            out.push((
                u16::from_be_bytes([rest[0], rest[1]]),
                rest[4..4 + len].to_vec(),
            ));
            rest = &rest[4 + len.next_multiple_of(4)..];
        }
        out
    }

    /// An IPv4 address attribute's value.
    fn v4(a: SocketAddr) -> Vec<u8> {
        let SocketAddr::V4(a) = a else { panic!() };
        [&[0, 1][..], &a.port().to_be_bytes(), &a.ip().octets()].concat()
    }

    #[test]
    fn rfc5780_socket_choice() {
        // No alternate address: always the socket that received it.
        assert_eq!(answering_socket(0, true, true, false), 0);
        assert_eq!(answering_socket(0, false, false, true), 0);
        assert_eq!(answering_socket(0, false, true, true), 1);
        assert_eq!(answering_socket(0, true, false, true), 2);
        assert_eq!(answering_socket(0, true, true, true), 3);
        assert_eq!(answering_socket(3, true, true, true), 0);
        assert_eq!(alternate_port(3478), 3479);
        assert_eq!(alternate_port(u16::MAX), u16::MAX - 1);
    }

    #[test]
    fn response_port_routes_the_answer() {
        let addrs = four("192.0.2.10", "192.0.2.11");
        let from: SocketAddr = "198.51.100.7:58431".parse().unwrap();
        // coturn's second test: RESPONSE-PORT 58432 with CHANGE-REQUEST ip+port.
        let coturn =
            hex("000100102112a44202cc33e96f74135872d82f1300270004e44000000003000400000006");
        let r = reply(0, from, &coturn, &addrs).unwrap();
        assert_eq!((r.socket, r.to), (3, "198.51.100.7:58432".parse().unwrap()));
        let resp = decode_response(&r.bytes).unwrap();
        assert_eq!(resp.mapped, from);
        assert_eq!(resp.response_origin, Some(addrs[3]));
        assert_eq!(resp.other_address, Some(addrs[3]));
        // Every combination, on every socket: RESPONSE-PORT changes only the port it goes
        // to; OTHER-ADDRESS is relative to the socket the request arrived on.
        for received_on in 0..4 {
            for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
                let req = BindingRequest {
                    change_ip: ip,
                    change_port: port,
                    response_port: Some(40000),
                    ..BindingRequest::new([7; 12])
                };
                let r = reply(received_on, from, &req.encode(), &addrs).unwrap();
                let want = answering_socket(received_on, ip, port, true);
                assert_eq!(r.socket, want);
                assert_eq!(r.to, "198.51.100.7:40000".parse().unwrap());
                let resp = decode_response(&r.bytes).unwrap();
                assert_eq!(resp.response_origin, Some(addrs[want]));
                assert_eq!(resp.other_address, Some(addrs[3 - received_on]));
            }
        }
        // Without RESPONSE-PORT: back to the source port.
        let r = reply(2, from, &encode_request([1; 12], false, true), &addrs).unwrap();
        assert_eq!((r.socket, r.to), (3, from));
        // A plain server honours RESPONSE-PORT too (it needs no second address).
        let one = &addrs[..1];
        let req = BindingRequest {
            response_port: Some(5000),
            ..BindingRequest::new([7; 12])
        };
        let r = reply(0, from, &req.encode(), one).unwrap();
        assert_eq!((r.socket, r.to.port()), (0, 5000));
        let resp = decode_response(&r.bytes).unwrap();
        assert_eq!((resp.response_origin, resp.other_address), (None, None));
    }

    #[test]
    fn errors_go_back_to_the_source() {
        let addrs = four("192.0.2.10", "192.0.2.11");
        let from: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        // Unknown 0x0030 next to RESPONSE-PORT: 420 to the source, from where it arrived.
        let mut b = BindingRequest {
            response_port: Some(6000),
            change_ip: true,
            ..BindingRequest::new([3; 12])
        }
        .encode();
        b.extend_from_slice(&hex("00300000"));
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let r = reply(1, from, &b, &addrs).unwrap();
        assert_eq!((r.socket, r.to), (1, from));
        assert_eq!(&r.bytes[..2], [0x01, 0x11]);
        let a = attrs(&r.bytes);
        assert_eq!(a[0].1[2..4], [4, 20]);
        assert_eq!(a[1], (0x000a, vec![0x00, 0x30]));
        // A change request to a server without an alternate address: 420 CHANGE-REQUEST.
        let r = reply(0, from, &encode_request([3; 12], true, false), &addrs[..1]).unwrap();
        assert_eq!(attrs(&r.bytes)[1], (0x000a, vec![0x00, 0x03]));
        // ... but CHANGE-REQUEST without flags (the classic client's first test) is fine.
        let classic = hex("0001000801dcda32bdef617e41669d173add5e290003000400000000");
        let r = reply(0, from, &classic, &addrs[..1]).unwrap();
        assert_eq!(&r.bytes[..2], [0x01, 0x01]);
        // Not a request: silence.
        assert_eq!(reply(0, from, &r.bytes, &addrs), None);
        assert_eq!(reply(0, from, b"hello", &addrs), None);
    }

    #[test]
    fn classic_clients_get_rfc3489_attributes() {
        let addrs = four("192.0.2.10", "192.0.2.11");
        let from: SocketAddr = "198.51.100.7:21557".parse().unwrap();
        // The classic `stun` client's test II: no cookie, "change IP".
        let req = hex("0001000802598620cfb125561c557c35767b770c0003000400000004");
        let r = reply(0, from, &req, &addrs).unwrap();
        assert_eq!((r.socket, r.to), (2, from));
        assert_eq!(r.bytes[4..20], req[4..20], "the whole 128-bit id is echoed");
        assert_eq!(
            attrs(&r.bytes),
            [
                (0x0001, v4(from)),
                (0x0005, v4(addrs[3])),
                (0x0004, v4(addrs[2]))
            ]
        );
        assert_eq!(r.bytes.len(), 2 * req.len());
    }

    #[test]
    fn answers_stay_within_twice_the_request() {
        let coturn_padded = {
            let mut b = hex("000100082112a44202cc33e96f74135872d82f130003000400000006");
            b.extend_from_slice(&hex("002605dc"));
            b.extend_from_slice(&[0; 1500]);
            let len = (b.len() - 20) as u16;
            b[2..4].copy_from_slice(&len.to_be_bytes());
            b
        };
        let with_software = {
            // What the `stunclient` crate sends (p2pcopy's own STUN client).
            let mut b = encode_request([5; 12], false, false);
            b.extend_from_slice(&hex("80220007703270636f707900"));
            b[2..4].copy_from_slice(&12u16.to_be_bytes());
            b
        };
        let shapes: Vec<(&str, Vec<u8>)> = vec![
            ("plain", encode_request([1; 12], false, false)),
            ("change ip+port", encode_request([1; 12], true, true)),
            ("stunclient crate (SOFTWARE)", with_software),
            (
                "coturn test 2 (RESPONSE-PORT)",
                hex("000100102112a44202cc33e96f74135872d82f1300270004e44000000003000400000006"),
            ),
            ("coturn test 3 (PADDING 1500)", coturn_padded),
            (
                "classic stun test I",
                hex("0001000801dcda32bdef617e41669d173add5e290003000400000000"),
            ),
            (
                "classic, no attributes",
                hex("00010000cafebabe0123456789abcdef01234567"),
            ),
            (
                "ICE check (420)",
                include_bytes!("../../fuzz/seeds/stun_message/rfc5769-request").to_vec(),
            ),
            ("unknown empty attribute (420)", {
                let mut b = encode_request([1; 12], false, false);
                b.extend_from_slice(&hex("00300000"));
                b[2..4].copy_from_slice(&4u16.to_be_bytes());
                b
            }),
        ];
        let servers = [
            ("v4", four("192.0.2.10", "192.0.2.11"), "198.51.100.7:5000"),
            (
                "v6",
                four("2001:db8::10", "2001:db8::11"),
                "[2001:db8::7]:5000",
            ),
        ];
        for (family, addrs, from) in &servers {
            let from: SocketAddr = from.parse().unwrap();
            for alternate in [true, false] {
                let addrs = if alternate { &addrs[..] } else { &addrs[..1] };
                for (name, req) in &shapes {
                    let Some(r) = reply(0, from, req, addrs) else {
                        panic!("{name}: no answer");
                    };
                    eprintln!(
                        "{family} alternate={alternate} {name}: request {} bytes, answer {} bytes",
                        req.len(),
                        r.bytes.len()
                    );
                    assert!(
                        r.bytes.len() <= answer_limit(req.len()),
                        "{family} {name}: {} > {}",
                        r.bytes.len(),
                        answer_limit(req.len())
                    );
                    assert!(r.bytes.len() <= 2 * req.len() || r.bytes.len() <= 44);
                }
            }
        }
    }

    async fn recv(client: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 1500];
        let (n, src) = tokio::time::timeout(wait, client.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some((buf[..n].to_vec(), src))
    }

    #[tokio::test]
    async fn answers_on_loopback_with_rfc5780_attributes() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let alt: IpAddr = "127.0.0.2".parse().unwrap();
        let server = Server::bind(SocketAddr::new(ip, 0), Some(alt))
            .await
            .unwrap();
        let addrs = server.local_addrs().to_vec();
        let task = tokio::spawn(server.run());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = client.local_addr().unwrap();
        for (change_ip, change_port, from) in [
            (false, false, 0),
            (false, true, 1),
            (true, false, 2),
            (true, true, 3),
        ] {
            let tx = [change_ip as u8 + 2 * change_port as u8; 12];
            client
                .send_to(&encode_request(tx, change_ip, change_port), addrs[0])
                .await
                .unwrap();
            let (b, src) = recv(&client, Duration::from_secs(2)).await.unwrap();
            let r = decode_response(&b).unwrap();
            assert_eq!((r.transaction, r.mapped, src), (tx, me, addrs[from]));
            assert_eq!(r.other_address, Some(addrs[3]));
            // A 20-byte request has room for OTHER-ADDRESS only; a change request for
            // RESPONSE-ORIGIN too.
            let origin = (change_ip || change_port).then_some(addrs[from]);
            assert_eq!(r.response_origin, origin);
        }
        // RESPONSE-PORT: the answer goes to another socket of the client's.
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let req = BindingRequest {
            response_port: Some(other.local_addr().unwrap().port()),
            change_ip: true,
            change_port: true,
            ..BindingRequest::new([9; 12])
        };
        client.send_to(&req.encode(), addrs[0]).await.unwrap();
        let (b, src) = recv(&other, Duration::from_secs(2)).await.unwrap();
        assert_eq!(src, addrs[3]);
        assert_eq!(decode_response(&b).unwrap().mapped, me);
        task.abort();
    }

    #[tokio::test]
    async fn the_rate_limit_applies_across_sockets() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let alt: IpAddr = "127.0.0.2".parse().unwrap();
        let slow = Rate {
            per_second: 0.01,
            burst: 3.0,
        };
        let server = Server::bind(SocketAddr::new(ip, 0), Some(alt))
            .await
            .unwrap()
            .with_limits(Limits {
                per_source: slow,
                ..Limits::default()
            });
        let addrs = server.local_addrs().to_vec();
        let task = tokio::spawn(server.run());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for n in 0..8u8 {
            let req = encode_request([n; 12], false, false);
            client
                .send_to(&req, addrs[usize::from(n) % 4])
                .await
                .unwrap();
        }
        let mut answered = 0;
        while recv(&client, Duration::from_millis(500)).await.is_some() {
            answered += 1;
        }
        assert_eq!(answered, 3);
        task.abort();
    }
}
