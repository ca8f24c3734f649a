//! Sessions with a TURN relay of the user's own: coturn on loopback gives an allocation at
//! bind, whose relayed address the ticket carries; a relay that refuses is a one-line
//! warning naming it and why, and the session goes on without it. Skipped (passing) where
//! coturn's `turnserver` is not installed; the lab runs the NAT cases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pcopy::events::Event;
use p2pcopy::relay::{RelayConfig, Transport};
use p2pcopy::ticket::{CandidateKind, Role, Ticket};
use p2pcopy::{Session, SessionConfig};

#[path = "common/coturn.rs"]
mod coturn;
use coturn::{coturn, long_term, uri, LOOPBACK};

const PASSWORD: &str = "pw-relay-5c1d";

/// Loopback only: no STUN, NTP or router, and bounded waits.
fn config(role: Role, relays: Vec<RelayConfig>) -> SessionConfig {
    SessionConfig {
        bind: LOOPBACK,
        no_stun: true,
        no_ntp: true,
        no_portmap: true,
        timeout: Duration::from_secs(20),
        relays,
        ..SessionConfig::new(role)
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
