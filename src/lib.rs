//! p2pcopy: copy files and folders straight from one computer to another across NATs, with no server
//! in between.
//!
//! The crate is the `p2pcopy` binary's engine and can be used on its own, most simply
//! through [`Session`]. A sender, in full (`examples/send_file.rs` and `examples/receive.rs`
//! are both sides with their events):
//!
//! ```no_run
//! use p2pcopy::ticket::{Role, Ticket};
//! use p2pcopy::transfer::{Outgoing, Silent};
//! use p2pcopy::{events::Event, Session, SessionConfig};
//!
//! # async fn send() -> Result<(), Box<dyn std::error::Error>> {
//! let mut job = Outgoing::new(p2pcopy::manifest::scan(&["photo.jpg".into()])?);
//! let session = Session::bind(SessionConfig::new(Role::Sender), |_: &Event| {}).await?;
//! println!("give your peer this ticket: {}", session.ticket());
//! let peer: Ticket = std::io::stdin().lines().next().ok_or("no ticket")??.parse()?;
//! let mut link = session.connect(peer).await?;
//! let result = link.send(&mut job, &mut Silent).await;
//! if result.is_ok() {
//!     link.finish(job.report()).await; // the receiver's last word: everything arrived
//! }
//! link.close(&result).await; // tells the peer how it ended, removes a port mapping
//! Ok(result?)
//! # }
//! ```
//!
//! The modules, from the bottom up, one layer a line (README's "How it is built" gives the
//! order `tests/layers.rs` enforces: a module uses its own layer and those below, never one
//! above):
//! - [`sys`]: platform syscalls (per-packet TTL, the error queue, open-file limit, free
//!   space), the only `unsafe` code, with a portable fallback;
//! - pure codecs: [`fingerprint`] (a certificate's SHA-256, as tickets carry it and pinning
//!   checks it), [`shown`] (names and the peer's words made safe for a terminal; every
//!   human line passes through it), [`wire`] (probe and transfer framing, pure
//!   encode/decode) and [`congestion`] (the congestion controller, sized for quinn's pacer);
//! - [`ticket`], the line two users paste to each other (codec), and [`Error`];
//! - pure rules: [`nat`] (what the NAT kinds, mapping and filtering, of two peers allow),
//!   [`punch`] (hole punching as a sans-IO state machine, with the round schedule) and
//!   [`manifest`] (what a job contains, and confinement of the peer's paths);
//! - QUIC settings: [`quic`] (windows, keep-alive, idle timeout, congestion), [`tls`]
//!   (per-run certificates and fingerprint pinning) and [`rate_memory`] (what each path
//!   delivered last time, for the next startup);
//! - I/O shells: [`stun`] and [`ntp`] (the public address and the shared clock), [`portmap`]
//!   (asking the home router to forward a port: PCP, NAT-PMP, UPnP-IGD), [`hops`] (how many
//!   NATs are on our side, for the openers' TTL), [`relay`] (TURN relays of the user's own
//!   choosing: URIs, credentials, a sans-IO TURN client on the STUN codec, and
//!   [`relay::Allocation`], its shell over UDP, TCP or TLS), [`net`] (one UDP socket shared by the
//!   puncher and a quinn endpoint, with its guard against strangers; rooms listed in its
//!   doc) and [`transfer`] (a job of files, folders and links over a connection,
//!   resumable; it reports to a [`transfer::Observer`] and knows no screen or JSON, as
//!   ripgrep's searcher reports to a `Sink`; the order of its control sequence is
//!   [`transfer::control`], a sans-IO state machine per side);
//! - [`events`]: what a run reports: the `--json` schema (every event and spelling), which
//!   the session reports and the CLI writes;
//! - [`doctor`], the network check (`p2pcopy doctor`: mapping, filtering, hairpinning, NTP)
//!   whose findings make the `doctor` event, and [`session`], a run as a library:
//!   [`Session::bind`] gathers our addresses and makes our ticket, [`Session::connect`]
//!   punches and connects to the peer's, and the [`Link`] moves a job, reconnecting when
//!   the path dies, and closes; everything that happens is told to one [`Events`] callback
//!   as an [`events::Event`], and nothing is printed;
//! - [`cli`]: the command line: its flags, and each run as a thin shell over [`session`];
//!   its writer (`cli::output`) puts the session's events on a person's screen or as JSON
//!   lines on stdout, `cli::progress` draws the bar, `cli::config` reads the config file
//!   (whose values become the flags' defaults) and `cli::relay_args` the `--relay` flags.
//!
//! Errors are one enum, [`Error`], whose [`Error::exit_code`] is the binary's exit code and,
//! as [`Error::close_code`], the QUIC close code that tells the peer.
#![warn(missing_docs)]
// Syscalls live in `sys`, the one module allowed `unsafe`.
#![deny(unsafe_code)]

pub mod cli;
pub mod congestion;
pub mod doctor;
pub mod error;
pub mod events;
pub mod fingerprint;
pub mod hops;
pub mod manifest;
pub mod nat;
pub mod net;
pub mod ntp;
pub mod portmap;
pub mod punch;
pub mod quic;
pub mod rate_memory;
pub mod relay;
pub mod session;
pub mod shown;
pub mod stun;
#[allow(unsafe_code)]
pub mod sys;
pub mod ticket;
pub mod tls;
pub mod transfer;
pub mod wire;

pub use error::{Error, Result};
pub use session::{
    Arrival, Arrivals, Cleanup, Duplex, DuplexOptions, Events, Job, Link, Session, SessionConfig,
};
