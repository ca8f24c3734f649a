//! The one error type of the crate and the exit codes it maps to.
//!
//! Exit codes are decided here and nowhere else, so the README table, the lab tests and the
//! binary cannot drift apart.

use std::io;
use std::path::PathBuf;

use crate::ticket::TicketError;

/// Everything that can end a p2pcopy run early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The peer's ticket could not be used.
    #[error("invalid ticket: {0}")]
    Ticket(#[from] TicketError),
    /// Both users started the same role, or the ticket belongs to another kind of run.
    #[error("{0}")]
    Roles(String),
    /// The file to send cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The output directory cannot be used.
    #[error("cannot write into {}: {source}", path.display())]
    Output {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot use UDP port {port}: {source}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// What the OS said.
        source: io::Error,
    },
    /// No STUN server answered, so this machine's public address is unknown.
    #[error("no STUN server answered (tried {tried}); check the internet connection, or use --no-stun on a LAN")]
    Stun {
        /// The servers that were asked.
        tried: String,
    },
    /// Hole punching (or the QUIC handshake after it) did not succeed before the deadline.
    #[error("could not connect to your peer: {0}")]
    Connect(String),
    /// The connection broke after it was established.
    #[error("connection to your peer was lost: {0}")]
    ConnectionLost(String),
    /// The peer ended the run on purpose (Ctrl-C, an error of its own) or was restarted;
    /// unlike a lost path, reconnecting cannot help.
    #[error("your peer stopped: {0}")]
    PeerStopped(String),
    /// The peer kept the connection alive but made no progress for `--stall-timeout`.
    #[error("{0} (--stall-timeout): giving up; run both commands again to resume")]
    Stalled(String),
    /// The received data does not match the sender's BLAKE3 hash.
    #[error("verification failed: {0}")]
    Verify(String),
    /// The receiver ran out of disk space.
    #[error("disk full while writing into {}", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The output folder has less free space than the job still needs.
    #[error("not enough space in {}: {} more needed, {} free", path.display(), indicatif::HumanBytes(*need), indicatif::HumanBytes(*free))]
    NoSpace {
        /// The output folder.
        path: PathBuf,
        /// Bytes still to receive.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// Any other failure to write the received file.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The receiver could not store the file (reported to the sender).
    #[error("the receiver could not store the file: {0}")]
    PeerStore(String),
    /// The peer spoke something we do not understand, or refused the transfer.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The user pressed Ctrl-C (or stdin closed before a ticket was entered).
    #[error("{0}")]
    Interrupted(String),
    /// A bug or an unexpected local failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error; the README documents the same table.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Internal(_) => 1,
            Error::Usage(_) => 2,
            Error::Ticket(_) | Error::Roles(_) => 3,
            Error::Input { .. } | Error::Output { .. } => 4,
            Error::Bind { .. } | Error::Stun { .. } => 5,
            Error::Connect(_) => 6,
            Error::ConnectionLost(_) | Error::PeerStopped(_) | Error::Stalled(_) => 7,
            Error::Verify(_) => 8,
            Error::DiskFull { .. }
            | Error::NoSpace { .. }
            | Error::Write { .. }
            | Error::PeerStore(_) => 9,
            Error::Protocol(_) => 10,
            Error::Interrupted(_) => 130,
        }
    }

    /// Classifies a failed write into the output file: a full disk gets its own error.
    pub fn write(path: PathBuf, source: io::Error) -> Self {
        // ENOSPC and EDQUOT both mean "no room"; io::ErrorKind::StorageFull covers ENOSPC.
        if source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            Error::DiskFull { path }
        } else {
            Error::Write { path, source }
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_class() {
        let samples = [
            Error::Internal(String::new()),
            Error::Usage(String::new()),
            Error::Ticket(TicketError::Empty),
            Error::Input {
                path: "x".into(),
                source: io::ErrorKind::NotFound.into(),
            },
            Error::Bind {
                port: 1,
                source: io::ErrorKind::AddrInUse.into(),
            },
            Error::Connect(String::new()),
            Error::ConnectionLost(String::new()),
            Error::Verify(String::new()),
            Error::DiskFull { path: "x".into() },
            Error::Protocol(String::new()),
            Error::Interrupted(String::new()),
        ];
        let mut codes: Vec<u8> = samples.iter().map(Error::exit_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), samples.len());
        assert!(!codes.contains(&0));
    }

    #[test]
    fn enospc_is_disk_full() {
        let e = Error::write("f".into(), io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.exit_code(), 9);
        assert!(matches!(e, Error::DiskFull { .. }));
    }
}
