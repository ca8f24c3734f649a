//! What the shared socket lets through, and a rate-limited tally of what it drops.
//!
//! Anyone who read a ticket can aim datagrams at our public port. Each one that is not a
//! probe carrying this session's tag, or QUIC from an address the peer's probes came
//! from, is dropped in [`crate::net`]'s receive path before the puncher or quinn spends
//! anything on it, and counted here. Pure: no sockets, no clock (time is an argument).
//!
//! Gathering ([`crate::stun::discover`]) runs, and checks its answers' transaction ids,
//! before the socket is shared. Afterwards the only STUN answer expected is the one to a
//! link's own query when its path died ([`crate::stun::recheck`]): the demultiplexer hands
//! each STUN datagram on the main socket to that query first, and drops what it refuses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::stun::message::MAGIC_COOKIE;
use crate::wire::{is_probe, Probe};

/// Most peer addresses remembered (LAN, mapped, IPv6, birthday sockets, reconnects): a
/// handful in practice; the bound keeps a bare-ticket session from growing without end.
pub const MAX_PEER_PATHS: usize = 32;

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Neither a probe, STUN, nor QUIC from the peer (includes our own probes echoed back
    /// by a hairpinning router, which the puncher ignores anyway).
    Junk,
    /// Probe magic, but malformed or without this session's tag.
    ForgedProbe,
    /// A QUIC long-header packet from an address the peer never probed us from.
    QuicStranger,
    /// A STUN message that answers no query of ours.
    StunNotOurs,
}

impl Dropped {
    const ALL: [Dropped; 4] = [
        Dropped::Junk,
        Dropped::ForgedProbe,
        Dropped::QuicStranger,
        Dropped::StunNotOurs,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Dropped::Junk => "junk",
            Dropped::ForgedProbe => "forged probes",
            Dropped::QuicStranger => "QUIC from strangers",
            Dropped::StunNotOurs => "STUN not ours",
        }
    }
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A probe of this session: to the puncher (its source becomes a peer path).
    Probe,
    /// QUIC from a peer path: to quinn.
    Quic,
    /// Nobody's business.
    Drop(Dropped),
}

/// The tag every probe of this session carries: the two certificates' short ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTag {
    /// Ours.
    pub local: [u8; 8],
    /// The peer's, unknown with a bare `ip:port` ticket.
    pub peer: Option<[u8; 8]>,
}

impl SessionTag {
    /// Whether a decoded probe belongs to this session (the puncher's own test).
    pub fn accepts(&self, p: &Probe) -> bool {
        self.peer.is_none_or(|id| id == p.from)
            && p.from != self.local
            && (p.to == [0; 8] || p.to == self.local)
    }
}

/// Sorts one datagram from `from`; `peer_paths` are the addresses the peer's probes came
/// from. The fast case (QUIC from a peer path) costs a scan of a few addresses and a look
/// at the first byte.
pub fn classify(
    tag: &SessionTag,
    peer_paths: &[SocketAddr],
    from: SocketAddr,
    data: &[u8],
) -> Verdict {
    let known = peer_paths.contains(&from);
    classify_from(tag, known, data)
}

/// [`classify`] with the source already looked up: a GRO batch comes from one address.
pub fn classify_from(tag: &SessionTag, known: bool, data: &[u8]) -> Verdict {
    let first = data.first().copied().unwrap_or(0);
    // Our endpoints never grease the QUIC bit, so a peer's QUIC always has 0x40 set;
    // probes and STUN have it clear.
    if known && first & 0x40 != 0 {
        return Verdict::Quic;
    }
    if is_probe(data) {
        return match Probe::decode(data) {
            Some(p) if tag.accepts(&p) => Verdict::Probe,
            Some(p) if p.from == tag.local => Verdict::Drop(Dropped::Junk),
            _ => Verdict::Drop(Dropped::ForgedProbe),
        };
    }
    if data.len() >= 20 && first & 0xc0 == 0 && data[4..8] == MAGIC_COOKIE.to_be_bytes() {
        return Verdict::Drop(Dropped::StunNotOurs);
    }
    if known {
        // Whatever else the peer's address sends, quinn judges (and drops) it.
        return Verdict::Quic;
    }
    // Long header, QUIC v1: a handshake someone tries to start.
    if data.len() >= 5 && first & 0xc0 == 0xc0 && data[1..5] == [0, 0, 0, 1] {
        Verdict::Drop(Dropped::QuicStranger)
    } else {
        Verdict::Drop(Dropped::Junk)
    }
}

/// Adds `addr` to the peer paths (oldest forgotten first); false when already there.
pub fn remember(peer_paths: &mut Vec<SocketAddr>, addr: SocketAddr) -> bool {
    if peer_paths.contains(&addr) {
        return false;
    }
    if peer_paths.len() >= MAX_PEER_PATHS {
        peer_paths.remove(0);
    }
    peer_paths.push(addr);
    true
}

/// How often a summary of drops may be logged.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(5);

/// Counts drops and says so at most once per [`SUMMARY_PERIOD`], never per packet.
#[derive(Debug, Default)]
pub struct DropLog {
    counts: [u64; 4],
    totals: [u64; 4],
    /// When the first drop of the current window came.
    since: Option<Instant>,
    /// Heavy hitters (Misra–Gries, 4 counters): the top one is the main source whenever one
    /// source sent more than a fifth of the window's drops.
    top: [(Option<IpAddr>, u64); 4],
}

/// One window's drops, ready to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Length of the window (from its first drop).
    pub over: Duration,
    /// Per [`Dropped`] kind, in declaration order.
    pub counts: [u64; 4],
    /// The source that sent most of them, if one stood out.
    pub top: Option<IpAddr>,
    /// Whether this is the run's closing tally ([`DropLog::totals`]).
    pub total: bool,
}

impl Summary {
    /// Datagrams dropped in all.
    pub fn sum(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total {
            write!(f, "dropped {} datagrams in all (", self.sum())?;
        } else {
            write!(
                f,
                "dropped {} datagrams in the last {:.0} s (",
                self.sum(),
                self.over.as_secs_f64().max(1.0)
            )?;
        }
        let mut sep = "";
        for kind in Dropped::ALL {
            let n = self.counts[kind.index()];
            if n > 0 {
                write!(f, "{sep}{} {n}", kind.label())?;
                sep = ", ";
            }
        }
        f.write_str(")")?;
        if let Some(ip) = self.top {
            write!(f, ", most from {ip}")?;
        }
        Ok(())
    }
}

impl DropLog {
    /// Counts `n` datagrams from `from` dropped for `why`.
    pub fn record(&mut self, now: Instant, why: Dropped, from: IpAddr, n: u64) {
        self.since.get_or_insert(now);
        self.counts[why.index()] += n;
        self.totals[why.index()] += n;
        if let Some(slot) = self.top.iter_mut().find(|(ip, _)| *ip == Some(from)) {
            slot.1 += n;
        } else if let Some(slot) = self.top.iter_mut().find(|(ip, _)| ip.is_none()) {
            *slot = (Some(from), n);
        } else {
            let cut = self.top.iter().map(|s| s.1).min().unwrap_or(0).min(n);
            for slot in &mut self.top {
                slot.1 -= cut;
                if slot.1 == 0 {
                    slot.0 = None;
                }
            }
            if n > cut {
                if let Some(slot) = self.top.iter_mut().find(|(ip, _)| ip.is_none()) {
                    *slot = (Some(from), n - cut);
                }
            }
        }
    }

    /// The window's summary once it is [`SUMMARY_PERIOD`] old, then a fresh window.
    pub fn poll_summary(&mut self, now: Instant) -> Option<Summary> {
        let since = self.since?;
        if now.saturating_duration_since(since) < SUMMARY_PERIOD {
            return None;
        }
        Some(self.take(now))
    }

    /// What is left of the current window, whatever its age (for the end of a run).
    pub fn flush(&mut self, now: Instant) -> Option<Summary> {
        self.since?;
        Some(self.take(now))
    }

    /// Every drop so far, if any.
    pub fn totals(&self) -> Option<Summary> {
        self.totals.iter().any(|&n| n > 0).then_some(Summary {
            over: Duration::ZERO,
            counts: self.totals,
            top: None,
            total: true,
        })
    }

    fn take(&mut self, now: Instant) -> Summary {
        let over = self
            .since
            .take()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let counts = std::mem::take(&mut self.counts);
        let sum: u64 = counts.iter().sum();
        let top = self
            .top
            .iter()
            .max_by_key(|s| s.1)
            .filter(|s| s.1 > 0 && s.1 * 5 >= sum)
            .and_then(|s| s.0);
        self.top = Default::default();
        Summary {
            over,
            counts,
            top,
            total: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ProbeKind;

    const US: [u8; 8] = [1; 8];
    const PEER: [u8; 8] = [2; 8];

    fn probe(from: [u8; 8], to: [u8; 8]) -> Vec<u8> {
        Probe {
            kind: ProbeKind::Ping,
            from,
            to,
            seq: 7,
            observed: None,
        }
        .encode()
        .to_vec()
    }

    fn stun(transaction: [u8; 12]) -> Vec<u8> {
        crate::stun::message::encode_response(&crate::stun::message::BindingResponse {
            transaction,
            mapped: "198.18.3.2:4000".parse().unwrap(),
            response_origin: None,
            other_address: None,
        })
    }

    fn initial() -> Vec<u8> {
        let mut p = vec![0xc3, 0, 0, 0, 1, 8];
        p.resize(1200, 0x55);
        p
    }

    #[test]
    fn classification_table() {
        let tag = SessionTag {
            local: US,
            peer: Some(PEER),
        };
        let bare = SessionTag {
            local: US,
            peer: None,
        };
        let peer: SocketAddr = "198.18.1.2:4300".parse().unwrap();
        let v6peer: SocketAddr = "[2001:db8:1::2]:4300".parse().unwrap();
        let stranger: SocketAddr = "198.18.3.2:5000".parse().unwrap();
        let paths = [peer, v6peer];
        let short = vec![0x41, 9, 9, 9];
        let mut truncated = probe(PEER, US);
        truncated.truncate(40);
        use Dropped::*;
        use Verdict::*;
        let cases: Vec<(&str, &SessionTag, SocketAddr, Vec<u8>, Verdict)> = vec![
            ("probe from peer", &tag, stranger, probe(PEER, US), Probe),
            (
                "probe, peer knew no id",
                &tag,
                stranger,
                probe(PEER, [0; 8]),
                Probe,
            ),
            (
                "probe, wrong sender",
                &tag,
                stranger,
                probe([9; 8], US),
                Drop(ForgedProbe),
            ),
            (
                "probe, wrong addressee",
                &tag,
                peer,
                probe(PEER, [9; 8]),
                Drop(ForgedProbe),
            ),
            (
                "probe, bare ticket",
                &bare,
                stranger,
                probe([9; 8], US),
                Probe,
            ),
            (
                "our own probe echoed",
                &tag,
                peer,
                probe(US, PEER),
                Drop(Junk),
            ),
            ("truncated probe", &tag, peer, truncated, Drop(ForgedProbe)),
            (
                "STUN from stranger",
                &tag,
                stranger,
                stun([3; 12]),
                Drop(StunNotOurs),
            ),
            (
                "STUN from peer",
                &tag,
                peer,
                stun([3; 12]),
                Drop(StunNotOurs),
            ),
            ("QUIC from peer", &tag, peer, initial(), Quic),
            (
                "QUIC from peer over IPv6",
                &tag,
                v6peer,
                short.clone(),
                Quic,
            ),
            ("short header from peer", &tag, peer, short.clone(), Quic),
            (
                "Initial from stranger",
                &tag,
                stranger,
                initial(),
                Drop(QuicStranger),
            ),
            (
                "Initial from peer's IP, other port",
                &tag,
                "198.18.1.2:4301".parse().unwrap(),
                initial(),
                Drop(QuicStranger),
            ),
            (
                "short header from stranger",
                &tag,
                stranger,
                short,
                Drop(Junk),
            ),
            (
                "junk from stranger",
                &tag,
                stranger,
                vec![0x17; 300],
                Drop(Junk),
            ),
            ("junk from peer", &tag, peer, vec![0x17; 300], Quic),
            ("empty from stranger", &tag, stranger, vec![], Drop(Junk)),
            ("empty from peer", &tag, peer, vec![], Quic),
        ];
        for (name, tag, from, data, want) in cases {
            assert_eq!(classify(tag, &paths, from, &data), want, "{name}");
        }
    }

    #[test]
    fn peer_paths_are_bounded_oldest_first() {
        let mut paths = Vec::new();
        let addr = |i: u16| SocketAddr::from(([10, 0, 0, 1], i));
        assert!(remember(&mut paths, addr(1)));
        assert!(!remember(&mut paths, addr(1)));
        for i in 2..=(MAX_PEER_PATHS as u16 + 1) {
            assert!(remember(&mut paths, addr(i)));
        }
        assert_eq!(paths.len(), MAX_PEER_PATHS);
        assert!(!paths.contains(&addr(1)));
        assert_eq!(paths.last(), Some(&addr(MAX_PEER_PATHS as u16 + 1)));
    }

    #[test]
    fn drops_are_summarised_once_per_period() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        assert_eq!(log.poll_summary(t0), None);
        assert_eq!(log.flush(t0), None);
        let attacker: IpAddr = "198.18.3.2".parse().unwrap();
        let other: IpAddr = "198.18.4.2".parse().unwrap();
        // 20,000 datagrams a second for 12 s: two summaries (one per period), not 240,000.
        let mut lines = Vec::new();
        for ms in 0..12_000u64 {
            let now = t0 + Duration::from_millis(ms);
            for (k, why) in Dropped::ALL.into_iter().enumerate() {
                log.record(now, why, attacker, 5);
                if ms % 1000 == 0 && k == 0 {
                    log.record(now, why, other, 1);
                }
            }
            lines.extend(log.poll_summary(now));
        }
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first.over, SUMMARY_PERIOD);
        assert_eq!(first.top, Some(attacker));
        assert_eq!(first.counts[Dropped::Junk.index()], 5001 * 5 + 6);
        assert_eq!(
            first.to_string(),
            "dropped 100026 datagrams in the last 5 s (junk 25011, forged probes 25005, \
             QUIC from strangers 25005, STUN not ours 25005), most from 198.18.3.2"
        );
        // The rest comes out at the end; the totals add up to everything recorded.
        let rest = log.flush(t0 + Duration::from_secs(12)).unwrap();
        let seen: u64 = lines.iter().map(Summary::sum).sum::<u64>() + rest.sum();
        let total = log.totals().unwrap();
        assert_eq!(total.sum(), seen);
        assert_eq!(seen, 12_000 * 20 + 12);
        assert!(total
            .to_string()
            .starts_with("dropped 240012 datagrams in all (junk 60012,"));
        assert_eq!(log.flush(t0 + Duration::from_secs(13)), None);
    }

    #[test]
    fn no_top_source_when_none_stands_out() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        for i in 0..100u8 {
            log.record(t0, Dropped::Junk, IpAddr::from([10, 0, 0, i]), 1);
        }
        let s = log.poll_summary(t0 + SUMMARY_PERIOD).unwrap();
        assert_eq!(s.top, None);
        assert_eq!(
            s.to_string(),
            "dropped 100 datagrams in the last 5 s (junk 100)"
        );
    }
}
