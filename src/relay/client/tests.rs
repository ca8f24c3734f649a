//! The client against a scripted server: every answer is built with the same codec a real
//! server's would be checked with, and the lab checks the same paths against coturn.

use super::*;
use crate::relay::proto::*;
use crate::stun::message::{ATTR_ERROR_CODE, ATTR_XOR_MAPPED_ADDRESS};

const REALM: &str = "lab";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

fn key() -> [u8; 16] {
    long_term_key(USER, REALM, &Secret::new(PASSWORD))
}

fn relayed() -> SocketAddr {
    "198.19.0.5:50000".parse().unwrap()
}

fn client(transport: Transport, now: Instant) -> Client {
    Client::new(transport, USER.into(), Secret::new(PASSWORD), now)
}

fn error(req: &Message<'_>, code: u16, nonce: Option<&[u8]>) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
    v.extend_from_slice(b"Nope");
    attr(&mut attrs, ATTR_ERROR_CODE, &v);
    if let Some(n) = nonce {
        attr(&mut attrs, ATTR_REALM, REALM.as_bytes());
        attr(&mut attrs, ATTR_NONCE, n);
    }
    build(req.method() | ERROR, &req.transaction, &attrs, None)
}

fn success(
    req: &Message<'_>,
    extra: impl FnOnce(&mut Vec<u8>, &[u8; 12]),
    key: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut attrs = Vec::new();
    extra(&mut attrs, &req.transaction);
    build(req.method() | SUCCESS, &req.transaction, &attrs, key)
}

fn allocated(req: &Message<'_>) -> Vec<u8> {
    success(
        req,
        |a, t| {
            addr_attr(a, ATTR_XOR_RELAYED_ADDRESS, relayed(), t);
            addr_attr(
                a,
                ATTR_XOR_MAPPED_ADDRESS,
                "198.18.2.2:4300".parse().unwrap(),
                t,
            );
            attr(a, ATTR_LIFETIME, &600u32.to_be_bytes());
        },
        Some(&key()),
    )
}

/// The one message the client has to send now.
fn sent(c: &mut Client) -> Vec<u8> {
    let m = c.poll_transmit().expect("a message to send");
    assert!(c.poll_transmit().is_none(), "one message at a time");
    m
}

/// Runs the 401 dance and returns a client with an allocation.
fn allocate(transport: Transport, now: Instant) -> Client {
    let mut c = client(transport, now);
    let first = sent(&mut c);
    let m = Message::parse(&first).unwrap();
    assert_eq!(m.kind, ALLOCATE | REQUEST);
    assert!(!m.has_integrity() && m.get(ATTR_USERNAME).is_none());
    assert_eq!(m.get(ATTR_REQUESTED_TRANSPORT), Some(&TRANSPORT_UDP[..]));
    assert_eq!(
        c.handle_input(&error(&m, 401, Some(b"n1")), now),
        Input::Handled
    );
    let second = sent(&mut c);
    let m = Message::parse(&second).unwrap();
    assert!(m.integrity_ok(&key()));
    assert_eq!(m.get(ATTR_USERNAME), Some(USER.as_bytes()));
    assert_eq!(m.get(ATTR_NONCE), Some(&b"n1"[..]));
    let later = now + Duration::from_millis(20);
    c.handle_input(&allocated(&m), later);
    assert_eq!(
        c.poll_event(),
        Some(Event::Allocated {
            relayed: relayed(),
            mapped: Some("198.18.2.2:4300".parse().unwrap()),
            lifetime: Duration::from_secs(600),
            rtt: Duration::from_millis(20),
        })
    );
    assert_eq!(c.state(), State::Allocated { relayed: relayed() });
    c
}

#[test]
fn allocates_after_the_401_that_names_realm_and_nonce() {
    let now = Instant::now();
    let c = allocate(Transport::Udp, now);
    assert_eq!(c.realm(), Some(REALM));
    // The refresh is due a minute before the lifetime ends.
    assert_eq!(
        c.poll_timeout(),
        Some(now + Duration::from_millis(20) + Duration::from_secs(540))
    );
}

#[test]
fn wrong_password_is_a_401_to_the_authenticated_request() {
    let now = Instant::now();
    let mut c = client(Transport::Udp, now);
    let m0 = sent(&mut c);
    c.handle_input(&error(&Message::parse(&m0).unwrap(), 401, Some(b"n1")), now);
    let m1 = sent(&mut c);
    c.handle_input(&error(&Message::parse(&m1).unwrap(), 401, Some(b"n2")), now);
    assert_eq!(
        c.poll_event(),
        Some(Event::Failed(Failure::Refused {
            code: 401,
            reason: "Nope".into()
        }))
    );
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.poll_timeout(), None);
    // Other refusals come through with their code.
    let mut c = client(Transport::Tcp, now);
    let m0 = sent(&mut c);
    c.handle_input(&error(&Message::parse(&m0).unwrap(), 486, None), now);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Failed(Failure::Refused { code: 486, .. }))
    ));
}

#[test]
fn a_stale_nonce_is_retried_with_the_new_one() {
    let now = Instant::now();
    let mut c = client(Transport::Udp, now);
    let m0 = sent(&mut c);
    c.handle_input(&error(&Message::parse(&m0).unwrap(), 401, Some(b"n1")), now);
    for n in [&b"n2"[..], b"n3", b"n4"] {
        let m = sent(&mut c);
        c.handle_input(&error(&Message::parse(&m).unwrap(), 438, Some(n)), now);
    }
    let m = sent(&mut c);
    let req = Message::parse(&m).unwrap();
    assert_eq!(req.get(ATTR_NONCE), Some(&b"n4"[..]));
    // A fourth 438 in a row is the end.
    c.handle_input(&error(&req, 438, Some(b"n5")), now);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Failed(Failure::Refused { code: 438, .. }))
    ));
}

#[test]
fn udp_retransmits_and_times_out_streams_do_not_retransmit() {
    let now = Instant::now();
    let mut c = client(Transport::Udp, now);
    let first = sent(&mut c);
    let mut copies = 0;
    while let Some(t) = c.poll_timeout() {
        c.handle_timeout(t);
        while let Some(m) = c.poll_transmit() {
            assert_eq!(m, first);
            copies += 1;
        }
        if c.state() == State::Closed {
            assert_eq!(t, now + TRANSACTION_TIMEOUT);
            break;
        }
    }
    // 250, 750, 1750, 3750, 7750 ms.
    assert_eq!(copies, 5);
    assert_eq!(c.poll_event(), Some(Event::Failed(Failure::Timeout)));

    let mut c = client(Transport::Tls, now);
    sent(&mut c);
    assert_eq!(c.poll_timeout(), Some(now + TRANSACTION_TIMEOUT));
    c.handle_timeout(now + TRANSACTION_TIMEOUT);
    assert!(c.poll_transmit().is_none());
    assert_eq!(c.poll_event(), Some(Event::Failed(Failure::Timeout)));
}

#[test]
fn an_answer_without_the_right_integrity_is_ignored() {
    let now = Instant::now();
    let mut c = client(Transport::Udp, now);
    let m0 = sent(&mut c);
    c.handle_input(&error(&Message::parse(&m0).unwrap(), 401, Some(b"n1")), now);
    let m1 = sent(&mut c);
    let req = Message::parse(&m1).unwrap();
    let relay = |a: &mut Vec<u8>, t: &[u8; 12]| {
        addr_attr(
            a,
            ATTR_XOR_RELAYED_ADDRESS,
            "203.0.113.66:1".parse().unwrap(),
            t,
        )
    };
    c.handle_input(&success(&req, relay, None), now);
    c.handle_input(&success(&req, relay, Some(&[9; 16])), now);
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.state(), State::Allocating);
    // An answer to someone else's transaction changes nothing either.
    let mut other = allocated(&req);
    other[19] ^= 1;
    c.handle_input(&other, now);
    assert_eq!(c.state(), State::Allocating);
    c.handle_input(&allocated(&req), now);
    assert!(matches!(c.poll_event(), Some(Event::Allocated { .. })));
}

#[test]
fn permissions_channels_and_data() {
    let now = Instant::now();
    let mut c = allocate(Transport::Tcp, now);
    let peer: SocketAddr = "198.18.1.2:4300".parse().unwrap();
    c.create_permission(peer.ip(), now);
    let m = sent(&mut c);
    let req = Message::parse(&m).unwrap();
    assert_eq!(req.kind, CREATE_PERMISSION | REQUEST);
    assert!(req.integrity_ok(&key()));
    assert_eq!(
        req.address(ATTR_XOR_PEER_ADDRESS),
        Some(SocketAddr::new(peer.ip(), 0))
    );
    assert_eq!(c.permission(peer.ip()), Some(&Grant::Pending));
    c.handle_input(&success(&req, |_, _| {}, Some(&key())), now);
    assert_eq!(c.poll_event(), Some(Event::Permitted(peer.ip())));
    assert_eq!(c.permission(peer.ip()), Some(&Grant::Ok));

    // Before a channel: Send indications, and Data indications come back.
    let wrapped = c.wrap(peer, b"quic");
    let ind = Message::parse(&wrapped).unwrap();
    assert_eq!(ind.kind, SEND | INDICATION);
    assert_eq!(ind.address(ATTR_XOR_PEER_ADDRESS), Some(peer));
    assert_eq!(ind.get(ATTR_DATA), Some(&b"quic"[..]));
    let t = [3; 12];
    let mut a = Vec::new();
    addr_attr(&mut a, ATTR_XOR_PEER_ADDRESS, peer, &t);
    attr(&mut a, ATTR_DATA, b"back");
    let data_ind = build(DATA | INDICATION, &t, &a, None);
    assert_eq!(
        c.handle_input(&data_ind, now),
        Input::Data {
            peer,
            data: b"back"
        }
    );

    c.bind_channel(peer, now);
    let m = sent(&mut c);
    let req = Message::parse(&m).unwrap();
    assert_eq!(req.kind, CHANNEL_BIND | REQUEST);
    assert_eq!(req.get(ATTR_CHANNEL_NUMBER), Some(&[0x40, 0, 0, 0][..]));
    // Not yet confirmed: still indications.
    assert!(Message::parse(&c.wrap(peer, b"x")).is_some());
    c.handle_input(&success(&req, |_, _| {}, Some(&key())), now);
    assert_eq!(c.poll_event(), Some(Event::ChannelBound(peer)));
    // Over a stream, ChannelData is padded to 4 bytes.
    assert_eq!(c.wrap(peer, b"quic!"), channel_data(0x4000, b"quic!", true));
    assert_eq!(
        c.handle_input(&channel_data(0x4000, b"hi", true), now),
        Input::Data { peer, data: b"hi" }
    );
    // An unbound channel number is not ours (a greased QUIC packet can start with 0x40).
    assert_eq!(
        c.handle_input(&channel_data(0x4001, b"hi", false), now),
        Input::NotTurn
    );
    assert_eq!(c.handle_input(&[0xc0; 30], now), Input::NotTurn);

    // Permission (240 s) and channel (540 s) refreshes come before the allocation's (560 s).
    let t = c.poll_timeout().unwrap();
    assert_eq!(t, now + PERMISSION_REFRESH);
    c.handle_timeout(t);
    let m = sent(&mut c);
    assert_eq!(
        Message::parse(&m).unwrap().kind,
        CREATE_PERMISSION | REQUEST
    );
}

#[test]
fn refresh_failure_loses_the_allocation_and_close_releases_it() {
    let now = Instant::now();
    let mut c = allocate(Transport::Udp, now);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    let m = sent(&mut c);
    let req = Message::parse(&m).unwrap();
    assert_eq!(req.kind, REFRESH | REQUEST);
    assert_eq!(req.u32(ATTR_LIFETIME), Some(600));
    c.handle_input(&error(&req, 437, None), t);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Failed(Failure::Refused { code: 437, .. }))
    ));
    assert_eq!(c.state(), State::Closed);

    let mut c = allocate(Transport::Udp, now);
    c.close(now);
    let m = sent(&mut c);
    let req = Message::parse(&m).unwrap();
    assert_eq!(req.u32(ATTR_LIFETIME), Some(0));
    c.handle_input(&success(&req, |_, _| {}, Some(&key())), now);
    assert_eq!(c.poll_event(), Some(Event::Closed));
}

#[test]
fn no_input_makes_it_panic() {
    let now = Instant::now();
    let mut c = allocate(Transport::Udp, now);
    c.bind_channel("198.18.1.2:1".parse().unwrap(), now);
    let m = sent(&mut c);
    let mut rng = 0x1234_5678_u32;
    for len in 0..m.len() {
        c.handle_input(&m[..len], now);
    }
    for _ in 0..20_000 {
        let mut b = m.clone();
        for _ in 0..4 {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let i = rng as usize % b.len();
            b[i] = (rng >> 8) as u8;
        }
        c.handle_input(&b, now);
        b[0] = 0x40 | (b[0] & 0x0f);
        c.handle_input(&b, now);
    }
}

#[test]
fn requests_expiring_together_do_not_outlive_the_allocation() {
    // Found by the turn_client fuzz target: when a refresh and another request time out in
    // the same call, failing the refresh closed the client and emptied the queue of pending
    // requests under the other's index.
    let now = Instant::now();
    let mut c = allocate(Transport::Tcp, now);
    // The allocation's refresh goes out, and the user closes while it is unanswered.
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    let _ = sent(&mut c);
    c.close(t);
    let _ = sent(&mut c);
    c.handle_timeout(t + TRANSACTION_TIMEOUT);
    assert_eq!(c.state(), State::Closed);
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        matches!(events.last(), Some(Event::Closed | Event::Failed(_))),
        "{events:?}"
    );
}

#[test]
fn new_credentials_sign_the_next_request() {
    let now = Instant::now();
    let mut c = allocate(Transport::Udp, now);
    c.set_credentials("1767225600:alice".into(), Secret::new("fresh"));
    let peer: IpAddr = "198.18.1.2".parse().unwrap();
    c.create_permission(peer, now);
    let m = sent(&mut c);
    let req = Message::parse(&m).unwrap();
    assert_eq!(req.get(ATTR_USERNAME), Some(&b"1767225600:alice"[..]));
    let fresh = long_term_key("1767225600:alice", REALM, &Secret::new("fresh"));
    assert!(req.integrity_ok(&fresh));
    assert!(!req.integrity_ok(&key()));
}
