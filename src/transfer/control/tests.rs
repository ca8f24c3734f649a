use super::*;
use crate::wire::SEGMENT_LEN;

fn entry(kind: EntryKind, path: &str, size: u64) -> Entry {
    Entry {
        kind,
        path: path.into(),
        size,
        mode: 0o644,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 0,
        target: if kind == EntryKind::Symlink {
            "a".into()
        } else {
            String::new()
        },
    }
}

fn file(path: &str, size: u64) -> Entry {
    entry(EntryKind::File, path, size)
}

/// A folder job: a folder, a file of three segments, a link and an empty file.
fn folder() -> Vec<Entry> {
    vec![
        entry(EntryKind::Dir, "d", 0),
        file("d/big", 2 * SEGMENT_LEN + 5),
        entry(EntryKind::Symlink, "d/l", 0),
        file("d/empty", 0),
    ]
}

fn claim(index: u32, offset: u64) -> Claim {
    Claim {
        index,
        offset,
        hash: [index as u8; 32],
    }
}

fn head(index: u32, start: u64) -> DataHead {
    DataHead { index, start }
}

const LIMIT: u64 = crate::wire::MAX_MANIFEST_COST;

fn drain(rx: &mut Receiver) -> Vec<Frame> {
    std::iter::from_fn(|| rx.poll_transmit()).collect()
}

/// A receiver that has read the offer and manifest of `entries`.
fn receiver_with(entries: &[Entry]) -> Receiver {
    let mut rx = Receiver::new(3, LIMIT);
    rx.handle_frame(Frame::Offer(Sender::offer(entries, 3)))
        .unwrap();
    for e in entries {
        assert_eq!(rx.phase(), RecvPhase::Manifest);
        rx.handle_frame(Frame::Entry(e.clone())).unwrap();
    }
    assert_eq!(rx.phase(), RecvPhase::Prepare);
    assert_eq!(**rx.manifest(), entries);
    rx
}

/// Runs both machines through a whole job of `entries` with the receiver holding
/// `claims`; each file's data starts at its claim. Returns the sender's events.
fn job(entries: &[Entry], claims: Vec<Claim>) -> Vec<SendEvent> {
    let mut rx = receiver_with(entries);
    let mut tx = Sender::new(entries);
    assert_eq!(tx.phase(), SendPhase::Accept);
    rx.prepared(claims.clone()).unwrap();
    let mut events = Vec::new();
    let mut feed = |tx: &mut Sender, rx: &mut Receiver| {
        for f in drain(rx) {
            events.extend(tx.handle_frame(f).unwrap());
        }
    };
    feed(&mut tx, &mut rx);
    for (i, e) in entries.iter().enumerate() {
        if e.kind != EntryKind::File {
            continue;
        }
        let i = i as u32;
        let start = claims.iter().find(|c| c.index == i).map_or(0, |c| c.offset);
        assert_eq!(
            rx.handle_data_head(head(i, start)).unwrap(),
            Segment::First { claimed: start }
        );
        let mut at = start;
        while segment_end(at, e.size) < e.size {
            at = segment_end(at, e.size);
            assert_eq!(rx.handle_data_head(head(i, at)).unwrap(), Segment::Next);
        }
        rx.file_received(i).unwrap();
        rx.file_finished(i, FileStatus::Stored).unwrap();
        feed(&mut tx, &mut rx);
    }
    assert_eq!(rx.phase(), RecvPhase::Tree);
    assert_eq!(rx.pending(), 0);
    rx.tree_finished().unwrap();
    assert_eq!(rx.phase(), RecvPhase::Done);
    feed(&mut tx, &mut rx);
    assert_eq!(tx.phase(), SendPhase::Done);
    events
}

#[test]
fn a_single_file() {
    let e = [file("x.bin", 10)];
    let events = job(&e, vec![]);
    assert_eq!(
        events,
        [
            SendEvent::Accepted { flags: 3 },
            SendEvent::Plan(HashMap::new()),
            SendEvent::Verdict {
                index: 0,
                status: FileStatus::Stored
            },
            SendEvent::JobDone,
        ]
    );
}

#[test]
fn a_folder_in_segments() {
    let e = folder();
    let events = job(&e, vec![]);
    let verdicts: Vec<u32> = events
        .iter()
        .filter_map(|ev| match ev {
            SendEvent::Verdict { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, [1, 3]);
    assert_eq!(events.last(), Some(&SendEvent::JobDone));
}

#[test]
fn resume_claims_reach_the_sender_and_set_the_start() {
    let e = folder();
    let claims = vec![claim(3, 0), claim(1, SEGMENT_LEN + 7)];
    let events = job(&e, claims.clone());
    let SendEvent::Plan(got) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(got.len(), 2);
    assert_eq!(got[&1], claims[1]);
    assert_eq!(got[&3], claims[0]);
    // The claims go out in entry order, between Accept and PlanEnd.
    let mut rx = receiver_with(&e);
    rx.prepared(claims).unwrap();
    assert_eq!(
        drain(&mut rx),
        [
            Frame::Accept { flags: 3 },
            Frame::Claim(claim(1, SEGMENT_LEN + 7)),
            Frame::Claim(claim(3, 0)),
            Frame::PlanEnd
        ]
    );
    // A file may also start over at 0 despite its claim (the sender's prefix differed).
    assert_eq!(
        rx.handle_data_head(head(1, 0)).unwrap(),
        Segment::First {
            claimed: SEGMENT_LEN + 7
        }
    );
}

#[test]
fn an_empty_job() {
    let events = job(&[], vec![]);
    assert_eq!(events.len(), 3, "{events:?}");
    let mut rx = receiver_with(&[]);
    rx.prepared(vec![]).unwrap();
    assert_eq!(rx.phase(), RecvPhase::Tree);
    // Folders only: no file, no verdict.
    let dirs = [entry(EntryKind::Dir, "a", 0), entry(EntryKind::Dir, "b", 0)];
    assert_eq!(job(&dirs, vec![]).last(), Some(&SendEvent::JobDone));
}

#[test]
fn verdicts_may_wait_while_the_next_files_arrive() {
    // A batch of small files: each received, all confirmed together after one durability
    // round; the job is over only when every verdict is out.
    let e = [file("a", 1), file("b", 2), file("c", 3)];
    let mut rx = receiver_with(&e);
    rx.prepared(vec![]).unwrap();
    drain(&mut rx);
    for i in 0..3 {
        rx.handle_data_head(head(i, 0)).unwrap();
        rx.file_received(i).unwrap();
    }
    assert_eq!((rx.pending(), rx.unconfirmed()), (0, 3));
    assert_eq!(rx.phase(), RecvPhase::Files);
    assert!(drain(&mut rx).is_empty());
    for i in [1, 0, 2] {
        assert_eq!(rx.phase(), RecvPhase::Files);
        rx.file_finished(i, FileStatus::Stored).unwrap();
    }
    assert_eq!(rx.phase(), RecvPhase::Tree);
    let verdicts: Vec<Frame> = drain(&mut rx);
    assert_eq!(
        verdicts,
        [1, 0, 2].map(|index| Frame::FileDone {
            index,
            status: FileStatus::Stored
        })
    );
}

#[test]
fn heartbeats_are_passed_over_until_job_done() {
    let e = [file("x", 1)];
    let mut tx = Sender::new(&e);
    for f in [
        Frame::Busy,
        Frame::Accept { flags: 0 },
        Frame::Busy,
        Frame::PlanEnd,
        Frame::Busy,
        Frame::FileDone {
            index: 0,
            status: FileStatus::AlreadyThere,
        },
        Frame::Busy,
        Frame::JobDone,
    ] {
        tx.handle_frame(f).unwrap();
    }
    assert_eq!(tx.verdicts(), [(0, FileStatus::AlreadyThere)]);
    assert_eq!(tx.peer_flags(), 0);
    let err = tx.handle_frame(Frame::Busy).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol error: the receiver sent Busy after JobDone"
    );
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::Offer(Offer {
            flags: 0,
            entries: 1,
            total: 1,
        }),
        Frame::Entry(file("x", 1)),
        Frame::Accept { flags: 0 },
        Frame::Claim(claim(0, 0)),
        Frame::PlanEnd,
        Frame::FileDone {
            index: 0,
            status: FileStatus::Stored,
        },
        Frame::JobDone,
        Frame::Busy,
        // A link's deletion is no part of a job, in any phase on either side.
        Frame::Delete {
            path: "x".into(),
            hash: None,
        },
        Frame::Deleted {
            status: crate::wire::DeleteStatus::Deleted,
        },
    ]
}

/// A sender of one file brought to `phase`.
fn sender_in(phase: SendPhase) -> Sender {
    let mut tx = Sender::new(&[file("x", 1), entry(EntryKind::Dir, "d", 0)]);
    let steps: &[Frame] = match phase {
        SendPhase::Accept => &[],
        SendPhase::Claims => &[Frame::Accept { flags: 0 }],
        SendPhase::Files => &[Frame::Accept { flags: 0 }, Frame::PlanEnd],
        SendPhase::Done => &[
            Frame::Accept { flags: 0 },
            Frame::PlanEnd,
            Frame::FileDone {
                index: 0,
                status: FileStatus::Stored,
            },
            Frame::JobDone,
        ],
    };
    for f in steps {
        tx.handle_frame(f.clone()).unwrap();
    }
    assert_eq!(tx.phase(), phase);
    tx
}

#[test]
fn the_sender_refuses_every_frame_out_of_order() {
    use SendPhase::*;
    // (phase, frame index in every_frame(), allowed)
    let allowed = |p: SendPhase, f: &Frame| {
        matches!(
            (p, f),
            (Accept, Frame::Accept { .. })
                | (Claims, Frame::Claim(_) | Frame::PlanEnd)
                | (Files, Frame::FileDone { .. })
                | (Accept | Claims | Files, Frame::Busy)
        )
    };
    for phase in [Accept, Claims, Files, Done] {
        for f in every_frame() {
            let mut tx = sender_in(phase);
            let r = tx.handle_frame(f.clone());
            if allowed(phase, &f) {
                assert!(r.is_ok(), "{phase:?} {f:?}: {r:?}");
                continue;
            }
            let err = r.unwrap_err();
            assert_eq!(err.exit_code(), 10, "{phase:?} {f:?}");
            let text = err.to_string();
            assert!(
                text.contains(&named(&f)) && text.contains(&phase.to_string()),
                "{phase:?} {f:?}: {text}"
            );
        }
    }
}

#[test]
fn the_sender_refuses_lying_claims_and_verdicts() {
    let cases: Vec<(SendPhase, Frame, &str)> = vec![
        (SendPhase::Claims, Frame::Claim(claim(1, 0)), "not a file"),
        (SendPhase::Claims, Frame::Claim(claim(9, 0)), "not a file"),
        (
            SendPhase::Files,
            Frame::FileDone {
                index: 1,
                status: FileStatus::Stored,
            },
            "not a file",
        ),
        (
            SendPhase::Files,
            Frame::FileDone {
                index: u32::MAX,
                status: FileStatus::Stored,
            },
            "not a file",
        ),
        (
            SendPhase::Files,
            Frame::JobDone,
            "JobDone while the files were sent with 0 of 1 files confirmed",
        ),
    ];
    for (phase, f, want) in cases {
        let err = sender_in(phase).handle_frame(f.clone()).unwrap_err();
        assert_eq!(err.exit_code(), 10);
        assert!(err.to_string().contains(want), "{f:?}: {err}");
    }
    // Twice the same claim, twice the same verdict.
    let mut tx = sender_in(SendPhase::Claims);
    tx.handle_frame(Frame::Claim(claim(0, 5))).unwrap();
    let err = tx.handle_frame(Frame::Claim(claim(0, 5))).unwrap_err();
    assert!(err.to_string().contains("claimed twice"), "{err}");
    let mut tx = sender_in(SendPhase::Files);
    let done = Frame::FileDone {
        index: 0,
        status: FileStatus::HashMismatch,
    };
    tx.handle_frame(done.clone()).unwrap();
    let err = tx.handle_frame(done).unwrap_err();
    assert!(err.to_string().contains("confirmed already"), "{err}");
    assert_eq!(tx.verdicts().len(), 1);
}

/// A receiver of one file brought to `phase`.
fn receiver_in(phase: RecvPhase) -> Receiver {
    let e = [file("x", 1), entry(EntryKind::Dir, "d", 0)];
    let mut rx = Receiver::new(0, LIMIT);
    if phase == RecvPhase::Offer {
        return rx;
    }
    rx.handle_frame(Frame::Offer(Sender::offer(&e, 0))).unwrap();
    if phase == RecvPhase::Manifest {
        return rx;
    }
    for x in &e {
        rx.handle_frame(Frame::Entry(x.clone())).unwrap();
    }
    if phase == RecvPhase::Prepare {
        return rx;
    }
    rx.prepared(vec![]).unwrap();
    if phase == RecvPhase::Files {
        return rx;
    }
    rx.handle_data_head(head(0, 0)).unwrap();
    rx.file_received(0).unwrap();
    rx.file_finished(0, FileStatus::Stored).unwrap();
    if phase == RecvPhase::Tree {
        return rx;
    }
    rx.tree_finished().unwrap();
    rx
}

#[test]
fn the_receiver_refuses_every_frame_out_of_order() {
    use RecvPhase::*;
    for phase in [Offer, Manifest, Prepare, Files, Tree, Done] {
        for f in every_frame() {
            let mut rx = receiver_in(phase);
            assert_eq!(rx.phase(), phase);
            let r = rx.handle_frame(f.clone());
            let ok = matches!(
                (phase, &f),
                (Offer, Frame::Offer(_)) | (Manifest, Frame::Entry(_))
            );
            if ok {
                assert!(r.is_ok(), "{phase:?} {f:?}: {r:?}");
                continue;
            }
            let err = r.unwrap_err();
            assert_eq!(err.exit_code(), 10, "{phase:?} {f:?}");
            let text = err.to_string();
            assert!(
                text.contains(&named(&f)) && text.contains(&phase.to_string()),
                "{phase:?} {f:?}: {text}"
            );
        }
    }
    // In the file list, the message says where.
    let err = receiver_in(Manifest).handle_frame(Frame::Busy).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol error: the sender sent Busy in its file list (after entry 0 of 2)"
    );
}

#[test]
fn the_receiver_refuses_data_out_of_order() {
    use RecvPhase::*;
    for phase in [Offer, Manifest, Prepare, Tree, Done] {
        let err = receiver_in(phase).handle_data_head(head(0, 0)).unwrap_err();
        assert_eq!(err.exit_code(), 10);
        assert!(err.to_string().contains(&phase.to_string()), "{err}");
    }
    let e = folder();
    let fresh = || {
        let mut rx = receiver_with(&e);
        rx.prepared(vec![claim(3, 0), claim(1, 100)]).unwrap();
        rx
    };
    // An entry that is not a file, or not in the job; a start nobody claimed.
    for (h, want) in [
        (head(0, 0), "not an awaited file"),
        (head(2, 0), "not an awaited file"),
        (head(4, 0), "not an awaited file"),
        (head(u32::MAX, 0), "not an awaited file"),
        (head(1, 99), "at byte 99 but 100 were claimed"),
        (head(1, 2 * SEGMENT_LEN + 5), "were claimed"),
    ] {
        let err = fresh().handle_data_head(h).unwrap_err();
        assert_eq!(err.exit_code(), 10);
        assert!(err.to_string().contains(want), "{h:?}: {err}");
    }
    // Mid-file: only the next segment of the same file.
    for h in [
        head(3, 0),
        head(1, 100),
        head(1, SEGMENT_LEN),
        head(1, SEGMENT_LEN + 101),
    ] {
        let mut rx = fresh();
        rx.handle_data_head(head(1, 100)).unwrap();
        let err = rx.handle_data_head(h).unwrap_err();
        assert!(
            err.to_string().contains("interrupted entry 1"),
            "{h:?}: {err}"
        );
    }
    // Past the last segment; and a file received twice.
    let mut rx = fresh();
    rx.handle_data_head(head(3, 0)).unwrap();
    let err = rx.handle_data_head(head(3, 0)).unwrap_err();
    assert!(err.to_string().contains("interrupted entry 3"), "{err}");
    rx.file_received(3).unwrap();
    let err = rx.handle_data_head(head(3, 0)).unwrap_err();
    assert!(err.to_string().contains("not an awaited file"), "{err}");
}

#[test]
fn the_receiver_checks_the_manifest_against_the_offer() {
    let e = file("x", 5);
    let offer = |entries, total| {
        Frame::Offer(Offer {
            flags: 0,
            entries,
            total,
        })
    };
    // Sizes that do not add up, or overflow.
    let mut rx = Receiver::new(0, LIMIT);
    rx.handle_frame(offer(1, 4)).unwrap();
    let err = rx.handle_frame(Frame::Entry(e.clone())).unwrap_err();
    assert!(err.to_string().contains("add up to 5 bytes"), "{err}");
    let mut rx = Receiver::new(0, LIMIT);
    rx.handle_frame(offer(2, 0)).unwrap();
    rx.handle_frame(Frame::Entry(file("a", u64::MAX))).unwrap();
    let err = rx.handle_frame(Frame::Entry(e.clone())).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
    // More entries than announced: the list is over, the next one is out of order.
    let mut rx = Receiver::new(0, LIMIT);
    rx.handle_frame(offer(1, 5)).unwrap();
    rx.handle_frame(Frame::Entry(e.clone())).unwrap();
    let err = rx.handle_frame(Frame::Entry(e.clone())).unwrap_err();
    assert!(err.to_string().contains("before our plan"), "{err}");
    // The memory limit: an announced count that cannot fit, and entries that pass it
    // (long ones: four of the shortest would fit).
    let e = file(&"x".repeat(100), 5);
    let limit = 3 * entry_cost(&e);
    let err = Receiver::new(0, limit)
        .handle_frame(offer(100, 0))
        .unwrap_err();
    assert!(err.to_string().contains("100 entries announced"), "{err}");
    let mut rx = Receiver::new(0, limit);
    rx.handle_frame(offer(4, 20)).unwrap();
    for _ in 0..3 {
        rx.handle_frame(Frame::Entry(e.clone())).unwrap();
    }
    let err = rx.handle_frame(Frame::Entry(e)).unwrap_err();
    assert!(err.to_string().contains("entry 4 of 4 passed it"), "{err}");
    assert!(err.to_string().contains("several runs"), "{err}");
}

#[test]
fn the_shell_s_mistakes_are_internal_errors() {
    let mut rx = receiver_in(RecvPhase::Manifest);
    assert!(matches!(rx.prepared(vec![]), Err(Error::Internal(_))));
    assert!(matches!(rx.tree_finished(), Err(Error::Internal(_))));
    for claims in [
        vec![claim(1, 0)],
        vec![claim(7, 0)],
        vec![claim(0, 2)],
        vec![claim(0, 1), claim(0, 0)],
    ] {
        let mut rx = receiver_in(RecvPhase::Prepare);
        let r = rx.prepared(claims.clone());
        assert!(matches!(r, Err(Error::Internal(_))), "{claims:?}: {r:?}");
    }
    let mut rx = receiver_in(RecvPhase::Files);
    assert!(matches!(
        rx.file_finished(0, FileStatus::Stored),
        Err(Error::Internal(_))
    ));
    assert!(matches!(rx.file_received(0), Err(Error::Internal(_))));
    rx.handle_data_head(head(0, 0)).unwrap();
    assert!(matches!(
        rx.file_finished(0, FileStatus::Stored),
        Err(Error::Internal(_))
    ));
    assert!(matches!(rx.file_received(1), Err(Error::Internal(_))));
    rx.file_received(0).unwrap();
    assert!(matches!(rx.file_received(0), Err(Error::Internal(_))));
    rx.file_finished(0, FileStatus::Stored).unwrap();
    assert!(matches!(
        rx.file_finished(0, FileStatus::Stored),
        Err(Error::Internal(_))
    ));
}
