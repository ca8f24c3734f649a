//! The puncher's task: runs one [`Puncher`] against the real sockets and clock, sending its
//! probes (openers with their own TTL through [`crate::sys`]) and feeding it the probes the
//! [`DemuxSocket`] set aside.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::demux::DemuxSocket;
use crate::punch::{PunchEvent, Puncher, SocketId, Transmit, MAIN_SOCKET};

/// Sends one probe, with a custom TTL where asked (per packet, so QUIC packets sharing the
/// socket are never affected). Straight to the socket, past the runtime: a full buffer
/// loses the probe, and the next one retries.
fn send_probe(sock: &std::net::UdpSocket, tx: &Transmit) -> io::Result<()> {
    let plain = || sock.send_to(&tx.contents, tx.destination).map(drop);
    let Some(ttl) = tx.ttl else {
        return plain();
    };
    match crate::sys::send_with_ttl(
        socket2::SockRef::from(sock),
        tx.destination,
        &tx.contents,
        ttl,
    ) {
        // Without per-packet TTL the opener is a plain probe; rounds still work, minus
        // the protection against the other side's first probe arriving first.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => plain(),
        sent => sent,
    }
}

/// The probe side of the sockets, handed to each punching run and back.
pub(super) struct ProbeIo {
    /// A second handle on the main socket, for probes with their own TTL. Not registered
    /// with the runtime: a registration for readability would wake it at each arrival,
    /// receive holds or not ([`super::held`]).
    pub(super) socket: std::net::UdpSocket,
    /// Second handles on the lane sockets, which send openers too (not registered either).
    pub(super) lanes: Vec<(SocketId, std::net::UdpSocket)>,
    /// Probes that arrived on any socket.
    pub(super) incoming: mpsc::Receiver<(SocketId, SocketAddr, Vec<u8>)>,
    pub(super) demux: Arc<DemuxSocket>,
}

/// Runs the puncher until told to stop or it finishes, forwarding its events; gives the
/// probe I/O back for the next run.
pub(super) async fn drive(
    mut puncher: Puncher,
    mut io: ProbeIo,
    events: mpsc::UnboundedSender<PunchEvent>,
    mut stop: watch::Receiver<bool>,
) -> ProbeIo {
    loop {
        while let Some(tx) = puncher.poll_transmit() {
            let lane = io.lanes.iter().find(|(id, _)| *id == tx.socket);
            let sent = if tx.socket == MAIN_SOCKET {
                send_probe(&io.socket, &tx)
            } else if let Some((_, sock)) = lane {
                send_probe(sock, &tx)
            } else {
                io.demux.send_extra(&tx)
            };
            if let Err(e) = sent {
                // A full socket buffer or an unreachable LAN address: the next probe retries.
                tracing::trace!(to = %tx.destination, socket = tx.socket, error = %e, "probe not sent");
            }
        }
        while let Some(ev) = puncher.poll_event() {
            if let PunchEvent::Confirmed { socket, .. } = ev {
                // Before the peer can confirm this path too and start its handshake, so
                // QUIC's first answer already leaves from the socket that works.
                io.demux.set_primary(socket);
            }
            if events.send(ev).is_err() {
                return io;
            }
        }
        let Some(deadline) = puncher.poll_timeout() else {
            return io;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => puncher.handle_timeout(Instant::now()),
            got = io.incoming.recv() => match got {
                Some((socket, from, data)) => { puncher.handle_datagram(Instant::now(), socket, from, &data); }
                None => return io,
            },
            _ = stop.changed() => return io,
        }
    }
}
