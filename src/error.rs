//! The one error type of the crate and the exit codes it maps to.
//!
//! Exit codes are decided here and nowhere else, so the README table, the lab tests and the
//! binary cannot drift apart. The same table is the QUIC close code a run ends its connection
//! with ([`Error::close_code`]), and [`Error::from_peer_close`] reads a peer's back.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use quinn::VarInt;

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
    /// A relay (`--relay`) cannot be used.
    #[error("relay {relay}: {source}")]
    Relay {
        /// The relay's URI.
        relay: String,
        /// Why.
        source: RelayError,
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
    /// The local link's control socket: no link of that name runs, it belongs to another
    /// user, or the name is taken by a live link.
    #[error("{0}")]
    Control(String),
    /// A job a link ran for `p2pcopy send` failed: the link's own error, with its exit code.
    #[error("{message}")]
    Job {
        /// The exit code the link's error has (one of the other variants').
        code: u8,
        /// The link's error message.
        message: String,
    },
}

impl Error {
    /// The process exit code for this error; the README documents the same table.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Internal(_) => 1,
            Error::Usage(_) => 2,
            Error::Ticket(_) | Error::Roles(_) => 3,
            Error::Input { .. } | Error::Output { .. } => 4,
            Error::Bind { .. } | Error::Stun { .. } | Error::Relay { .. } => 5,
            Error::Connect(_) => 6,
            Error::ConnectionLost(_) | Error::PeerStopped(_) | Error::Stalled(_) => 7,
            Error::Verify(_) => 8,
            Error::DiskFull { .. }
            | Error::NoSpace { .. }
            | Error::Write { .. }
            | Error::PeerStore(_) => 9,
            Error::Protocol(_) => 10,
            Error::Interrupted(_) => 130,
            Error::Control(_) => 11,
            // Another variant's code, as the link reported it; an unknown one is a bug.
            Error::Job { code, .. } => match code {
                2..=11 | 130 => *code,
                _ => 1,
            },
        }
    }

    /// The QUIC application close code that tells the peer how this run ended: the exit code.
    pub fn close_code(&self) -> CloseCode {
        CloseCode(VarInt::from_u32(self.exit_code().into()))
    }

    /// The error for a peer that closed the connection with `code` and `reason` (its own
    /// message, as the peer's [`Error::close_code`] and `to_string` made them).
    ///
    /// A full disk or a failed verification on the other side is reported as such, not as a
    /// lost connection; any other code is the peer stopping, with its reason, and a close
    /// without a reason is a connection closed under us.
    pub fn from_peer_close(code: CloseCode, reason: &[u8]) -> Error {
        let reason = String::from_utf8_lossy(reason).into_owned();
        match code {
            CloseCode::STORE_FAILED => Error::PeerStore(reason),
            CloseCode::VERIFY_FAILED => Error::Verify(format!("on the receiver: {reason}")),
            CloseCode::PROTOCOL => Error::Protocol(format!("your peer refused: {reason}")),
            _ if reason.is_empty() => {
                Error::ConnectionLost("your peer closed the connection".into())
            }
            _ => Error::PeerStopped(reason),
        }
    }

    /// Classifies a failed write into the output file: a full disk gets its own error.
    pub fn write(path: PathBuf, source: io::Error) -> Self {
        // ENOSPC and EDQUOT both mean "no room"; io::ErrorKind::StorageFull covers ENOSPC.
        if source.kind() == io::ErrorKind::StorageFull || crate::sys::is_quota_exceeded(&source) {
            Error::DiskFull { path }
        } else {
            Error::Write { path, source }
        }
    }
}

/// The application code a p2pcopy peer closes its QUIC connection with: its exit code, so 0
/// when it ends without an error (done, or dropping a dead path to reconnect).
///
/// [`Error::close_code`] makes one from an error and [`Error::from_peer_close`] reads one
/// back; the named codes are the ones the reading side tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(VarInt);

impl CloseCode {
    /// No error: the run is done, or the connection is dropped to reconnect.
    pub const NO_ERROR: CloseCode = CloseCode(VarInt::from_u32(0));
    /// The receiver saw no progress for `--stall-timeout` ([`Error::Stalled`]).
    pub const STALLED: CloseCode = CloseCode(VarInt::from_u32(7));
    /// The received data did not match its BLAKE3 hash ([`Error::Verify`]).
    pub const VERIFY_FAILED: CloseCode = CloseCode(VarInt::from_u32(8));
    /// The receiver could not store the file: disk full, no space, a failed write.
    pub const STORE_FAILED: CloseCode = CloseCode(VarInt::from_u32(9));
    /// The peer spoke something we do not understand, or refused the transfer.
    pub const PROTOCOL: CloseCode = CloseCode(VarInt::from_u32(10));
    /// The user pressed Ctrl-C ([`Error::Interrupted`]).
    pub const INTERRUPTED: CloseCode = CloseCode(VarInt::from_u32(130));
}

impl From<VarInt> for CloseCode {
    fn from(code: VarInt) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for VarInt {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a relay cannot be used; each kind calls for something different from the caller.
/// None of them carries a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The name does not resolve, or nothing listens (connection refused, ICMP unreachable):
    /// try another relay or network.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error: 401 (wrong user or password), 403 (forbidden),
    /// 437 (allocation mismatch), 486 (quota reached), 508 (out of capacity), ...
    #[error("refused with {code} {reason}")]
    Refused {
        /// The STUN error code.
        code: u16,
        /// The server's reason phrase (printable characters only).
        reason: String,
    },
    /// No answer in time: UDP may be blocked on the way (try `turns:` on port 443).
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The TLS handshake failed, e.g. a certificate the OS trust store does not vouch for.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The server broke the protocol.
    #[error("broke the protocol: {0}")]
    Protocol(String),
    /// The allocation is gone (released, or a refresh failed).
    #[error("the allocation is closed")]
    Closed,
}

impl RelayError {
    /// The server's error code, when it refused.
    pub fn code(&self) -> Option<u16> {
        match self {
            RelayError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

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
            Error::Control(String::new()),
        ];
        let mut codes: Vec<u8> = samples.iter().map(Error::exit_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), samples.len());
        assert!(!codes.contains(&0));
    }

    /// Every error a run can end with, one per variant.
    fn one_of_each() -> Vec<Error> {
        let io = || io::Error::from(io::ErrorKind::PermissionDenied);
        vec![
            Error::Usage("u".into()),
            Error::Ticket(TicketError::Empty),
            Error::Roles("r".into()),
            Error::Input {
                path: "i".into(),
                source: io(),
            },
            Error::Output {
                path: "o".into(),
                source: io(),
            },
            Error::Bind {
                port: 1,
                source: io(),
            },
            Error::Stun { tried: "s".into() },
            Error::Relay {
                relay: "turn:r:3478".into(),
                source: RelayError::Closed,
            },
            Error::Connect("c".into()),
            Error::ConnectionLost("l".into()),
            Error::PeerStopped("p".into()),
            Error::Stalled("st".into()),
            Error::Verify("v".into()),
            Error::DiskFull { path: "d".into() },
            Error::NoSpace {
                path: "n".into(),
                need: 2,
                free: 1,
            },
            Error::Write {
                path: "w".into(),
                source: io(),
            },
            Error::PeerStore("ps".into()),
            Error::Protocol("pr".into()),
            Error::Interrupted("interrupted".into()),
            Error::Internal("x".into()),
            Error::Control("c".into()),
        ]
    }

    #[test]
    fn named_close_codes_are_the_exit_codes_of_their_errors() {
        let named = [
            (CloseCode::STALLED, Error::Stalled(String::new())),
            (CloseCode::VERIFY_FAILED, Error::Verify(String::new())),
            (
                CloseCode::STORE_FAILED,
                Error::DiskFull { path: "d".into() },
            ),
            (CloseCode::STORE_FAILED, Error::PeerStore(String::new())),
            (CloseCode::PROTOCOL, Error::Protocol(String::new())),
            (CloseCode::INTERRUPTED, Error::Interrupted(String::new())),
        ];
        for (code, e) in named {
            assert_eq!(e.close_code(), code, "{e:?}");
        }
        for e in one_of_each() {
            assert_eq!(
                u64::from(VarInt::from(e.close_code())),
                u64::from(e.exit_code()),
                "{e:?}"
            );
        }
        assert_eq!(VarInt::from(CloseCode::NO_ERROR), VarInt::from_u32(0));
    }

    #[test]
    fn a_peer_s_close_code_round_trips_to_the_same_class() {
        // What the peer ends with (its close code and message) and what we end with.
        for sent in one_of_each() {
            let reason = sent.to_string();
            let got = Error::from_peer_close(sent.close_code(), reason.as_bytes());
            let expected = match sent.exit_code() {
                9 => format!("the receiver could not store the file: {reason}"),
                8 => format!("verification failed: on the receiver: {reason}"),
                10 => format!("protocol error: your peer refused: {reason}"),
                _ => format!("your peer stopped: {reason}"),
            };
            assert_eq!(got.to_string(), expected, "{sent:?} became {got:?}");
            match sent.exit_code() {
                8..=10 => assert_eq!(got.exit_code(), sent.exit_code(), "{sent:?}"),
                _ => assert!(matches!(got, Error::PeerStopped(_)), "{sent:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn unknown_close_codes_are_the_peer_stopping_with_its_reason() {
        for code in [0u32, 1, 2, 7, 11, 129, 131, 255, 256, 1 << 30] {
            let got = Error::from_peer_close(VarInt::from_u32(code).into(), b"its reason");
            assert!(
                matches!(&got, Error::PeerStopped(r) if r == "its reason"),
                "{code}: {got:?}"
            );
            let got = Error::from_peer_close(VarInt::from_u32(code).into(), b"");
            assert!(matches!(got, Error::ConnectionLost(_)), "{code}: {got:?}");
        }
        let huge = VarInt::from_u64((1 << 62) - 1).unwrap();
        assert!(matches!(
            Error::from_peer_close(huge.into(), b"r"),
            Error::PeerStopped(_)
        ));
        // Not UTF-8: kept, lossily.
        let got = Error::from_peer_close(CloseCode::STORE_FAILED, b"disk \xff full");
        assert_eq!(
            got.to_string(),
            "the receiver could not store the file: disk \u{fffd} full"
        );
    }

    #[test]
    fn enospc_is_disk_full() {
        let e = Error::write("f".into(), io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.exit_code(), 9);
        assert!(matches!(e, Error::DiskFull { .. }));
    }
}
