//! STUN again on a socket QUIC already reads: the shell around [`crate::stun::recheck`].
//!
//! Once the socket is shared, quinn consumes every datagram, so a Binding request sent from
//! it is answered into the [`super::DemuxSocket`]'s receive path. The demultiplexer keeps
//! at most one outstanding [`Query`] ([`Pending`]) and hands it each STUN datagram that
//! arrives on the main socket; the query's own rules decide whether it is the answer, and
//! everything else is dropped and counted as before ([`super::guard`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::demux::DemuxSocket;
use crate::stun::recheck::{Answer, Query};

/// The one STUN query outstanding on a demultiplexer, if any, and who waits for it.
#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<Option<(Query, oneshot::Sender<Answer>)>>);

impl Pending {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Query, oneshot::Sender<Answer>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `data` from `from` answered the outstanding query (then it is consumed and
    /// the waiter told); false: not ours, to be dropped as any STUN datagram is.
    pub(super) fn answer(&self, from: SocketAddr, data: &[u8]) -> bool {
        let mut slot = self.slot();
        let Some((query, _)) = slot.as_mut() else {
            return false;
        };
        let answer = query.handle_datagram(Instant::now(), from, data);
        if answer == Answer::NotOurs {
            return false;
        }
        if let Some((_, waiter)) = slot.take() {
            let _ = waiter.send(answer);
        }
        true
    }

    /// Installs `query`, unless one is outstanding.
    fn start(&self, query: Query) -> Option<oneshot::Receiver<Answer>> {
        let mut slot = self.slot();
        if slot.is_some() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        *slot = Some((query, tx));
        Some(rx)
    }

    /// The request due now and when to look again (`None`: the query is over).
    fn poll(&self, now: Instant) -> (Option<(SocketAddr, Vec<u8>)>, Option<Instant>) {
        let mut slot = self.slot();
        let Some((query, _)) = slot.as_mut() else {
            return (None, None);
        };
        let request = query.poll_transmit(now).map(|r| (query.server(), r));
        (request, query.poll_timeout())
    }
}

/// Clears the slot when the query ends, however it ends (a dropped future included), so
/// the next one may start.
struct Clear<'a>(&'a Pending);

impl Drop for Clear<'_> {
    fn drop(&mut self) {
        self.0.slot().take();
    }
}

/// Asks STUN servers, from a run's main socket, which public address they see it at.
#[derive(Clone, Debug)]
pub struct Restun(pub(super) Arc<DemuxSocket>);

impl Restun {
    /// One Binding request to `server` (retransmitted, at most ~1.5 s: see
    /// [`crate::stun::recheck`]): our address as it saw it, or `None` if it did not answer,
    /// refused, or another query is outstanding.
    pub async fn query(&self, server: SocketAddr) -> Option<SocketAddr> {
        let pending = self.0.pending_stun();
        let Some(mut answered) = pending.start(Query::new(server, rand::random(), Instant::now()))
        else {
            tracing::debug!(%server, "a STUN query is already outstanding");
            return None;
        };
        let _clear = Clear(pending);
        loop {
            let (request, wake) = pending.poll(Instant::now());
            if let Some((to, request)) = request {
                if let Err(e) = self.0.send_from_main(to, &request) {
                    tracing::debug!(%server, error = %e, "STUN request not sent");
                }
            }
            let Some(wake) = wake else { break };
            tokio::select! {
                answer = &mut answered => match answer {
                    Ok(Answer::Mapped(mapped)) => return Some(mapped),
                    Ok(Answer::Refused) => {
                        tracing::debug!(%server, "the STUN server refused the request");
                        return None;
                    }
                    Ok(Answer::NotOurs) | Err(_) => break,
                },
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        tracing::debug!(%server, "no STUN answer on the link's socket");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::bind;
    use crate::net::guard::SessionTag;
    use crate::stun::message::{decode_request, encode_response, BindingResponse};
    use quinn::udp::RecvMeta;
    use quinn::{AsyncUdpSocket, Runtime, TokioRuntime};
    use std::io::IoSliceMut;
    use std::net::IpAddr;
    use tokio::net::UdpSocket;

    fn response(transaction: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
        encode_response(&BindingResponse {
            transaction,
            mapped,
            response_origin: None,
            other_address: None,
        })
    }

    /// Reads the demux as quinn does: what the query consumes must never show up, so
    /// anything that does fails the test.
    async fn read_as_quinn(demux: Arc<DemuxSocket>) {
        let mut buf = vec![0u8; 65536];
        let mut meta = [RecvMeta::default()];
        let got = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            demux.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await;
        panic!("quinn was handed {got:?}");
    }

    /// A query through the shared socket while quinn reads it: forged answers (wrong
    /// transaction id from the server, the right one from a stranger) are dropped and
    /// counted, the real one is the result; an answer with no query outstanding is
    /// dropped too.
    #[tokio::test]
    async fn the_answer_to_our_query_is_picked_out_of_the_shared_socket() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let main = bind(loopback, 0).unwrap();
        let main_addr = main.local_addr().unwrap();
        let (tx, _probes) = tokio::sync::mpsc::channel(8);
        let tag = SessionTag {
            local: [2; 8],
            peer: Some([1; 8]),
        };
        let io = TokioRuntime.wrap_udp_socket(main).unwrap();
        let demux = Arc::new(DemuxSocket::new(io, tx, tag));
        let reader = tokio::spawn(read_as_quinn(demux.clone()));
        let server = UdpSocket::bind((loopback, 0)).await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let stranger = UdpSocket::bind((loopback, 0)).await.unwrap();
        let fake: SocketAddr = "192.0.2.66:666".parse().unwrap();
        let real: SocketAddr = "198.18.1.2:40000".parse().unwrap();
        let serve = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, main_addr, "the request leaves from the main socket");
            let txn = decode_request(&buf[..n]).unwrap().transaction;
            let mut wrong = txn;
            wrong[0] ^= 1;
            server.send_to(&response(wrong, fake), from).await.unwrap();
            stranger.send_to(&response(txn, fake), from).await.unwrap();
            server.send_to(&response(txn, real), from).await.unwrap();
            server
        });
        let restun = Restun(demux.clone());
        assert_eq!(restun.query(server_addr).await, Some(real));
        let server = serve.await.unwrap();
        // Late: the query is over, so this one is dropped like any stranger's STUN.
        server
            .send_to(&response([9; 12], real), main_addr)
            .await
            .unwrap();
        let counted = async {
            loop {
                if demux.stun_drops() == 3 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), counted)
            .await
            .expect("three STUN datagrams counted as dropped");
        // A server that never answers: `None` within the query's bound.
        let silent = UdpSocket::bind((loopback, 0)).await.unwrap();
        let t0 = Instant::now();
        assert_eq!(restun.query(silent.local_addr().unwrap()).await, None);
        let took = t0.elapsed();
        assert!(took >= crate::stun::recheck::GIVE_UP, "{took:?}");
        assert!(!reader.is_finished(), "quinn saw nothing");
        reader.abort();
    }
}
