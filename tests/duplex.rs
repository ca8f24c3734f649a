//! A link that stays, as a program uses it: two `Session`s in one process on loopback, both
//! links kept as `Duplex`es, many jobs both ways at once; and a path cut mid-job that the
//! link survives by itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use p2pcopy::events::Event;
use p2pcopy::ticket::{Role, Ticket};
use p2pcopy::transfer::part_name;
use p2pcopy::wire::DeleteStatus;
use p2pcopy::{Arrivals, Duplex, DuplexOptions, Error, Events, Session, SessionConfig};

#[path = "common/sessions.rs"]
mod sessions;
use sessions::{config, forwarder, through};

/// Restores `cut` once both sides have reported a lost path.
#[derive(Clone, Default)]
struct Notes {
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
    }
}

type Side = (Duplex, Arrivals);

/// Two sessions connected (through a forwarder when `notes` can cut it), both links kept:
/// the dialing side receives into `out_a`, the other into `out_b`.
async fn pair(notes: &Notes, cut: bool, out_a: &Path, out_b: &Path) -> (Side, Side) {
    let a = Session::bind(config(Role::Sender), notes.clone())
        .await
        .unwrap();
    let b = Session::bind(config(Role::Receiver), notes.clone())
        .await
        .unwrap();
    let (at, bt) = (a.ticket().clone(), b.ticket().clone());
    let (to_b, to_a) = if cut {
        let fb = forwarder(bt.candidates[0].addr, notes.cut.clone()).await;
        let fa = forwarder(at.candidates[0].addr, notes.cut.clone()).await;
        (through(&bt, fb), through(&at, fa))
    } else {
        (Ticket::Full(bt), Ticket::Full(at))
    };
    let (a, b) = tokio::join!(a.connect(to_b), b.connect(to_a));
    // Only the other side honours deletions.
    let opts = |out: &Path, allow_delete| DuplexOptions {
        reconnect_for: Some(Duration::from_secs(30)),
        allow_delete,
        ..DuplexOptions::new(out.to_owned())
    };
    (
        a.unwrap().into_duplex(opts(out_a, false)),
        b.unwrap().into_duplex(opts(out_b, true)),
    )
}

/// `n` small files named `{tag}-{i}` under `dir`, each with its own content.
fn small_files(dir: &Path, tag: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{tag}-{i}.txt"));
            std::fs::write(&p, format!("{tag} file {i} ").repeat(i % 50 + 1)).unwrap();
            p
        })
        .collect()
}

/// Sends each file as a job of its own, all asked for at once; every one must be verified.
async fn send_each(duplex: &Duplex, files: &[PathBuf]) {
    let sends = files.iter().map(|f| duplex.send(std::slice::from_ref(f)));
    let mut set = Vec::new();
    for s in sends {
        set.push(s);
    }
    let reports = join_all(set).await;
    for r in reports {
        let r = r.expect("verified");
        assert_eq!((r.files, r.failed.len()), (1, 0));
    }
}

/// Polls every future to the end (no extra crate for a join of many).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// Takes `n` arrivals, each verified, and returns the saved files by name.
async fn arrivals(arrivals: &mut Arrivals, n: usize) -> BTreeMap<String, blake3::Hash> {
    let mut saved = BTreeMap::new();
    for _ in 0..n {
        let a = arrivals.next().await.expect("the link is up");
        a.result.expect("the job arrived");
        for (name, hash) in a.saved {
            assert!(saved.insert(name.clone(), hash).is_none(), "{name} twice");
        }
    }
    saved
}

/// Every file of `sent` is in `out` under its own name, identical, and nothing else is.
fn assert_arrived(sent: &[PathBuf], out: &Path, saved: &BTreeMap<String, blake3::Hash>) {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = sent
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    want.sort();
    assert_eq!(names, want, "exactly the files sent, none twice");
    for p in sent {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(std::fs::read(out.join(&name)).unwrap(), bytes, "{name}");
        assert_eq!(saved.get(&name), Some(&blake3::hash(&bytes)), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_links_send_to_each_other_at_once() {
    let (src, out_a, out_b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let notes = Notes::default();
    let ((a, mut a_in), (b, mut b_in)) = pair(&notes, false, out_a.path(), out_b.path()).await;
    const N: usize = 60;
    let from_a = small_files(src.path(), "a", N);
    let from_b = small_files(src.path(), "b", N);
    let work = async {
        tokio::join!(
            send_each(&a, &from_a),
            send_each(&b, &from_b),
            arrivals(&mut b_in, N),
            arrivals(&mut a_in, N),
        )
    };
    let (_, _, at_b, at_a) = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("done in time");
    assert_arrived(&from_a, out_b.path(), &at_b);
    assert_arrived(&from_b, out_a.path(), &at_a);

    // The link stays after all that: one more job, then a close the peer hears.
    let late = small_files(src.path(), "late", 1);
    b.send(&late).await.expect("a later job");
    a_in.next().await.unwrap().result.unwrap();
    a.close().await;
    let why = tokio::time::timeout(Duration::from_secs(10), b.wait_ended())
        .await
        .expect("the peer's close is heard");
    assert!(matches!(why, Error::PeerStopped(_)), "{why:?}");
    assert!(b.send(&late).await.is_err(), "no job after the link ended");
    assert!(
        b_in.next().await.is_none(),
        "no arrivals after the link ended"
    );
}

/// The path dies mid-job for longer than the idle timeout, comes back, and the link
/// punches a new one by itself; the job resumes and arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_stays_reconnects_mid_job() {
    let (src, out_a, out_b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let notes = Notes::default();
    let ((a, _a_in), (b, mut b_in)) = pair(&notes, true, out_a.path(), out_b.path()).await;
    let big = src.path().join("big.bin");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    // Cut the path once the receiver holds a part of the file.
    let part = out_b.path().join(part_name("big.bin"));
    let cut = notes.cut.clone();
    let cutter = tokio::spawn(async move {
        loop {
            if std::fs::metadata(&part)
                .map(|m| m.len() >= 1 << 20)
                .unwrap_or(false)
            {
                cut.store(true, Ordering::SeqCst);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let work = async { tokio::join!(a.send(std::slice::from_ref(&big)), arrivals(&mut b_in, 1)) };
    let (sent, saved) = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("done in time");
    let was_cut = tokio::time::timeout(Duration::from_secs(1), cutter).await;
    assert!(matches!(was_cut, Ok(Ok(true))), "the path was cut mid-job");
    let report = sent.expect("verified after the reconnect");
    assert_eq!(report.reconnects, 1);
    assert_eq!(a.reconnects(), 1);
    assert_eq!(
        notes.lost.load(Ordering::SeqCst),
        2,
        "both sides reconnected"
    );
    assert_arrived(&[big], out_b.path(), &saved);
    // The new path carries the next job both ways.
    let more = small_files(src.path(), "after", 1);
    b.send(&more).await.expect("a job on the new path");
    a.close().await;
    b.close().await;
}

/// A deletion goes in order after the job that sent the file; the peer removes only what
/// is still as sent, and only when its link allows deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_honoured_only_where_allowed() {
    let (src, out_a, out_b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let notes = Notes::default();
    let ((a, _a_in), (b, _b_in)) = pair(&notes, false, out_a.path(), out_b.path()).await;
    let files = small_files(src.path(), "del", 2);
    let sent = a.send(&files).await.unwrap();
    let hash = |name: &str| sent.hashes.iter().find(|(n, _)| n == name).unwrap().1;
    let (h0, h1) = (hash("del-0.txt"), hash("del-1.txt"));
    // Changed on the receiving side since: kept.
    std::fs::write(out_b.path().join("del-1.txt"), b"edited here").unwrap();
    assert_eq!(
        a.delete("del-1.txt", Some(h1)).await.unwrap(),
        DeleteStatus::Kept
    );
    assert!(out_b.path().join("del-1.txt").exists());
    assert_eq!(
        a.delete("del-0.txt", Some(h0)).await.unwrap(),
        DeleteStatus::Deleted
    );
    assert!(!out_b.path().join("del-0.txt").exists());
    // Deleted, it is no longer something we sent there.
    assert_eq!(
        a.delete("del-0.txt", Some(h0)).await.unwrap(),
        DeleteStatus::Refused
    );
    // Deleted there by hand: missing.
    std::fs::remove_file(out_b.path().join("del-1.txt")).unwrap();
    assert_eq!(
        a.delete("del-1.txt", Some(h1)).await.unwrap(),
        DeleteStatus::Missing
    );
    assert_eq!(
        a.delete("../escape", Some(h0)).await.unwrap(),
        DeleteStatus::Refused
    );
    // A file of the peer's own is not ours to delete, though we know its content.
    std::fs::write(out_b.path().join("own.txt"), b"mine").unwrap();
    let own = Some(blake3::hash(b"mine"));
    assert_eq!(
        a.delete("own.txt", own).await.unwrap(),
        DeleteStatus::Refused
    );
    assert!(out_b.path().join("own.txt").exists());
    // Nor a file it received, named with other content than it holds from us.
    std::fs::write(src.path().join("again.txt"), b"v1").unwrap();
    a.send(&[src.path().join("again.txt")]).await.unwrap();
    let v2 = Some(blake3::hash(b"v2"));
    assert_eq!(
        a.delete("again.txt", v2).await.unwrap(),
        DeleteStatus::Refused
    );
    let v1 = Some(blake3::hash(b"v1"));
    assert_eq!(
        a.delete("again.txt", v1).await.unwrap(),
        DeleteStatus::Deleted
    );
    // The other way: that link did not allow deletions.
    let back = b.send(&files[..1]).await.unwrap();
    let victim = out_a.path().join("del-0.txt");
    assert!(victim.exists());
    let h = back.hashes[0].1;
    assert_eq!(
        b.delete("del-0.txt", Some(h)).await.unwrap(),
        DeleteStatus::Refused
    );
    assert!(victim.exists());
    // Jobs still move after deletions.
    a.send(&files[..1])
        .await
        .expect("a job after the deletions");
    a.close().await;
    b.close().await;
}

/// Writes down warnings.
#[derive(Clone, Default)]
struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

impl Events for Warnings {
    fn event(&mut self, e: &Event) {
        if let Event::Warning { message } = e {
            self.0.lock().unwrap().push(message.clone());
        }
    }
}

/// A peer that keeps the connection alive but never answers the first offer: the job is
/// reported stalled and sent again on the same connection, where it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_job_is_sent_again() {
    let (src, out_a, out_b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let warnings = Warnings::default();
    let quick = |role| SessionConfig {
        stall_timeout: Some(Duration::from_secs(2)),
        ..config(role)
    };
    let a = Session::bind(quick(Role::Sender), warnings.clone())
        .await
        .unwrap();
    let b = Session::bind(quick(Role::Receiver), Notes::default())
        .await
        .unwrap();
    let (at, bt) = (a.ticket().clone(), b.ticket().clone());
    let (a, b) = tokio::join!(a.connect(Ticket::Full(bt)), b.connect(Ticket::Full(at)));
    let (a, _a_in) = a
        .unwrap()
        .into_duplex(DuplexOptions::new(out_a.path().to_owned()));
    let b = b.unwrap();
    let file = small_files(src.path(), "stall", 1);
    let evil = async {
        let conn = b.connection().clone();
        // The first offer is accepted and never read.
        let _held = conn.accept_bi().await.unwrap();
        let second = conn.accept_bi().await.unwrap();
        let mut job = p2pcopy::transfer::Incoming::new(p2pcopy::transfer::Store::new(
            out_b.path().to_owned(),
            false,
        ));
        let opts = p2pcopy::transfer::Options::new(true);
        let mut silent = p2pcopy::transfer::Silent;
        job.run_accepted(&conn, second, opts, &mut silent).await
    };
    // The job's own events, as `send --to` forwards them.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let job_events = {
        let seen = seen.clone();
        move |e: &Event| seen.lock().unwrap().push(e.clone())
    };
    let (sent, got) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(a.send_observed(&file, job_events), evil)
    })
    .await
    .expect("done in time");
    got.expect("the second offer is received");
    let report = sent.expect("verified on the second try");
    assert_eq!(report.files, 1);
    assert_eq!(report.reconnects, 0, "a stall retry is no reconnect");
    let seen = seen.lock().unwrap().clone();
    let names: Vec<&str> = seen
        .iter()
        .map(|e| match e {
            Event::Plan { .. } => "plan",
            Event::Progress { .. } => "progress",
            Event::FileDone { .. } => "file_done",
            Event::Warning { .. } => "warning",
            Event::Summary { .. } => "summary",
            _ => "other",
        })
        .collect();
    assert_eq!(names.first(), Some(&"warning"), "{names:?}");
    assert!(names.contains(&"file_done"), "{names:?}");
    assert_eq!(names.last(), Some(&"summary"), "{names:?}");
    match seen.last() {
        Some(Event::Summary {
            role,
            files,
            reconnects,
            verification_code,
            ..
        }) => {
            assert_eq!((*role, *files, *reconnects), (Role::Sender, 1, 0));
            assert_eq!(verification_code, &None, "both tickets were checked");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(out_b.path().join("stall-0.txt")).unwrap(),
        std::fs::read(&file[0]).unwrap()
    );
    // The warning reaches the session's events through the link's driver task.
    for _ in 0..50 {
        if !warnings.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w = warnings.0.lock().unwrap();
    assert!(
        w.iter()
            .any(|m| m.contains("sending the job again (1 of 3)")),
        "{w:?}"
    );
}
