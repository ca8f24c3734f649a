//! Certificate pinning with real QUIC handshakes on loopback: a certificate that is not the
//! one named in the ticket is refused in both directions, even though it is well-formed and
//! its owner holds the matching private key.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use p2pcopy::error::CloseCode;
use p2pcopy::tls::{client_config, server_config, Identity, PeerAuth, SERVER_NAME};

fn pin(id: &Identity) -> PeerAuth {
    PeerAuth::Pinned(*id.fingerprint())
}

async fn handshake(
    server_id: &Identity,
    server_auth: PeerAuth,
    client_id: &Identity,
    client_auth: PeerAuth,
) -> Result<(), String> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server =
        quinn::Endpoint::server(server_config(server_id, server_auth).unwrap(), loopback).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let incoming = server.accept().await.expect("incoming");
        let r = incoming.await.map_err(|e| e.to_string());
        if let Ok(conn) = &r {
            // Stay up until the client hangs up, so the client sees any late rejection.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        }
        r.map(drop)
    });
    let client = quinn::Endpoint::client(loopback).unwrap();
    let connecting = client
        .connect_with(
            client_config(client_id, client_auth).unwrap(),
            addr,
            SERVER_NAME,
        )
        .unwrap();
    let client_side = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timeout".to_string())?;
    let client_result = match client_side {
        // With TLS 1.3 the client finishes first; a rejected client certificate shows up as
        // the server's close right after.
        Ok(conn) => tokio::time::timeout(Duration::from_millis(500), conn.closed())
            .await
            .map_or(Ok(()), |e| Err(e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    client.close(CloseCode::NO_ERROR.into(), b"");
    let server_result = tokio::time::timeout(Duration::from_secs(5), accept)
        .await
        .map_err(|_| "server timeout".to_string())?
        .unwrap();
    client_result.and(server_result)
}

#[tokio::test]
async fn matching_fingerprints_connect() {
    let (s, c) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    handshake(&s, pin(&c), &c, pin(&s)).await.unwrap();
}

#[tokio::test]
async fn client_refuses_an_impostor_server() {
    let (s, c, real) = (
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
    );
    let e = handshake(&s, pin(&c), &c, pin(&real)).await.unwrap_err();
    assert!(
        e.contains("does not match") || e.contains("certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn server_refuses_an_impostor_client() {
    let (s, c, real) = (
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
    );
    let e = handshake(&s, pin(&real), &c, pin(&s)).await.unwrap_err();
    assert!(e.contains("does not match the ticket"), "{e}");
}

#[tokio::test]
async fn unverified_takes_any_certificate() {
    // A bare ip:port: encrypted, but not authenticated (the users compare the verification
    // code instead).
    let (s, c) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    handshake(&s, PeerAuth::Unverified, &c, PeerAuth::Unverified)
        .await
        .unwrap();
}
