//! How often the STUN server answers: a token bucket per source (IPv4 address or IPv6 /64),
//! in a table of bounded size, and one global bucket. Sans-IO: time is an argument, so tests
//! run on a virtual clock.
//!
//! Why both: the per-source bucket keeps one client (or one victim whose address is spoofed)
//! from getting more than a trickle of answers; the global bucket bounds the total when a
//! flood comes from many (spoofed) addresses, each of which would otherwise start with a
//! full bucket. The table never grows past its capacity, so such a flood cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A sustained rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Answers per second, sustained.
    pub per_second: f64,
    /// Answers that may go out at once after a quiet spell.
    pub burst: f64,
}

/// The limits of a [`RateLimiter`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// For each source IP address.
    pub per_source: Rate,
    /// For all sources together.
    pub global: Rate,
    /// How many source addresses are remembered at most.
    pub sources: usize,
}

impl Default for Limits {
    /// 8 answers a second per source with bursts of 32 (an RFC 5780 client's whole test,
    /// or the classic `stun` client's 10-odd requests, fit in the burst), 2000 a second in
    /// all (about 1 Mbit/s of answers), 16384 sources remembered (about 1 MB).
    fn default() -> Limits {
        Limits {
            per_source: Rate {
                per_second: 8.0,
                burst: 32.0,
            },
            global: Rate {
                per_second: 2000.0,
                burst: 2000.0,
            },
            sources: 16384,
        }
    }
}

/// What [`RateLimiter::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answer.
    Allow,
    /// This source asked too often: drop.
    SourceLimited,
    /// Everyone together asked too often: drop.
    GlobalLimited,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // A clock that went backwards (callers on several threads) refills nothing.
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_second).min(rate.burst);
        self.at = self.at.max(now);
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate.burst
    }
}

/// How often, at most, a full table is swept before a new source evicts another: often
/// enough to make room for newcomers, rarely enough that a flood of new sources costs no
/// scan of the table per datagram.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Token buckets per source address, plus a global one.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter whose buckets start full at `now`.
    pub fn new(limits: Limits, now: Instant) -> RateLimiter {
        RateLimiter {
            limits,
            sources: HashMap::with_capacity(limits.sources.min(1024)),
            global: Bucket::full(limits.global, now),
            last_sweep: None,
        }
    }

    /// How many source addresses it remembers now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Whether a request from `source` at `now` may be answered; if so, it is counted.
    pub fn check(&mut self, now: Instant, source: IpAddr) -> Verdict {
        let limits = self.limits;
        let source = source_key(source);
        if !self.sources.contains_key(&source) {
            self.make_room(now);
        }
        let bucket = self
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(limits.per_source, now));
        bucket.refill(limits.per_source, now);
        if bucket.tokens < 1.0 {
            // Checked before the global bucket, so one noisy source does not use up the
            // answers everyone else shares.
            return Verdict::SourceLimited;
        }
        self.global.refill(limits.global, now);
        if self.global.tokens < 1.0 {
            return Verdict::GlobalLimited;
        }
        bucket.tokens -= 1.0;
        self.global.tokens -= 1.0;
        Verdict::Allow
    }

    /// Frees a slot for a new source if the table is full.
    fn make_room(&mut self, now: Instant) {
        if self.sources.len() < self.limits.sources.max(1) {
            return;
        }
        if self.swept_before(now, FULL_SWEEP_INTERVAL) {
            self.sweep(now);
        }
        if self.sources.len() >= self.limits.sources.max(1) {
            // Still full of active sources: a flood from many addresses. Forget one (any:
            // the hash order is random per process); the global bucket still bounds the
            // total, even if the forgotten source comes back with a fresh burst.
            if let Some(&victim) = self.sources.keys().next() {
                self.sources.remove(&victim);
            }
        }
    }
}

/// What a source is counted as: its IPv4 address, or its IPv6 /64 (one host usually has a
/// whole /64 to pick addresses from, so counting single IPv6 addresses would let it take a
/// fresh burst with each).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl RateLimiter {
    fn swept_before(&self, now: Instant, interval: Duration) -> bool {
        self.last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= interval)
    }

    /// Forgets the sources whose bucket is full again: they hold no information the limit
    /// needs. Call it now and then so that addresses are not kept longer than that.
    pub fn forget_quiet(&mut self, now: Instant) {
        self.sweep(now);
    }

    fn sweep(&mut self, now: Instant) {
        let rate = self.limits.per_source;
        self.sources.retain(|_, b| !b.is_full(rate, now));
        self.last_sweep = Some(now);
    }
}

/// Says at most once per interval how many requests went unanswered, so a flood cannot
/// flood the log as well.
#[derive(Debug)]
pub struct DropLog {
    interval: Duration,
    dropped: u64,
    last: Option<Instant>,
}

impl DropLog {
    /// At most one report per `interval`.
    pub fn new(interval: Duration) -> DropLog {
        DropLog {
            interval,
            dropped: 0,
            last: None,
        }
    }

    /// Counts one dropped request; returns how many to report now (this one included), if
    /// it is time for a report.
    pub fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.dropped += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + n))
    }

    fn small() -> Limits {
        Limits {
            per_source: Rate {
                per_second: 2.0,
                burst: 4.0,
            },
            global: Rate {
                per_second: 10.0,
                burst: 10.0,
            },
            sources: 8,
        }
    }

    /// How many of `n` requests at `now` from `source` are allowed.
    fn allowed(l: &mut RateLimiter, now: Instant, source: IpAddr, n: usize) -> usize {
        (0..n)
            .filter(|_| l.check(now, source) == Verdict::Allow)
            .count()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(small(), t0);
        assert_eq!(allowed(&mut l, t0, ip(1), 10), 4);
        assert_eq!(l.check(t0, ip(1)), Verdict::SourceLimited);
        // Another source is not affected.
        assert_eq!(allowed(&mut l, t0, ip(2), 1), 1);
        // 2 per second: one more after half a second, none in between.
        assert_eq!(
            allowed(&mut l, t0 + Duration::from_millis(400), ip(1), 5),
            0
        );
        assert_eq!(
            allowed(&mut l, t0 + Duration::from_millis(500), ip(1), 5),
            1
        );
        // Over 10 s of steady asking, about 2 per second get through.
        let mut ok = 0;
        for ms in (1000..11000).step_by(50) {
            ok += allowed(&mut l, t0 + Duration::from_millis(ms), ip(1), 1);
        }
        assert!((19..=21).contains(&ok), "{ok}");
        // A quiet spell refills the burst, and no more than it.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(allowed(&mut l, later, ip(1), 10), 4);
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let t0 = Instant::now();
        let limits = Limits {
            global: Rate {
                per_second: 1e9,
                burst: 1e9,
            },
            ..small()
        };
        let mut l = RateLimiter::new(limits, t0);
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(allowed(&mut l, t0, v6("2001:db8:1:2::1"), 3), 3);
        assert_eq!(allowed(&mut l, t0, v6("2001:db8:1:2:ffff::9"), 3), 1);
        assert_eq!(allowed(&mut l, t0, v6("2001:db8:1:3::1"), 3), 3);
        // An IPv4-mapped address counts as the IPv4 address.
        assert_eq!(allowed(&mut l, t0, v6("::ffff:198.18.0.1"), 3), 3);
        assert_eq!(allowed(&mut l, t0, ip(1), 3), 1);
        assert_eq!(l.tracked(), 3);
    }

    #[test]
    fn many_sources_hit_the_global_limit() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(small(), t0);
        let ok: usize = (0..30).map(|n| allowed(&mut l, t0, ip(n), 1)).sum();
        assert_eq!(ok, 10);
        assert_eq!(l.check(t0, ip(99)), Verdict::GlobalLimited);
        // A source over its own limit is told so first, and does not use global answers.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(allowed(&mut l, t1, ip(1), 4), 4);
        assert_eq!(l.check(t1, ip(1)), Verdict::SourceLimited);
        assert_eq!(allowed(&mut l, t1, ip(2), 6), 4);
        // 10 - 8 global answers left: the refused ones above took none.
        assert_eq!(allowed(&mut l, t1, ip(3), 4), 2);
        assert_eq!(l.check(t1, ip(3)), Verdict::GlobalLimited);
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_sources() {
        let t0 = Instant::now();
        let limits = Limits {
            global: Rate {
                per_second: 1e9,
                burst: 1e9,
            },
            ..small()
        };
        let mut l = RateLimiter::new(limits, t0);
        for n in 0..10_000 {
            l.check(t0 + Duration::from_micros(n.into()), ip(n));
            assert!(l.tracked() <= 8);
        }
        assert_eq!(l.tracked(), 8);
        // Sources that went quiet are swept out first: after their buckets refilled, a
        // new one takes a slot and the 7 busy ones keep theirs (and their counts).
        let mut l = RateLimiter::new(limits, t0);
        for n in 0..8 {
            assert_eq!(allowed(&mut l, t0, ip(n), 4), 4);
        }
        let t1 = t0 + Duration::from_secs(1);
        for n in 1..8 {
            // Half a bucket back after 1 s; use it up again.
            assert_eq!(allowed(&mut l, t1, ip(n), 2), 2);
        }
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(allowed(&mut l, t2, ip(100), 1), 1);
        assert_eq!(l.tracked(), 8);
        assert!(l.sources.contains_key(&ip(1)));
        assert!(!l.sources.contains_key(&ip(0)), "ip 0 was idle and full");
        // Quiet sources are forgotten as soon as their bucket is full again.
        // (ip 1-7 were empty at t1 and refill by t1 + 2 s; ip 100 took one token at t2.)
        l.forget_quiet(t2 + Duration::from_millis(250));
        assert_eq!(l.tracked(), 8, "none has refilled yet");
        l.forget_quiet(t2 + Duration::from_millis(500));
        assert_eq!(l.tracked(), 7, "ip 100 has refilled");
        assert!(!l.sources.contains_key(&ip(100)));
        l.forget_quiet(t2 + Duration::from_secs(1));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn drop_log_reports_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut log = DropLog::new(Duration::from_secs(10));
        assert_eq!(log.dropped(t0), Some(1));
        for s in 1..10 {
            assert_eq!(log.dropped(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(log.dropped(t0 + Duration::from_secs(10)), Some(10));
        assert_eq!(log.dropped(t0 + Duration::from_secs(11)), None);
    }
}
