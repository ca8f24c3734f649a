//! Sizing the sender's QUIC send window to the path while a job runs.
//!
//! quinn's send window bounds the bytes written to streams but not yet acknowledged: what
//! is in flight plus what waits to be sent. A fixed window big enough for 1 Gbit/s × 100 ms
//! (32 MiB) is far too big on a LAN, where a round trip carries a few hundred kilobytes:
//! the rest is a queue inside quinn, and by the time a byte leaves it the CPU cache has
//! long forgotten it. Copying cold data into packets cost the LAN sender about a tenth of
//! its CPU time: on the bench's LAN path the sender's median over a dozen runs was 1.35
//! CPU-seconds per GiB with 32 MiB and 1.22 with 4 MiB.
//!
//! So the window follows the bytes actually sent per smoothed round trip, with room for
//! the round trips a repaired hole keeps data unacknowledged. When the window itself is
//! what limits sending, one round trip carries a whole window, so the next size is
//! [`HEADROOM`] times larger: the window cannot hold a connection down.

use std::time::{Duration, Instant};

/// The smallest window: a few milliseconds at LAN speed, more than a round trip's worth
/// on any path slow enough to need less.
pub const MIN_SEND_WINDOW: u64 = 4 << 20;
/// The largest window, and the one a connection starts with (a QUIC transport setting).
pub use crate::quic::MAX_SEND_WINDOW;
/// The window in round trips' worth of sent bytes. Two would let a slow start double each
/// round trip while measured a round trip late; two more cover a lost packet's detection
/// and repair.
pub const HEADROOM: f64 = 4.0;
/// The shortest span a rate is measured over: LAN round trips are a fraction of a
/// millisecond, shorter than the scheduler's noise.
const MIN_SPAN: Duration = Duration::from_millis(10);

/// The send window of one connection (sans-IO: the caller feeds it counters and sets the
/// window it returns).
#[derive(Debug)]
pub struct SendWindow {
    window: u64,
    /// Start of the current measurement: time and bytes sent then.
    mark: Option<(Instant, u64)>,
}

impl Default for SendWindow {
    fn default() -> Self {
        SendWindow {
            window: MAX_SEND_WINDOW,
            mark: None,
        }
    }
}

impl SendWindow {
    /// The window now.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Feeds the bytes the connection has sent in all (UDP payload, repairs included) and
    /// its smoothed round-trip time; returns the new window when it should change.
    ///
    /// It shrinks by at most half per measurement, so a stall (a lost path, a PTO) does
    /// not drop it to the minimum at once.
    pub fn update(&mut self, now: Instant, sent: u64, rtt: Duration) -> Option<u64> {
        let Some((t0, b0)) = self.mark else {
            self.mark = Some((now, sent));
            return None;
        };
        let span = now.saturating_duration_since(t0);
        if span < rtt.max(MIN_SPAN) {
            return None;
        }
        self.mark = Some((now, sent));
        let per_rtt = sent.saturating_sub(b0) as f64 * rtt.as_secs_f64() / span.as_secs_f64();
        let target = ((HEADROOM * per_rtt) as u64)
            .max(self.window / 2)
            .clamp(MIN_SEND_WINDOW, MAX_SEND_WINDOW);
        // Small changes are noise, not worth taking the connection's lock for.
        if target.abs_diff(self.window) < self.window / 8 {
            return None;
        }
        self.window = target;
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a window against a path that sends `min(rate, window / rtt)`; returns the
    /// windows it chose, one per measurement.
    fn drive(rate_bytes_per_s: f64, rtt: Duration, secs: f64) -> Vec<u64> {
        let mut w = SendWindow::default();
        let start = Instant::now();
        let step = rtt.max(MIN_SPAN);
        let (mut t, mut sent) = (Duration::ZERO, 0f64);
        let mut seen = Vec::new();
        w.update(start, 0, rtt);
        while t.as_secs_f64() < secs {
            let allowed = w.window() as f64 / rtt.as_secs_f64();
            sent += rate_bytes_per_s.min(allowed) * step.as_secs_f64();
            t += step;
            w.update(start + t, sent as u64, rtt);
            seen.push(w.window());
        }
        seen
    }

    #[test]
    fn a_lan_shrinks_to_the_minimum_a_halving_at_a_time() {
        // 6 Gbit/s, 0.5 ms: a round trip carries 375 kB.
        let seen = drive(750e6, Duration::from_micros(500), 0.2);
        assert_eq!(seen[0], MAX_SEND_WINDOW / 2);
        assert_eq!(seen[1], MAX_SEND_WINDOW / 4);
        assert_eq!(*seen.last().unwrap(), MIN_SEND_WINDOW);
    }

    #[test]
    fn a_long_fat_path_keeps_the_largest_window() {
        // 1 Gbit/s × 100 ms: 12.5 MB per round trip.
        let seen = drive(125e6, Duration::from_millis(100), 5.0);
        assert!(seen.iter().all(|&w| w == MAX_SEND_WINDOW), "{seen:?}");
    }

    #[test]
    fn a_long_lossy_path_gets_headroom_over_its_bdp() {
        // 100 Mbit/s × 200 ms: 2.5 MB per round trip.
        let seen = drive(12.5e6, Duration::from_millis(200), 10.0);
        let last = *seen.last().unwrap();
        assert!((9_000_000..=11_000_000).contains(&last), "{last}");
    }

    #[test]
    fn a_window_limited_connection_grows_out_of_it() {
        let rtt = Duration::from_millis(100);
        let mut w = SendWindow::default();
        let t0 = Instant::now();
        w.update(t0, 0, rtt);
        // A stall: nothing sent for a while halves the window each round trip.
        let mut t = t0;
        for _ in 0..4 {
            t += rtt;
            w.update(t, 0, rtt);
        }
        assert_eq!(w.window(), MIN_SEND_WINDOW);
        // Sending a whole window per round trip means the window is the limit.
        t += rtt;
        assert_eq!(
            w.update(t, MIN_SEND_WINDOW, rtt),
            Some((HEADROOM as u64 * MIN_SEND_WINDOW).min(MAX_SEND_WINDOW))
        );
    }

    #[test]
    fn measures_over_at_least_a_round_trip_and_ignores_small_changes() {
        let rtt = Duration::from_millis(50);
        let mut w = SendWindow::default();
        let t0 = Instant::now();
        assert_eq!(w.update(t0, 0, rtt), None);
        assert_eq!(w.update(t0 + rtt / 2, 1 << 30, rtt), None);
        // 30 MiB per round trip wants 120 MiB: already at the largest.
        assert_eq!(w.update(t0 + rtt, 30 << 20, rtt), None);
        assert_eq!(w.window(), MAX_SEND_WINDOW);
        // 7.5 MiB per round trip wants 30 MiB: within an eighth of 32 MiB.
        assert_eq!(w.update(t0 + 2 * rtt, (30 << 20) + (15 << 19), rtt), None);
    }
}
