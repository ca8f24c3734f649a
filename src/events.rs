//! What a run reports: the event schema behind `--json`, which a [`crate::session`] tells
//! its [`crate::session::Events`] as things happen.
//!
//! This module is the one place that decides what a script sees: every event, every field
//! name and every enum value's spelling is here, and the README's "Machine-readable output"
//! section documents the same (a unit test holds the two together). A program reads one JSON
//! object per line on stdout; each has `"event"` naming its type and `"t"`, the seconds since
//! the process started. Writing them (to a person, or as JSON lines) is the CLI's business
//! (`cli::output`); the library only builds them.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::nat::Filtering;
use crate::portmap::Protocol;
use crate::punch::PathKind;
use crate::shown::is_unsafe;
use crate::ticket::{Candidate, CandidateKind, NatKind, Role};
use crate::wire::{DeleteStatus, FileStatus};

/// One thing that happened during a run, as `--json` prints it.
///
/// Two events are for a person's screen only and `--json` does not print them
/// ([`Event::in_json`]): [`Event::Bound`] and [`Event::Measured`] come before the ticket,
/// whose event carries the same data for a program.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run's UDP socket is bound (before STUN; not printed by `--json`).
    Bound {
        /// The local UDP port in use.
        local_port: u16,
    },
    /// STUN answered: our NAT's mapping (not printed by `--json`; the `ticket` event says it).
    Measured {
        /// Our NAT's mapping as STUN saw it.
        nat: NatKind,
    },
    /// The router forwards a public port to our socket (PCP, NAT-PMP or UPnP); the ticket
    /// carries it as a `port_mapped` candidate. Only printed when there is one.
    PortMapping {
        /// Which protocol the router answered.
        protocol: Protocol,
        /// The public address the router forwards.
        external: SocketAddr,
        /// Seconds the router granted (renewed at half while the run lasts); 0: permanent.
        lease_s: u64,
    },
    /// Our ticket is ready to be given to the peer.
    Ticket {
        /// `sender` or `receiver`.
        role: Role,
        /// The line to give to the peer.
        ticket: String,
        /// The local UDP port in use.
        local_port: u16,
        /// Our NAT's mapping as STUN saw it.
        nat: NatKind,
        /// The addresses the ticket carries.
        candidates: Vec<Candidate>,
        /// The public ports of our extra lane sockets, on the mapped address's IP (empty:
        /// no lanes, e.g. with `--no-stun`; the peer then punches every 40 s).
        lane_ports: Vec<u16>,
    },
    /// The peer's ticket is known: what the two NAT kinds allow.
    Nat {
        /// Our NAT's kind.
        ours: NatKind,
        /// The peer's NAT kind; `None` for a bare `ip:port`, which carries none.
        peer: Option<NatKind>,
        /// Why a direct path is unlikely, when it is (p2pcopy still tries).
        warning: Option<String>,
    },
    /// Something the user should know that does not stop the run.
    Warning {
        /// The same words the human output prints after `p2pcopy: warning: `.
        message: String,
    },
    /// Punching starts (after the paste, and again after a lost connection).
    Connecting {
        /// Whether synchronised rounds are needed (a peer behind a NAT); without them the
        /// peer's addresses are probed at once.
        rounds: bool,
        /// Seconds between rounds, when there are rounds.
        round_period_s: Option<u64>,
        /// Seconds until the next round, when there are rounds.
        next_round_in_s: Option<u64>,
    },
    /// A synchronised punching round started.
    PunchRound {
        /// 1 for the first round of this connection attempt.
        round: u32,
    },
    /// A QUIC connection to the peer is up.
    Connected {
        /// How the peer's address was learned.
        path_kind: PathKind,
        /// The peer's address.
        remote: SocketAddr,
        /// QUIC's round-trip estimate, in whole milliseconds.
        rtt_ms: u64,
        /// Whether we checked the peer's certificate against its ticket.
        authenticated: bool,
        /// The code to compare with the peer, when we could not authenticate it.
        verification_code: Option<String>,
        /// Connections before this one in this run (0 for the first).
        reconnects: u32,
        /// Whether the peer reached us at the public port our router forwards (a port
        /// mapping made the path); for the human line, not printed by `--json`.
        #[serde(skip_serializing)]
        via_port_mapping: bool,
    },
    /// The data moved onto another path under the same connection: from the relay onto a
    /// direct path a round found, or back onto the relay when that path died.
    PathChanged {
        /// `relayed`, or how the direct path's address was learned.
        path_kind: PathKind,
        /// Where our datagrams go now: the relay's address, or the peer's own.
        remote: SocketAddr,
    },
    /// The connection was lost; p2pcopy punches again.
    Reconnecting {
        /// Why the connection counts as lost.
        reason: String,
        /// Seconds it keeps trying before giving up; `None` (JSON `null`): no limit (a link
        /// that stays, without `--reconnect-for`).
        timeout_s: Option<u64>,
    },
    /// After a lost path, STUN saw our socket at another public address than our ticket
    /// announced: the peer, which knows only the ticket's, may not find us again.
    MappingChanged {
        /// The address our ticket announced (as the same STUN server saw it then).
        old: SocketAddr,
        /// The address the server sees now.
        new: SocketAddr,
    },
    /// Both sides agreed what moves on this connection.
    Plan {
        /// Regular files in the job.
        files: u64,
        /// Folders in the job.
        folders: u64,
        /// Symbolic links in the job.
        links: u64,
        /// Sum of all file sizes.
        total_bytes: u64,
        /// Bytes the receiver says it already holds; the sender checks each claim by hash
        /// and sends a file again from the start if it differs.
        held_bytes: u64,
    },
    /// Bytes moved so far; at most about four a second, and one when the job is done.
    Progress {
        /// Bytes of the job the receiver has (held ones included).
        done_bytes: u64,
        /// Sum of all file sizes.
        total_bytes: u64,
        /// Average rate of the bytes that crossed the network in this run.
        bytes_per_s: u64,
        /// The file being moved, as announced (relative path).
        file: Option<String>,
    },
    /// A file arrived and the receiver verified its BLAKE3 (or already had it, identical).
    FileDone {
        /// The file's path as announced (relative, `/`-separated).
        path: String,
        /// Its size in bytes.
        size: u64,
        /// Its BLAKE3, 64 hex digits.
        blake3: String,
        /// `stored` or `already_there`.
        status: FileStatus,
        /// Receiver: where the file is on disk; sender: `None`.
        saved_as: Option<String>,
    },
    /// The job is done and every file verified; the last event of a successful transfer.
    Summary {
        /// `sender` or `receiver`.
        role: Role,
        /// Regular files in the job.
        files: u64,
        /// Folders in the job.
        folders: u64,
        /// Symbolic links in the job.
        links: u64,
        /// Sum of all file sizes.
        total_bytes: u64,
        /// File bytes that crossed the network in this run.
        moved_bytes: u64,
        /// Bytes the receiver held from an earlier run and proved by hash.
        resumed_bytes: u64,
        /// Files the receiver already had, identical.
        already_there: u64,
        /// Connections after the first.
        reconnects: u32,
        /// Seconds from the first connection to the end.
        elapsed_s: f64,
        /// `moved_bytes / elapsed_s`.
        bytes_per_s: u64,
        /// The code to compare with the peer, when either side used a bare `ip:port`.
        verification_code: Option<String>,
    },
    /// A link's peer asked to delete a path under our output folder (its `--watch DIR
    /// --delete`); what became of it.
    Deleted {
        /// The path as the peer named it (relative, `/`-separated).
        path: String,
        /// `deleted`, `missing` (already gone), `kept` (it differs from what was sent, or a
        /// folder is not empty) or `refused` (this link was started without
        /// `--allow-delete`, the peer did not send that file over this link, or the path is
        /// not a plain file or folder here).
        result: DeleteStatus,
    },
    /// The run failed; the last event before the process exits with `code`.
    Error {
        /// The exit code (see the README's table).
        code: u8,
        /// The one-line message the human output prints after `p2pcopy: `.
        message: String,
    },
    /// `p2pcopy doctor`'s findings.
    Doctor {
        /// The tested socket's address.
        local: SocketAddr,
        /// This host's own IPv4 addresses.
        host_ips: Vec<IpAddr>,
        /// This host's global IPv6 addresses.
        ipv6: Vec<std::net::Ipv6Addr>,
        /// One entry per STUN server asked.
        servers: Vec<StunCheck>,
        /// The NAT's mapping.
        nat: NatKind,
        /// The NAT's filtering, when an RFC 5780 server allowed testing it.
        filtering: Option<Filtering>,
        /// Whether our own public address reached us back, when there is a NAT to ask.
        hairpin: Option<bool>,
        /// Routers before the internet, by TTL (null: one stayed silent).
        nat_hops: Vec<Option<std::net::Ipv4Addr>>,
        /// The NTP answer, if NTP was asked and answered.
        ntp: Option<NtpCheck>,
        /// Whether NTP was asked at all.
        ntp_checked: bool,
        /// The router's test mapping, if a protocol answered.
        port_mapping: Option<PortMapCheck>,
        /// Whether port mapping was tried (false with `--no-portmap`).
        port_mapping_checked: bool,
        /// One entry per `--relay`, in order (empty without one).
        relays: Vec<RelayReport>,
        /// The UDP socket buffers the system granted, if it tells.
        udp_buffers: Option<BufferCheck>,
        /// Which peers this machine can reach, in words.
        verdict: String,
    },
    /// `p2pcopy stun-server` answers on this address (one event per address).
    Listening {
        /// The address.
        addr: SocketAddr,
    },
}

/// One STUN server in a [`Event::Doctor`] report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StunCheck {
    /// As given.
    pub name: String,
    /// The resolved IPv4 address, if it resolved.
    pub addr: Option<SocketAddr>,
    /// Round trip of the first answer, in whole milliseconds, if it answered.
    pub rtt_ms: Option<u64>,
    /// Our address as the server saw it, if it answered.
    pub mapped: Option<SocketAddr>,
    /// The server's RFC 5780 alternate address, if it has one.
    pub other: Option<SocketAddr>,
}

/// One relay in a [`Event::Doctor`] report: an allocation, or why none.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RelayReport {
    /// The relay's URI (canonical form; never any credential).
    pub uri: String,
    /// How p2pcopy reached it: `udp`, `tcp` or `tls`.
    pub transport: String,
    /// The server's address, if the allocation was made.
    pub server: Option<SocketAddr>,
    /// The relayed address peers would send to, if the allocation was made.
    pub relayed: Option<SocketAddr>,
    /// Our address as the relay saw it.
    pub mapped: Option<SocketAddr>,
    /// Round trip of the allocation request, in whole milliseconds.
    pub rtt_ms: Option<u64>,
    /// The server's STUN error code when it refused (401 wrong credentials, 403, 486 ...).
    pub code: Option<u16>,
    /// Why the relay cannot be used, in words; null when it can.
    pub error: Option<String>,
}

impl From<&crate::relay::RelayCheck> for RelayReport {
    fn from(c: &crate::relay::RelayCheck) -> RelayReport {
        let ok = c.result.as_ref().ok();
        RelayReport {
            uri: c.uri.to_string(),
            transport: c.uri.transport.to_string(),
            server: ok.map(|a| a.server),
            relayed: ok.map(|a| a.relayed),
            mapped: ok.and_then(|a| a.mapped),
            rtt_ms: ok.map(|a| millis(a.rtt)),
            code: c.result.as_ref().err().and_then(|e| e.code()),
            error: c.result.as_ref().err().map(ToString::to_string),
        }
    }
}

/// The NTP answer in a [`Event::Doctor`] report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NtpCheck {
    /// The server that answered.
    pub server: String,
    /// Its round trip, in whole milliseconds.
    pub rtt_ms: u64,
    /// How far this clock is behind true time, in seconds (negative: ahead).
    pub offset_s: f64,
}

/// The router's test mapping in a [`Event::Doctor`] report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortMapCheck {
    /// Which protocol the router answered.
    pub protocol: Protocol,
    /// The public address it forwarded.
    pub external: SocketAddr,
    /// Whether that is the public address STUN saw, so p2pcopy would use the mapping
    /// (false behind a second NAT).
    pub usable: bool,
    /// Whether the router confirmed removing the test mapping.
    pub removed: bool,
}

/// The UDP socket buffers in a [`Event::Doctor`] report, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BufferCheck {
    /// The receive buffer granted.
    pub receive: usize,
    /// The send buffer granted.
    pub send: usize,
    /// What p2pcopy asks for each.
    pub asked: usize,
}

impl Event {
    /// Whether `--json` prints this event: all but the two a person's screen needs before
    /// the ticket ([`Event::Bound`], [`Event::Measured`]).
    pub fn in_json(&self) -> bool {
        !matches!(self, Event::Bound { .. } | Event::Measured { .. })
    }
}

/// Bytes per second.
pub fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    (bytes as f64 / secs) as u64
}

/// Whole milliseconds, as the human output rounds them too.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Seconds with millisecond precision: finer digits are noise in a log and cost bytes.
pub fn seconds(d: Duration) -> f64 {
    millis(d) as f64 / 1000.0
}

// The spellings of the crate's enums in JSON live here, beside the events that carry them,
// rather than as derives on the core types, so the schema is stated in one module.

impl Serialize for NatKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            NatKind::Unknown => "unknown",
            NatKind::None => "none",
            NatKind::EndpointIndependent => "cone",
            NatKind::EndpointDependent => "symmetric",
        })
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        })
    }
}

impl Serialize for CandidateKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            CandidateKind::Host => "host",
            CandidateKind::Mapped => "mapped",
            CandidateKind::PortMapped => "port_mapped",
            CandidateKind::Relayed => "relayed",
        })
    }
}

impl Serialize for Candidate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Candidate", 2)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("addr", &self.addr)?;
        st.end()
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat_pmp",
            Protocol::Upnp => "upnp",
        })
    }
}

impl Serialize for PathKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            PathKind::Lan => "lan",
            PathKind::Public => "public",
            PathKind::Mapped => "mapped",
            PathKind::PortMapped => "port_mapped",
            PathKind::PeerReflexive => "peer_reflexive",
            PathKind::Typed => "typed",
            PathKind::Ipv6 => "ipv6",
            PathKind::Relayed => "relayed",
        })
    }
}

impl Serialize for FileStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            FileStatus::Stored => "stored",
            FileStatus::AlreadyThere => "already_there",
            FileStatus::HashMismatch => "hash_mismatch",
            FileStatus::SourceChanged => "source_changed",
        })
    }
}

impl Serialize for DeleteStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(delete_status_name(*self))
    }
}

/// How JSON spells a [`DeleteStatus`] (the control socket's `delete_sent` uses it too).
pub fn delete_status_name(status: DeleteStatus) -> &'static str {
    match status {
        DeleteStatus::Deleted => "deleted",
        DeleteStatus::Missing => "missing",
        DeleteStatus::Kept => "kept",
        DeleteStatus::Refused => "refused",
    }
}

impl Serialize for Filtering {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Filtering::EndpointIndependent => "endpoint_independent",
            Filtering::AddressDependent => "address_dependent",
            Filtering::AddressAndPortDependent => "address_and_port_dependent",
        })
    }
}

/// One printed line: the event with its time in front.
#[derive(Serialize)]
struct Line<'a> {
    t: f64,
    #[serde(flatten)]
    event: &'a Event,
}

/// `event` as one JSON line (no newline) at `t` seconds (see [`Event::in_json`] for the
/// two events `--json` leaves out).
pub fn to_line(event: &Event, t: f64) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, Inert);
    // Events hold only strings, numbers, addresses and options: serializing cannot fail.
    Line { t, event }
        .serialize(&mut ser)
        .expect("events always serialize");
    String::from_utf8(buf).expect("JSON is UTF-8")
}

/// Any JSON value as one line (no newline), escaped as [`to_line`] escapes events: the
/// control socket's replies and a link's own events use it.
pub fn value_line(value: &serde_json::Value) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, Inert);
    // A Value's keys are strings: serializing cannot fail.
    value.serialize(&mut ser).expect("values always serialize");
    String::from_utf8(buf).expect("JSON is UTF-8")
}

/// serde_json's compact output, with the characters a terminal acts on that JSON leaves raw
/// (DEL, C1 and the bidi controls; it escapes C0 itself) written as `\uXXXX` too: a program
/// parses the exact names all the same, and a person watching the stream on a terminal sees
/// nothing the terminal would act on.
struct Inert;

impl serde_json::ser::Formatter for Inert {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut plain = 0;
        for (i, c) in fragment.char_indices() {
            if is_unsafe(c) {
                w.write_all(&fragment.as_bytes()[plain..i])?;
                // All of them are in the Basic Multilingual Plane: four digits suffice.
                write!(w, "\\u{:04x}", u32::from(c))?;
                plain = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[plain..])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeMap;

    /// Each key of a JSON object with its value's JSON type.
    fn shape(v: &Value) -> BTreeMap<String, &'static str> {
        v.as_object()
            .expect("an object")
            .iter()
            .map(|(k, v)| (k.clone(), kind(v)))
            .collect()
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Serializes `event` as printed, checks it is one line, and that its keys and their
    /// types are exactly `want` (besides `t` and `event`, checked here for every event).
    pub(crate) fn check(event: Event, name: &str, want: &[(&str, &str)]) -> Value {
        let line = to_line(&event, 1.25);
        assert!(!line.contains('\n'), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        let mut expected: BTreeMap<String, &str> =
            want.iter().map(|(k, t)| (k.to_string(), *t)).collect();
        expected.insert("t".into(), "number");
        expected.insert("event".into(), "string");
        assert_eq!(shape(&v), expected, "{line}");
        assert_eq!(v["event"], name, "{line}");
        assert_eq!(v["t"], 1.25, "{line}");
        v
    }

    pub(crate) fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ticket() {
        let v = check(
            Event::Ticket {
                role: Role::Sender,
                ticket: "p2pcXYZ".into(),
                local_port: 4300,
                nat: NatKind::EndpointIndependent,
                candidates: vec![
                    Candidate {
                        kind: CandidateKind::PortMapped,
                        addr: addr("198.51.100.7:4300"),
                    },
                    Candidate {
                        kind: CandidateKind::Mapped,
                        addr: addr("198.51.100.7:40000"),
                    },
                    Candidate {
                        kind: CandidateKind::Host,
                        addr: addr("192.168.1.20:4300"),
                    },
                ],
                lane_ports: vec![40001, 40002, 40003],
            },
            "ticket",
            &[
                ("role", "string"),
                ("ticket", "string"),
                ("local_port", "number"),
                ("nat", "string"),
                ("candidates", "array"),
                ("lane_ports", "array"),
            ],
        );
        assert_eq!(v["lane_ports"], serde_json::json!([40001, 40002, 40003]));
        assert_eq!(v["role"], "sender");
        assert_eq!(v["nat"], "cone");
        assert_eq!(v["local_port"], 4300);
        assert_eq!(
            v["candidates"],
            serde_json::json!([
                {"kind": "port_mapped", "addr": "198.51.100.7:4300"},
                {"kind": "mapped", "addr": "198.51.100.7:40000"},
                {"kind": "host", "addr": "192.168.1.20:4300"},
            ])
        );
    }

    #[test]
    fn port_mapping() {
        let mut protocols = Vec::new();
        for protocol in [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp] {
            let v = check(
                Event::PortMapping {
                    protocol,
                    external: addr("198.51.100.7:4300"),
                    lease_s: 7200,
                },
                "port_mapping",
                &[
                    ("protocol", "string"),
                    ("external", "string"),
                    ("lease_s", "number"),
                ],
            );
            assert_eq!(v["external"], "198.51.100.7:4300");
            assert_eq!(v["lease_s"], 7200);
            protocols.push(v["protocol"].as_str().unwrap().to_owned());
        }
        assert_eq!(protocols, ["pcp", "nat_pmp", "upnp"]);
    }

    #[test]
    fn nat() {
        let keys = [
            ("ours", "string"),
            ("peer", "string"),
            ("warning", "string"),
        ];
        let v = check(
            Event::Nat {
                ours: NatKind::EndpointDependent,
                peer: Some(NatKind::EndpointDependent),
                warning: Some("both symmetric".into()),
            },
            "nat",
            &keys,
        );
        assert_eq!(
            (&v["ours"], &v["peer"]),
            (&"symmetric".into(), &"symmetric".into())
        );
        // A bare ip:port has no NAT kind, and a likely pair no warning: both are null.
        check(
            Event::Nat {
                ours: NatKind::None,
                peer: None,
                warning: None,
            },
            "nat",
            &[("ours", "string"), ("peer", "null"), ("warning", "null")],
        );
    }

    #[test]
    fn warning() {
        let v = check(
            Event::Warning {
                message: "no NTP server answered".into(),
            },
            "warning",
            &[("message", "string")],
        );
        assert_eq!(v["message"], "no NTP server answered");
    }

    #[test]
    fn connecting() {
        let v = check(
            Event::Connecting {
                rounds: true,
                round_period_s: Some(40),
                next_round_in_s: Some(16),
            },
            "connecting",
            &[
                ("rounds", "bool"),
                ("round_period_s", "number"),
                ("next_round_in_s", "number"),
            ],
        );
        assert_eq!(v["next_round_in_s"], 16);
        check(
            Event::Connecting {
                rounds: false,
                round_period_s: None,
                next_round_in_s: None,
            },
            "connecting",
            &[
                ("rounds", "bool"),
                ("round_period_s", "null"),
                ("next_round_in_s", "null"),
            ],
        );
    }

    #[test]
    fn punch_round() {
        let v = check(
            Event::PunchRound { round: 3 },
            "punch_round",
            &[("round", "number")],
        );
        assert_eq!(v["round"], 3);
    }

    #[test]
    fn connected() {
        let keys = [
            ("path_kind", "string"),
            ("remote", "string"),
            ("rtt_ms", "number"),
            ("authenticated", "bool"),
            ("verification_code", "null"),
            ("reconnects", "number"),
        ];
        let v = check(
            Event::Connected {
                path_kind: PathKind::PeerReflexive,
                remote: addr("203.0.113.9:21300"),
                rtt_ms: 31,
                authenticated: true,
                verification_code: None,
                reconnects: 0,
                via_port_mapping: true,
            },
            "connected",
            &keys,
        );
        assert_eq!(v["path_kind"], "peer_reflexive");
        assert_eq!(v["remote"], "203.0.113.9:21300");
        let v = check(
            Event::Connected {
                path_kind: PathKind::Typed,
                remote: addr("203.0.113.9:21300"),
                rtt_ms: 31,
                authenticated: false,
                verification_code: Some("4821-0937".into()),
                reconnects: 2,
                via_port_mapping: false,
            },
            "connected",
            &[keys.as_slice(), &[("verification_code", "string")]].concat(),
        );
        assert_eq!(v["path_kind"], "typed");
        assert_eq!(v["reconnects"], 2);
        let v = check(
            Event::Connected {
                path_kind: PathKind::PortMapped,
                remote: addr("203.0.113.9:4300"),
                rtt_ms: 31,
                authenticated: true,
                verification_code: None,
                reconnects: 0,
                via_port_mapping: true,
            },
            "connected",
            &keys,
        );
        assert_eq!(v["path_kind"], "port_mapped");
    }

    #[test]
    fn path_changed() {
        let keys = [("path_kind", "string"), ("remote", "string")];
        let v = check(
            Event::PathChanged {
                path_kind: PathKind::Mapped,
                remote: addr("203.0.113.9:21300"),
            },
            "path_changed",
            &keys,
        );
        assert_eq!(v["path_kind"], "mapped");
        let v = check(
            Event::PathChanged {
                path_kind: PathKind::Relayed,
                remote: addr("198.51.100.5:50000"),
            },
            "path_changed",
            &keys,
        );
        assert_eq!(v["path_kind"], "relayed");
        assert_eq!(v["remote"], "198.51.100.5:50000");
    }

    #[test]
    fn reconnecting() {
        let v = check(
            Event::Reconnecting {
                reason: "no answer".into(),
                timeout_s: Some(120),
            },
            "reconnecting",
            &[("reason", "string"), ("timeout_s", "number")],
        );
        assert_eq!(v["timeout_s"], 120);
        let v = check(
            Event::Reconnecting {
                reason: "no answer".into(),
                timeout_s: None,
            },
            "reconnecting",
            &[("reason", "string"), ("timeout_s", "null")],
        );
        assert!(v["timeout_s"].is_null());
    }

    #[test]
    fn plan() {
        let v = check(
            Event::Plan {
                files: 312,
                folders: 41,
                links: 2,
                total_bytes: 1 << 30,
                held_bytes: 100,
            },
            "plan",
            &[
                ("files", "number"),
                ("folders", "number"),
                ("links", "number"),
                ("total_bytes", "number"),
                ("held_bytes", "number"),
            ],
        );
        assert_eq!(v["total_bytes"], 1u64 << 30);
    }

    #[test]
    fn progress() {
        let v = check(
            Event::Progress {
                done_bytes: 5,
                total_bytes: 10,
                bytes_per_s: 2,
                file: Some("a/b.txt".into()),
            },
            "progress",
            &[
                ("done_bytes", "number"),
                ("total_bytes", "number"),
                ("bytes_per_s", "number"),
                ("file", "string"),
            ],
        );
        assert_eq!(v["file"], "a/b.txt");
        // u64 sizes beyond 2^53 stay exact integers in the text.
        let line = to_line(
            &Event::Progress {
                done_bytes: u64::MAX,
                total_bytes: u64::MAX,
                bytes_per_s: 0,
                file: None,
            },
            0.0,
        );
        assert!(
            line.contains("\"done_bytes\":18446744073709551615"),
            "{line}"
        );
    }

    #[test]
    fn file_done() {
        let hash = blake3::hash(b"hello");
        let v = check(
            Event::FileDone {
                path: "dir/hello.txt".into(),
                size: 5,
                blake3: hash.to_hex().to_string(),
                status: FileStatus::Stored,
                saved_as: Some("out/dir/hello.txt".into()),
            },
            "file_done",
            &[
                ("path", "string"),
                ("size", "number"),
                ("blake3", "string"),
                ("status", "string"),
                ("saved_as", "string"),
            ],
        );
        assert_eq!(v["blake3"], hash.to_hex().as_str());
        assert_eq!(v["status"], "stored");
        let v = check(
            Event::FileDone {
                path: "x".into(),
                size: 0,
                blake3: hash.to_hex().to_string(),
                status: FileStatus::AlreadyThere,
                saved_as: None,
            },
            "file_done",
            &[
                ("path", "string"),
                ("size", "number"),
                ("blake3", "string"),
                ("status", "string"),
                ("saved_as", "null"),
            ],
        );
        assert_eq!(v["status"], "already_there");
    }

    #[test]
    fn summary() {
        let v = check(
            Event::Summary {
                role: Role::Receiver,
                files: 3,
                folders: 1,
                links: 0,
                total_bytes: 300,
                moved_bytes: 200,
                resumed_bytes: 100,
                already_there: 1,
                reconnects: 1,
                elapsed_s: 2.5,
                bytes_per_s: 80,
                verification_code: None,
            },
            "summary",
            &[
                ("role", "string"),
                ("files", "number"),
                ("folders", "number"),
                ("links", "number"),
                ("total_bytes", "number"),
                ("moved_bytes", "number"),
                ("resumed_bytes", "number"),
                ("already_there", "number"),
                ("reconnects", "number"),
                ("elapsed_s", "number"),
                ("bytes_per_s", "number"),
                ("verification_code", "null"),
            ],
        );
        assert_eq!(v["role"], "receiver");
        assert_eq!(v["elapsed_s"], 2.5);
    }

    #[test]
    fn error() {
        let e = crate::Error::Usage("no ticket entered".into());
        let v = check(
            Event::Error {
                code: e.exit_code(),
                message: e.to_string(),
            },
            "error",
            &[("code", "number"), ("message", "string")],
        );
        assert_eq!(v["code"], 2);
        assert_eq!(v["message"], "no ticket entered");
    }

    #[test]
    fn listening() {
        let v = check(
            Event::Listening {
                addr: addr("192.0.2.10:3478"),
            },
            "listening",
            &[("addr", "string")],
        );
        assert_eq!(v["addr"], "192.0.2.10:3478");
    }

    #[test]
    fn programs_see_the_exact_text_and_nothing_a_terminal_acts_on() {
        let name = "evil\x1b]0;PWNED\x07\x1b[2J\u{9b}31m\u{202e}fdp.exe";
        let event = Event::FileDone {
            path: name.into(),
            size: 5,
            blake3: String::new(),
            status: FileStatus::Stored,
            saved_as: Some(format!("./{name}")),
        };
        let line = to_line(&event, 0.0);
        // Nothing a terminal acts on is in the line itself...
        assert!(!line.chars().any(is_unsafe), "{line:?}");
        assert!(
            line.contains(r#""path":"evil\u001b]0;PWNED\u0007\u001b[2J\u009b31m\u202efdp.exe""#),
            "{line}"
        );
        // ...and a program reads the exact name.
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], name);
        assert_eq!(v["saved_as"], format!("./{name}"));
        // Plain Unicode stays readable in the JSON too.
        let plain = to_line(
            &Event::Warning {
                message: "Grüße 日本.txt".into(),
            },
            0.0,
        );
        assert!(plain.contains("Grüße 日本.txt"), "{plain}");
    }

    #[test]
    fn times_have_millisecond_precision() {
        assert_eq!(seconds(Duration::from_micros(1_234_567)), 1.234);
        assert_eq!(seconds(Duration::ZERO), 0.0);
        let line = to_line(&Event::PunchRound { round: 1 }, 0.0);
        assert_eq!(line, r#"{"t":0.0,"event":"punch_round","round":1}"#);
    }

    /// The README's example line for each event has exactly the keys the code prints, so
    /// the documented schema cannot drift from the real one.
    #[test]
    fn readme_examples_match_the_schema() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## Machine-readable output (--json)")
            .nth(1)
            .expect("README section")
            .split("\n## ")
            .next()
            .unwrap();
        let examples: BTreeMap<String, Value> = section
            .lines()
            .filter(|l| l.starts_with("{\"t\":"))
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                (v["event"].as_str().unwrap().to_owned(), v)
            })
            .collect();
        let samples = [
            Event::PortMapping {
                protocol: Protocol::Pcp,
                external: addr("127.0.0.1:1"),
                lease_s: 1,
            },
            Event::Ticket {
                role: Role::Sender,
                ticket: String::new(),
                local_port: 0,
                nat: NatKind::Unknown,
                candidates: vec![],
                lane_ports: vec![],
            },
            Event::Nat {
                ours: NatKind::Unknown,
                peer: None,
                warning: None,
            },
            Event::Warning {
                message: String::new(),
            },
            Event::Connecting {
                rounds: false,
                round_period_s: None,
                next_round_in_s: None,
            },
            Event::PunchRound { round: 1 },
            Event::Connected {
                path_kind: PathKind::Lan,
                remote: addr("127.0.0.1:1"),
                rtt_ms: 0,
                authenticated: true,
                verification_code: None,
                reconnects: 0,
                via_port_mapping: false,
            },
            Event::PathChanged {
                path_kind: PathKind::Relayed,
                remote: addr("127.0.0.1:1"),
            },
            Event::Reconnecting {
                reason: String::new(),
                timeout_s: Some(1),
            },
            Event::MappingChanged {
                old: addr("127.0.0.1:1"),
                new: addr("127.0.0.1:2"),
            },
            Event::Plan {
                files: 0,
                folders: 0,
                links: 0,
                total_bytes: 0,
                held_bytes: 0,
            },
            Event::Progress {
                done_bytes: 0,
                total_bytes: 0,
                bytes_per_s: 0,
                file: None,
            },
            Event::FileDone {
                path: String::new(),
                size: 0,
                blake3: String::new(),
                status: FileStatus::Stored,
                saved_as: None,
            },
            Event::Summary {
                role: Role::Sender,
                files: 0,
                folders: 0,
                links: 0,
                total_bytes: 0,
                moved_bytes: 0,
                resumed_bytes: 0,
                already_there: 0,
                reconnects: 0,
                elapsed_s: 0.0,
                bytes_per_s: 0,
                verification_code: None,
            },
            Event::Deleted {
                path: String::new(),
                result: crate::wire::DeleteStatus::Kept,
            },
            Event::Error {
                code: 1,
                message: String::new(),
            },
            Event::Doctor {
                local: addr("127.0.0.1:1"),
                host_ips: vec![],
                ipv6: vec![],
                servers: vec![],
                nat: NatKind::Unknown,
                filtering: None,
                hairpin: None,
                nat_hops: vec![],
                ntp: None,
                ntp_checked: false,
                port_mapping: None,
                port_mapping_checked: false,
                relays: vec![],
                udp_buffers: None,
                verdict: String::new(),
            },
            Event::Listening {
                addr: addr("127.0.0.1:1"),
            },
        ];
        assert_eq!(
            examples.len(),
            samples.len(),
            "one README example per event"
        );
        for e in &samples {
            let ours: Value = serde_json::from_str(&to_line(e, 0.0)).unwrap();
            let name = ours["event"].as_str().unwrap();
            let doc = examples
                .get(name)
                .unwrap_or_else(|| panic!("no README example for {name}"));
            let (a, b) = (shape(&ours), shape(doc));
            assert!(
                a.keys().eq(b.keys()),
                "{name}: printed keys {a:?}, README keys {b:?}"
            );
            // A key null in one of them may hold a value in the other; otherwise the types
            // must agree.
            for (k, t) in &a {
                let d = b[k];
                assert!(
                    *t == d || *t == "null" || d == "null",
                    "{name}.{k}: printed {t}, README {d}"
                );
            }
        }
    }
}
