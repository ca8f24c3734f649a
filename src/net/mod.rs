//! The async shell around the puncher: one UDP socket shared by hole punching and QUIC.
//!
//! quinn owns the socket through [`DemuxSocket`], which hands every probe datagram to the
//! puncher task and everything else to QUIC, so probes keep flowing while the handshake runs
//! and the NAT mapping that STUN measured is the one QUIC uses.
//!
//! The rooms, each with what it may use besides `std`:
//! - `lanes`: [`LaneSockets`], the extra sockets rounds take turns on, mapped by STUN
//!   ([`crate::stun`]);
//! - `socket`: binding the run's sockets and reading the host's interface addresses
//!   (`socket2`, `if_addrs`; the pure rules in [`crate::punch`]);
//! - [`guard`]: what the shared socket lets through and the tally of what it drops (pure:
//!   [`crate::wire`], [`crate::stun`]'s message codec);
//! - `demux`: [`DemuxSocket`], the socket quinn and the puncher share (`quinn`'s socket
//!   traits, `guard`);
//! - `hold`: when a socket's next read waits so that datagrams come in batches (pure), and
//!   `held` (Unix): quinn's view of a socket with those holds (`quinn`'s socket traits,
//!   `tokio`'s `AsyncFd`);
//! - `driver`: the puncher's task, sending its probes and feeding it what arrives
//!   (`tokio`, `demux`, [`crate::sys`] for per-packet TTL);
//! - [`route`]: which way QUIC to the peer goes when a TURN relay is in play (pure);
//! - `relayed`: the routes applied under the demultiplexer (`quinn`, [`crate::relay`]'s
//!   allocation);
//! - `restun`: [`Restun`], STUN asked again from the shared socket, its answer picked out by
//!   `demux` ([`crate::stun::recheck`]'s rules);
//! - `dialer`: [`Dialer`], the QUIC endpoint that punches, then connects or accepts
//!   (`quinn`, [`crate::tls`], the rooms above, [`crate::sys`] for the open-file limit).
//!
//! Which of the peer's addresses to probe is decided by pure rules beside the puncher
//! ([`crate::punch::targets`](mod@crate::punch::targets)); the QUIC transport settings are
//! [`crate::quic`]'s, and every syscall past what `std` and `socket2` offer is
//! [`crate::sys`]'s.

mod demux;
mod dialer;
mod driver;
pub mod guard;
#[cfg(unix)]
mod held;
// Only `held` asks the rules; elsewhere quinn's own wrapper reads the sockets.
#[cfg_attr(not(unix), allow(dead_code))]
mod hold;
mod lanes;
mod relayed;
mod restun;
pub mod route;
mod socket;

pub use demux::{canonical, DemuxSocket};
pub use dialer::{ConnectFailure, Dialer, Link, Progress};
pub use lanes::LaneSockets;
pub use relayed::PathNow;
pub use restun::Restun;
pub use socket::{
    bind, host_ips, host_ips_v6, log_capped_buffers, shares_a_network, Buffers, SOCKET_BUFFER,
};
// The target rules live beside the puncher now; the CLI still finds them here.
pub use crate::punch::{both_have_ipv6, targets};
