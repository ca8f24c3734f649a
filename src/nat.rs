//! What the STUN answers say about this host's NAT, and what that means for a peer pair.

use std::net::{IpAddr, SocketAddr};

use crate::ticket::NatKind;

/// How the NAT treats inbound packets (RFC 4787 filtering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to the mapped port once it exists ("full cone").
    EndpointIndependent,
    /// Only hosts we sent to, from any port ("restricted cone").
    AddressDependent,
    /// Only the exact address and port we sent to ("port-restricted cone"; Linux's
    /// conntrack and most home routers).
    AddressAndPortDependent,
}

/// Classifies the NAT from the addresses STUN servers saw for one local socket.
///
/// `local_ips` are the host's own interface addresses. Two servers are needed to tell
/// endpoint-independent from endpoint-dependent mapping; with one answer, only "no NAT" can
/// be told apart.
pub fn classify(local_port: u16, local_ips: &[IpAddr], mapped: &[SocketAddr]) -> NatKind {
    let Some(first) = mapped.first() else {
        return NatKind::Unknown;
    };
    if local_ips.contains(&first.ip()) && first.port() == local_port {
        return NatKind::None;
    }
    if mapped.len() < 2 {
        return NatKind::Unknown;
    }
    if mapped.iter().all(|m| m == first) {
        NatKind::EndpointIndependent
    } else {
        NatKind::EndpointDependent
    }
}

/// The "Your NAT: ..." line, in words a user understands.
pub fn describe(kind: NatKind) -> &'static str {
    match kind {
        NatKind::None => "none, your address is public: anyone can reach you directly",
        NatKind::EndpointIndependent => {
            "keeps one public port for all destinations (cone): direct connections usually work"
        }
        NatKind::EndpointDependent => {
            "uses a new public port for every destination (symmetric): direct connections work with a peer that has no NAT or a cone NAT, not another symmetric one"
        }
        NatKind::Unknown => "unknown (too few STUN answers to tell)",
    }
}

/// The part this side plays in the birthday technique (see [`crate::punch`]), if any: only
/// when exactly one side's NAT is symmetric and the other's is a cone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BirthdayPart {
    /// Ours is the symmetric NAT: open many sockets.
    Open,
    /// The peer's is: guess its ports.
    Spray,
}

/// See [`BirthdayPart`].
pub fn birthday_part(ours: NatKind, theirs: Option<NatKind>) -> Option<BirthdayPart> {
    use NatKind::*;
    match (ours, theirs?) {
        (EndpointDependent, EndpointIndependent) => Some(BirthdayPart::Open),
        (EndpointIndependent, EndpointDependent) => Some(BirthdayPart::Spray),
        _ => Option::None,
    }
}

/// Whether both NATs are symmetric, which no hole punching crosses: then only the local
/// network is tried, briefly, instead of rounds until the timeout.
pub fn both_symmetric(ours: NatKind, theirs: Option<NatKind>) -> bool {
    ours == NatKind::EndpointDependent && theirs == Some(NatKind::EndpointDependent)
}

/// Extra sockets a symmetric side opens for the birthday technique (see [`crate::punch`]).
/// 768 rather than 256: a miss (1.7 % of rounds with 256) cost a whole round, 10 s past the
/// 15 s target; with 768 it is 5 in a million, for the same packets per round (each socket
/// pings every 1.5 s instead of 0.5 s) and the same 1024 guesses from the cone side.
pub const BIRTHDAY_SOCKETS: usize = 768;
/// Random ports of a symmetric peer's address the cone side opens its NAT towards per round.
pub const BIRTHDAY_PORTS: usize = 1024;

/// What helps when both NATs are symmetric.
const BOTH_SYMMETRIC_HINT: &str = "give one of you a TURN relay of your own (--relay), forward a UDP port to one of you on its router and use it as --localport, enable UPnP or NAT-PMP on one router, use IPv6, or connect both to one network";

/// A warning shown right after the paste about what the two NAT kinds mean for connecting.
pub fn warn_before(ours: NatKind, theirs: Option<NatKind>) -> Option<String> {
    use NatKind::*;
    match (ours, theirs?) {
        (EndpointDependent, EndpointDependent) => Some(format!(
            "both of you are behind symmetric NATs, which hole punching cannot cross; only paths that need no punching are tried: your local network, IPv6 ({BOTH_SYMMETRIC_HINT})"
        )),
        (EndpointDependent, EndpointIndependent) | (EndpointIndependent, EndpointDependent) => Some(format!(
            "one of you is behind a symmetric NAT: each round guesses its ports ({} sockets x {} guesses, about 99.999 % per round)",
            BIRTHDAY_SOCKETS + 1,
            BIRTHDAY_PORTS
        )),
        _ => Option::None,
    }
}

/// The reason shown when no path was found before the deadline.
pub fn explain_failure(
    ours: NatKind,
    theirs: Option<NatKind>,
    heard_peer: bool,
    rounds: u32,
    timeout_secs: u64,
) -> String {
    use NatKind::*;
    let theirs = theirs.unwrap_or(Unknown);
    let hint = "forward a UDP port to one of you on its router and use it as --localport, or connect both to one network";
    match (ours, theirs) {
        (EndpointDependent, EndpointDependent) => format!(
            "both of you are behind symmetric NATs (a new public port for every destination), which hole punching cannot cross; {BOTH_SYMMETRIC_HINT}"
        ),
        (EndpointDependent, EndpointIndependent) | (EndpointIndependent, EndpointDependent)
            if rounds > 0 => format!(
            "one of you is behind a symmetric NAT and guessing its ports found no match in {rounds} round(s) over {timeout_secs} s; try again, or {hint}"
        ),
        _ if rounds == 0 => format!("gave up after {timeout_secs} s before the first round started; use a longer --timeout"),
        _ if !heard_peer => format!(
            "nothing arrived from your peer in {rounds} round(s) over {timeout_secs} s; check that your peer pasted your ticket (not an old one) and that UDP is not blocked"
        ),
        _ => format!(
            "probes from your peer arrived but no path worked both ways within {timeout_secs} s; a firewall may block one direction"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classification() {
        let lan: Vec<IpAddr> = vec!["10.1.0.2".parse().unwrap()];
        assert_eq!(classify(4300, &lan, &[]), NatKind::Unknown);
        assert_eq!(
            classify(4300, &lan, &[a("198.18.1.2:4300")]),
            NatKind::Unknown
        );
        assert_eq!(
            classify(4300, &lan, &[a("198.18.1.2:4300"), a("198.18.1.2:4300")]),
            NatKind::EndpointIndependent
        );
        assert_eq!(
            classify(4300, &lan, &[a("198.18.1.2:4300"), a("198.18.1.2:4301")]),
            NatKind::EndpointDependent
        );
        let public: Vec<IpAddr> = vec!["198.18.5.2".parse().unwrap()];
        assert_eq!(
            classify(4300, &public, &[a("198.18.5.2:4300")]),
            NatKind::None
        );
        // Same IP but another port: a NAT on the host itself, not "no NAT".
        assert_eq!(
            classify(4300, &public, &[a("198.18.5.2:5000"), a("198.18.5.2:5000")]),
            NatKind::EndpointIndependent
        );
    }

    #[test]
    fn failure_reasons_name_the_cause() {
        use NatKind::*;
        assert!(
            explain_failure(EndpointDependent, Some(EndpointDependent), false, 0, 60)
                .contains("both of you are behind symmetric")
        );
        for (a, b) in [
            (EndpointIndependent, EndpointDependent),
            (EndpointDependent, EndpointIndependent),
        ] {
            assert!(explain_failure(a, Some(b), true, 2, 90).contains("no match in 2 round(s)"));
        }
        assert!(
            explain_failure(EndpointIndependent, Option::None, false, 2, 60)
                .contains("pasted your ticket")
        );
        assert!(
            explain_failure(EndpointIndependent, Some(EndpointIndependent), true, 2, 60)
                .contains("one direction")
        );
        assert!(explain_failure(None, Some(None), false, 0, 5).contains("--timeout"));
    }

    #[test]
    fn what_the_two_nat_kinds_mean() {
        use NatKind::*;
        assert!(warn_before(EndpointDependent, Some(EndpointDependent))
            .unwrap()
            .contains("only paths that need no punching"));
        assert!(both_symmetric(EndpointDependent, Some(EndpointDependent)));
        assert!(!both_symmetric(EndpointDependent, Some(Unknown)));
        assert!(warn_before(EndpointIndependent, Some(EndpointDependent))
            .unwrap()
            .contains("guesses its ports"));
        assert_eq!(
            warn_before(EndpointIndependent, Some(EndpointIndependent)),
            Option::None
        );
        assert_eq!(warn_before(EndpointDependent, Some(None)), Option::None);
        assert_eq!(warn_before(EndpointDependent, Option::None), Option::None);
        assert_eq!(
            birthday_part(EndpointDependent, Some(EndpointIndependent)),
            Some(BirthdayPart::Open)
        );
        assert_eq!(
            birthday_part(EndpointIndependent, Some(EndpointDependent)),
            Some(BirthdayPart::Spray)
        );
        // No NAT, or an unknown one: nothing to guess.
        for (a, b) in [
            (EndpointDependent, Some(None)),
            (None, Some(EndpointDependent)),
            (EndpointDependent, Some(EndpointDependent)),
            (Unknown, Some(EndpointDependent)),
            (EndpointDependent, Option::None),
        ] {
            assert_eq!(birthday_part(a, b), Option::None, "{a:?} {b:?}");
        }
    }
}
