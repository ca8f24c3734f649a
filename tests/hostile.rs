//! A receiver facing a sender that lies: built on the library's public API, speaking the wire
//! format by hand over a real QUIC connection on loopback. Whatever the sender does, the
//! receiver must end with a clear error and leave no file behind.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use p2pcopy::tls::{client_config, server_config, Identity, SERVER_NAME};
use p2pcopy::transfer::{receive, Options};
use p2pcopy::wire::{Header, ACCEPT_LEN};
use p2pcopy::Error;

/// What the evil sender writes after the receiver accepted the header.
enum Evil {
    WrongHash,
    Truncated,
    TooMuch,
}

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

async fn run_evil(header: Header, evil: Option<Evil>, out: &Path) -> Result<(), Error> {
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let size = header.size;
    let sender = tokio::spawn(async move {
        let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
        send.write_all(&header.encode()).await.unwrap();
        let mut accept = [0u8; ACCEPT_LEN];
        if recv.read_exact(&mut accept).await.is_err() {
            return;
        }
        let data = vec![0x5a; size as usize];
        let hash = blake3::hash(&data);
        let _ = match evil {
            Some(Evil::WrongHash) => {
                let _ = send.write_all(&data).await;
                send.write_all(&[0u8; 32]).await
            }
            Some(Evil::Truncated) => send.write_all(&data[..data.len() / 2]).await,
            Some(Evil::TooMuch) => {
                let _ = send.write_all(&data).await;
                let _ = send.write_all(hash.as_bytes()).await;
                send.write_all(b"and some more").await
            }
            None => Ok(()),
        };
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(3), client_conn.closed()).await;
    });
    let opts = Options {
        authenticated: true,
        quiet: true,
    };
    let r = tokio::time::timeout(Duration::from_secs(10), receive(&server_conn, out, opts))
        .await
        .expect("receiver hung");
    server_conn.close(0u32.into(), b"");
    let _ = sender.await;
    r.map(drop)
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn wrong_hash_is_a_verification_failure() {
    let out = tempfile::tempdir().unwrap();
    let header = Header {
        flags: 1,
        size: 100_000,
        name: "x.bin".into(),
    };
    let e = run_evil(header, Some(Evil::WrongHash), out.path())
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 8, "{e}");
    assert_empty(out.path());
}

#[tokio::test]
async fn truncated_stream_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let header = Header {
        flags: 1,
        size: 100_000,
        name: "x.bin".into(),
    };
    let e = run_evil(header, Some(Evil::Truncated), out.path())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("stopped after 50000 of 100000 bytes"),
        "{e}"
    );
    assert_empty(out.path());
}

#[tokio::test]
async fn more_bytes_than_announced_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let header = Header {
        flags: 1,
        size: 1000,
        name: "x.bin".into(),
    };
    let e = run_evil(header, Some(Evil::TooMuch), out.path())
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 10, "{e}");
    assert!(e.to_string().contains("more than"), "{e}");
    assert_empty(out.path());
}

#[tokio::test]
async fn path_in_name_stays_inside_the_output_directory() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let header = Header {
        flags: 1,
        size: 0,
        name: "../../escaped".into(),
    };
    // A zero-byte file needs only the hash: send it honestly.
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let sender = tokio::spawn(async move {
        let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
        send.write_all(&header.encode()).await.unwrap();
        let mut accept = [0u8; ACCEPT_LEN];
        recv.read_exact(&mut accept).await.unwrap();
        send.write_all(blake3::hash(b"").as_bytes()).await.unwrap();
        send.finish().unwrap();
        let mut verdict = [0u8; 1];
        recv.read_exact(&mut verdict).await.unwrap();
        verdict[0]
    });
    let s = receive(
        &server_conn,
        &out,
        Options {
            authenticated: true,
            quiet: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(sender.await.unwrap(), 0);
    assert_eq!(s.saved_as.unwrap(), out.join("escaped"));
    let names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out"]);
}

#[tokio::test]
async fn oversized_name_is_refused_before_allocation() {
    let out = tempfile::tempdir().unwrap();
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let mut bytes = Header {
        flags: 1,
        size: 1,
        name: "a".into(),
    }
    .encode();
    bytes[18] = 0xff;
    bytes[19] = 0xff;
    let sender = tokio::spawn(async move {
        let (mut send, _recv) = client_conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(3), client_conn.closed()).await;
    });
    let e = receive(
        &server_conn,
        out.path(),
        Options {
            authenticated: true,
            quiet: true,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 10, "{e}");
    server_conn.close(0u32.into(), b"");
    let _ = sender.await;
    assert_empty(out.path());
}
