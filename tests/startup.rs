//! How a job starts on a connection: the sender's padding during the plan's round trip
//! (`transfer::send`'s `warm_up`), over QUIC on loopback.

mod common;

use p2pcopy::error::CloseCode;
use p2pcopy::transfer::{Incoming, Outgoing, Silent, Store};

/// Runs one job of `src` into `out` over the connection pair.
async fn job(
    client: &quinn::Connection,
    server: &quinn::Connection,
    src: &std::path::Path,
    out: &std::path::Path,
) {
    let mut outgoing = Outgoing::new(p2pcopy::manifest::scan(&[src.to_owned()]).unwrap());
    let mut incoming = Incoming::new(Store::new(out.to_owned(), false));
    let (mut quiet_s, mut quiet_r) = (Silent, Silent);
    common::run_job(
        client,
        server,
        &mut outgoing,
        &mut incoming,
        &mut quiet_s,
        &mut quiet_r,
    )
    .await;
}

#[tokio::test]
async fn a_new_connection_pads_the_plans_round_trip_and_a_grown_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::write(&one, vec![7u8; 8 << 20]).unwrap();
    std::fs::write(&two, b"small").unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_se, server, _ce, client) = common::connected_pair().await;

    job(&client, &server, &one, out.path()).await;
    let padded = client.stats().frame_tx.datagram;
    assert!(
        (4..=8).contains(&padded),
        "{padded} padding datagrams on a new connection"
    );
    // The 8 MiB grew the window: the next job's plan needs no padding.
    job(&client, &server, &two, out.path()).await;
    assert_eq!(client.stats().frame_tx.datagram, padded);
    // They reached the receiver, which reads none: the files are whole all the same.
    assert_eq!(server.stats().frame_rx.datagram, padded);
    assert_eq!(
        std::fs::read(out.path().join("one")).unwrap(),
        vec![7u8; 8 << 20]
    );
    assert_eq!(std::fs::read(out.path().join("two")).unwrap(), b"small");
    client.close(CloseCode::NO_ERROR.into(), b"");
}
