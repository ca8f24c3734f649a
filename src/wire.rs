//! Byte layouts that cross the network: hole-punch probes and the transfer framing.
//!
//! Pure encode/decode functions, no I/O, so every layout is unit-tested and fuzzable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First bytes of every probe. The leading zero byte has the QUIC "fixed bit" (0x40) clear,
/// and QUIC bit greasing is turned off on our endpoints, so no QUIC packet of ours starts
/// like this; STUN messages carry their magic cookie at bytes 4..8, which `p2pc` is not.
pub const PROBE_MAGIC: [u8; 5] = [0x00, b'p', b'2', b'p', b'c'];
/// Probe layout version.
pub const PROBE_VERSION: u8 = 1;
/// Every probe is padded to this size; small enough to never fragment.
pub const PROBE_LEN: usize = 64;

/// What a probe asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// "Can you hear me?"
    Ping,
    /// "Yes": the answer to a ping, sent back to the address the ping came from.
    Pong,
}

/// A hole-punch probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Ping or pong.
    pub kind: ProbeKind,
    /// Short id of the sender (first bytes of its certificate fingerprint).
    pub from: [u8; 8],
    /// Short id of the addressee, all zero when the sender does not know it (bare ticket).
    pub to: [u8; 8],
    /// Sequence number of a ping; a pong echoes it.
    pub seq: u32,
    /// For a pong: the address the ping was seen coming from (what STUN would say).
    pub observed: Option<SocketAddr>,
}

/// Returns true when a datagram is (claims to be) a probe; used to demultiplex the socket.
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.len() >= PROBE_MAGIC.len() && datagram[..PROBE_MAGIC.len()] == PROBE_MAGIC
}

impl Probe {
    /// Encodes into a fixed-size datagram.
    pub fn encode(&self) -> [u8; PROBE_LEN] {
        let mut b = [0u8; PROBE_LEN];
        b[..5].copy_from_slice(&PROBE_MAGIC);
        b[5] = PROBE_VERSION;
        b[6] = match self.kind {
            ProbeKind::Ping => 1,
            ProbeKind::Pong => 2,
        };
        b[7..15].copy_from_slice(&self.from);
        b[15..23].copy_from_slice(&self.to);
        b[23..27].copy_from_slice(&self.seq.to_be_bytes());
        match self.observed {
            None => b[27] = 0,
            Some(SocketAddr::V4(a)) => {
                b[27] = 4;
                b[28..32].copy_from_slice(&a.ip().octets());
                b[44..46].copy_from_slice(&a.port().to_be_bytes());
            }
            Some(SocketAddr::V6(a)) => {
                b[27] = 6;
                b[28..44].copy_from_slice(&a.ip().octets());
                b[44..46].copy_from_slice(&a.port().to_be_bytes());
            }
        }
        b
    }

    /// Decodes a datagram; `None` for anything that is not a well-formed probe.
    pub fn decode(b: &[u8]) -> Option<Probe> {
        if b.len() != PROBE_LEN || !is_probe(b) || b[5] != PROBE_VERSION {
            return None;
        }
        let kind = match b[6] {
            1 => ProbeKind::Ping,
            2 => ProbeKind::Pong,
            _ => return None,
        };
        let port = u16::from_be_bytes([b[44], b[45]]);
        let observed = match b[27] {
            0 => None,
            4 => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&b[28..32]).ok()?)),
                port,
            )),
            6 => Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[28..44]).ok()?)),
                port,
            )),
            _ => return None,
        };
        Some(Probe {
            kind,
            from: b[7..15].try_into().ok()?,
            to: b[15..23].try_into().ok()?,
            seq: u32::from_be_bytes(b[23..27].try_into().ok()?),
            observed,
        })
    }
}

/// Magic at the start of the transfer stream.
pub const STREAM_MAGIC: [u8; 8] = *b"p2pcopy\0";
/// Transfer framing version.
pub const STREAM_VERSION: u8 = 1;
/// Longest file name accepted from the peer, in bytes.
pub const MAX_NAME_LEN: usize = 4096;
/// Size of the fixed part of [`Header`] before the name.
pub const HEADER_FIXED_LEN: usize = 8 + 1 + 1 + 8 + 2;

/// Flag: the side that sent this message checked the peer's certificate against a ticket.
pub const FLAG_AUTHENTICATED: u8 = 1;

/// What the sender announces before the data: sent once at the start of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Exact number of data bytes that follow the receiver's [`Accept`].
    pub size: u64,
    /// The file's name as the sender knows it; the receiver never trusts it as a path.
    pub name: String,
}

/// Why bytes from the peer are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The stream does not start with our magic.
    #[error("the peer is not speaking the p2pcopy transfer protocol")]
    Magic,
    /// A framing version we do not know.
    #[error("the peer uses transfer protocol version {0}, this p2pcopy speaks version {STREAM_VERSION}; use the same p2pcopy version on both sides")]
    Version(u8),
    /// The announced name is longer than [`MAX_NAME_LEN`].
    #[error("the announced file name is {0} bytes long (limit {MAX_NAME_LEN})")]
    NameTooLong(usize),
    /// The name is not UTF-8.
    #[error("the announced file name is not valid UTF-8")]
    NameEncoding,
    /// An unknown status byte.
    #[error("unknown status {0}")]
    Status(u8),
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let name = &name[..name.len().min(MAX_NAME_LEN)];
        let mut b = Vec::with_capacity(HEADER_FIXED_LEN + name.len());
        b.extend_from_slice(&STREAM_MAGIC);
        b.push(STREAM_VERSION);
        b.push(self.flags);
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name);
        b
    }

    /// Checks the fixed part and returns `(flags, size, name length)`; the caller then reads
    /// exactly that many name bytes, so a lying peer cannot make us allocate more than
    /// [`MAX_NAME_LEN`].
    pub fn decode_fixed(b: &[u8; HEADER_FIXED_LEN]) -> Result<(u8, u64, usize), WireError> {
        if b[..8] != STREAM_MAGIC {
            return Err(WireError::Magic);
        }
        if b[8] != STREAM_VERSION {
            return Err(WireError::Version(b[8]));
        }
        let size = u64::from_be_bytes(b[10..18].try_into().expect("8 bytes"));
        let name_len = u16::from_be_bytes([b[18], b[19]]) as usize;
        if name_len > MAX_NAME_LEN {
            return Err(WireError::NameTooLong(name_len));
        }
        Ok((b[9], size, name_len))
    }

    /// Builds the header from the decoded fixed part and the name bytes.
    pub fn from_parts(flags: u8, size: u64, name: &[u8]) -> Result<Header, WireError> {
        let name = std::str::from_utf8(name)
            .map_err(|_| WireError::NameEncoding)?
            .to_owned();
        Ok(Header { flags, size, name })
    }
}

/// The receiver's answer to a [`Header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept {
    /// `FLAG_*` bits.
    pub flags: u8,
}

/// Length of an encoded [`Accept`].
pub const ACCEPT_LEN: usize = 2;

impl Accept {
    /// Encodes the answer.
    pub fn encode(&self) -> [u8; ACCEPT_LEN] {
        [STREAM_VERSION, self.flags]
    }

    /// Decodes the answer.
    pub fn decode(b: &[u8; ACCEPT_LEN]) -> Result<Accept, WireError> {
        if b[0] != STREAM_VERSION {
            return Err(WireError::Version(b[0]));
        }
        Ok(Accept { flags: b[1] })
    }
}

/// Code with which the receiver stops the data stream when it cannot store the file, so the
/// sender stops sending at once and can say why.
pub const STOP_STORE_FAILED: u32 = 2;

/// The receiver's last word: did the file arrive intact?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hash matched; the file has its final name.
    Ok,
    /// Hash mismatch.
    HashMismatch,
    /// The receiver could not store the file (disk full, I/O error).
    StoreFailed,
}

impl Verdict {
    /// One byte on the wire.
    pub fn encode(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::HashMismatch => 1,
            Verdict::StoreFailed => 2,
        }
    }

    /// Decodes the byte.
    pub fn decode(b: u8) -> Result<Verdict, WireError> {
        Ok(match b {
            0 => Verdict::Ok,
            1 => Verdict::HashMismatch,
            2 => Verdict::StoreFailed,
            other => return Err(WireError::Status(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip() {
        for observed in [
            None,
            Some("198.18.1.2:4300".parse().unwrap()),
            Some("[2001:db8::9]:1".parse().unwrap()),
        ] {
            for kind in [ProbeKind::Ping, ProbeKind::Pong] {
                let p = Probe {
                    kind,
                    from: [1; 8],
                    to: [2; 8],
                    seq: 0xdead_beef,
                    observed,
                };
                let b = p.encode();
                assert!(is_probe(&b));
                assert_eq!(Probe::decode(&b), Some(p));
            }
        }
    }

    #[test]
    fn probe_rejects_garbage() {
        let p = Probe {
            kind: ProbeKind::Ping,
            from: [1; 8],
            to: [2; 8],
            seq: 1,
            observed: None,
        }
        .encode();
        assert_eq!(Probe::decode(&p[..PROBE_LEN - 1]), None);
        let mut bad = p;
        bad[6] = 9;
        assert_eq!(Probe::decode(&bad), None);
        let mut bad = p;
        bad[5] = 2;
        assert_eq!(Probe::decode(&bad), None);
        // A QUIC long-header Initial and a STUN binding request are never probes.
        assert!(!is_probe(&[0xc0, 0, 0, 0, 1, 8]));
        assert!(!is_probe(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]));
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            flags: FLAG_AUTHENTICATED,
            size: 181_640_000,
            name: "03183u.tif".into(),
        };
        let b = h.encode();
        let fixed: [u8; HEADER_FIXED_LEN] = b[..HEADER_FIXED_LEN].try_into().unwrap();
        let (flags, size, n) = Header::decode_fixed(&fixed).unwrap();
        assert_eq!(
            Header::from_parts(flags, size, &b[HEADER_FIXED_LEN..HEADER_FIXED_LEN + n]).unwrap(),
            h
        );
    }

    #[test]
    fn header_rejects_lies() {
        let mut b = Header {
            flags: 0,
            size: 1,
            name: "a".into(),
        }
        .encode();
        b[18] = 0xff; // name length 65281
        let fixed: [u8; HEADER_FIXED_LEN] = b[..HEADER_FIXED_LEN].try_into().unwrap();
        assert!(matches!(
            Header::decode_fixed(&fixed),
            Err(WireError::NameTooLong(_))
        ));
        b[8] = 7;
        let fixed: [u8; HEADER_FIXED_LEN] = b[..HEADER_FIXED_LEN].try_into().unwrap();
        assert_eq!(Header::decode_fixed(&fixed), Err(WireError::Version(7)));
        b[0] = b'x';
        let fixed: [u8; HEADER_FIXED_LEN] = b[..HEADER_FIXED_LEN].try_into().unwrap();
        assert_eq!(Header::decode_fixed(&fixed), Err(WireError::Magic));
        assert_eq!(
            Header::from_parts(0, 0, &[0xff, 0xfe]),
            Err(WireError::NameEncoding)
        );
    }

    #[test]
    fn accept_and_verdict() {
        let a = Accept {
            flags: FLAG_AUTHENTICATED,
        };
        assert_eq!(Accept::decode(&a.encode()), Ok(a));
        for v in [Verdict::Ok, Verdict::HashMismatch, Verdict::StoreFailed] {
            assert_eq!(Verdict::decode(v.encode()), Ok(v));
        }
        assert_eq!(Verdict::decode(77), Err(WireError::Status(77)));
    }
}
