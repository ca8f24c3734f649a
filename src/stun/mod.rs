//! STUN: asking servers which public address our socket maps to, the message codec, and a
//! small server of our own.

pub mod limit;
pub mod message;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::error::Error;

/// Public STUN servers used when none is given.
pub const DEFAULT_SERVERS: &[&str] = &[
    "stun.l.google.com:19302",
    "stun.cloudflare.com:3478",
    "stun1.l.google.com:19302",
];

/// How long one server gets to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);

/// One answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The server that answered.
    pub server: SocketAddr,
    /// Our address as it saw it.
    pub mapped: SocketAddr,
}

/// Queries servers one after another from `socket` until two distinct servers have answered
/// (enough to classify the NAT) or the list is exhausted.
///
/// The queries must come from the very socket that will later carry the transfer, since the
/// mapping belongs to that socket. They run one at a time because the STUN client matches
/// answers by source address only.
pub async fn discover(socket: &UdpSocket, servers: &[String]) -> Result<Vec<Mapping>, Error> {
    let mut found: Vec<Mapping> = Vec::new();
    for name in servers {
        let addrs =
            match tokio::time::timeout(QUERY_TIMEOUT, tokio::net::lookup_host(name.as_str())).await
            {
                Ok(Ok(a)) => a.filter(SocketAddr::is_ipv4).collect::<Vec<_>>(),
                Ok(Err(e)) => {
                    tracing::debug!(server = %name, error = %e, "cannot resolve STUN server");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(server = %name, "resolving STUN server timed out");
                    continue;
                }
            };
        let Some(server) = addrs
            .into_iter()
            .find(|a| found.iter().all(|m| m.server.ip() != a.ip()))
        else {
            continue;
        };
        let mut client = stunclient::StunClient::new(server);
        client
            .set_timeout(QUERY_TIMEOUT)
            .set_retry_interval(Duration::from_millis(300))
            .set_software(Some("p2pcopy"));
        match client.query_external_address_async(socket).await {
            Ok(mapped) => {
                tracing::info!(%server, %mapped, "STUN answer");
                found.push(Mapping { server, mapped });
                if found.len() >= 2 {
                    break;
                }
            }
            Err(e) => tracing::debug!(%server, error = ?e, "STUN query failed"),
        }
    }
    if found.is_empty() {
        return Err(Error::Stun {
            tried: servers.join(", "),
        });
    }
    Ok(found)
}
