//! Sessions with a TURN relay of the user's own: coturn on loopback gives an allocation at
//! bind, whose relayed address the ticket carries; a relay that refuses is a one-line
//! warning naming it and why, and the session goes on without it; the data crosses the
//! relay when nothing else works, and starts on it then moves onto the direct path when
//! one exists; a source the allocation did not permit gets nothing through. Skipped (passing) where
//! coturn's `turnserver` is not installed; the lab runs the NAT cases.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pcopy::events::Event;
use p2pcopy::punch::PathKind;
use p2pcopy::relay::{Allocation, RelayConfig, Transport};
use p2pcopy::ticket::{Candidate, CandidateKind, FullTicket, Role, Ticket};
use p2pcopy::{Link, Session, SessionConfig};

#[path = "common/coturn.rs"]
mod coturn;
use coturn::{coturn, long_term, uri, LOOPBACK};

#[path = "common/sessions.rs"]
mod sessions;
use sessions::pseudo_random;

const PASSWORD: &str = "pw-relay-5c1d";

/// The shared loopback settings, with these relays.
fn config(role: Role, relays: Vec<RelayConfig>) -> SessionConfig {
    SessionConfig {
        relays,
        ..sessions::config(role)
    }
}

type Notes = Arc<Mutex<Vec<Event>>>;

fn notes() -> (Notes, impl FnMut(&Event) + Send + 'static) {
    let notes = Notes::default();
    let n = notes.clone();
    (notes, move |e: &Event| n.lock().unwrap().push(e.clone()))
}

/// Every event as its `--json` line.
fn json(notes: &Notes) -> String {
    let events = notes.lock().unwrap();
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_ticket_carries_the_relayed_address() {
    let Some(server) = coturn(&["--lt-cred-mech", "--user", &format!("alice:{PASSWORD}")]) else {
        return;
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        let relay = RelayConfig {
            uri: uri(server.port, transport),
            creds: long_term(PASSWORD),
        };
        let (notes, events) = notes();
        let session = Session::bind(config(Role::Receiver, vec![relay]), events)
            .await
            .unwrap();
        let ticket = session.ticket();
        assert_eq!(ticket.candidates[0].kind, CandidateKind::Relayed);
        let relayed = ticket.relayed().unwrap();
        assert_eq!(relayed.ip(), LOOPBACK);
        assert_ne!(relayed.port(), server.port);
        // The printed ticket reads back with it.
        let Ok(Ticket::Full(back)) = ticket.to_string().parse::<Ticket>() else {
            panic!("ticket does not parse");
        };
        assert_eq!(back.relayed(), Some(relayed));
        let json = json(&notes);
        assert!(json.contains("\"kind\":\"relayed\""), "{json}");
        assert!(!json.contains(PASSWORD), "{json}");
        assert!(!json.contains("warning"), "{json}");
    }
}

#[tokio::test]
async fn a_relay_that_refuses_is_one_warning_and_the_session_goes_on() {
    let Some(server) = coturn(&["--lt-cred-mech", "--user", &format!("alice:{PASSWORD}")]) else {
        return;
    };
    let wrong = "wrong-9f3e";
    let relay = RelayConfig {
        uri: uri(server.port, Transport::Udp),
        creds: long_term(wrong),
    };
    let (notes, events) = notes();
    let session = Session::bind(config(Role::Sender, vec![relay]), events)
        .await
        .unwrap();
    assert_eq!(session.ticket().relayed(), None);
    assert!(!session.ticket().candidates.is_empty());
    let warnings: Vec<String> = notes
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Warning { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.contains(&format!("turn:127.0.0.1:{}", server.port)) && w.contains("401"),
        "{w}"
    );
    assert!(!json(&notes).contains(wrong));
}

/// Sends `file` from `sender` to `receiver`'s `out`, as a program would; both must succeed.
async fn copy(sender: Link, receiver: Link, file: &Path, out: &Path) {
    let (s, r, _) = sessions::copy(sender, receiver, file, out, None).await;
    s.unwrap();
    r.unwrap();
}

/// The `connected` and `path_changed` events' path kinds, in order.
fn paths(notes: &Notes) -> Vec<(String, String)> {
    notes
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. } | Event::PathChanged { .. }))
        .map(|e| {
            let v = serde_json::to_value(e).unwrap();
            (
                v["event"].as_str().unwrap().to_owned(),
                v["path_kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A receiver with an allocation and a sender without; `doctor` turns each side's view of
/// the other's ticket into what it should see. Copies a file of `size` bytes and checks it.
async fn relayed_copy(
    size: usize,
    doctor: impl Fn(&FullTicket, &FullTicket) -> (Ticket, Ticket),
) -> (Notes, Notes) {
    let server = coturn(&["--lt-cred-mech", "--user", &format!("alice:{PASSWORD}")]).unwrap();
    let relay = RelayConfig {
        uri: uri(server.port, Transport::Udp),
        creds: long_term(PASSWORD),
    };
    let (s_notes, s_events) = notes();
    let (r_notes, r_events) = notes();
    let sender = Session::bind(config(Role::Sender, vec![]), s_events)
        .await
        .unwrap();
    let receiver = Session::bind(config(Role::Receiver, vec![relay]), r_events)
        .await
        .unwrap();
    let (to_r, to_s) = doctor(receiver.ticket(), sender.ticket());
    let (s, r) = tokio::join!(sender.connect(to_r), receiver.connect(to_s));
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    let data = pseudo_random(size, 11);
    std::fs::write(&file, &data).unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        copy(s.unwrap(), r.unwrap(), &file, out.path()),
    )
    .await
    .expect("done in time");
    assert!(std::fs::read(out.path().join("data.bin")).unwrap() == data);
    drop(server);
    (s_notes, r_notes)
}

#[tokio::test]
async fn the_relay_alone_carries_the_data() {
    if coturn(&[]).is_none() {
        return;
    }
    // The sender knows the receiver only by its relayed address; the receiver knows the
    // sender at an address where nobody listens: no direct path either way.
    let (s_notes, r_notes) = relayed_copy(1 << 20, |receiver, sender| {
        let only_relay = FullTicket {
            candidates: receiver
                .candidates
                .iter()
                .copied()
                .filter(|c| c.kind == CandidateKind::Relayed)
                .collect(),
            ..receiver.clone()
        };
        let nowhere = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let dead = FullTicket {
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr: nowhere.local_addr().unwrap(),
            }],
            ..sender.clone()
        };
        (Ticket::Full(only_relay), Ticket::Full(dead))
    })
    .await;
    for (role, notes) in [("sender", &s_notes), ("receiver", &r_notes)] {
        assert_eq!(
            paths(notes),
            [("connected".to_owned(), "relayed".to_owned())],
            "{role}"
        );
    }
}

#[tokio::test]
async fn the_data_starts_on_the_relay_and_moves_onto_the_direct_path() {
    if coturn(&[]).is_none() {
        return;
    }
    let (s_notes, _) = relayed_copy(16 << 20, |receiver, sender| {
        (Ticket::Full(receiver.clone()), Ticket::Full(sender.clone()))
    })
    .await;
    let seen = paths(&s_notes);
    assert_eq!(
        seen.first(),
        Some(&("connected".to_owned(), "relayed".to_owned())),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(e, k)| e == "path_changed" && k != "relayed"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn strangers_cannot_use_the_allocation() {
    let Some(server) = coturn(&["--lt-cred-mech", "--user", &format!("alice:{PASSWORD}")]) else {
        return;
    };
    let alloc = Allocation::open(&uri(server.port, Transport::Udp), &long_term(PASSWORD))
        .await
        .unwrap();
    let peer = tokio::net::UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let stranger = tokio::net::UdpSocket::bind(("127.0.0.2", 0)).await.unwrap();
    alloc.permit(LOOPBACK).await.unwrap();
    stranger
        .send_to(b"\x40from a stranger", alloc.relayed_addr())
        .await
        .unwrap();
    peer.send_to(b"\x40from the peer", alloc.relayed_addr())
        .await
        .unwrap();
    let (from, data) = tokio::time::timeout(Duration::from_secs(5), alloc.recv_from())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (from, &data[..]),
        (peer.local_addr().unwrap(), &b"\x40from the peer"[..])
    );
    stranger
        .send_to(b"\x40again", alloc.relayed_addr())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), alloc.recv_from())
            .await
            .is_err(),
        "a datagram from a source without permission got through"
    );
}

#[tokio::test]
async fn without_stun_answers_the_relay_is_the_way_out() {
    let Some(server) = coturn(&["--lt-cred-mech", "--user", &format!("alice:{PASSWORD}")]) else {
        return;
    };
    // A STUN server that never answers: UDP blocked, as far as STUN can tell.
    let silent = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let relay = RelayConfig {
        uri: uri(server.port, Transport::Tcp),
        creds: long_term(PASSWORD),
    };
    let (seen, events) = notes();
    let session = Session::bind(
        SessionConfig {
            no_stun: false,
            stun_servers: vec![silent.local_addr().unwrap().to_string()],
            ..config(Role::Sender, vec![relay])
        },
        events,
    )
    .await
    .unwrap();
    assert!(session.ticket().relayed().is_some());
    let json = json(&seen);
    assert!(json.contains("going on through the relay"), "{json}");
    // Without a relay the same is an error, as before.
    let (_, events) = notes();
    let e = Session::bind(
        SessionConfig {
            no_stun: false,
            stun_servers: vec![silent.local_addr().unwrap().to_string()],
            ..config(Role::Sender, vec![])
        },
        events,
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
}

/// A UDP forwarder on loopback between `client` and `target`, both ways; nothing passes
/// while `cut` is set. Whatever else sends to it (the relay) reaches `target` too, but
/// answers go to `client` only, so the relay never learns the forwarder as the peer.
async fn forwarder(target: SocketAddr, client: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if cut.load(Ordering::SeqCst) {
                continue;
            }
            let to = if from == target { client } else { target };
            let _ = sock.send_to(&buf[..n], to).await;
        }
    });
    addr
}

#[tokio::test]
async fn when_the_direct_path_dies_the_data_goes_back_through_the_relay() {
    let Some(server) = coturn(&["--lt-cred-mech", "--user", &format!("alice:{PASSWORD}")]) else {
        return;
    };
    let relay = RelayConfig {
        uri: uri(server.port, Transport::Udp),
        creds: long_term(PASSWORD),
    };
    // The direct path runs through two forwarders, cut as soon as the sender moved onto it.
    let cut = Arc::new(AtomicBool::new(false));
    let s_notes = Notes::default();
    let (n, c) = (s_notes.clone(), cut.clone());
    let s_events = move |e: &Event| {
        if matches!(e, Event::PathChanged { path_kind, .. } if *path_kind != PathKind::Relayed) {
            c.store(true, Ordering::SeqCst);
        }
        n.lock().unwrap().push(e.clone());
    };
    let (r_notes, r_events) = notes();
    let sender = Session::bind(config(Role::Sender, vec![]), s_events)
        .await
        .unwrap();
    let receiver = Session::bind(config(Role::Receiver, vec![relay]), r_events)
        .await
        .unwrap();
    let (rt, st) = (receiver.ticket().clone(), sender.ticket().clone());
    let host = |t: &FullTicket| {
        t.candidates
            .iter()
            .find(|c| c.kind == CandidateKind::Host)
            .unwrap()
            .addr
    };
    let to_r = forwarder(host(&rt), host(&st), cut.clone()).await;
    let to_s = forwarder(host(&st), host(&rt), cut.clone()).await;
    let via = |t: &FullTicket, addr| {
        let mut candidates: Vec<Candidate> = t
            .candidates
            .iter()
            .copied()
            .filter(|c| c.kind == CandidateKind::Relayed)
            .collect();
        candidates.push(Candidate {
            kind: CandidateKind::Host,
            addr,
        });
        Ticket::Full(FullTicket {
            candidates,
            ..t.clone()
        })
    };
    let (s, r) = tokio::join!(
        sender.connect(via(&rt, to_r)),
        receiver.connect(via(&st, to_s))
    );
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    let data = pseudo_random(8 << 20, 5);
    std::fs::write(&file, &data).unwrap();
    tokio::time::timeout(
        Duration::from_secs(40),
        copy(s.unwrap(), r.unwrap(), &file, out.path()),
    )
    .await
    .expect("done in time");
    assert!(std::fs::read(out.path().join("data.bin")).unwrap() == data);
    assert!(
        cut.load(Ordering::SeqCst),
        "never moved onto the direct path"
    );
    let seen = paths(&s_notes);
    let kinds: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"relayed"), "{seen:?}");
    assert_eq!(kinds.last(), Some(&"relayed"), "{seen:?}");
    assert!(kinds.iter().any(|k| *k != "relayed"), "{seen:?}");
    // The same connection all along: no reconnect.
    for notes in [&s_notes, &r_notes] {
        assert!(!json(notes).contains("reconnecting"));
    }
    drop(server);
}
