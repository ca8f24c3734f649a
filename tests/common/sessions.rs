//! What the tests of two `Session`s in one process share: their loopback settings, test
//! data, a cuttable path (for links that lose it and find it again), and a copy run to the
//! end as a program would.

// Each test crate includes this file and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use p2pcopy::ticket::{Candidate, CandidateKind, FullTicket, Role, Ticket};
use p2pcopy::transfer::{Incoming, Observer, Outgoing, Silent, Store};
use p2pcopy::{Error, Link, SessionConfig};

/// Loopback only: no STUN, NTP or router, and bounded waits.
pub fn config(role: Role) -> SessionConfig {
    trace();
    SessionConfig {
        bind: "127.0.0.1".parse().unwrap(),
        no_stun: true,
        no_ntp: true,
        no_portmap: true,
        timeout: Duration::from_secs(20),
        ..SessionConfig::new(role)
    }
}

/// Logs as `RUST_LOG` says, shown with a failing test's output (silent by default).
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `n` bytes that do not compress, the same for the same `seed`.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A UDP forwarder on loopback to `target`: what comes from `target` goes back to whoever
/// last sent here; nothing passes while `cut` is set.
pub async fn forwarder(target: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    forwarder_with(target, move |_, _| {
        (!cut.load(Ordering::SeqCst)).then_some(Duration::ZERO)
    })
    .await
}

/// A UDP forwarder on loopback to `target`, as [`forwarder`], that asks `fate` about each
/// datagram (its length, and whether it comes from `target`): `None` drops it, `Some` holds
/// it that long.
pub async fn forwarder_with(
    target: SocketAddr,
    mut fate: impl FnMut(usize, bool) -> Option<Duration> + Send + 'static,
) -> SocketAddr {
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, mut buf) = (None, vec![0u8; 65536]);
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Some(hold) = fate(n, from == target) else {
                continue;
            };
            let to = if from == target {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                target
            };
            if hold.is_zero() {
                let _ = sock.send_to(&buf[..n], to).await;
                continue;
            }
            let (sock, packet) = (Arc::clone(&sock), buf[..n].to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let _ = sock.send_to(&packet, to).await;
            });
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

/// Cuts the path once the receiver holds `after` bytes.
struct CutAfter {
    after: u64,
    cut: Arc<AtomicBool>,
    done: bool,
}

impl Observer for CutAfter {
    fn moved(&mut self, _n: u64, done: u64) {
        if !self.done && done >= self.after {
            self.done = true;
            self.cut.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs a sender (of `src`) and a receiver (into `out`) to the end, as a program would;
/// with `cut_after`, sets the flag once the receiver holds that many bytes. Returns both
/// results and the receiver's reconnect count.
pub async fn copy(
    mut sender: Link,
    mut receiver: Link,
    src: &Path,
    out: &Path,
    cut_after: Option<(u64, Arc<AtomicBool>)>,
) -> (Result<(), Error>, Result<(), Error>, u32) {
    let mut sending = Outgoing::new(p2pcopy::manifest::scan(&[src.to_owned()]).unwrap());
    let mut receiving = Incoming::new(Store::new(out.to_owned(), false));
    let mut watcher: Box<dyn Observer> = match cut_after {
        Some((after, cut)) => Box::new(CutAfter {
            after,
            cut,
            done: false,
        }),
        None => Box::new(Silent),
    };
    let (s, r) = tokio::join!(
        async {
            let result = sender.send(&mut sending, &mut Silent).await;
            if result.is_ok() {
                sender.finish(sending.report()).await;
            }
            sender.close(&result).await;
            result
        },
        async {
            let result = receiver.receive(&mut receiving, &mut *watcher).await;
            if result.is_ok() {
                receiver.finish(receiving.report()).await;
            }
            receiver.close(&result).await;
            result
        }
    );
    (s, r, receiving.report().reconnects)
}
