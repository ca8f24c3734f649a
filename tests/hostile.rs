//! A receiver facing a sender that lies: a test-only peer built on the library, speaking the
//! wire protocol by hand over a real QUIC connection on loopback, with evil manifests and
//! evil data. Whatever it does, the receiver must end with a clear error and exit code, and
//! create nothing outside its output folder and nothing under a final name that is wrong.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use p2pcopy::events::Output;
use p2pcopy::tls::{client_config, server_config, Identity, SERVER_NAME};
use p2pcopy::transfer::{Incoming, Options, Store};
use p2pcopy::wire::{DataHead, Entry, EntryKind, Frame, Offer, Trailer, MAX_ENTRIES, SEGMENT_LEN};
use p2pcopy::Error;

async fn connected_pair() -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::Endpoint,
    quinn::Connection,
) {
    let (s_id, c_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = quinn::Endpoint::server(
        server_config(&s_id, Some(*c_id.fingerprint())).unwrap(),
        loopback,
    )
    .unwrap();
    let client = quinn::Endpoint::client(loopback).unwrap();
    let addr = server.local_addr().unwrap();
    let cfg = client_config(&c_id, Some(*s_id.fingerprint())).unwrap();
    let (c, s) = tokio::join!(
        async {
            client
                .connect_with(cfg, addr, SERVER_NAME)
                .unwrap()
                .await
                .unwrap()
        },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (server, s, client, c)
}

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
    let opts = Options {
        authenticated: true,
        out: Output::human(true),
    };
    let mut incoming = Incoming::new(Store::new(out.to_owned(), false));
    let r = tokio::time::timeout(Duration::from_secs(10), incoming.run(&server_conn, opts))
        .await
        .expect("receiver hung");
    server_conn.close(0u32.into(), b"");
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

#[tokio::test]
async fn a_receiver_that_gives_up_is_reported_with_its_reason() {
    // The peer ends its streams and closes right behind with its exit code (9) and message;
    // the sender must report that, not "a stream ended early" or a lost connection.
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
        server_conn.close(9u32.into(), b"not enough space in /out");
        server_conn
    });
    let opts = Options {
        authenticated: true,
        out: Output::human(true),
    };
    let err = tokio::time::timeout(Duration::from_secs(10), job.run(&client_conn, opts))
        .await
        .expect("sender hung")
        .unwrap_err();
    assert_eq!(err.exit_code(), 9, "{err}");
    assert!(err.to_string().contains("not enough space"), "{err}");
    let _ = receiver.await;
}

#[tokio::test]
async fn a_receiver_s_close_reason_is_shown_escaped() {
    // A hostile receiver closes with a reason full of escape sequences, under each code the
    // sender turns into its own error (9 store, 8 verify, 10 protocol, else "stopped"). The
    // sender's screen gets the reason escaped; `--json` gets it exact.
    let reason = "disk\x1b]0;PWNED\x07\x1b[2J\x1b[31m full\u{202e}\nfake line";
    let shown = r"disk\e]0;PWNED\a\e[2J\e[31m full\u{202e}\nfake line";
    for code in [9u32, 8, 10, 7] {
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
            server_conn.close(code.into(), reason.as_bytes());
            server_conn
        });
        let opts = Options {
            authenticated: true,
            out: Output::human(true),
        };
        let err = tokio::time::timeout(Duration::from_secs(10), job.run(&client_conn, opts))
            .await
            .expect("sender hung")
            .unwrap_err();
        assert_eq!(u32::from(err.exit_code()), code, "{err:?}");
        // The line `Output::fail` prints on the sender's terminal.
        let line = p2pcopy::events::error_line(&err.to_string());
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
        let _ = receiver.await;
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
        let line = p2pcopy::events::error_line(&err.to_string());
        assert!(line.contains(shown), "{line}");
        assert!(!line.chars().any(p2pcopy::shown::is_unsafe), "{line:?}");
        assert!(err.to_string().contains(&e.path), "{err:?}");
    }
}
