//! A cuttable path on loopback, for tests of links that lose their path and find it again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use p2pcopy::ticket::{Candidate, CandidateKind, FullTicket, Ticket};

/// A UDP forwarder on loopback to `target`: what comes from `target` goes back to whoever
/// last sent here; nothing passes while `cut` is set.
pub async fn forwarder(target: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, mut buf) = (None, vec![0u8; 65536]);
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if cut.load(Ordering::SeqCst) {
                continue;
            }
            let to = if from == target {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                target
            };
            let _ = sock.send_to(&buf[..n], to).await;
        }
    });
    addr
}

/// `t` with its addresses replaced by `via`; the fingerprint stays, so pinning holds.
pub fn through(t: &FullTicket, via: SocketAddr) -> Ticket {
    Ticket::Full(FullTicket {
        candidates: vec![Candidate {
            kind: CandidateKind::Host,
            addr: via,
        }],
        ..t.clone()
    })
}
