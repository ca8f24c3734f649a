//! Congestion control: quinn's BBR, told about packet loss only when the loss looks like
//! congestion.
//!
//! quinn's BBR (a port of BBRv1) enters "packet conservation" recovery on any loss and
//! stays there while every round trip loses something. On a long path with random loss
//! (200 ms, 2 %: ~1700 packets per round trip, ~34 of them lost) that is every round, so
//! the window stays clamped to what was just delivered and BBR never probes upwards: 74 %
//! of the link in bench/RESULTS.md. BBR's model (delivery rate and minimum RTT) needs no
//! loss signal, and BBRv2 keeps that model while reacting to loss only above a per-round
//! loss rate (2 %). [`LossFilter`] does the same on top of quinn's BBR: losses are counted
//! per measurement epoch (at least one smoothed RTT and [`EPOCH_MIN_BYTES`]) and handed
//! to BBR only when they exceed [`LOSS_THRESHOLD_PERCENT`] of what the epoch delivered.
//! ECN marks and persistent congestion always go through.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Loss above this share of an epoch's bytes is congestion; below it, noise of the path.
pub const LOSS_THRESHOLD_PERCENT: u64 = 5;
/// An epoch covers at least this many bytes (acked + lost), so a handful of packets on a
/// short path cannot turn one random loss into a high loss rate.
pub const EPOCH_MIN_BYTES: u64 = 100 * 1200;

/// Decides which losses the congestion controller hears about (sans-IO).
#[derive(Clone, Debug)]
pub struct LossFilter {
    acked: u64,
    lost: u64,
    /// `now` and `sent` of the latest loss held back, for handing on.
    latest: Option<(Instant, Instant)>,
    epoch_start: Instant,
}

/// A loss event to hand on to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Congestion {
    /// When the latest loss of the epoch was detected.
    pub now: Instant,
    /// When that packet was sent.
    pub sent: Instant,
    /// Bytes lost in the epoch.
    pub lost_bytes: u64,
}

impl LossFilter {
    /// Starts the first epoch at `now`.
    pub fn new(now: Instant) -> Self {
        LossFilter {
            acked: 0,
            lost: 0,
            latest: None,
            epoch_start: now,
        }
    }

    /// Counts delivered bytes.
    pub fn on_ack(&mut self, bytes: u64) {
        self.acked += bytes;
    }

    /// Counts lost bytes.
    pub fn on_loss(&mut self, now: Instant, sent: Instant, bytes: u64) {
        self.lost += bytes;
        self.latest = Some((now, sent));
    }

    /// At the end of a batch of acks: closes the epoch once it is long enough, and returns
    /// its losses when they were too many to be noise.
    pub fn end_of_acks(&mut self, now: Instant, srtt: Duration) -> Option<Congestion> {
        let total = self.acked + self.lost;
        if total < EPOCH_MIN_BYTES || now.saturating_duration_since(self.epoch_start) < srtt {
            return None;
        }
        let congested = self.lost * 100 > total * LOSS_THRESHOLD_PERCENT;
        let out = match (congested, self.latest) {
            (true, Some((at, sent))) => Some(Congestion {
                now: at,
                sent,
                lost_bytes: self.lost,
            }),
            _ => None,
        };
        *self = LossFilter::new(now);
        out
    }
}

/// [`ControllerFactory`] for BBR behind a [`LossFilter`].
#[derive(Debug, Default)]
pub struct LossTolerantBbr {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for LossTolerantBbr {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Filtered {
            inner: self.bbr.clone().build(now, current_mtu),
            filter: LossFilter::new(now),
            srtt: Duration::ZERO,
        })
    }
}

struct Filtered {
    inner: Box<dyn Controller>,
    filter: LossFilter,
    srtt: Duration,
}

impl Controller for Filtered {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.srtt = rtt.get();
        self.filter.on_ack(bytes);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        // Before BBR closes its own round of acks, so it sees the loss in this batch.
        if let Some(c) = self.filter.end_of_acks(now, self.srtt) {
            tracing::trace!(lost = c.lost_bytes, "loss above the noise threshold");
            self.inner
                .on_congestion_event(c.now, c.sent, false, c.lost_bytes);
        }
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // ECN marks (no bytes lost) and persistent congestion are never noise.
        if is_persistent_congestion || lost_bytes == 0 {
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        } else {
            self.filter.on_loss(now, sent, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Filtered {
            inner: self.inner.clone_box(),
            filter: self.filter.clone(),
            srtt: self.srtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u64 = 1200;

    /// Runs `rounds` round trips of `per_round` packets, losing every `nth`; returns how
    /// many congestion events were handed on and how many bytes they carried.
    fn run(rounds: u32, per_round: u64, nth: Option<u64>, rtt_ms: u64) -> (u32, u64) {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(rtt_ms);
        let mut f = LossFilter::new(t0);
        let (mut events, mut bytes) = (0, 0);
        let mut n = 0u64;
        for r in 0..rounds {
            let now = t0 + rtt * (r + 1);
            for _ in 0..per_round {
                n += 1;
                if nth.is_some_and(|k| n.is_multiple_of(k)) {
                    f.on_loss(now, now - rtt, MSS);
                } else {
                    f.on_ack(MSS);
                }
                // Acks come in batches of ten.
                if n.is_multiple_of(10) {
                    if let Some(c) = f.end_of_acks(now, rtt) {
                        events += 1;
                        bytes += c.lost_bytes;
                    }
                }
            }
        }
        (events, bytes)
    }

    #[test]
    fn random_loss_below_the_threshold_is_not_congestion() {
        // 200 ms, 100 Mbit/s: ~2000 packets per round trip, 2 % lost.
        assert_eq!(run(50, 2000, Some(50), 200), (0, 0));
        // A short path with few packets per round: one loss is not 10 %.
        assert_eq!(run(200, 10, Some(50), 1), (0, 0));
    }

    #[test]
    fn heavy_loss_is_handed_on_with_its_bytes() {
        // 10 % lost: about one report per round trip, carrying the lost bytes of every
        // closed epoch (the last one is still open).
        let (events, bytes) = run(20, 2000, Some(10), 200);
        let lost = 20 * 2000 / 10 * MSS;
        assert!(events >= 19, "{events}");
        assert!(
            bytes <= lost && bytes * 100 >= lost * 95,
            "{bytes} of {lost}"
        );
    }

    #[test]
    fn epochs_last_at_least_a_round_trip() {
        let t0 = Instant::now();
        let mut f = LossFilter::new(t0);
        for _ in 0..1000 {
            f.on_loss(t0, t0, MSS);
        }
        assert_eq!(
            f.end_of_acks(t0 + Duration::from_millis(10), Duration::from_millis(50)),
            None
        );
        let c = f
            .end_of_acks(t0 + Duration::from_millis(60), Duration::from_millis(50))
            .unwrap();
        assert_eq!(c.lost_bytes, 1000 * MSS);
        // A new epoch starts empty.
        assert_eq!(
            f.end_of_acks(t0 + Duration::from_secs(1), Duration::ZERO),
            None
        );
    }
}
