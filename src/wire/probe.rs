//! Hole-punch probes: the fixed-size datagrams the puncher sends through the NATs, told
//! apart from QUIC and STUN on the one socket they share.

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
}
