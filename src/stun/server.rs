//! A small STUN server: RFC 5389 Binding, and RFC 5780 (CHANGE-REQUEST, OTHER-ADDRESS,
//! RESPONSE-ORIGIN) when given two addresses, so teams in closed networks can run their own
//! and tell their NATs' behaviour.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::message::{decode_request, encode_response, BindingResponse};
use crate::error::Error;

/// The port used next to the main one for RFC 5780 "change port" answers.
pub fn alternate_port(port: u16) -> u16 {
    if port == u16::MAX {
        port - 1
    } else {
        port + 1
    }
}

/// Which of the server's sockets answers a request, RFC 5780 style.
///
/// Sockets are indexed `ip * 2 + port`: ip 0/1 is the primary/alternate address, port 0/1
/// the primary/alternate port. Without an alternate address, change requests are ignored
/// (a plain RFC 5389 server).
pub fn answering_socket(
    received_on: usize,
    change_ip: bool,
    change_port: bool,
    has_alternate: bool,
) -> usize {
    if !has_alternate {
        return received_on;
    }
    let ip = (received_on / 2) ^ usize::from(change_ip);
    let port = (received_on % 2) ^ usize::from(change_port);
    ip * 2 + port
}

/// A bound STUN server.
pub struct Server {
    sockets: Vec<Arc<UdpSocket>>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Binds `primary` (and, with RFC 5780, `alternate` IP on the same two ports).
    pub async fn bind(primary: SocketAddr, alternate: Option<IpAddr>) -> Result<Server, Error> {
        let bind = |a: SocketAddr| async move {
            UdpSocket::bind(a).await.map_err(|source| Error::Bind {
                port: a.port(),
                source,
            })
        };
        let first = bind(primary).await?;
        let primary = first
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut sockets = vec![Arc::new(first)];
        if let Some(alt_ip) = alternate {
            let alt_port = alternate_port(primary.port());
            for a in [
                SocketAddr::new(primary.ip(), alt_port),
                SocketAddr::new(alt_ip, primary.port()),
                SocketAddr::new(alt_ip, alt_port),
            ] {
                sockets.push(Arc::new(bind(a).await?));
            }
        }
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Server { sockets, addrs })
    }

    /// The addresses served: the primary first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Answers requests until the task is dropped.
    pub async fn run(self) -> Result<(), Error> {
        let has_alternate = self.sockets.len() == 4;
        let other = has_alternate.then(|| self.addrs[3]);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.sockets.len() {
            let sockets = self.sockets.clone();
            let addrs = self.addrs.clone();
            tasks.spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    let (n, from) = match sockets[i].recv_from(&mut buf).await {
                        Ok(x) => x,
                        // ICMP errors from earlier answers surface here on some systems.
                        Err(_) => continue,
                    };
                    let Some(req) = decode_request(&buf[..n]) else {
                        continue;
                    };
                    let j = answering_socket(i, req.change_ip, req.change_port, has_alternate);
                    let resp = BindingResponse {
                        transaction: req.transaction,
                        mapped: from,
                        response_origin: Some(addrs[j]),
                        other_address: other,
                    };
                    let bytes =
                        encode_response(&resp, concat!("p2pcopy ", env!("CARGO_PKG_VERSION")));
                    if let Err(e) = sockets[j].send_to(&bytes, from).await {
                        tracing::debug!(%from, error = %e, "STUN answer not sent");
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::Internal(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{decode_response, encode_request};

    #[test]
    fn rfc5780_socket_choice() {
        // No alternate address: always the socket that received it.
        assert_eq!(answering_socket(0, true, true, false), 0);
        assert_eq!(answering_socket(0, false, false, true), 0);
        assert_eq!(answering_socket(0, false, true, true), 1);
        assert_eq!(answering_socket(0, true, false, true), 2);
        assert_eq!(answering_socket(0, true, true, true), 3);
        assert_eq!(answering_socket(3, true, true, true), 0);
        assert_eq!(alternate_port(3478), 3479);
        assert_eq!(alternate_port(u16::MAX), u16::MAX - 1);
    }

    #[tokio::test]
    async fn answers_on_loopback_with_rfc5780_attributes() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let alt: IpAddr = "127.0.0.2".parse().unwrap();
        let server = Server::bind(SocketAddr::new(ip, 0), Some(alt))
            .await
            .unwrap();
        let addrs = server.local_addrs().to_vec();
        let task = tokio::spawn(server.run());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = client.local_addr().unwrap();
        for (change_ip, change_port, from) in [
            (false, false, 0),
            (false, true, 1),
            (true, false, 2),
            (true, true, 3),
        ] {
            let tx = [change_ip as u8 + 2 * change_port as u8; 12];
            client
                .send_to(&encode_request(tx, change_ip, change_port), addrs[0])
                .await
                .unwrap();
            let mut buf = [0u8; 1500];
            let (n, src) = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                client.recv_from(&mut buf),
            )
            .await
            .unwrap()
            .unwrap();
            let r = decode_response(&buf[..n]).unwrap();
            assert_eq!((r.transaction, r.mapped, src), (tx, me, addrs[from]));
            assert_eq!(r.response_origin, Some(addrs[from]));
            assert_eq!(r.other_address, Some(addrs[3]));
        }
        task.abort();
    }
}
