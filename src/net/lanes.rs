//! The lane sockets: `LANES - 1` extra sockets beside the main one, each mapped by STUN at
//! start-up so the ticket can list its public port (see [`crate::punch`] for why rounds
//! take turns on them).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use super::socket::bind;
use crate::punch::LANES;

/// The extra lane sockets and their public ports, lane 1 onwards.
#[derive(Debug)]
pub struct LaneSockets {
    /// The sockets, bound for the whole run.
    pub sockets: Vec<std::net::UdpSocket>,
    /// Their public ports as STUN saw them, in the same order.
    pub ports: Vec<u16>,
}

impl LaneSockets {
    /// Binds the extra sockets on `ip` (any port) and asks the first STUN server of
    /// `servers` that answers each of them, all at once, so this takes no longer than
    /// the main socket's discovery. `None` (the ticket then lists no lanes and the peer
    /// uses the slower schedule) when a socket cannot be bound or any of them gets no
    /// answer: a lane the peer cannot reach would waste every fourth round.
    pub async fn map(ip: IpAddr, servers: &[String]) -> Option<LaneSockets> {
        let mut sockets = Vec::with_capacity(LANES - 1);
        for _ in 1..LANES {
            match bind(ip, 0).and_then(|s| {
                tokio::net::UdpSocket::from_std(s)
                    .map_err(|e| crate::error::Error::Internal(e.to_string()))
            }) {
                Ok(s) => sockets.push(s),
                Err(e) => {
                    tracing::info!(error = %e, "cannot bind a lane socket; no lanes");
                    return None;
                }
            }
        }
        for name in servers.iter().take(2) {
            let Some(server) = resolve(name).await else {
                continue;
            };
            let answers = query_all(&sockets, server).await;
            if answers.iter().all(Option::is_some) {
                let ports: Vec<u16> = answers.iter().flatten().map(SocketAddr::port).collect();
                tracing::info!(%server, ?ports, "lane sockets mapped");
                let sockets = sockets
                    .into_iter()
                    .map(|s| s.into_std())
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                return Some(LaneSockets { sockets, ports });
            }
            tracing::debug!(%server, ?answers, "not every lane socket got a STUN answer");
        }
        tracing::info!("lane sockets not mapped; the peer will use the 40-s schedule");
        None
    }
}

/// The first IPv4 address of a STUN server name.
async fn resolve(name: &str) -> Option<SocketAddr> {
    let found = crate::stun::resolve_v4(name, crate::stun::QUERY_TIMEOUT).await;
    found.first().copied()
}

/// One STUN query per socket to `server`, side by side.
async fn query_all(
    sockets: &[tokio::net::UdpSocket],
    server: SocketAddr,
) -> Vec<Option<SocketAddr>> {
    let mut queries: Vec<_> = sockets
        .iter()
        .map(|s| Box::pin(crate::stun::query(s, server)))
        .collect();
    let mut answers = vec![None; sockets.len()];
    let mut pending: Vec<usize> = (0..sockets.len()).collect();
    std::future::poll_fn(|cx| {
        pending.retain(|&i| match queries[i].as_mut().poll(cx) {
            std::task::Poll::Ready(a) => {
                answers[i] = a;
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    answers
}
