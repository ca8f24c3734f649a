//! p2pcopy: copy a file straight from one computer to another across NATs.
pub mod cli;
pub mod error;
pub mod nat;
pub mod net;
pub mod ntp;
pub mod progress;
pub mod punch;
pub mod stun;
pub mod ticket;
pub mod tls;
pub mod transfer;
pub mod wire;

pub use error::{Error, Result};
