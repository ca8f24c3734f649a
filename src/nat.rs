//! What the STUN answers say about this host's NAT, and what that means for a peer pair.

use std::net::{IpAddr, SocketAddr};

use crate::ticket::NatKind;

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
            "uses a new public port for every destination (symmetric): direct connections work only with a peer whose NAT is open or absent"
        }
        NatKind::Unknown => "unknown (too few STUN answers to tell)",
    }
}

/// A warning shown right after the paste when the two NAT kinds make a direct path unlikely;
/// p2pcopy still tries, since a forwarded port or a full-cone NAT can make it work.
pub fn warn_before(ours: NatKind, theirs: Option<NatKind>) -> Option<&'static str> {
    use NatKind::*;
    match (ours, theirs?) {
        (EndpointDependent, EndpointDependent) => Some(
            "both of you are behind symmetric NATs, which hole punching cannot cross; trying anyway until --timeout (a UDP port forwarded on one router fixes this)",
        ),
        (EndpointDependent, EndpointIndependent) | (EndpointIndependent, EndpointDependent) => Some(
            "one of you is behind a symmetric NAT; this works only if the other NAT accepts packets from anywhere (full cone) or has a forwarded port",
        ),
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
            "both of you are behind symmetric NATs (a new public port for every destination), which hole punching cannot cross; {hint}"
        ),
        (EndpointDependent, _) => format!(
            "your NAT is symmetric and your peer's NAT only accepts packets from addresses it has sent to, so no direct path exists; {hint}"
        ),
        (_, EndpointDependent) => format!(
            "your peer's NAT is symmetric and yours only accepts packets from addresses it has sent to, so no direct path exists; {hint}"
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
            explain_failure(EndpointDependent, Some(EndpointDependent), false, 2, 60)
                .contains("both of you are behind symmetric")
        );
        assert!(
            explain_failure(EndpointIndependent, Some(EndpointDependent), false, 2, 60)
                .contains("peer's NAT is symmetric")
        );
        assert!(
            explain_failure(EndpointDependent, Some(EndpointIndependent), false, 2, 60)
                .contains("your NAT is symmetric")
        );
        assert!(
            explain_failure(EndpointIndependent, Option::None, false, 2, 60)
                .contains("pasted your ticket")
        );
        assert!(
            explain_failure(EndpointIndependent, Some(EndpointIndependent), true, 2, 60)
                .contains("one direction")
        );
        assert!(explain_failure(None, Some(None), false, 0, 5).contains("--timeout"));
        assert!(warn_before(EndpointDependent, Some(EndpointDependent))
            .unwrap()
            .contains("both"));
        assert!(warn_before(EndpointIndependent, Some(EndpointDependent))
            .unwrap()
            .contains("full cone"));
        assert_eq!(
            warn_before(EndpointIndependent, Some(EndpointIndependent)),
            Option::None
        );
        assert_eq!(warn_before(EndpointDependent, Some(None)), Option::None);
        assert_eq!(warn_before(EndpointDependent, Option::None), Option::None);
    }
}
