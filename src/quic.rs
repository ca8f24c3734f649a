//! QUIC transport settings shared by both roles: flow-control windows, keep-alive, the idle
//! timeout and the congestion controller.
//!
//! A room of its own so that [`crate::tls`] (which builds the client and server
//! configurations) and [`crate::transfer`] (which sizes the send window while a job runs)
//! both look here, and neither looks at the other.
//!
//! May use: `quinn`, [`crate::congestion`].

use std::sync::Arc;
use std::time::Duration;

/// The largest send window, and the one a connection starts with: 1 Gbit/s × 100 ms
/// (12.5 MB) with room for recovery, inside the 64 MiB memory target. The sender then
/// shrinks it to what the path needs ([`crate::transfer::window`]).
pub const MAX_SEND_WINDOW: u64 = 32 << 20;

/// Silence after which a connection counts as lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC transport settings shared by both roles; `resume` is what the path delivered last
/// time, if that is remembered ([`crate::congestion::Remembered`]).
pub fn transport_config(resume: Option<crate::congestion::Remembered>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Keep NAT mappings alive (most expire after 30 s of silence) and notice a dead path
    // soon: the CLI then re-punches and resumes on a new connection, which recovers far
    // faster than a connection waiting out QUIC's exponentially backed-off retransmissions.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("in range")));
    // A file travels as 1 MiB segments on streams of their own (wire::SEGMENT_LEN), so a
    // stream needs little more than one segment of credit. The connection window bounds
    // the bytes in flight and what the receiver buffers behind a lost packet while it
    // reads in order. Repairs go out before new segments (transfer::send's
    // SegmentPriority), so a hole lasts about a round trip; 32 MiB then covers
    // 1 Gbit/s x 100 ms (12.5 MB) with room for recovery and keeps a 10 GiB transfer under
    // 64 MiB of RSS per side. The sender then shrinks its send window to what the path
    // needs (transfer::window).
    t.stream_receive_window((2u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(MAX_SEND_WINDOW);
    // Random loss is not congestion: Cubic (quinn's default) fell to ~3 Mbit/s on a
    // 50 ms path with 1 % loss, as loss-based TCP does. quinn's BBR kept ~88 % there but
    // paced at ~2.5x the bottleneck under quinn's pacer, which overflows any bottleneck
    // queue shorter than a BDP; see crate::congestion. Fairness is discussed in the README.
    // The sender's padding during the plan's round trip (transfer::send's warm_up) and
    // the followers of control frames (transfer::follow) are all a peer of ours sends as
    // DATAGRAM frames, and nothing reads them: a small buffer keeps a hostile peer's from
    // holding quinn's default 1.25 MB.
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.congestion_controller_factory(Arc::new(crate::congestion::PaceConfig { resume }));
    // Ask the peer (QUIC's ACK frequency extension, which quinn speaks on both ends) to
    // acknowledge every ACK_EVERY-th packet instead of every second one: on a paced path
    // each ACK is a wake-up and a sendmsg of its own for the receiver and a packet to
    // decrypt and process for the sender. A packet two or more out of order (a loss) is
    // still acknowledged at once (quinn's default reordering threshold, the loss
    // detector's packet threshold less one), so loss recovery does not wait. Measured in bench/RESULTS.md ("ACK frequency").
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(crate::congestion::ACK_EVERY - 1));
    ack.max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    t
}

/// Bytes of DATAGRAM frames a connection keeps unread (quinn drops the oldest beyond).
pub const DATAGRAM_BUFFER: usize = 64 << 10;

/// The longest the peer may hold an ACK for fewer than ACK_EVERY packets (quinn's default,
/// the peer's own, is 25 ms): a flight's last packets wait for it, which slows startup.
pub const ACK_DELAY: Duration = Duration::from_millis(5);
