//! p2pcopy: copy a file straight from one computer to another across NATs.
pub mod error;
pub mod punch;
pub mod ticket;
pub mod wire;

pub use error::{Error, Result};
