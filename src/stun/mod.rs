//! STUN: asking servers which public address our socket maps to, the message codec, and a
//! small server of our own.

pub mod limit;
pub mod message;
pub mod recheck;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use message::{decode_response, encode_request};

use crate::error::Error;

/// Public STUN servers used when none is given.
pub const DEFAULT_SERVERS: &[&str] = &[
    "stun.l.google.com:19302",
    "stun.cloudflare.com:3478",
    "stun1.l.google.com:19302",
];

/// How long one server gets to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often a request is repeated while no answer comes.
const RETRY_INTERVAL: Duration = Duration::from_millis(300);

/// One answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The server that answered.
    pub server: SocketAddr,
    /// Our address as it saw it.
    pub mapped: SocketAddr,
}

/// The IPv4 addresses of a server name (`host:port`), or none if it does not resolve within
/// `timeout`: STUN answers about the IPv4 mapping, which is what NATs and tickets are about.
/// One home for the lookup `discover`, the lane sockets and `doctor` share.
pub async fn resolve_v4(name: &str, timeout: Duration) -> Vec<SocketAddr> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host(name)).await {
        Ok(Ok(found)) => found.filter(SocketAddr::is_ipv4).collect(),
        Ok(Err(e)) => {
            tracing::debug!(server = %name, error = %e, "cannot resolve STUN server");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(server = %name, "resolving STUN server timed out");
            Vec::new()
        }
    }
}

/// Queries servers one after another from `socket` until two distinct servers have answered
/// (enough to classify the NAT) or the list is exhausted.
///
/// The queries must come from the very socket that will later carry the transfer, since the
/// mapping belongs to that socket. They run one at a time, so that each answer is easy to
/// tell from a forgery ([`answer`]).
pub async fn discover(socket: &UdpSocket, servers: &[String]) -> Result<Vec<Mapping>, Error> {
    let mut found: Vec<Mapping> = Vec::new();
    for name in servers {
        let addrs = resolve_v4(name, QUERY_TIMEOUT).await;
        let Some(server) = addrs
            .into_iter()
            .find(|a| found.iter().all(|m| m.server.ip() != a.ip()))
        else {
            continue;
        };
        match query(socket, server).await {
            Some(mapped) => {
                tracing::info!(%server, %mapped, "STUN answer");
                found.push(Mapping { server, mapped });
                if found.len() >= 2 {
                    break;
                }
            }
            None => tracing::debug!(%server, "no STUN answer"),
        }
    }
    if found.is_empty() {
        return Err(Error::Stun {
            tried: servers.join(", "),
        });
    }
    Ok(found)
}

/// One Binding request to `server`, repeated until answered or [`QUERY_TIMEOUT`]: our
/// address as the server saw it.
pub async fn query(socket: &UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    let transaction: [u8; 12] = rand::random();
    let request = encode_request(transaction, false, false);
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    let mut buf = [0u8; 1500];
    let mut ignored = 0u32;
    while tokio::time::Instant::now() < deadline {
        if let Err(e) = socket.send_to(&request, server).await {
            tracing::debug!(%server, error = %e, "STUN request not sent");
        }
        let until = (tokio::time::Instant::now() + RETRY_INTERVAL).min(deadline);
        while let Ok(got) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
            let Ok((n, from)) = got else { continue };
            match answer(server, &transaction, from, &buf[..n]) {
                Some(mapped) => {
                    if ignored > 0 {
                        tracing::info!(%server, ignored, "ignored datagrams that were not this STUN answer");
                    }
                    return Some(mapped);
                }
                None => ignored += 1,
            }
        }
    }
    None
}

/// The mapped address in `data`, if it is the answer to our request `transaction` sent to
/// `server`: anyone who knows our port can send a Binding response, and one with their
/// choice of address would put it in our ticket.
pub fn answer(
    server: SocketAddr,
    transaction: &[u8; 12],
    from: SocketAddr,
    data: &[u8],
) -> Option<SocketAddr> {
    if from != server {
        return None;
    }
    decode_response(data)
        .filter(|r| r.transaction == *transaction)
        .map(|r| r.mapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use message::{encode_response, BindingResponse};

    fn response(transaction: [u8; 12], mapped: &str) -> Vec<u8> {
        encode_response(&BindingResponse {
            transaction,
            mapped: mapped.parse().unwrap(),
            response_origin: None,
            other_address: None,
        })
    }

    #[test]
    fn only_our_answer_from_our_server_counts() {
        let server: SocketAddr = "198.19.0.3:3478".parse().unwrap();
        let ours = [7; 12];
        let mapped: SocketAddr = "198.18.2.2:4300".parse().unwrap();
        let good = response(ours, "198.18.2.2:4300");
        assert_eq!(answer(server, &ours, server, &good), Some(mapped));
        let forged = response([8; 12], "198.18.3.2:666");
        assert_eq!(answer(server, &ours, server, &forged), None);
        let elsewhere: SocketAddr = "198.18.3.2:3478".parse().unwrap();
        assert_eq!(answer(server, &ours, elsewhere, &good), None);
        assert_eq!(
            answer(server, &ours, server, &encode_request(ours, false, false)),
            None
        );
        assert_eq!(answer(server, &ours, server, b"junk"), None);
    }

    /// A server that sends a forged answer (wrong transaction id, from its own address)
    /// before the real one: discovery must report the real mapping.
    #[tokio::test]
    async fn discovery_skips_forged_answers() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let server = UdpSocket::bind((loopback, 0)).await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let client = UdpSocket::bind((loopback, 0)).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let stranger = UdpSocket::bind((loopback, 0)).await.unwrap();
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let req = message::decode_request(&buf[..n]).unwrap();
            let mut wrong = req.transaction;
            wrong[0] ^= 1;
            server
                .send_to(&response(wrong, "192.0.2.66:666"), from)
                .await
                .unwrap();
            stranger
                .send_to(&response(req.transaction, "192.0.2.67:667"), from)
                .await
                .unwrap();
            let real = from.to_string();
            server
                .send_to(&response(req.transaction, &real), from)
                .await
                .unwrap();
        });
        let found = discover(&client, &[server_addr.to_string()]).await.unwrap();
        fake.await.unwrap();
        assert_eq!(
            found,
            [Mapping {
                server: server_addr,
                mapped: client_addr
            }]
        );
    }
}
