//! The line two users paste to each other.
//!
//! A ticket is `p2pc` followed by base58 of a small binary record: version, role, NAT kind,
//! the SHA-256 fingerprint of this run's certificate, the candidate addresses, and a 4-byte
//! BLAKE3 checksum so a mangled paste is reported as such instead of as a timeout later.
//!
//! Versions: 1 is the original record; 2 is the same record that may also carry a
//! [port-mapped](CandidateKind::PortMapped) address; 3 adds, after the addresses, the public
//! ports of the extra sockets that rounds use in turn ([`FullTicket::lane_ports`], see
//! [`crate::punch`]); 4 is version 3 that may also carry a [relayed](CandidateKind::Relayed)
//! address (a TURN allocation) and may list no lanes. A ticket is written with the lowest version that can say what it
//! carries, so tickets without a port mapping or lanes are still read by older p2pcopy, and
//! one with them gets a clear "upgrade" from them instead of "malformed". A ticket without
//! lanes gets the older, slower schedule of rounds from us.
//! Base58 keeps it one alphanumeric word: chat clients do not turn it into markup and a
//! double-click selects all of it. A bare `ip:port` (what the original p2pcopy printed) is
//! accepted too; it carries no fingerprint, so such a link is encrypted but not authenticated.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::fingerprint::Fingerprint;

/// Text prefix of every ticket; the version lives inside the encoded record.
pub const PREFIX: &str = "p2pc";
/// Newest record version this p2pcopy reads and writes.
pub const VERSION: u8 = 4;
/// The original record version, still written when no address needs version 2.
const VERSION_1: u8 = 1;
/// The version that may carry a port-mapped address.
const VERSION_2: u8 = 2;
/// The version that lists the lane ports.
const VERSION_3: u8 = 3;
/// At most this many candidates are carried; more only slows punching down.
pub const MAX_CANDIDATES: usize = 8;
const CHECKSUM_LEN: usize = 4;
/// At most this many lane ports are carried (lanes past the main socket's; more would only
/// lengthen the ticket). `punch::MAX_LANES` follows from it: the ticket sits below `punch`.
pub const MAX_LANE_PORTS: usize = 7;

/// Which side of the transfer a ticket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Has the file; becomes the QUIC client.
    Sender,
    /// Writes the file; becomes the QUIC server.
    Receiver,
}

impl Role {
    /// The role the peer must have.
    pub fn opposite(self) -> Role {
        match self {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        })
    }
}

/// How this host's NAT maps one local port to public ports, as measured with STUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Not measured (bare `ip:port` ticket, `--no-stun`, or only one STUN server answered).
    Unknown,
    /// The public address is the local address: no NAT.
    None,
    /// One public port for all destinations ("cone"): punchable.
    EndpointIndependent,
    /// A new public port per destination ("symmetric"): only a peer that accepts packets from
    /// anywhere can be reached.
    EndpointDependent,
}

impl NatKind {
    fn to_bits(self) -> u8 {
        match self {
            NatKind::Unknown => 0,
            NatKind::None => 1,
            NatKind::EndpointIndependent => 2,
            NatKind::EndpointDependent => 3,
        }
    }

    fn from_bits(b: u8) -> Result<Self, TicketError> {
        Ok(match b {
            0 => NatKind::Unknown,
            1 => NatKind::None,
            2 => NatKind::EndpointIndependent,
            3 => NatKind::EndpointDependent,
            _ => return Err(TicketError::Malformed("unknown NAT kind")),
        })
    }

    /// A short name used in messages ("cone", "symmetric", ...).
    pub fn short_name(self) -> &'static str {
        match self {
            NatKind::Unknown => "unknown",
            NatKind::None => "no NAT",
            NatKind::EndpointIndependent => "cone",
            NatKind::EndpointDependent => "symmetric",
        }
    }
}

/// Where an address in a ticket came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of one of the host's own interfaces (LAN, or public when there is no NAT).
    Host,
    /// The public address a STUN server saw ("server-reflexive").
    Mapped,
    /// A public address the host's router forwards to it on request (PCP, NAT-PMP or UPnP):
    /// it accepts packets from anywhere. Needs ticket version 2.
    PortMapped,
    /// An address on a TURN relay the host holds an allocation on: the relay passes on
    /// whatever the peers it permitted send to it. Needs ticket version 4.
    Relayed,
}

impl CandidateKind {
    fn to_bits(self) -> u8 {
        match self {
            CandidateKind::Host => 0,
            CandidateKind::Mapped => 1,
            CandidateKind::PortMapped => 2,
            CandidateKind::Relayed => 3,
        }
    }

    fn from_bits(b: u8, version: u8) -> Result<Self, TicketError> {
        Ok(match b {
            0 => CandidateKind::Host,
            1 => CandidateKind::Mapped,
            2 if version >= 2 => CandidateKind::PortMapped,
            3 if version >= 4 => CandidateKind::Relayed,
            _ => return Err(TicketError::Malformed("unknown address kind")),
        })
    }
}

/// One address the peer may be reachable at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Where the address came from.
    pub kind: CandidateKind,
    /// The address itself.
    pub addr: SocketAddr,
}

/// A decoded ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// A full ticket as printed by this version.
    Full(FullTicket),
    /// A bare `ip:port`, as the original p2pcopy printed.
    Bare(SocketAddr),
}

/// The content of a full ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullTicket {
    /// The role of the peer that printed it.
    pub role: Role,
    /// Its NAT's mapping behaviour.
    pub nat: NatKind,
    /// SHA-256 of its certificate (DER).
    pub fingerprint: Fingerprint,
    /// Its candidate addresses, most preferred first.
    pub candidates: Vec<Candidate>,
    /// The public ports of its extra sockets, lane 1 onwards (lane 0 is the main socket),
    /// on the IP address of its mapped candidates; empty when it maps none (no NAT, no
    /// STUN, or an older p2pcopy). Needs version 3.
    pub lane_ports: Vec<u16>,
}

/// Why a pasted string is not a usable ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Nothing was pasted.
    #[error("the ticket is empty")]
    Empty,
    /// Neither a ticket nor `ip:port`.
    #[error("expected a ticket starting with `{PREFIX}` or an ip:port, got `{0}`")]
    Unrecognised(String),
    /// Not valid base58: a character got lost or changed in the paste.
    #[error("the ticket contains characters that cannot be in a ticket (was it pasted whole?)")]
    Encoding,
    /// The checksum does not match: the paste is damaged or truncated.
    #[error("the ticket is damaged or incomplete (checksum mismatch); paste it again")]
    Checksum,
    /// Printed by a newer p2pcopy.
    #[error(
        "the ticket is version {0}, this p2pcopy understands versions up to {VERSION}; upgrade p2pcopy"
    )]
    Version(u8),
    /// Structurally invalid.
    #[error("the ticket is malformed ({0})")]
    Malformed(&'static str),
}

impl FullTicket {
    /// Whether the peer's router forwards a port to it: then it is reachable from behind any
    /// NAT, symmetric included, so a pair of symmetric NATs is no reason to give up.
    pub fn has_port_mapping(&self) -> bool {
        self.candidates
            .iter()
            .any(|c| c.kind == CandidateKind::PortMapped)
    }

    /// The address on the peer's TURN relay, if its ticket carries one.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.candidates
            .iter()
            .find(|c| c.kind == CandidateKind::Relayed)
            .map(|c| c.addr)
    }

    /// The binary record (without checksum).
    fn encode_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.candidates.len() * 19);
        let candidates = &self.candidates[..self.candidates.len().min(MAX_CANDIDATES)];
        let has = |kind| candidates.iter().any(|c| c.kind == kind);
        let lanes = &self.lane_ports[..self.lane_ports.len().min(MAX_LANE_PORTS)];
        let version = if has(CandidateKind::Relayed) {
            VERSION
        } else if !lanes.is_empty() {
            VERSION_3
        } else if has(CandidateKind::PortMapped) {
            VERSION_2
        } else {
            VERSION_1
        };
        out.push(version);
        let role_bit = match self.role {
            Role::Sender => 0,
            Role::Receiver => 1,
        };
        out.push(role_bit | (self.nat.to_bits() << 1));
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.push(candidates.len() as u8);
        for c in candidates {
            let kind = c.kind.to_bits();
            match c.addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(kind | (4 << 4));
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(kind | (6 << 4));
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&c.addr.port().to_be_bytes());
        }
        if version >= VERSION_3 {
            out.push(lanes.len() as u8);
            for port in lanes {
                out.extend_from_slice(&port.to_be_bytes());
            }
        }
        out
    }

    fn decode_record(b: &[u8]) -> Result<Self, TicketError> {
        let mut r = Reader(b);
        let version = r.u8()?;
        if !(VERSION_1..=VERSION).contains(&version) {
            return Err(TicketError::Version(version));
        }
        let flags = r.u8()?;
        if flags >> 4 != 0 {
            return Err(TicketError::Malformed("unknown flags"));
        }
        let role = if flags & 1 == 0 {
            Role::Sender
        } else {
            Role::Receiver
        };
        let nat = NatKind::from_bits((flags >> 1) & 0b111)?;
        let fingerprint = Fingerprint::from_bytes(
            r.take(Fingerprint::LEN)?
                .try_into()
                .expect("took a fingerprint's bytes"),
        );
        let n = r.u8()? as usize;
        if n > MAX_CANDIDATES {
            return Err(TicketError::Malformed("too many addresses"));
        }
        let mut candidates = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = r.u8()?;
            let kind = CandidateKind::from_bits(tag & 0x0f, version)?;
            let ip = match tag >> 4 {
                4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).expect("4"))),
                6 => IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(r.take(16)?).expect("16"),
                )),
                _ => return Err(TicketError::Malformed("unknown address family")),
            };
            let port = u16::from_be_bytes(r.take(2)?.try_into().expect("2"));
            if port == 0 || ip.is_unspecified() {
                return Err(TicketError::Malformed("address without port or host"));
            }
            candidates.push(Candidate {
                kind,
                addr: SocketAddr::new(ip, port),
            });
        }
        if candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Relayed)
            .count()
            > 1
        {
            return Err(TicketError::Malformed("more than one relayed address"));
        }
        let mut lane_ports = Vec::new();
        if version >= VERSION_3 {
            let n = r.u8()? as usize;
            // Version 3 was written only for lanes; version 4 may carry a relayed address
            // alone.
            if (n == 0 && version == VERSION_3) || n > MAX_LANE_PORTS {
                return Err(TicketError::Malformed("wrong number of lanes"));
            }
            for _ in 0..n {
                let port = u16::from_be_bytes(r.take(2)?.try_into().expect("2"));
                // A repeated port would put two lanes on one pair of ports, where a lone
                // round's stale entry could meet the next round.
                if port == 0 || lane_ports.contains(&port) {
                    return Err(TicketError::Malformed("lane port zero or repeated"));
                }
                lane_ports.push(port);
            }
        }
        if !r.0.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        if candidates.is_empty() {
            return Err(TicketError::Malformed("no addresses"));
        }
        Ok(FullTicket {
            role,
            nat,
            fingerprint,
            candidates,
            lane_ports,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Malformed("too short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, TicketError> {
        Ok(self.take(1)?[0])
    }
}

fn checksum(record: &[u8]) -> [u8; CHECKSUM_LEN] {
    let h = blake3::hash(record);
    h.as_bytes()[..CHECKSUM_LEN].try_into().expect("4 bytes")
}

impl fmt::Display for FullTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut record = self.encode_record();
        let sum = checksum(&record);
        record.extend_from_slice(&sum);
        write!(f, "{PREFIX}{}", bs58::encode(record).into_string())
    }
}

impl Ticket {
    /// The certificate fingerprint to pin; `None` for a bare `ip:port`.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Ticket::Full(t) => Some(t.fingerprint),
            Ticket::Bare(_) => None,
        }
    }

    /// The peer's NAT kind; `None` for a bare `ip:port`.
    pub fn nat(&self) -> Option<NatKind> {
        match self {
            Ticket::Full(t) => Some(t.nat),
            Ticket::Bare(_) => None,
        }
    }

    /// Whether the ticket carries a port its owner's router forwards (see
    /// [`FullTicket::has_port_mapping`]); a bare `ip:port` says nothing about that.
    pub fn has_port_mapping(&self) -> bool {
        match self {
            Ticket::Full(t) => t.has_port_mapping(),
            Ticket::Bare(_) => false,
        }
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ticket::Full(t) => t.fmt(f),
            Ticket::Bare(a) => a.fmt(f),
        }
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Chat clients add quotes, backticks, trailing dots and whitespace around pasted words.
        let s = s
            .trim()
            .trim_matches(|c: char| matches!(c, '`' | '"' | '\'' | '<' | '>' | ','));
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(TicketError::Empty);
        }
        if let Some(body) = s.strip_prefix(PREFIX) {
            let raw = bs58::decode(body)
                .into_vec()
                .map_err(|_| TicketError::Encoding)?;
            if raw.len() <= CHECKSUM_LEN {
                return Err(TicketError::Checksum);
            }
            let (record, sum) = raw.split_at(raw.len() - CHECKSUM_LEN);
            if checksum(record) != sum {
                return Err(TicketError::Checksum);
            }
            return FullTicket::decode_record(record).map(Ticket::Full);
        }
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Ok(Ticket::Bare(a)),
            _ => {
                let shown: String = s.chars().take(40).collect();
                Err(TicketError::Unrecognised(shown))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FullTicket {
        FullTicket {
            role: Role::Receiver,
            nat: NatKind::EndpointDependent,
            fingerprint: Fingerprint::from_bytes([7; 32]),
            candidates: vec![
                Candidate {
                    kind: CandidateKind::Mapped,
                    addr: "203.0.113.9:21300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "192.168.1.20:21300".parse().unwrap(),
                },
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "[2001:db8::1]:21300".parse().unwrap(),
                },
            ],
            lane_ports: Vec::new(),
        }
    }

    fn with_lanes() -> FullTicket {
        FullTicket {
            lane_ports: vec![40001, 51234, 1025],
            ..with_port_mapping()
        }
    }

    #[test]
    fn lane_ports_round_trip_as_version_3() {
        let t = with_lanes();
        assert_eq!(t.encode_record()[0], 3);
        assert_eq!(
            t.to_string().parse::<Ticket>().unwrap(),
            Ticket::Full(t.clone())
        );
        // Without a port mapping too.
        let mut plain = sample();
        plain.lane_ports = vec![40001, 40002, 40003];
        assert_eq!(plain.encode_record()[0], 3);
        assert_eq!(
            plain.to_string().parse::<Ticket>().unwrap(),
            Ticket::Full(plain.clone())
        );
        // What most users paste (one mapped and one LAN address, three lanes) stays short.
        plain.candidates.truncate(2);
        assert!(plain.to_string().len() < 120, "{}", plain.to_string().len());
        // A version 2 record with lanes after it has trailing bytes to an older reader.
        assert_eq!(
            retagged(&t, 2).parse::<Ticket>(),
            Err(TicketError::Malformed("trailing bytes"))
        );
    }

    #[test]
    fn bad_lane_ports_are_refused() {
        let t = sample();
        let base = {
            let mut r = t.encode_record();
            r[0] = 3;
            r
        };
        let with = |tail: &[u8]| {
            let mut r = base.clone();
            r.extend_from_slice(tail);
            FullTicket::decode_record(&r)
        };
        let malformed = |why| Err(TicketError::Malformed(why));
        assert_eq!(with(&[]), malformed("too short"));
        assert_eq!(with(&[0]), malformed("wrong number of lanes"));
        assert_eq!(with(&[8, 0, 1]), malformed("wrong number of lanes"));
        assert_eq!(with(&[2, 0, 1]), malformed("too short"));
        assert_eq!(with(&[1, 0, 0]), malformed("lane port zero or repeated"));
        assert_eq!(
            with(&[2, 1, 1, 1, 1]),
            malformed("lane port zero or repeated")
        );
        assert_eq!(with(&[1, 1, 1, 9]), malformed("trailing bytes"));
        assert_eq!(with(&[1, 1, 1]).map(|t| t.lane_ports), Ok(vec![257]));
        // No more than fit: the encoder keeps the first ones.
        let mut many = sample();
        many.lane_ports = (1000..1020).collect();
        let back = FullTicket::decode_record(&many.encode_record()).unwrap();
        assert_eq!(
            back.lane_ports,
            (1000..1000 + MAX_LANE_PORTS as u16).collect::<Vec<_>>()
        );
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let text = t.to_string();
        assert!(text.starts_with(PREFIX));
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric()), "{text}");
        assert_eq!(text.parse::<Ticket>().unwrap(), Ticket::Full(t));
    }

    #[test]
    fn round_trip_all_kinds_and_roles() {
        for nat in [
            NatKind::Unknown,
            NatKind::None,
            NatKind::EndpointIndependent,
            NatKind::EndpointDependent,
        ] {
            for role in [Role::Sender, Role::Receiver] {
                let t = FullTicket {
                    role,
                    nat,
                    ..sample()
                };
                assert_eq!(t.to_string().parse::<Ticket>().unwrap(), Ticket::Full(t));
            }
        }
    }

    #[test]
    fn compact() {
        // One mapped and two LAN IPv4 addresses: what most users will paste.
        let mut t = sample();
        t.candidates.truncate(2);
        assert!(t.to_string().len() < 110, "{}", t.to_string().len());
    }

    #[test]
    fn tolerates_chat_decoration() {
        let t = sample().to_string();
        for s in [
            format!("  {t}\n"),
            format!("`{t}`"),
            format!("\"{t}\""),
            format!("{t}."),
        ] {
            assert_eq!(s.parse::<Ticket>().unwrap(), Ticket::Full(sample()), "{s}");
        }
    }

    #[test]
    fn detects_damage() {
        let t = sample().to_string();
        // Change one character in the middle.
        let mut chars: Vec<char> = t.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let damaged: String = chars.into_iter().collect();
        assert_eq!(damaged.parse::<Ticket>(), Err(TicketError::Checksum));
        // Truncated.
        assert_eq!(
            t[..t.len() - 3].parse::<Ticket>(),
            Err(TicketError::Checksum)
        );
        // Characters outside base58.
        assert_eq!(
            format!("{t}0").parse::<Ticket>(),
            Err(TicketError::Encoding)
        );
    }

    fn with_port_mapping() -> FullTicket {
        let mut t = sample();
        t.candidates.insert(
            0,
            Candidate {
                kind: CandidateKind::PortMapped,
                addr: "203.0.113.9:4300".parse().unwrap(),
            },
        );
        t
    }

    /// The record of `t` with its version byte replaced, as a pasteable ticket.
    fn retagged(t: &FullTicket, version: u8) -> String {
        let mut record = t.encode_record();
        record[0] = version;
        let sum = checksum(&record);
        record.extend_from_slice(&sum);
        format!("{PREFIX}{}", bs58::encode(record).into_string())
    }

    #[test]
    fn port_mapped_candidates_round_trip_as_version_2() {
        let t = with_port_mapping();
        assert!(t.has_port_mapping());
        assert!(!sample().has_port_mapping());
        assert_eq!(t.encode_record()[0], 2);
        assert_eq!(
            t.to_string().parse::<Ticket>().unwrap(),
            Ticket::Full(t.clone())
        );
        assert!(Ticket::Full(t).has_port_mapping());
        assert!(!Ticket::Bare("1.2.3.4:5".parse().unwrap()).has_port_mapping());
    }

    #[test]
    fn tickets_without_port_mapping_stay_version_1() {
        // What every earlier p2pcopy reads: the record is byte for byte the old one.
        let t = sample();
        assert_eq!(t.encode_record()[0], 1);
        // A version 1 ticket (as earlier p2pcopy printed) still decodes.
        assert_eq!(
            retagged(&t, 1).parse::<Ticket>().unwrap(),
            Ticket::Full(t.clone())
        );
        // So does the same record labelled version 2.
        assert_eq!(
            retagged(&t, 2).parse::<Ticket>().unwrap(),
            Ticket::Full(t.clone())
        );
        // Nor does a version 3 label on a record without lanes: it must say how many.
        assert_eq!(
            retagged(&t, 3).parse::<Ticket>(),
            Err(TicketError::Malformed("too short"))
        );
        // A port-mapped address is not part of version 1.
        assert_eq!(
            retagged(&with_port_mapping(), 1).parse::<Ticket>(),
            Err(TicketError::Malformed("unknown address kind"))
        );
    }

    #[test]
    fn rejects_other_versions() {
        let mut record = sample().encode_record();
        record[0] = 9;
        let sum = checksum(&record);
        record.extend_from_slice(&sum);
        let text = format!("{PREFIX}{}", bs58::encode(record).into_string());
        assert_eq!(text.parse::<Ticket>(), Err(TicketError::Version(9)));
        assert_eq!(
            retagged(&sample(), 0).parse::<Ticket>(),
            Err(TicketError::Version(0))
        );
        assert!(TicketError::Version(5).to_string().contains("upgrade"));
        assert_eq!(
            retagged(&sample(), 5).parse::<Ticket>(),
            Err(TicketError::Version(5))
        );
    }

    fn with_relay(lanes: Vec<u16>) -> FullTicket {
        let mut t = sample();
        t.candidates.insert(
            0,
            Candidate {
                kind: CandidateKind::Relayed,
                addr: "198.51.100.5:49160".parse().unwrap(),
            },
        );
        t.lane_ports = lanes;
        t
    }

    #[test]
    fn relayed_candidates_round_trip_as_version_4() {
        for lanes in [vec![], vec![40001, 40002]] {
            let t = with_relay(lanes);
            assert_eq!(t.encode_record()[0], 4);
            assert_eq!(t.relayed(), Some("198.51.100.5:49160".parse().unwrap()));
            assert_eq!(
                t.to_string().parse::<Ticket>().unwrap(),
                Ticket::Full(t.clone())
            );
        }
        assert_eq!(sample().relayed(), None);
        // Older versions know no relayed address; a version 3 label on a record with no
        // lanes is refused as before.
        for v in [1, 2, 3] {
            assert_eq!(
                retagged(&with_relay(vec![1000]), v).parse::<Ticket>(),
                Err(TicketError::Malformed("unknown address kind"))
            );
        }
        let mut no_lanes = sample().encode_record();
        no_lanes[0] = 3;
        no_lanes.push(0);
        assert_eq!(
            FullTicket::decode_record(&no_lanes),
            Err(TicketError::Malformed("wrong number of lanes"))
        );
        // A ticket without a relay keeps its old version.
        assert_eq!(with_lanes().encode_record()[0], 3);
    }

    #[test]
    fn hostile_relayed_candidates_are_refused() {
        let mut two = with_relay(vec![]);
        two.candidates.push(Candidate {
            kind: CandidateKind::Relayed,
            addr: "198.51.100.6:3478".parse().unwrap(),
        });
        assert_eq!(
            FullTicket::decode_record(&two.encode_record()),
            Err(TicketError::Malformed("more than one relayed address"))
        );
        // A relayed address without a port or host, or a kind past the known ones.
        let t = with_relay(vec![]);
        let mut r = t.encode_record();
        // Record: version, flags, fingerprint, count, then the relayed candidate's tag.
        let tag = 2 + Fingerprint::LEN + 1;
        assert_eq!(r[tag], 3 | (4 << 4));
        let mut zero_port = r.clone();
        zero_port[tag + 5..tag + 7].copy_from_slice(&[0, 0]);
        assert_eq!(
            FullTicket::decode_record(&zero_port),
            Err(TicketError::Malformed("address without port or host"))
        );
        r[tag] = 4 | (4 << 4);
        assert_eq!(
            FullTicket::decode_record(&r),
            Err(TicketError::Malformed("unknown address kind"))
        );
    }

    #[test]
    fn bare_addresses() {
        assert_eq!(
            "188.44.136.7:21300".parse::<Ticket>().unwrap(),
            Ticket::Bare("188.44.136.7:21300".parse().unwrap())
        );
        assert_eq!(
            "[2001:db8::2]:4300".parse::<Ticket>().unwrap(),
            Ticket::Bare("[2001:db8::2]:4300".parse().unwrap())
        );
        assert!(matches!(
            "188.44.136.7:0".parse::<Ticket>(),
            Err(TicketError::Unrecognised(_))
        ));
        assert!(matches!(
            "0.0.0.0:4300".parse::<Ticket>(),
            Err(TicketError::Unrecognised(_))
        ));
        assert!(matches!(
            "hello".parse::<Ticket>(),
            Err(TicketError::Unrecognised(_))
        ));
        assert_eq!("  ".parse::<Ticket>(), Err(TicketError::Empty));
    }

    #[test]
    fn decoder_survives_arbitrary_records() {
        // Cheap stand-in for fuzzing in the default test run: every truncation and every
        // single-byte corruption of a valid record decodes to Ok or Err, never panics.
        for record in [
            with_lanes().encode_record(),
            with_relay(vec![]).encode_record(),
        ] {
            survives(&record);
        }
    }

    fn survives(record: &[u8]) {
        for n in 0..record.len() {
            let _ = FullTicket::decode_record(&record[..n]);
        }
        for i in 0..record.len() {
            for v in [0u8, 1, 0x14, 0x43, 0x61, 0xff] {
                let mut r = record.to_vec();
                r[i] = v;
                let _ = FullTicket::decode_record(&r);
            }
        }
    }

    #[test]
    fn fuzz_seeds_decode_and_print_back_unchanged() {
        for text in [
            include_str!("../fuzz/seeds/ticket/cli-sender"),
            include_str!("../fuzz/seeds/ticket/full-receiver-v4-v6"),
            include_str!("../fuzz/seeds/ticket/bare-v4"),
            include_str!("../fuzz/seeds/ticket/bare-v6"),
        ] {
            let t: Ticket = text.parse().unwrap();
            assert_eq!(t.to_string(), text);
        }
        for (record, fingerprint) in [
            (
                &include_bytes!("../fuzz/seeds/ticket/record-cli-sender")[..],
                "c07b94f10fc593f10b6a892eb078a69f6e29c150a1e76afc09633f2714dde986",
            ),
            (
                &include_bytes!("../fuzz/seeds/ticket/record-receiver-v4-v6")[..],
                "0707070707070707070707070707070707070707070707070707070707070707",
            ),
        ] {
            let t = FullTicket::decode_record(record).unwrap();
            assert_eq!(t.fingerprint.to_string(), fingerprint);
            assert_eq!(t.fingerprint.as_bytes()[..], record[2..34]);
            assert_eq!(t.encode_record(), record);
        }
    }
}
