//! The library as a program uses it: two `Session`s in one process on loopback, tickets
//! handed over in memory, a folder sent and checked byte for byte, the events each side
//! reported; and a path cut mid-transfer that the link survives by itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pcopy::events::Event;
use p2pcopy::ticket::{Role, Ticket};
use p2pcopy::transfer::{Incoming, Outgoing, Silent, Store};
use p2pcopy::{Events, Link, Session};

#[path = "common/sessions.rs"]
mod sessions;
use sessions::{config, copy, forwarder, pseudo_random, through};

/// Writes down every event; restores `cut` once both sides have reported a lost path.
#[derive(Clone, Default)]
struct Notes {
    events: Arc<Mutex<Vec<Event>>>,
    cut: Arc<AtomicBool>,
    lost: Arc<AtomicUsize>,
}

impl Events for Notes {
    fn event(&mut self, e: &Event) {
        if let Event::Reconnecting { .. } = e {
            if self.lost.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                self.cut.store(false, Ordering::SeqCst);
            }
        }
        self.events.lock().unwrap().push(e.clone());
    }
}

impl Notes {
    /// The other side's notes: its own list, the same path and count.
    fn peer(&self) -> Notes {
        Notes {
            events: Arc::default(),
            ..self.clone()
        }
    }

    fn names(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .map(|e| {
                let v = serde_json::to_value(e).unwrap();
                v["event"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

/// A folder with a nested file and a bigger one; returns the folder.
fn tree(root: &Path, big: usize) -> PathBuf {
    let dir = root.join("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"hello from a session").unwrap();
    std::fs::write(dir.join("sub/big.bin"), pseudo_random(big, 7)).unwrap();
    dir
}

fn assert_same(a: &Path, b: &Path) {
    for rel in ["a.txt", "sub/big.bin"] {
        assert!(
            std::fs::read(a.join(rel)).unwrap() == std::fs::read(b.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
}

/// Both sessions bound, the tickets exchanged (through `route`), both connected.
async fn pair(s_notes: &Notes, r_notes: &Notes, route: Option<Arc<AtomicBool>>) -> (Link, Link) {
    let sender = Session::bind(config(Role::Sender), s_notes.clone())
        .await
        .unwrap();
    let receiver = Session::bind(config(Role::Receiver), r_notes.clone())
        .await
        .unwrap();
    let (st, rt) = (sender.ticket().clone(), receiver.ticket().clone());
    let (to_r, to_s) = match route {
        None => (Ticket::Full(rt), Ticket::Full(st)),
        Some(cut) => {
            let f1 = forwarder(rt.candidates[0].addr, cut.clone()).await;
            let f2 = forwarder(st.candidates[0].addr, cut).await;
            (through(&rt, f1), through(&st, f2))
        }
    };
    let (s, r) = tokio::join!(sender.connect(to_r), receiver.connect(to_s));
    (s.unwrap(), r.unwrap())
}

#[tokio::test]
async fn two_sessions_copy_a_folder_and_report_it() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = tree(src.path(), 3 << 20);
    let s_notes = Notes::default();
    let r_notes = s_notes.peer();
    let (s, r) = pair(&s_notes, &r_notes, None).await;
    let (sr, rr, reconnects) =
        tokio::time::timeout(Duration::from_secs(20), copy(s, r, &dir, out.path(), None))
            .await
            .expect("done in time");
    sr.unwrap();
    rr.unwrap();
    assert_eq!(reconnects, 0);
    assert_same(&dir, &out.path().join("tree"));

    for (role, notes) in [("sender", &s_notes), ("receiver", &r_notes)] {
        let names = notes.names();
        let at = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{role}: no {name} in {names:?}"))
        };
        assert_eq!(names.first().map(String::as_str), Some("bound"), "{role}");
        assert_eq!(names.last().map(String::as_str), Some("summary"), "{role}");
        assert!(
            at("bound") < at("ticket")
                && at("ticket") < at("nat")
                && at("nat") < at("connecting")
                && at("connecting") < at("connected")
                && at("connected") < at("plan")
                && at("plan") < at("file_done"),
            "{role}: {names:?}"
        );
        let events = notes.events.lock().unwrap();
        let files: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::FileDone { .. }))
            .collect();
        assert_eq!(files.len(), 2, "{role}");
        match events.last() {
            Some(Event::Summary {
                files,
                folders,
                total_bytes,
                reconnects,
                ..
            }) => {
                assert_eq!((*files, *folders, *reconnects), (2, 2, 0), "{role}");
                assert_eq!(*total_bytes, (3 << 20) + 20, "{role}");
            }
            other => panic!("{role}: last event {other:?}"),
        }
        match events.iter().find(|e| matches!(e, Event::Connected { .. })) {
            Some(Event::Connected { authenticated, .. }) => assert!(*authenticated),
            other => panic!("{other:?}"),
        }
    }
}

/// A sender whose close never arrives (lost on the way: QUIC sends it once) once left the
/// receiver waiting 5 s for it, then up to 2 s more to close; it has all the verdicts once
/// it acknowledged them, and that is enough.
#[tokio::test]
async fn the_receiver_does_not_wait_for_a_close_that_never_comes() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = tree(src.path(), 1 << 20);
    let s_notes = Notes::default();
    let r_notes = s_notes.peer();
    let (mut s, mut r) = pair(&s_notes, &r_notes, None).await;
    let mut sending = Outgoing::new(p2pcopy::manifest::scan(std::slice::from_ref(&dir)).unwrap());
    let mut receiving = Incoming::new(Store::new(out.path().to_owned(), false));
    let (mut quiet_s, mut quiet_r) = (Silent, Silent);
    let (sent, took) = tokio::join!(
        // The sender finishes its job but neither finishes nor closes its link.
        s.send(&mut sending, &mut quiet_s),
        async {
            r.receive(&mut receiving, &mut quiet_r).await.unwrap();
            let t = std::time::Instant::now();
            r.finish(receiving.report()).await;
            r.close(&Ok(())).await;
            t.elapsed()
        }
    );
    sent.unwrap();
    assert_same(&dir, &out.path().join("tree"));
    assert!(
        took < Duration::from_secs(3),
        "the receiver took {took:?} to end"
    );
    drop(s);
}

/// The path dies mid-transfer for longer than the idle timeout (both sides notice), comes
/// back, and the link punches a new one and finishes the job by itself.
#[tokio::test]
async fn the_link_reconnects_after_a_cut_path() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = tree(src.path(), 8 << 20);
    let s_notes = Notes::default();
    let r_notes = s_notes.peer();
    let cut = s_notes.cut.clone();
    let (s, r) = pair(&s_notes, &r_notes, Some(cut.clone())).await;
    let (sr, rr, reconnects) = tokio::time::timeout(
        Duration::from_secs(40),
        copy(s, r, &dir, out.path(), Some((1 << 20, cut))),
    )
    .await
    .expect("done in time");
    sr.unwrap();
    rr.unwrap();
    assert_eq!(reconnects, 1);
    assert_same(&dir, &out.path().join("tree"));
    for (role, notes) in [("sender", &s_notes), ("receiver", &r_notes)] {
        let names = notes.names();
        let lost = names.iter().position(|n| n == "reconnecting");
        let lost = lost.unwrap_or_else(|| panic!("{role}: {names:?}"));
        let after: Vec<&str> = names[lost..].iter().map(String::as_str).collect();
        assert_eq!(
            after.iter().filter(|n| **n == "connected").count(),
            1,
            "{role}: {names:?}"
        );
        assert_eq!(after.last(), Some(&"summary"), "{role}: {names:?}");
        let events = notes.events.lock().unwrap();
        let again = events.iter().rev().find_map(|e| match e {
            Event::Connected { reconnects, .. } => Some(*reconnects),
            _ => None,
        });
        assert_eq!(again, Some(1), "{role}");
    }
}

/// A program on a multi-threaded runtime can spawn every step.
#[test]
fn the_steps_are_send() {
    fn send<T: Send>(_: &T) {}
    fn steps(session: Session, mut link: Link, job: &mut Outgoing, ticket: Ticket) {
        send(&Session::bind(config(Role::Sender), Notes::default()));
        send(&session.connect(ticket));
        send(&link.send(job, &mut Silent));
        send(&link.close(&Ok(())));
    }
    let _ = steps;
}
