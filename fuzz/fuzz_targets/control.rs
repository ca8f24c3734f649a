//! Any sequence of control frames (decoded from the input with the wire decoder) and data
//! stream heads against the sans-IO control machines of both sides, `transfer::control`:
//! they never panic, refuse what they refuse as a protocol error (never an internal one),
//! and never accept more than the limits: entries beyond the offer or the memory limit,
//! sizes that do not add up, data for a file not awaited or twice, claims or verdicts for
//! what is not a file or twice, `JobDone` before every verdict, anything after it.
//!
//! The first byte picks the side (bit 7: the sender, else the receiver) and the job's shape.
//! The receiver reads operations: 0 a frame, 1 a 12-byte data head, 2 with a status byte
//! "the current file is received" or, between files, "a received file ended" (with that
//! status), 3 "the disk side is done" (the plan, or the tree). The sender
//! reads frames only, as it does on its control stream.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use p2pcopy::transfer::control::{Receiver, RecvPhase, Segment, SendEvent, SendPhase, Sender};
use p2pcopy::wire::{
    entry_cost, Claim, DataHead, Entry, EntryKind, FileStatus, Frame, DATA_HEAD_LEN,
    MAX_MANIFEST_COST,
};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    if shape & 0x80 != 0 {
        sender(shape, rest);
    } else {
        receiver(shape, rest);
    }
});

fn status(b: u8) -> FileStatus {
    match b % 4 {
        0 => FileStatus::Stored,
        1 => FileStatus::AlreadyThere,
        2 => FileStatus::HashMismatch,
        _ => FileStatus::SourceChanged,
    }
}

/// A refusal must be the peer's fault (exit code 10), never an internal error.
fn refused(e: p2pcopy::Error) {
    assert_eq!(e.exit_code(), 10, "{e:?}");
}

fn receiver(shape: u8, mut rest: &[u8]) {
    let limit = if shape & 0x40 != 0 {
        64 << 10
    } else {
        MAX_MANIFEST_COST
    };
    let mut rx = Receiver::new(3, limit);
    let mut started = HashSet::new();
    let mut current: Option<u32> = None;
    // Received files whose verdict is still to come.
    let mut received = Vec::new();
    let mut done = 0usize;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let r = match op % 4 {
            0 => {
                let Ok(Some((frame, used))) = Frame::decode(rest) else {
                    return;
                };
                rest = &rest[used..];
                rx.handle_frame(frame)
            }
            1 => {
                let Some(h) = rest.first_chunk::<DATA_HEAD_LEN>() else {
                    return;
                };
                rest = &rest[DATA_HEAD_LEN..];
                let head = DataHead::decode(h);
                match rx.handle_data_head(head) {
                    Ok(Segment::First { claimed }) => {
                        assert!(current.is_none(), "a new file in the middle of one");
                        let e = &rx.manifest()[head.index as usize];
                        assert_eq!(e.kind, EntryKind::File);
                        assert!(head.start == 0 || head.start == claimed);
                        assert!(claimed <= e.size);
                        assert!(started.insert(head.index), "a file started twice");
                        current = Some(head.index);
                        Ok(())
                    }
                    Ok(Segment::Next) => {
                        let index = current.expect("a next segment without a file");
                        assert_eq!(head.index, index);
                        assert!(head.start < rx.manifest()[index as usize].size);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            2 => {
                let Some((&b, tail)) = rest.split_first() else {
                    return;
                };
                rest = tail;
                if let Some(index) = current.take() {
                    rx.file_received(index).expect("receiving the current file");
                    received.push(index);
                } else if !received.is_empty() {
                    let index = received.swap_remove(b as usize % received.len());
                    rx.file_finished(index, status(b))
                        .expect("finishing a received file");
                }
                Ok(())
            }
            _ => {
                match rx.phase() {
                    RecvPhase::Prepare => rx.prepared(claims(shape, rx.manifest())).expect("plan"),
                    RecvPhase::Tree => rx.tree_finished().expect("tree"),
                    _ => {}
                }
                Ok(())
            }
        };
        check_receiver(&rx, limit);
        while let Some(f) = rx.poll_transmit() {
            match f {
                Frame::FileDone { .. } => done += 1,
                Frame::JobDone => {
                    assert_eq!(done, started.len());
                    assert_eq!(rx.pending(), 0);
                }
                _ => {}
            }
        }
        if let Err(e) = r {
            refused(e);
            return;
        }
    }
}

/// Claims the disk side might make: some files, half of each.
fn claims(shape: u8, manifest: &[Entry]) -> Vec<Claim> {
    manifest
        .iter()
        .enumerate()
        .filter(|(i, e)| e.kind == EntryKind::File && (i + shape as usize) % 3 == 0)
        .map(|(i, e)| Claim {
            index: i as u32,
            offset: e.size / 2,
            hash: [0; 32],
        })
        .collect()
}

fn check_receiver(rx: &Receiver, limit: u64) {
    let m = rx.manifest();
    if m.is_empty() {
        return;
    }
    let offer = rx.offer().expect("a manifest without an offer");
    assert_eq!(m.len(), offer.entries as usize, "entries against the offer");
    let sum = m.iter().try_fold(0u64, |s, e| s.checked_add(e.size));
    assert_eq!(sum, Some(offer.total), "sizes against the offer");
    let cost: u64 = m.iter().map(entry_cost).sum();
    assert!(cost <= limit, "manifest cost {cost} past {limit}");
    let files = m.iter().filter(|e| e.kind == EntryKind::File).count();
    assert!(rx.pending() <= files);
}

fn sender(shape: u8, mut rest: &[u8]) {
    // Up to 7 entries; bits 3..7 make some of them folders.
    let entries: Vec<Entry> = (0..(shape & 7) as usize)
        .map(|i| Entry {
            kind: if shape >> (3 + i % 4) & 1 != 0 {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            path: format!("f{i}"),
            size: if shape >> (3 + i % 4) & 1 != 0 {
                0
            } else {
                i as u64 * 1000
            },
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            target: String::new(),
        })
        .collect();
    let is_file = |i: u32| {
        entries
            .get(i as usize)
            .is_some_and(|e| e.kind == EntryKind::File)
    };
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
    let mut tx = Sender::new(&entries);
    assert_eq!(tx.files(), files);
    let mut verdicts = HashSet::new();
    while let Ok(Some((frame, used))) = Frame::decode(rest) {
        rest = &rest[used..];
        let before = tx.phase();
        match tx.handle_frame(frame) {
            Ok(Some(SendEvent::Accepted { .. })) => assert_eq!(before, SendPhase::Accept),
            Ok(Some(SendEvent::Plan(claims))) => {
                assert_eq!(before, SendPhase::Claims);
                assert!(claims.len() <= files);
                assert!(claims.iter().all(|(&i, c)| c.index == i && is_file(i)));
            }
            Ok(Some(SendEvent::Verdict { index, .. })) => {
                assert_eq!(before, SendPhase::Files);
                assert!(is_file(index));
                assert!(verdicts.insert(index), "a second verdict");
            }
            Ok(Some(SendEvent::JobDone)) => {
                assert_eq!(verdicts.len(), files);
                assert_eq!(tx.phase(), SendPhase::Done);
            }
            Ok(None) => assert_ne!(before, SendPhase::Done),
            Err(e) => {
                refused(e);
                return;
            }
        }
        assert!(tx.verdicts().len() <= files);
    }
}
