//! What several integration tests share: two pinned QUIC endpoints on loopback, and a job
//! run over them.

// Each test crate includes this file and uses a part of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};

use p2pcopy::tls::{client_config, server_config, Identity, PeerAuth, SERVER_NAME};
use p2pcopy::transfer::{Incoming, Observer, Options, Outgoing};

/// Endpoints and connections: (server endpoint, server side, client endpoint, client side).
pub type Pair = (
    quinn::Endpoint,
    quinn::Connection,
    quinn::Endpoint,
    quinn::Connection,
);

/// Two fresh identities, each pinning the other's certificate.
pub fn identities() -> (Identity, Identity) {
    (Identity::generate().unwrap(), Identity::generate().unwrap())
}

/// A pinned connection between two endpoints on loopback, with the default settings.
pub async fn connected_pair() -> Pair {
    let (s_id, c_id) = identities();
    let cfg = server_config(&s_id, PeerAuth::Pinned(*c_id.fingerprint())).unwrap();
    let server = quinn::Endpoint::server(cfg, loopback()).unwrap();
    let addr = server.local_addr().unwrap();
    connect(server, &s_id, &c_id, addr).await
}

/// Port 0 on loopback.
pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Connects a new client (identity `c_id`) to `server` (identity `s_id`) through `via`,
/// which is the server's address or a relay in front of it.
pub async fn connect(
    server: quinn::Endpoint,
    s_id: &Identity,
    c_id: &Identity,
    via: SocketAddr,
) -> Pair {
    let cfg = client_config(c_id, PeerAuth::Pinned(*s_id.fingerprint())).unwrap();
    connect_with(server, cfg, via).await
}

/// Connects a new client with `cfg` to `server` through `via`.
pub async fn connect_with(
    server: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    via: SocketAddr,
) -> Pair {
    let client = quinn::Endpoint::client(loopback()).unwrap();
    let (c, s) = tokio::join!(
        async {
            client
                .connect_with(cfg, via, SERVER_NAME)
                .unwrap()
                .await
                .unwrap()
        },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (server, s, client, c)
}

/// Runs `outgoing` on `client` against `incoming` on `server`, each telling its observer;
/// fails the test if either side fails or the job takes over 30 s.
pub async fn run_job(
    client: &quinn::Connection,
    server: &quinn::Connection,
    outgoing: &mut Outgoing,
    incoming: &mut Incoming,
    sent: &mut dyn Observer,
    received: &mut dyn Observer,
) {
    let opts = Options::new(true);
    let (s, r) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(
            outgoing.run(client, opts, sent),
            incoming.run(server, opts, received)
        )
    })
    .await
    .expect("the job hung");
    s.unwrap();
    r.unwrap();
}
