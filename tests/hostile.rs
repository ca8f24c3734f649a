//! A real sender or receiver facing a peer that lies or stalls: a test-only peer built on the
//! library, speaking the wire protocol by hand over a real QUIC connection on loopback, with
//! evil manifests, evil data, escape sequences and silence. Whatever it does, the real side
//! must end with a clear error and exit code, and create nothing outside its output folder
//! and nothing under a final name that is wrong.

mod common;

use std::path::Path;
use std::time::Duration;

use p2pcopy::error::CloseCode;
use p2pcopy::tls::{server_config, PeerAuth};
use p2pcopy::transfer::{Incoming, Options, Silent, Store};
use p2pcopy::wire::{
    entry_cost, DataHead, Entry, EntryKind, Frame, Offer, Trailer, MAX_ENTRIES, MAX_PATH_LEN,
    SEGMENT_LEN,
};
use p2pcopy::Error;

use common::connected_pair;

/// One data stream the evil sender writes: head, bytes, trailer (if any), then extra bytes.
struct Data {
    head: DataHead,
    bytes: Vec<u8>,
    trailer: Option<Trailer>,
    extra: Vec<u8>,
}

fn file(path: &str, size: u64) -> Entry {
    Entry {
        kind: EntryKind::File,
        path: path.into(),
        size,
        mode: 0o644,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 0,
        target: String::new(),
    }
}

fn offer_for(entries: &[Entry]) -> Frame {
    Frame::Offer(Offer {
        flags: 1,
        entries: entries.len() as u32,
        total: entries.iter().map(|e| e.size).sum(),
    })
}

/// Plays the evil sender against a real receiver writing into `out`.
async fn run_evil(frames: Vec<Frame>, data: Vec<Data>, out: &Path) -> Result<(), Error> {
    run_evil_with(frames, data, out, Options::new(true)).await
}

/// [`run_evil`] with the receiver's options.
async fn run_evil_with(
    frames: Vec<Frame>,
    data: Vec<Data>,
    out: &Path,
    opts: Options,
) -> Result<(), Error> {
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let sender = tokio::spawn(async move {
        let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
        let mut buf = Vec::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        // Nothing more on the control stream: a short manifest ends here, not in a hang.
        let _ = send.finish();
        // Wait for the plan, whatever it says.
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match recv.read(&mut chunk).await {
                Ok(Some(n)) => got.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            let mut at = 0;
            let mut end = false;
            while let Ok(Some((f, n))) = Frame::decode(&got[at..]) {
                at += n;
                end |= f == Frame::PlanEnd;
            }
            if end {
                break;
            }
        }
        for d in data {
            let Ok(mut s) = client_conn.open_uni().await else {
                return;
            };
            let _ = s.write_all(&d.head.encode()).await;
            let _ = s.write_all(&d.bytes).await;
            if let Some(t) = d.trailer {
                let _ = s.write_all(&t.encode()).await;
            }
            let _ = s.write_all(&d.extra).await;
            let _ = s.finish();
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), client_conn.closed()).await;
    });
    let mut incoming = Incoming::new(Store::new(out.to_owned(), false));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        incoming.run(&server_conn, opts, &mut Silent),
    )
    .await
    .expect("receiver hung");
    server_conn.close(CloseCode::NO_ERROR.into(), b"");
    let _ = sender.await;
    r
}

/// Names in `dir`, ignoring part files (kept on purpose, for resume).
fn visible(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".p2pcopy-part"))
        .collect();
    names.sort();
    names
}

fn honest(entry: &Entry, bytes: Vec<u8>) -> Data {
    let hash = *blake3::hash(&bytes).as_bytes();
    Data {
        head: DataHead { index: 0, start: 0 },
        bytes,
        trailer: Some(Trailer::Complete(hash)),
        extra: Vec::new(),
    }
    .with_len(entry.size)
}

impl Data {
    fn with_len(self, size: u64) -> Data {
        assert_eq!(self.bytes.len() as u64, size);
        self
    }
}

#[tokio::test]
async fn paths_out_of_the_output_folder_are_refused() {
    for evil in [
        "../../escaped",
        "/tmp/escaped",
        "ok/../../escaped",
        "a\\..\\..\\escaped",
        "./x",
        "",
        "a//b",
    ] {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let e = file(evil, 5);
        let r = run_evil(
            vec![offer_for(std::slice::from_ref(&e)), Frame::Entry(e.clone())],
            vec![honest(&e, b"pwned".to_vec())],
            &out,
        )
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.exit_code(), 10, "{evil:?}: {err}");
        assert!(err.to_string().contains("unsafe"), "{err}");
        assert_eq!(visible(root.path()), ["out"], "{evil:?}");
        assert!(visible(&out).is_empty(), "{evil:?}");
    }
}

#[tokio::test]
async fn links_pointing_outside_are_refused() {
    for target in ["/etc/passwd", "../../etc", "sub/../../x", ".."] {
        let out = tempfile::tempdir().unwrap();
        let link = Entry {
            kind: EntryKind::Symlink,
            path: "l".into(),
            size: 0,
            target: target.into(),
            ..file("", 0)
        };
        let err = run_evil(
            vec![offer_for(std::slice::from_ref(&link)), Frame::Entry(link)],
            vec![],
            out.path(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 10, "{target}: {err}");
        assert!(visible(out.path()).is_empty());
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_planted_symlink_is_never_written_through() {
    let out = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), out.path().join("docs")).unwrap();
    let e = file("docs/x.txt", 5);
    let err = run_evil(
        vec![offer_for(std::slice::from_ref(&e)), Frame::Entry(e.clone())],
        vec![honest(&e, b"pwned".to_vec())],
        out.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("not a folder"), "{err}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn lying_counts_and_sizes_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let e = file("x.bin", 10);
    // A huge entry count is refused before anything is allocated for it.
    let huge = Frame::Offer(Offer {
        flags: 1,
        entries: MAX_ENTRIES + 1,
        total: 10,
    });
    let err = run_evil(vec![huge], vec![], out.path()).await.unwrap_err();
    assert_eq!(err.exit_code(), 10, "{err}");
    assert!(err.to_string().contains("entries"), "{err}");
    // Fewer entries than announced.
    let short = Frame::Offer(Offer {
        flags: 1,
        entries: 3,
        total: 10,
    });
    let err = run_evil(vec![short, Frame::Entry(e.clone())], vec![], out.path())
        .await
        .unwrap_err();
    assert!(matches!(err.exit_code(), 7 | 10), "{err}");
    // Sizes that do not add up to the total.
    let lie = Frame::Offer(Offer {
        flags: 1,
        entries: 1,
        total: 3,
    });
    let err = run_evil(vec![lie, Frame::Entry(e.clone())], vec![], out.path())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 10, "{err}");
    // The same path twice.
    let twice = vec![
        offer_for(&[e.clone(), e.clone()]),
        Frame::Entry(e.clone()),
        Frame::Entry(e),
    ];
    let err = run_evil(twice, vec![], out.path()).await.unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    // More than the disk can hold: refused before anything is written.
    let big = file("big.bin", 1 << 60);
    let err = run_evil(
        vec![offer_for(std::slice::from_ref(&big)), Frame::Entry(big)],
        vec![],
        out.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 9, "{err}");
    assert!(err.to_string().contains("not enough space"), "{err}");
    assert!(visible(out.path()).is_empty());
}

#[tokio::test]
async fn lying_data_streams_never_produce_a_final_file() {
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let e = file("x.bin", data.len() as u64);
    let frames = || vec![offer_for(std::slice::from_ref(&e)), Frame::Entry(e.clone())];
    let good = blake3::hash(&data);
    let cases: Vec<(&str, Data, u8)> = vec![
        (
            "wrong hash",
            Data {
                head: DataHead { index: 0, start: 0 },
                bytes: data.clone(),
                trailer: Some(Trailer::Complete([0; 32])),
                extra: vec![],
            },
            8,
        ),
        (
            "truncated",
            Data {
                head: DataHead { index: 0, start: 0 },
                bytes: data[..50_000].to_vec(),
                trailer: None,
                extra: vec![],
            },
            10,
        ),
        (
            "too much",
            Data {
                head: DataHead { index: 0, start: 0 },
                bytes: data.clone(),
                trailer: Some(Trailer::Complete(*good.as_bytes())),
                extra: b"and some more".to_vec(),
            },
            10,
        ),
        (
            "unannounced index",
            Data {
                head: DataHead { index: 7, start: 0 },
                bytes: data.clone(),
                trailer: Some(Trailer::Complete(*good.as_bytes())),
                extra: vec![],
            },
            10,
        ),
        (
            "resume without a claim",
            Data {
                head: DataHead {
                    index: 0,
                    start: 500,
                },
                bytes: data[500..].to_vec(),
                trailer: Some(Trailer::Complete(*good.as_bytes())),
                extra: vec![],
            },
            10,
        ),
        (
            "changed at the source",
            Data {
                head: DataHead { index: 0, start: 0 },
                bytes: data.clone(),
                trailer: Some(Trailer::SourceChanged),
                extra: vec![],
            },
            8,
        ),
    ];
    for (what, d, code) in cases {
        let out = tempfile::tempdir().unwrap();
        let err = run_evil(frames(), vec![d], out.path()).await.unwrap_err();
        assert_eq!(err.exit_code(), code, "{what}: {err}");
        assert!(
            visible(out.path()).is_empty(),
            "{what}: {:?}",
            visible(out.path())
        );
    }
    // The honest stream, for contrast, is stored.
    let out = tempfile::tempdir().unwrap();
    run_evil(frames(), vec![honest(&e, data.clone())], out.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.path().join("x.bin")).unwrap(), data);
}

#[tokio::test]
async fn segments_must_continue_the_file_where_the_last_one_ended() {
    let seg = SEGMENT_LEN as usize;
    let data: Vec<u8> = (0..seg + 1000).map(|i| (i % 251) as u8).collect();
    let e = file("big.bin", data.len() as u64);
    let frames = || vec![offer_for(std::slice::from_ref(&e)), Frame::Entry(e.clone())];
    let good = Some(Trailer::Complete(*blake3::hash(&data).as_bytes()));
    let stream = |index, start: usize, bytes: &[u8], trailer| Data {
        head: DataHead {
            index,
            start: start as u64,
        },
        bytes: bytes.to_vec(),
        trailer,
        extra: vec![],
    };
    let cases: Vec<(&str, Vec<Data>)> = vec![
        ("everything on one stream", vec![stream(0, 0, &data, good)]),
        (
            "second segment at the wrong byte",
            vec![
                stream(0, 0, &data[..seg], None),
                stream(0, seg + 1, &data[seg + 1..], good),
            ],
        ),
        (
            "second segment for another entry",
            vec![
                stream(0, 0, &data[..seg], None),
                stream(1, seg, &data[seg..], good),
            ],
        ),
    ];
    for (what, streams) in cases {
        let out = tempfile::tempdir().unwrap();
        let err = run_evil(frames(), streams, out.path()).await.unwrap_err();
        assert_eq!(err.exit_code(), 10, "{what}: {err}");
        assert!(visible(out.path()).is_empty(), "{what}");
    }
    // Honest segments, for contrast, are stored.
    let out = tempfile::tempdir().unwrap();
    let honest = vec![
        stream(0, 0, &data[..seg], None),
        stream(0, seg, &data[seg..], good),
    ];
    run_evil(frames(), honest, out.path()).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("big.bin")).unwrap(), data);
}

/// The error a real sender ends with when the receiver reads the start of its offer, ends
/// its streams and closes right behind with `code` and `reason`.
async fn sender_error_when_the_receiver_closes(code: u32, reason: &'static [u8]) -> Error {
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("f.bin");
    std::fs::write(&path, vec![1u8; 100_000]).unwrap();
    let mut job = p2pcopy::transfer::Outgoing::new(p2pcopy::manifest::scan(&[path]).unwrap());
    let receiver = tokio::spawn(async move {
        let (send, mut recv) = server_conn.accept_bi().await.unwrap();
        let mut b = [0u8; 64];
        let _ = recv.read(&mut b).await;
        drop((send, recv));
        tokio::time::sleep(Duration::from_millis(50)).await;
        server_conn.close(code.into(), reason);
        server_conn
    });
    let opts = Options::new(true);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        job.run(&client_conn, opts, &mut Silent),
    )
    .await
    .expect("sender hung")
    .unwrap_err();
    let _ = receiver.await;
    err
}

#[tokio::test]
async fn a_receiver_that_gives_up_is_reported_with_its_reason() {
    // The peer closes with its exit code (9) and message; the sender must report that, not
    // "a stream ended early" or a lost connection.
    let err = sender_error_when_the_receiver_closes(9, b"not enough space in /out").await;
    assert_eq!(err.exit_code(), 9, "{err}");
    assert!(err.to_string().contains("not enough space"), "{err}");
}

#[tokio::test]
async fn a_receiver_s_close_reason_is_shown_escaped() {
    // A hostile receiver closes with a reason full of escape sequences, under each code the
    // sender turns into its own error (9 store, 8 verify, 10 protocol, else "stopped"). The
    // sender's screen gets the reason escaped; `--json` gets it exact.
    let reason = "disk\x1b]0;PWNED\x07\x1b[2J\x1b[31m full\u{202e}\nfake line";
    let shown = r"disk\e]0;PWNED\a\e[2J\e[31m full\u{202e}\nfake line";
    for code in [9u32, 8, 10, 7] {
        let err = sender_error_when_the_receiver_closes(code, reason.as_bytes()).await;
        assert_eq!(u32::from(err.exit_code()), code, "{err:?}");
        // The line `Output::fail` prints on the sender's terminal.
        let line = p2pcopy::cli::output::error_line(&err.to_string());
        assert!(line.contains(shown), "{code}: {line}");
        assert!(
            !line.chars().any(p2pcopy::shown::is_unsafe),
            "{code}: {line:?}"
        );
        // The `error` event: a program reads the exact reason, and the line itself holds
        // nothing a terminal would act on.
        let event = p2pcopy::events::Event::Error {
            code: err.exit_code(),
            message: err.to_string(),
        };
        let json = p2pcopy::events::to_line(&event, 0.0);
        assert!(!json.chars().any(p2pcopy::shown::is_unsafe), "{json:?}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(
            v["message"].as_str().unwrap().contains(reason),
            "{code}: {json}"
        );
    }
}

#[tokio::test]
async fn refused_names_and_link_targets_are_shown_escaped() {
    // A refusal quotes what the sender announced: the error keeps it exact, the screen
    // gets it escaped.
    let evil_path = file("../\x1b]0;PWNED\x07\u{202e}x", 5);
    let evil_link = Entry {
        kind: EntryKind::Symlink,
        path: "l\x1b[2J".into(),
        size: 0,
        target: "../../\x1b[31m\u{202e}etc".into(),
        ..file("", 0)
    };
    for (e, shown) in [
        (evil_path, r"../\e]0;PWNED\a\u{202e}x"),
        (
            evil_link,
            r#"link "l\e[2J" points outside the output folder ("../../\e[31m\u{202e}etc")"#,
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let err = run_evil(
            vec![offer_for(std::slice::from_ref(&e)), Frame::Entry(e.clone())],
            vec![],
            out.path(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 10, "{err:?}");
        let line = p2pcopy::cli::output::error_line(&err.to_string());
        assert!(line.contains(shown), "{line}");
        assert!(!line.chars().any(p2pcopy::shown::is_unsafe), "{line:?}");
        assert!(err.to_string().contains(&e.path), "{err:?}");
    }
}

/// Opens the control stream, offers the one file `e` and reads the receiver's plan: where
/// the evil senders of the stall tests start.
async fn offer_one(conn: &quinn::Connection, e: Entry) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&[
        offer_for(std::slice::from_ref(&e)),
        Frame::Entry(e),
    ]))
    .await
    .unwrap();
    let mut plan = [0u8; 64];
    let _ = recv.read(&mut plan).await;
    (send, recv)
}

/// The stall bound the watchdog tests use; each test gives up (fails) at ten times it.
const STALL: Duration = Duration::from_secs(1);

fn stall_opts() -> Options {
    Options {
        stall_timeout: Some(STALL),
        ..Options::new(true)
    }
}

/// Asserts a stall: exit code 7, the wait named, and given up about `STALL` after the peer
/// went quiet (`quiet` is how long the peer's own part took at most).
fn assert_stalled(r: Result<(), Error>, elapsed: Duration, wait: &str, quiet: Duration) {
    let err = r.unwrap_err();
    assert!(matches!(err, Error::Stalled(_)), "{err:?}");
    assert_eq!(err.exit_code(), 7, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(wait) && text.contains("--stall-timeout"),
        "{text}"
    );
    assert!(elapsed >= STALL, "gave up after {elapsed:?}");
    assert!(
        elapsed < quiet + 5 * STALL,
        "gave up only after {elapsed:?}"
    );
}

/// Runs the real receiver (stall bound `STALL`) against `evil`, which plays the sender and
/// keeps the connection open. Returns the receiver's result and how long it took.
async fn receiver_against<F, Fut>(out: &Path, evil: F) -> (Result<(), Error>, Duration)
where
    F: FnOnce(quinn::Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let sender = tokio::spawn(async move {
        evil(client_conn.clone()).await;
        // Silent but alive: keep-alives flow, so only the watchdog can end the wait.
        let _ = tokio::time::timeout(20 * STALL, client_conn.closed()).await;
    });
    let mut incoming = Incoming::new(Store::new(out.to_owned(), false));
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        10 * STALL,
        incoming.run(&server_conn, stall_opts(), &mut Silent),
    )
    .await
    .expect("receiver hung: no watchdog");
    let elapsed = started.elapsed();
    server_conn.close(CloseCode::STALLED.into(), b"stalled");
    let _ = sender.await;
    (r, elapsed)
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut b = Vec::new();
    for f in frames {
        f.encode(&mut b);
    }
    b
}

#[tokio::test]
async fn a_sender_that_never_offers_is_given_up() {
    let out = tempfile::tempdir().unwrap();
    // Connected, and not a word.
    let (r, t) = receiver_against(out.path(), |_conn| async {}).await;
    assert_stalled(r, t, "no offer", Duration::ZERO);
    // Half a file list, then nothing.
    let entries: Vec<Entry> = (0..4).map(|i| file(&format!("f{i}"), 1)).collect();
    let (r, t) = receiver_against(out.path(), move |conn| async move {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let half = [offer_for(&entries), Frame::Entry(entries[0].clone())];
        send.write_all(&encode(&half)).await.unwrap();
        // The streams stay open (not finished) while the connection lives.
        let _ = tokio::time::timeout(20 * STALL, conn.closed()).await;
    })
    .await;
    assert_stalled(r, t, "file list", Duration::ZERO);
    assert!(visible(out.path()).is_empty());
}

#[tokio::test]
async fn a_sender_that_stops_mid_file_is_given_up_and_the_part_is_kept() {
    let out = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let e = file("x.bin", data.len() as u64);
    let sent = 1_500_000;
    let head = data[..sent].to_vec();
    let (r, t) = receiver_against(out.path(), move |conn| async move {
        // The plan (no claims), then part of the first segment and silence.
        let (send, recv) = offer_one(&conn, e).await;
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&DataHead { index: 0, start: 0 }.encode())
            .await
            .unwrap();
        s.write_all(&head[..SEGMENT_LEN as usize]).await.unwrap();
        s.finish().unwrap();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(
            &DataHead {
                index: 0,
                start: SEGMENT_LEN,
            }
            .encode(),
        )
        .await
        .unwrap();
        s.write_all(&head[SEGMENT_LEN as usize..]).await.unwrap();
        let _ = tokio::time::timeout(20 * STALL, conn.closed()).await;
        drop((s, send, recv));
    })
    .await;
    assert_stalled(r, t, "mid-file", Duration::from_secs(2));
    // Everything that arrived is in the part file, for a resume.
    let part = out.path().join(p2pcopy::transfer::part_name("x.bin"));
    assert_eq!(std::fs::read(part).unwrap(), &data[..sent]);
    assert!(visible(out.path()).is_empty());
}

#[tokio::test]
async fn a_sender_busy_on_its_disk_is_not_given_up_until_it_stops_saying_so() {
    let out = tempfile::tempdir().unwrap();
    let e = file("x.bin", 10);
    let (r, t) = receiver_against(out.path(), move |conn| async move {
        let (mut send, recv) = offer_one(&conn, e).await;
        // "Still proving a claim", for three bounds, on the control stream the receiver no
        // longer reads: their arrival alone must count.
        for _ in 0..10 {
            send.write_all(&encode(&[Frame::Busy])).await.unwrap();
            tokio::time::sleep(STALL * 3 / 10).await;
        }
        let _ = tokio::time::timeout(20 * STALL, conn.closed()).await;
        drop((send, recv));
    })
    .await;
    assert!(t >= 3 * STALL, "heartbeats ignored: gave up after {t:?}");
    assert_stalled(r, t, "between files", 3 * STALL);
}

/// What the evil receiver does after reading the sender's offer and manifest.
#[derive(Clone, Copy, Debug)]
enum EvilReceiver {
    NeverAccepts,
    /// Says it is busy (heartbeats) for three bounds, then goes silent.
    BusyThenSilent,
    StopsReadingMidFile,
    NeverConfirms,
}

/// Runs the real sender (stall bound `STALL`) with one file of `size` bytes against an
/// evil receiver. Returns the sender's result and how long it took.
async fn sender_against(evil: EvilReceiver, size: usize) -> (Result<(), Error>, Duration) {
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("f.bin");
    std::fs::write(&path, vec![7u8; size]).unwrap();
    let mut job = p2pcopy::transfer::Outgoing::new(p2pcopy::manifest::scan(&[path]).unwrap());
    let receiver = tokio::spawn(async move {
        let conn = server_conn;
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        // Offer and one entry.
        let mut got = Vec::new();
        let mut frames = 0;
        while frames < 2 {
            let mut b = [0u8; 4096];
            let n = recv.read(&mut b).await.unwrap().unwrap();
            got.extend_from_slice(&b[..n]);
            frames = 0;
            let mut at = 0;
            while let Ok(Some((_, used))) = Frame::decode(&got[at..]) {
                at += used;
                frames += 1;
            }
        }
        if let EvilReceiver::BusyThenSilent = evil {
            for _ in 0..10 {
                send.write_all(&encode(&[Frame::Busy])).await.unwrap();
                tokio::time::sleep(STALL * 3 / 10).await;
            }
        }
        if let EvilReceiver::NeverAccepts | EvilReceiver::BusyThenSilent = evil {
            let _ = tokio::time::timeout(20 * STALL, conn.closed()).await;
            return;
        }
        let plan = encode(&[Frame::Accept { flags: 1 }, Frame::PlanEnd]);
        send.write_all(&plan).await.unwrap();
        match evil {
            EvilReceiver::StopsReadingMidFile => {
                let mut s = conn.accept_uni().await.unwrap();
                let mut b = vec![0u8; 100_000];
                let _ = s.read_exact(&mut b).await;
                // Holds the stream, reads no more, accepts no other.
                let _ = tokio::time::timeout(20 * STALL, conn.closed()).await;
                drop(s);
            }
            EvilReceiver::NeverConfirms => {
                // Reads every data stream to its end, and says nothing.
                let reader = async {
                    while let Ok(mut s) = conn.accept_uni().await {
                        let _ = s.read_to_end(usize::MAX).await;
                    }
                };
                let _ = tokio::time::timeout(20 * STALL, reader).await;
            }
            EvilReceiver::NeverAccepts | EvilReceiver::BusyThenSilent => unreachable!(),
        }
        drop((send, recv));
    });
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(10 * STALL, job.run(&client_conn, stall_opts(), &mut Silent))
        .await
        .expect("sender hung: no watchdog");
    let elapsed = started.elapsed();
    client_conn.close(CloseCode::STALLED.into(), b"stalled");
    let _ = receiver.await;
    (r, elapsed)
}

#[tokio::test]
async fn a_receiver_that_never_accepts_is_given_up() {
    let (r, t) = sender_against(EvilReceiver::NeverAccepts, 1000).await;
    assert_stalled(r, t, "did not answer the offer", Duration::ZERO);
}

#[tokio::test]
async fn heartbeats_are_progress_until_they_stop() {
    let (r, t) = sender_against(EvilReceiver::BusyThenSilent, 1000).await;
    assert!(t >= 3 * STALL, "heartbeats ignored: gave up after {t:?}");
    assert_stalled(r, t, "did not answer the offer", 3 * STALL);
}

#[tokio::test]
async fn a_receiver_that_stops_reading_mid_file_is_given_up() {
    // More than the receive window (32 MiB) and the send window (at most 32 MiB) hold.
    let (r, t) = sender_against(EvilReceiver::StopsReadingMidFile, 80 << 20).await;
    assert_stalled(r, t, "stopped reading", Duration::from_secs(4));
}

#[tokio::test]
async fn a_receiver_that_never_confirms_is_given_up() {
    let (r, t) = sender_against(EvilReceiver::NeverConfirms, 3 << 20).await;
    assert_stalled(r, t, "did not confirm", Duration::from_secs(2));
}

/// A client and server connected through a UDP forwarder on loopback that drops every
/// datagram once `cut` is set; the server's idle timeout is 3 s (QUIC takes the shorter).
async fn pair_over_a_cuttable_path(
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> common::Pair {
    use std::sync::atomic::Ordering;
    let (s_id, c_id) = common::identities();
    let loopback = common::loopback();
    let mut cfg = server_config(&s_id, PeerAuth::Pinned(*c_id.fingerprint())).unwrap();
    let mut t = p2pcopy::quic::transport_config(None);
    t.max_idle_timeout(Some(Duration::from_secs(3).try_into().unwrap()));
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    cfg.transport_config(std::sync::Arc::new(t));
    let server = quinn::Endpoint::server(cfg, loopback).unwrap();
    let front = tokio::net::UdpSocket::bind(loopback).await.unwrap();
    let back = tokio::net::UdpSocket::bind(loopback).await.unwrap();
    back.connect(server.local_addr().unwrap()).await.unwrap();
    let via = front.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    if !cut.load(Ordering::Relaxed) {
                        let _ = back.send(&a[..n]).await;
                    }
                }
                Ok(n) = back.recv(&mut b) => {
                    if let (Some(c), false) = (client, cut.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    common::connect(server, &s_id, &c_id, via).await
}

#[tokio::test]
async fn a_dead_path_is_a_lost_connection_not_a_stall() {
    // Silence because the path died is the idle timeout's to report, as a lost connection
    // (which the CLI answers by reconnecting and resuming), even with a shorter stall bound.
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (_se, server_conn, _ce, client_conn) = pair_over_a_cuttable_path(cut.clone()).await;
    let out = tempfile::tempdir().unwrap();
    let e = file("x.bin", 3_000_000);
    let sender = tokio::spawn(async move {
        let conn = client_conn;
        let (send, recv) = offer_one(&conn, e).await;
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&DataHead { index: 0, start: 0 }.encode())
            .await
            .unwrap();
        s.write_all(&[1u8; 100_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cut.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        drop((s, send, recv));
    });
    let mut incoming = Incoming::new(Store::new(out.path().to_owned(), false));
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        incoming.run(&server_conn, stall_opts(), &mut Silent),
    )
    .await
    .expect("receiver hung")
    .unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    let _ = sender.await;
}

/// A unique relative path of exactly `len` bytes: 255-byte folder names, then a leaf
/// ending in `i`.
fn long_path(i: usize, len: usize) -> String {
    let mut p = String::new();
    while len - p.len() > 256 {
        p.push_str(&"d".repeat(255));
        p.push('/');
    }
    let leaf = len - p.len();
    p.push_str(&format!("{i:0>leaf$}"));
    assert_eq!(p.len(), len);
    p
}

fn dir(path: String) -> Entry {
    Entry {
        kind: EntryKind::Dir,
        mode: 0o755,
        ..file(&path, 0)
    }
}

#[tokio::test]
async fn a_manifest_past_the_memory_limit_is_refused_naming_it() {
    // A small limit; the default (64 MiB) is the same code, only slower to reach.
    let limit = 1 << 20;
    let opts = Options {
        manifest_limit: limit,
        ..Options::new(true)
    };
    // The longest paths the protocol carries cost the most; the accepted ones must also
    // fit the OS's path limit under the output folder.
    let fit = |len| limit / entry_cost(&dir(long_path(0, len)));
    let n = fit(4000) as usize;
    assert!(n > 10, "{n}");
    let entries: Vec<Entry> = (0..n).map(|i| dir(long_path(i, 4000))).collect();
    let frames = |entries: &[Entry]| {
        let mut f = vec![offer_for(entries)];
        f.extend(entries.iter().cloned().map(Frame::Entry));
        f
    };
    let out = tempfile::tempdir().unwrap();
    run_evil_with(frames(&entries), vec![], out.path(), opts)
        .await
        .unwrap();
    assert_eq!(visible(out.path()), ["d".repeat(255)]);
    // An offer of more entries than could fit, however short, is refused before reading
    // them.
    let most = limit / entry_cost(&dir(String::new()));
    let offer = Frame::Offer(Offer {
        flags: 1,
        entries: most as u32 + 1,
        total: 0,
    });
    let err = run_evil_with(vec![offer], vec![], out.path(), opts)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 10, "{err}");
    assert!(err.to_string().contains("limit is 1.00 MiB"), "{err}");
    // One entry more is refused, with the limit named, before anything is created.
    let longest = fit(MAX_PATH_LEN) as usize + 1;
    let too_many: Vec<Entry> = (0..longest)
        .map(|i| dir(long_path(i, MAX_PATH_LEN)))
        .collect();
    for entries in [&[&entries[..], &entries[..1]].concat(), &too_many] {
        let out = tempfile::tempdir().unwrap();
        let err = run_evil_with(frames(entries), vec![], out.path(), opts)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 10, "{err}");
        let text = err.to_string();
        assert!(text.contains("limit is 1.00 MiB"), "{text}");
        assert!(text.contains("several runs"), "{text}");
        assert!(visible(out.path()).is_empty());
    }
}

/// The receiver's peak memory for the largest manifests it accepts by default: short paths
/// (the most entries) and long ones (the most bytes), every entry a file so that all
/// per-file state is built. The figure is the growth of this process's peak RSS (VmHWM)
/// over its size when the receiver starts, the evil sender's frames already built.
/// Slow in debug; run with
/// `cargo test --release --test hostile manifest_memory -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn manifest_memory_at_the_limit() {
    fn status(key: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            << 10
    }
    let empty = *blake3::hash(b"").as_bytes();
    for (what, len) in [("short paths", 12), ("long paths", 4000)] {
        let cost = entry_cost(&file(&long_path(0, len), 0));
        let n = (p2pcopy::wire::MAX_MANIFEST_COST / cost) as usize;
        let entries: Vec<Entry> = (0..n)
            .map(|i| {
                let path = if len < 256 {
                    format!("f/{i:0>10}")
                } else {
                    long_path(i, len)
                };
                file(&path, 0)
            })
            .collect();
        assert!(entries.iter().all(|e| entry_cost(e) == cost));
        let mut frames = vec![offer_for(&entries)];
        frames.extend(entries.iter().cloned().map(Frame::Entry));
        let data: Vec<Data> = (0..n)
            .map(|i| Data {
                head: DataHead {
                    index: i as u32,
                    start: 0,
                },
                bytes: vec![],
                trailer: Some(Trailer::Complete(empty)),
                extra: vec![],
            })
            .collect();
        drop(entries);
        let root = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        // Reset the peak to what the process holds now.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let base = status("VmHWM:");
        let started = std::time::Instant::now();
        let opts = Options::new(true);
        let (_se, server_conn, _ce, client_conn) = connected_pair().await;
        let sender = tokio::spawn(async move {
            let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
            let mut buf = Vec::new();
            for f in &frames {
                f.encode(&mut buf);
                if buf.len() > 1 << 20 {
                    send.write_all(&buf).await.unwrap();
                    buf.clear();
                }
            }
            send.write_all(&buf).await.unwrap();
            drop(frames);
            let mut sink = [0u8; 65536];
            let reader =
                tokio::spawn(async move { while let Ok(Some(_)) = recv.read(&mut sink).await {} });
            for d in data {
                let mut s = client_conn.open_uni().await.unwrap();
                s.write_all(&d.head.encode()).await.unwrap();
                s.write_all(&d.trailer.unwrap().encode()).await.unwrap();
                s.finish().unwrap();
            }
            let _ = reader.await;
        });
        let mut incoming = Incoming::new(Store::new(root.path().to_owned(), false));
        incoming.run(&server_conn, opts, &mut Silent).await.unwrap();
        let peak = status("VmHWM:");
        server_conn.close(CloseCode::NO_ERROR.into(), b"");
        let _ = sender.await;
        eprintln!(
            "{what}: {n} files of {len}-byte paths ({} MiB by entry_cost): receiver grew the peak RSS from {:.1} to {:.1} MiB (+{:.1} MiB) in {:.1} s",
            (n as u64 * cost) >> 20,
            base as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            (peak - base) as f64 / 1048576.0,
            started.elapsed().as_secs_f64(),
        );
        assert!(
            peak - base <= 64 << 20,
            "{what}: {} MiB",
            (peak - base) >> 20
        );
        assert_eq!(incoming.report().files, n as u64);
    }
}
