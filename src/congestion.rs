//! Congestion control: a rate-based controller for quinn, sized for quinn's pacer.
//!
//! quinn paces at 1.25 × window / smoothed RTT: the window sets both how much may be in
//! flight and how fast it leaves. quinn's BBR port keeps BBR's window of 2 × the
//! bandwidth-delay product (BDP), which BBR itself only uses as a cap while it paces at
//! the measured rate; under quinn's pacer it sends at about 2.5 × the bottleneck. On a
//! 200 ms, 100 Mbit/s path whose bottleneck had no buffer to spare, that lost 55 % of all
//! packets (the path itself lost 2 %), and the transfer waited behind the holes.
//!
//! [`Pace`] measures what BBR measures (the delivery rate per round trip, max-filtered, and
//! the windowed minimum RTT) and sets the window to what should be in flight: about one
//! BDP, 10 % more for a small queue at the bottleneck, cycling a round of 25 % more to find
//! new bandwidth and a round under one BDP to drain the queue and see the true minimum RTT.
//! Random loss is not taken for congestion: a round only counts as congested when more
//! than [`CONGESTED_LOSS`] of it is lost, and then the bandwidth estimate falls to what
//! that round delivered (in startup, whose early rounds are a few dozen packets: when it
//! lost significantly more than the rounds before it). Startup doubles what is in flight
//! each round trip (quinn's pacer needs the window to grow by 1.25 x each acknowledged
//! byte for that) until ACKs show a queue; what it sent into the full queue before then
//! is lost a round trip later, and those losses are its overshoot, not a congested round
//! (bench/RESULTS.md, "Leaving startup on the long path"). For the round trip after it, a
//! byte goes out for each byte acknowledged, less the drain round's share (packet
//! conservation, `Core::conserve`): the window alone would send nothing until startup's
//! excess had left, and the link would idle a round trip later.
//!
//! A policer (a token bucket that drops instead of queueing: ISP plans, `nft limit`)
//! builds no queue, so nothing but the window holds the sender back; on a short path the
//! window's allowances are many times the BDP (at 0.1 ms RTT quinn's pacer then ran at
//! ~56 × the bandwidth estimate and 91 % of the packets were lost). A round that loses
//! more than `CAP_LOSS` (5 %) therefore caps what may be in flight a little below the
//! share of the window that got through, as BBRv2's `inflight_hi` does; the cap grows
//! back while rounds stay clean. Unlike BBRv2's, the cap must earn its keep: random loss
//! (Wi-Fi, LTE) is as high under it as above it, so a lossy round under the cap that
//! loses more than three quarters as much as the round that set it lifts it, and none is
//! set for `CAP_REST_ROUNDS` (a cap kept against 5 % random loss took 50 ms × 100 Mbit/s
//! down to 4.5 Mbit/s). Below a
//! millisecond the cap's floor (the 16 packets the peer's ACK rule needs) still lets ~20 %
//! be dropped. Figures: bench/RESULTS.md, "Policed paths".
//!
//! A path whose delay jitters (Wi-Fi and LTE links wait for the radio, and the packets
//! behind one that waits wait with it) shows runs of long RTT samples without a queue of
//! ours, and holds what is in flight longer than the minimum RTT. Startup took such runs
//! for its queue and left at a few Mbit/s, and a window of the minimum RTT's BDP then
//! delivered less than the rate it was sized for, so the estimate never grew back (a 50 ms,
//! 100 Mbit/s path with 0-20 ms more each way: 21-54 % of its rate for 50 MiB, simulated).
//! [`Jitter`] measures the delay: startup's queue test wants a rise above twice what its
//! rounds showed, and the window allows for what the rounds after a drain show above the
//! minimum RTT, once a round's samples have spread about their own minimum. A queue that
//! another flow keeps raises a round's samples alike, so it alone does not turn that on:
//! allowed for, it held two of our flows at 2 : 1. Figures: bench/RESULTS.md, "Delay
//! jitter".
//!
//! A path this host sent over before can start from what it delivered then ([`Remembered`]):
//! careful resume (RFC 9959). Startup then leaps to half the remembered bandwidth-delay
//! product, once the first ACK frames' RTT says the path is the one remembered, and doubles
//! on from there up to the remembered rate's window (`Core::try_leap`); a leap that
//! overflows a queue ends startup as any congested startup round does, at what the round
//! delivered. Figures: bench/RESULTS.md, "Startup from a remembered rate".
//!
//! [`Core`] holds that logic without quinn's types, for tests; the
//! [`quinn::congestion::Controller`] impl is a thin shell around it.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Packets per acknowledgement the peer is asked for (QUIC's ACK frequency extension, set in
/// [`crate::quic::transport_config`]). Only the newest packet of an ACK frame was
/// acknowledged at once; the others waited up to this many packets for it, so their RTT
/// samples carry that wait and the window has to cover it.
pub const ACK_EVERY: u32 = 8;
/// Share of a round's packets lost above which the round counts as congested. Random
/// loss on real paths stays well below (the bench's worst path loses 2 %); a queue
/// overflowing under our own probe or another flow's load goes above it.
pub const CONGESTED_LOSS: f64 = 0.15;
/// In-flight data beyond the BDP that the window allows (the queue we may keep).
const HEADROOM: f64 = 1.1;
/// Added to the minimum RTT when sizing the window: acknowledgements come in bursts
/// (delayed ACKs, a receiver busy on a loaded CPU), and on a LAN with a round trip of
/// tens of microseconds a window of exactly one BDP would stall between them.
const ACK_ALLOWANCE: Duration = Duration::from_millis(4);
/// Share of a round's packets lost above which what may be in flight is capped at what got
/// through (BBRv2's `inflight_hi`, whose threshold is 2 %). Above the bench's random loss
/// (1-2 %), below what a policer drops when the window lets 10 % too much through.
const CAP_LOSS: f64 = 0.05;
/// Room the cap leaves below what got through, for the policer's bucket to refill.
const CAP_MARGIN: f64 = 0.9;
/// Growth of that cap per clean round (BBRv2 probes its `inflight_hi` up likewise).
const CAP_GROWTH: f64 = 1.03;
/// A cap earns its keep only while every lossy round under it loses less than this share
/// of what the round that set it lost: a policer's loss falls with what is in flight,
/// random loss (Wi-Fi, LTE) does not, and a cap kept against it shrank the rate to nothing
/// (bench/RESULTS.md, "Policed paths"). Not a half: the cap grows 3 % a clean round, so
/// under a policer it overshoots now and then, and such rounds lost 50-67 % of what the
/// first one did; each lift then flooded the policer for [`CAP_REST_ROUNDS`] (simulated
/// with quinn's bursts and ACKs, 2.3 ms: 25 % lost at a half, 4 % at three quarters).
/// Random loss stays above three quarters of itself from round to round.
const CAP_HELPS: f64 = 0.75;
/// Rounds without a cap after one that did not help.
const CAP_REST_ROUNDS: u64 = 30;
/// Window gains of the probing cycle, one per round trip: probe up, drain, cruise. As
/// the window caps what is in flight, any window under one BDP (0.85 × [`HEADROOM`])
/// empties the queue within the round; BBR's 0.75, made for pacing, cost a fifth of a
/// round's data on the 200 ms bench path.
const CYCLE: [f64; 8] = [1.25, 0.85, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Round trips the bandwidth estimate remembers its maximum for.
const BW_ROUNDS: usize = 10;
/// Window growth per byte acknowledged in startup. quinn paces at 1.25 x window / smoothed
/// RTT, so a window that grows by each byte acknowledged sends only ~1.84 x as much each
/// round trip (the rate r(t) = 1.25 r(t - RTT) / RTT integrated over a round: x e^x = 1.25);
/// growing it by 1.25 x each byte restores TCP's and BBR's doubling (x e^x = 1.5625).
const STARTUP_GROWTH: f64 = 1.25;
/// Packets a startup round must have sent before its losses can say that a queue
/// overflowed: more than the first flight after the handshake, which the initial window
/// holds to ten. That flight is lost whole when the handshake's last packet is: the peer
/// processes no 1-RTT packet until its handshake is complete (quinn-proto drops them), so
/// none of them is acknowledged. Taken for congestion, such a round ended startup at a few
/// hundred kbit/s and set a cap of a few packets, which held the bench's `long50` at 7-13
/// Mbit/s (65-67 otherwise) in three of its fourteen first copies (bench/RESULTS.md, "A
/// stall on `long50`"). A path whose queue overflows at fewer packets (a BDP and its queue
/// under ~23 KB) shows it a round later.
const STARTUP_ROUND_PACKETS: u64 = 2 * ACK_EVERY as u64;
/// Startup ends once the delivery rate grew less than this factor for [`FULL_BW_ROUNDS`].
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;
/// Startup ends after this many ACK frames in a row whose newest packet's RTT exceeds the
/// minimum RTT by an eighth of it, clamped to this range. (The older packets an ACK covers
/// waited for it at the receiver: their samples show [`ACK_EVERY`]'s wait, not a queue.)
const STARTUP_RTT_SAMPLES: u32 = 8;
const STARTUP_RTT_RISE: (Duration, Duration) =
    (Duration::from_millis(4), Duration::from_millis(16));
/// ACK frames a round needs before the spread of their RTTs says anything about the path's
/// delay jitter ([`Jitter`]).
const JITTER_FRAMES: u32 = 4;
/// Probing cycles whose least jitter the window allows for ([`Jitter`]).
const JITTER_CYCLES: usize = 3;
/// Half the span the minimum RTT is taken over: a route change shows within twice this.
const MIN_RTT_EPOCH: Duration = Duration::from_secs(5);
/// Smallest window, in packets.
const MIN_PACKETS: u64 = 4;

/// Share of the remembered bandwidth-delay product a resumed startup leaps to: RFC 9959's
/// half, so that a path whose capacity has since halved (another flow on it) is not
/// overrun, and its queue is what tells startup the rest.
const LEAP: f64 = 0.5;
/// ACK frames a remembered rate waits for an RTT sample near its own.
const RESUME_FRAMES: u32 = 4;
/// Share of the remembered rate a round at the ceiling must deliver before its lack of a
/// queue says the path holds more (the rate varies a little from round to round).
const CEILING_MET: f64 = 0.95;
/// A remembered rate applies while the minimum RTT of the first ACK frames is within these
/// factors of the remembered one; outside them the path is another one (RFC 9959's test is the
/// lower bound: a far shorter RTT makes the same rate a far larger window; a far longer one
/// is another route, or a queue someone else keeps full).
const SAME_PATH_RTT: (f64, f64) = (0.5, 2.0);

/// What a path delivered when a connection over it last ran: its controller's bandwidth
/// estimate and minimum RTT ([`Pace::remembered`]), for the next connection's startup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Remembered {
    /// Bytes per second.
    pub rate: f64,
    /// The minimum RTT the rate was measured at.
    pub min_rtt: Duration,
}

/// Rounds after startup, not held back by the application, before a rate is worth
/// remembering: a small job leaves startup on a short burst and measures little of the path,
/// and would overwrite what a large one found.
const REMEMBER_AFTER: u32 = 8;

/// Builds a [`Pace`] controller per connection; give it to
/// [`quinn::TransportConfig::congestion_controller_factory`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PaceConfig {
    /// Start from what this path delivered before (careful resume; see the module doc).
    pub resume: Option<Remembered>,
}

impl ControllerFactory for PaceConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let mut core = Core::new(now, current_mtu.into());
        core.resume = self.resume;
        Box::new(Pace(core))
    }
}

/// The quinn-facing controller; see the module documentation.
#[derive(Clone, Debug)]
pub struct Pace(Core);

impl Pace {
    /// What the path delivered, for the next connection over it; `None` while startup has
    /// not yet found the path's rate (a small job, or a receiver that only acknowledged).
    pub fn remembered(&self) -> Option<Remembered> {
        self.0.remembered()
    }
}

impl Controller for Pace {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, last_packet_number: u64) {
        self.0.on_sent(last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        self.0.on_ack(now, sent, bytes, app_limited);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.0
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.0
            .on_loss(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.0.mtu = new_mtu.into();
    }

    fn window(&self) -> u64 {
        self.0.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.0.window();
        m.pacing_rate = Some((self.0.bandwidth() * 8.0) as u64);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        initial_window(self.0.mtu)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// RFC 9002's initial window.
fn initial_window(mtu: u64) -> u64 {
    (10 * mtu).min((2 * mtu).max(14_720))
}

/// The controller's state and rules, free of quinn's types.
#[derive(Clone, Debug)]
pub struct Core {
    mtu: u64,
    window: u64,
    startup: bool,
    /// The round trip ends when a packet numbered this or higher is acknowledged.
    round_end: u64,
    last_sent: u64,
    round_start: Instant,
    round_acked: u64,
    round_lost: u64,
    round_app_limited: bool,
    /// The most in flight during the round (before each ACK frame's acknowledgements), and
    /// the window the round started with: a startup round that never filled half of it
    /// had nothing more to send, whatever quinn's flag says ([`Core::end_round`]).
    round_inflight: u64,
    round_window: u64,
    /// ACK frames in a row that show a queue (startup only).
    queued_samples: u32,
    /// The RTT of the newest packet acknowledged so far in the current ACK frame.
    frame_rtt: Option<Duration>,
    /// Delivery rates (bytes/s) of the last [`BW_ROUNDS`] round trips.
    rates: VecDeque<f64>,
    full_bw: f64,
    full_bw_rounds: u32,
    min_rtt: WindowedMin,
    cycle: usize,
    /// Packets up to this number were sent before the last reaction to congestion took
    /// effect: their losses do not call for another.
    reacted_below: u64,
    /// Bytes in flight a lossy round showed the path drops beyond (None: no cap).
    inflight_cap: Option<u64>,
    /// As `reacted_below`, for the cap.
    capped_below: u64,
    /// Share of packets lost in the round that set the cap.
    cap_set_at_loss: f64,
    /// Rounds ended so far, and the first in which a cap may be set again.
    rounds: u64,
    cap_rest_until: u64,
    /// When startup ended: packets sent before were sent under its growing window, and
    /// their losses are its overshoot, already answered by leaving it.
    startup_ended: Option<Instant>,
    /// Bytes of the current round lost from that overshoot (for the trace).
    round_overshoot: u64,
    /// Bytes acknowledged and lost in startup's rounds before the current one.
    startup_acked: u64,
    startup_lost: u64,
    /// A remembered rate not yet tested against the RTT ([`Core::try_leap`]), and the ACK
    /// frames it was tried on.
    resume: Option<Remembered>,
    resume_frames: u32,
    /// After a leap, the window startup may grow to (the remembered rate's) and that rate,
    /// until a round at it shows no queue (see [`Core::try_leap`]).
    ceiling: Option<(u64, f64)>,
    /// Rounds in a row that ended with the window at the ceiling.
    ceiling_rounds: u32,
    /// Whether an ACK frame of this round showed a queue (startup's test).
    round_queued: bool,
    /// Rounds since startup that the application did not hold back.
    cruised: u32,
    /// Bytes acknowledged in the current ACK frame.
    frame_acked: u64,
    /// The round startup ended in is not over until a packet numbered this or higher is
    /// acknowledged; until then the window holds what is in flight ([`Core::conserve`]).
    conserve_until: Option<u64>,
    /// That hold (0: none).
    conserved: u64,
    /// The RTTs of this round's ACK frames, and the path's delay jitter they showed.
    round_rtts: RoundRtts,
    jitter: Jitter,
}

impl Core {
    /// A controller for a new connection.
    pub fn new(now: Instant, mtu: u64) -> Core {
        Core {
            mtu,
            window: initial_window(mtu),
            startup: true,
            round_end: 0,
            last_sent: 0,
            round_start: now,
            round_acked: 0,
            round_lost: 0,
            round_app_limited: false,
            round_inflight: 0,
            round_window: initial_window(mtu),
            queued_samples: 0,
            frame_rtt: None,
            rates: VecDeque::with_capacity(BW_ROUNDS + 1),
            full_bw: 0.0,
            full_bw_rounds: 0,
            min_rtt: WindowedMin::default(),
            cycle: 0,
            reacted_below: 0,
            inflight_cap: None,
            capped_below: 0,
            cap_set_at_loss: 0.0,
            rounds: 0,
            cap_rest_until: 0,
            startup_ended: None,
            round_overshoot: 0,
            startup_acked: 0,
            startup_lost: 0,
            resume: None,
            resume_frames: 0,
            ceiling: None,
            ceiling_rounds: 0,
            round_queued: false,
            cruised: 0,
            frame_acked: 0,
            conserve_until: None,
            conserved: 0,
            round_rtts: RoundRtts::default(),
            jitter: Jitter::default(),
        }
    }

    /// A controller for a new connection over a path that delivered `r` before.
    pub fn resuming(now: Instant, mtu: u64, r: Remembered) -> Core {
        Core {
            resume: Some(r),
            ..Core::new(now, mtu)
        }
    }

    /// What the path delivered, once startup has found its rate and `REMEMBER_AFTER` (8)
    /// rounds the application did not hold back confirmed it.
    pub fn remembered(&self) -> Option<Remembered> {
        let rate = self.bandwidth();
        match self.min_rtt.get() {
            Some(min_rtt) if self.cruised >= REMEMBER_AFTER && rate > 0.0 => {
                Some(Remembered { rate, min_rtt })
            }
            _ => None,
        }
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.window.max(self.conserved).max(MIN_PACKETS * self.mtu)
    }

    /// The bottleneck rate estimate in bytes per second (0 before the first round trip).
    pub fn bandwidth(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }

    /// Still doubling towards the bottleneck rate.
    pub fn in_startup(&self) -> bool {
        self.startup
    }

    /// A packet numbered `pn` went out.
    pub fn on_sent(&mut self, pn: u64) {
        self.last_sent = pn;
    }

    /// A packet of `bytes` sent at `sent` was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        self.round_acked += bytes;
        self.frame_acked += bytes;
        self.round_app_limited |= app_limited;
        let rtt = now.saturating_duration_since(sent);
        self.min_rtt.update(now, rtt);
        // quinn reports a frame's packets oldest first: the last one is the newest.
        self.frame_rtt = Some(rtt);
        if self.startup {
            self.window += (bytes as f64 * STARTUP_GROWTH) as u64;
            if let Some((c, _)) = self.ceiling {
                self.window = self.window.min(c);
            }
        }
    }

    /// Careful resume's leap, tried at the end of each of the first ACK frames: half the
    /// remembered BDP at today's RTT, if that RTT says the path is the remembered one.
    /// Startup goes on from there, so its queue test, not the memory, finds today's rate;
    /// but it doubles no higher than the window the remembered rate asks for (the
    /// ceiling) until a whole round at that window shows no queue ([`Core::lift_ceiling`]).
    /// Doubling past it, startup overshot by as much as from a cold start (2.3 MB lost on
    /// the bench's `long` path, bench/RESULTS.md, "Startup from a remembered rate"): its
    /// queue test answers a round trip late, by when it has sent twice what the path
    /// holds. A path that has more than it had shows no queue at the ceiling, and startup
    /// doubles on.
    ///
    /// The RTT is the smallest sample of the ACK frames so far: a sample only ever runs
    /// long (an ACK lost, a handshake packet sent again), and one frame's sample of 1.2 s on
    /// the 200 ms bench path, its first, had cost the leap (bench/RESULTS.md). Too long a
    /// minimum waits for the next frame, up to [`RESUME_FRAMES`]; too short ends the try.
    fn try_leap(&mut self) {
        let (Some(r), Some(rtt)) = (self.resume, self.min_rtt.get()) else {
            return;
        };
        self.resume_frames += 1;
        let ratio = rtt.as_secs_f64() / r.min_rtt.as_secs_f64().max(1e-6);
        let same = (SAME_PATH_RTT.0..=SAME_PATH_RTT.1).contains(&ratio);
        if !same && ratio > SAME_PATH_RTT.1 && self.resume_frames < RESUME_FRAMES {
            return;
        }
        self.resume = None;
        let window = (LEAP * r.rate * rtt.as_secs_f64()) as u64;
        tracing::info!(
            rate_mbit = r.rate * 8e-6,
            remembered_rtt_ms = r.min_rtt.as_secs_f64() * 1e3,
            rtt_ms = rtt.as_secs_f64() * 1e3,
            same,
            window,
            "resume"
        );
        if same && self.startup {
            self.window = self.window.max(window);
            let ceiling = self.bdp(r.rate, rtt) * HEADROOM;
            self.ceiling = Some(((ceiling as u64).max(self.window), r.rate));
        }
    }

    /// Startup's queue test on the ACK frame just processed: packets have started to wait
    /// in a queue, so the window has passed the path's BDP. Leaving startup now, not on the
    /// losses of an overflowing queue a round trip later (HyStart++'s idea, RFC 9406),
    /// keeps startup from throwing away up to a BDP of packets.
    fn startup_queue_test(&mut self, now: Instant) {
        let Some(rtt) = self.frame_rtt.take() else {
            return;
        };
        self.round_rtts.add(rtt);
        if !self.startup {
            return;
        }
        let min = self.min_rtt.get().unwrap_or(rtt);
        // A path whose delay jitters (Wi-Fi, LTE) shows runs of long samples without a
        // queue of ours: the rise has to stand out of them, and until a round has shown
        // how far they run there is nothing to test against (runs of 0-20 ms each way ended
        // startup at 3 Mbit/s on the bench). A leap is tested at once: it can overflow a
        // queue in its first round, and that round would show it as jitter.
        let leapt = self.resume.is_some() || self.ceiling.is_some();
        let Some(jitter) = self.jitter.startup.or(leapt.then_some(Duration::ZERO)) else {
            return;
        };
        let rise = (min / 8).clamp(STARTUP_RTT_RISE.0, STARTUP_RTT_RISE.1) + jitter * 2;
        let queued = rtt >= min + rise;
        self.queued_samples = if queued { self.queued_samples + 1 } else { 0 };
        self.round_queued |= queued;
        if self.queued_samples >= STARTUP_RTT_SAMPLES {
            // Acknowledgements already come at the bottleneck's pace: this round so far
            // measures it.
            let elapsed = now
                .saturating_duration_since(self.round_start)
                .as_secs_f64();
            if elapsed > 0.0 {
                self.push_rate(self.round_acked as f64 / elapsed);
            }
            self.leave_startup(now);
        }
    }

    /// `lost_bytes` were declared lost, the newest of them sent at `sent`; `persistent` when
    /// everything over several round trips was.
    pub fn on_loss(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        // Startup's overshoot reaches the loss detector a round trip or two after startup
        // ended on it. Counted as the rounds' own congestion, it clamped the bandwidth
        // estimate to what the overflowing round delivered (60 Mbit/s on the bench's 100 Mbit/s
        // `long` path) and took ten round trips to grow back (bench/RESULTS.md, "Leaving
        // startup on the long path").
        if self.startup_ended.is_some_and(|end| sent <= end) {
            self.round_overshoot += lost_bytes;
        } else {
            self.round_lost += lost_bytes;
        }
        // Lost packets left the path without a place for a new one in it.
        self.conserved = self.conserved.saturating_sub(lost_bytes);
        if persistent {
            // The path was gone for a while: whatever it carries now is unknown.
            *self = Core::new(now, self.mtu);
        }
    }

    /// One ACK frame was processed; `largest` is the highest packet number it acknowledged
    /// and `in_flight` the bytes still in flight (lost ones among them until declared so).
    pub fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest: Option<u64>,
    ) {
        self.round_inflight = self.round_inflight.max(in_flight + self.frame_acked);
        self.try_leap();
        self.startup_queue_test(now);
        self.end_acks(now, app_limited, largest);
        self.conserve(in_flight, largest);
        self.frame_acked = 0;
    }

    fn end_acks(&mut self, now: Instant, app_limited: bool, largest: Option<u64>) {
        if largest.is_none_or(|pn| pn < self.round_end) {
            return;
        }
        let elapsed = now
            .saturating_duration_since(self.round_start)
            .as_secs_f64();
        if elapsed > 0.0 && self.round_acked > 0 {
            self.end_round(now, self.round_acked as f64 / elapsed, app_limited);
        }
        self.round_end = self.last_sent + 1;
        self.round_start = now;
        self.round_acked = 0;
        self.round_lost = 0;
        self.round_overshoot = 0;
        self.round_app_limited = false;
        self.round_inflight = 0;
        self.round_window = self.window();
        self.round_queued = false;
        self.round_rtts = RoundRtts::default();
    }

    fn end_round(&mut self, now: Instant, rate: f64, app_limited: bool) {
        let lost = self.round_lost as f64;
        let share_lost = lost / (lost + self.round_acked as f64);
        // Losses of packets sent before the last reaction are that congestion's tail
        // (one reaction per round trip, as TCP's recovery has it).
        let lossy = self.round_lost >= 3 * self.mtu;
        let congested = if self.startup {
            self.startup_overflows(lossy)
        } else {
            lossy && share_lost > CONGESTED_LOSS && self.round_end > self.reacted_below
        };
        if congested {
            self.reacted_below = self.last_sent + 1;
        }
        // Startup's window ignores the cap, so a cap set by one of its rounds is stale by
        // the time it applies: one set by a startup round of 150 packets that lost eight
        // (random loss, 2 %) held a 100 Mbit/s x 200 ms path to 15 Mbit/s. Only a round
        // that ends startup on congestion says something about the path.
        let cut = lossy
            && share_lost > CAP_LOSS
            && self.round_end > self.capped_below
            && (!self.startup || congested);
        if cut {
            self.capped_below = self.last_sent + 1;
        }
        // quinn's flag says only whether its last look found nothing to send, and sending
        // an ACK of the peer's packets clears it: rounds of the manifest's and the plan's
        // round trips, a few packets each, come as not held back (traced on `long50`).
        // Three in a row (a lost control frame makes more) would pass for startup's
        // plateau and end it at a few hundred kbit/s (bench/RESULTS.md, "A stall on
        // `long50`").
        let unfilled = self.startup && self.round_inflight * 2 < self.round_window;
        let limited = app_limited || self.round_app_limited || unfilled;
        self.measure_jitter(limited);
        tracing::trace!(
            rate_mbit = rate * 8e-6,
            acked = self.round_acked,
            lost = self.round_lost,
            overshoot = self.round_overshoot,
            congested,
            limited,
            startup = self.startup,
            window = self.window,
            cap = self.inflight_cap.unwrap_or_default(),
            bw_mbit = self.bandwidth() * 8e-6,
            min_rtt_ms = self.min_rtt.get().unwrap_or_default().as_secs_f64() * 1e3,
            jitter_ms = self.jitter.allowance().as_secs_f64() * 1e3,
            "round"
        );
        if congested {
            // What the path delivered while dropping this much is what it has for us.
            for r in &mut self.rates {
                *r = r.min(rate);
            }
        }
        self.cap_inflight(cut, share_lost, limited, rate);
        // A round the application held back shows its own rate, not the path's.
        if !limited || rate > self.bandwidth() {
            self.push_rate(rate);
        }
        if self.startup {
            self.lift_ceiling(rate, limited);
            if congested {
                self.startup = false;
            } else if rate >= self.full_bw * FULL_BW_GROWTH {
                self.full_bw = rate;
                self.full_bw_rounds = 0;
            } else if !limited {
                self.full_bw_rounds += 1;
                self.startup = self.full_bw_rounds < FULL_BW_ROUNDS;
            }
            if !self.startup {
                self.leave_startup(now);
            }
            return;
        }
        if !limited {
            self.cruised = self.cruised.saturating_add(1);
        }
        self.cycle = (self.cycle + 1) % CYCLE.len();
        self.size_window();
    }

    /// This startup round, `lossy` as [`Core::end_round`] counts it, lost well more than
    /// the random loss of the ones before it: the bottleneck's buffer overflowed. Counts the
    /// round among startup's, for the next.
    ///
    /// "Well more" is three standard deviations above twice their share of lost packets,
    /// and above [`CAP_LOSS`], as a count: the early rounds are a few dozen packets, and
    /// a share alone took chance losses for congestion (4 of 25 at 5 % random loss ended
    /// startup at 1 Mbit/s on a 100 Mbit/s path, which then took over 30 s to grow;
    /// simulator, seed 13). Not [`CONGESTED_LOSS`] as after startup (nor above it, however
    /// lossy the path): a bottleneck buffer shorter than [`STARTUP_RTT_RISE`]'s queue
    /// never shows the queue test a rise, and its first overflowing round can lose well
    /// under it (10 % at 1 Gbit/s x 200 ms with 10 ms of buffer, in the simulator, whose
    /// next, doubled, round then lost 56 %: 76,000 packets).
    ///
    /// A round of fewer than [`STARTUP_ROUND_PACKETS`] says nothing either way, and is not
    /// counted: see there.
    fn startup_overflows(&mut self, lossy: bool) -> bool {
        let sent = (self.round_acked + self.round_lost) as f64 / self.mtu as f64;
        if sent < STARTUP_ROUND_PACKETS as f64 {
            return false;
        }
        let before =
            self.startup_lost as f64 / (self.startup_acked + self.startup_lost).max(1) as f64;
        self.startup_acked += self.round_acked;
        self.startup_lost += self.round_lost;
        let lost = self.round_lost as f64 / self.mtu as f64;
        let expected = sent * (2.0 * before).clamp(CAP_LOSS, CONGESTED_LOSS);
        lossy && lost > expected + 3.0 * expected.sqrt()
    }

    /// After a round that lost more than [`CAP_LOSS`] (`cut`), what may be in flight is
    /// capped at the share of the window that got through, but not below what the round
    /// delivered per minimum RTT (a round that lost nearly all, as the one after startup
    /// overshoots, would leave the link idle for many rounds); clean rounds lift the cap.
    fn cap_inflight(&mut self, cut: bool, share_lost: f64, limited: bool, rate: f64) {
        self.rounds += 1;
        if cut && self.inflight_cap.is_some() && share_lost > CAP_HELPS * self.cap_set_at_loss {
            // Under the cap about as lossy as above it: not a policer's loss.
            self.inflight_cap = None;
            self.cap_rest_until = self.rounds + CAP_REST_ROUNDS;
        } else if cut && self.rounds > self.cap_rest_until {
            if self.inflight_cap.is_none() {
                self.cap_set_at_loss = share_lost;
            }
            let min_rtt = self.min_rtt.get().unwrap_or_default().as_secs_f64();
            let delivered = rate.min(self.bandwidth()) * min_rtt;
            let through = self.window() as f64 * (1.0 - share_lost) * CAP_MARGIN;
            let cap = through.max(delivered) as u64;
            self.inflight_cap = Some(self.inflight_cap.map_or(cap, |c| c.min(cap)));
        } else if !cut && !limited && share_lost <= CAP_LOSS {
            self.inflight_cap = self.inflight_cap.map(|c| (c as f64 * CAP_GROWTH) as u64);
        }
    }

    /// What the ending round's ACK frames showed of the path's delay jitter ([`Jitter`]).
    fn measure_jitter(&mut self, limited: bool) {
        let (Some(min), Some(round_min)) = (self.min_rtt.get(), self.round_rtts.min) else {
            return;
        };
        let rtts = self.round_rtts;
        let (Some(delay), Some(spread)) = (rtts.excess(min), rtts.excess(round_min)) else {
            return;
        };
        let spread = spread >= ACK_ALLOWANCE;
        let j = &mut self.jitter;
        if self.startup {
            j.startup = Some(j.startup.map_or(delay, |d| d.min(delay)));
            j.seen = Some(j.seen.unwrap_or_default() || spread);
            return;
        }
        j.seen.get_or_insert(spread);
        if self.cycle == 2 && !limited && !std::mem::take(&mut j.after_startup) {
            j.refill.push_back(delay);
            if j.refill.len() > JITTER_CYCLES {
                j.refill.pop_front();
            }
        }
    }

    fn push_rate(&mut self, rate: f64) {
        self.rates.push_back(rate);
        if self.rates.len() > BW_ROUNDS {
            self.rates.pop_front();
        }
    }

    fn leave_startup(&mut self, now: Instant) {
        self.startup = false;
        self.startup_ended = Some(now);
        self.conserve_until = Some(self.last_sent + 1);
        self.jitter.after_startup = true;
        // Startup left a queue behind: drain it first (the cycle's probe round, first
        // until now, put 1.4 x the BDP in flight on top of the overshoot).
        self.cycle = 1;
        self.size_window();
    }

    /// Packet conservation for the round trip after startup, as TCP's recovery has it
    /// (RFC 6937's proportional rate reduction sends a share of each acknowledged byte
    /// likewise): a byte goes out for each byte acknowledged, less the drain round's share,
    /// until the first packet sent after startup is acknowledged. Startup leaves with
    /// up to twice the BDP in flight, much of it in a full queue or dropped there; a window
    /// of one BDP would send nothing until what is in flight fell under it, and a round trip
    /// later the link idled as long (37 Mbit/s delivered in that round on the bench's 100
    /// Mbit/s `long` path: bench/RESULTS.md, "Packet conservation after startup, and startup
    /// during the plan's round trip"). Dropped packets free no room when declared lost ([`Core::on_loss`]), so what is in flight
    /// falls towards the window as the queue drains, and the link stays busy meanwhile.
    fn conserve(&mut self, in_flight: u64, largest: Option<u64>) {
        let Some(until) = self.conserve_until else {
            return;
        };
        if largest.is_some_and(|pn| pn >= until) {
            self.conserve_until = None;
            self.conserved = 0;
            return;
        }
        self.conserved = in_flight + (CYCLE[1] * self.frame_acked as f64) as u64;
    }

    /// A startup round that ran at the ceiling (the whole round: the second in a row that
    /// ended there) and delivered the remembered rate (`rate`, this round's) without an ACK
    /// frame showing a queue: the path holds more than the remembered rate, and startup may
    /// double past it. (Not before it delivered that rate: the rounds after the leap are
    /// still growing into the window, and show no queue whatever the path.)
    fn lift_ceiling(&mut self, rate: f64, limited: bool) {
        let Some((c, remembered)) = self.ceiling else {
            return;
        };
        if self.window < c || limited {
            self.ceiling_rounds = 0;
            return;
        }
        self.ceiling_rounds += 1;
        if self.ceiling_rounds >= 2 && !self.round_queued && rate >= CEILING_MET * remembered {
            tracing::debug!(
                ceiling = c,
                "no queue at the remembered rate: startup goes on"
            );
            self.ceiling = None;
        }
    }

    /// Bytes in flight at `rate` over a round trip of `min_rtt`: the BDP, with what the
    /// ACKs' bursts and the packets an ACK waits for at the receiver add.
    ///
    /// On a path whose delay jitters, what is in flight waits longer than the minimum RTT,
    /// by the jitter's allowance where that is larger (see the module documentation).
    fn bdp(&self, rate: f64, min_rtt: Duration) -> f64 {
        let rtt = min_rtt + ACK_ALLOWANCE.max(self.jitter.allowance());
        rate * rtt.as_secs_f64() + (u64::from(ACK_EVERY) * self.mtu) as f64
    }

    fn size_window(&mut self) {
        let bdp = self.bdp(
            self.bandwidth(),
            self.min_rtt.get().unwrap_or(Duration::ZERO),
        );
        let window = (CYCLE[self.cycle] * HEADROOM * bdp) as u64;
        // A cap far above what the path asks for again is history.
        if self.inflight_cap.is_some_and(|c| c > 2 * window) {
            self.inflight_cap = None;
        }
        // Not so low that the peer's ACKs wait for its timer (ACK_DELAY) instead of for
        // ACK_EVERY packets. (Not the BDP either: the max-filtered rate runs above a
        // policer's, and a floor of it kept 12 % loss at 40 ms.)
        let floor = 2 * u64::from(ACK_EVERY) * self.mtu;
        self.window = self
            .inflight_cap
            .map_or(window, |c| window.min(c.max(floor)));
    }
}

/// The RTTs of one round's ACK frames (each frame's newest packet's).
#[derive(Clone, Copy, Debug, Default)]
struct RoundRtts {
    min: Option<Duration>,
    sum: Duration,
    frames: u32,
}

impl RoundRtts {
    fn add(&mut self, rtt: Duration) {
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        self.sum += rtt;
        self.frames += 1;
    }

    /// How far the round's samples ran above `min` on average; `None` for a round of too
    /// few frames to tell.
    fn excess(&self, min: Duration) -> Option<Duration> {
        (self.frames >= JITTER_FRAMES).then(|| (self.sum / self.frames).saturating_sub(min))
    }
}

/// A path's delay jitter, as the rounds' mean RTT samples ran above the minimum RTT
/// ([`Core::measure_jitter`]).
#[derive(Clone, Debug, Default)]
struct Jitter {
    /// The least of any startup round: the early rounds, before a queue of ours, see the
    /// path alone; the later ones add the queue startup builds, which the queue test must
    /// not learn to ignore. Startup's queue test wants a rise above twice this.
    startup: Option<Duration>,
    /// The last [`JITTER_CYCLES`] rounds that acknowledged what the drain round sent: our
    /// queue was empty then, so what remains is the path's (its jitter, and a queue another
    /// flow keeps). The least of them, so that another flow's passing queue (its startup)
    /// is not kept. Not the first after startup: it still carries some of startup's
    /// overshoot (72 ms on the bench's 0-20 ms each way, where the others showed 30-38).
    refill: VecDeque<Duration>,
    /// Startup ended and no refill round has been skipped since.
    after_startup: bool,
    /// Whether a round's samples spread above the round's own minimum by
    /// [`ACK_ALLOWANCE`] or more, on average (startup's rounds, or the first one after it
    /// if startup had none of [`JITTER_FRAMES`]). A queue that stands through a round
    /// raises all its samples alike; another flow of ours keeps one, and a window that
    /// allowed for it held two flows at 2 : 1 for a minute (simulator).
    seen: Option<bool>,
}

impl Jitter {
    /// What the window adds to the minimum RTT for the path's jitter.
    fn allowance(&self) -> Duration {
        if self.seen != Some(true) {
            return Duration::ZERO;
        }
        let refill = self.refill.iter().copied().min();
        refill.or(self.startup).unwrap_or_default()
    }
}

/// The minimum over the last one to two epochs of [`MIN_RTT_EPOCH`].
#[derive(Clone, Debug, Default)]
struct WindowedMin {
    epoch_start: Option<Instant>,
    current: Option<Duration>,
    previous: Option<Duration>,
}

impl WindowedMin {
    fn update(&mut self, now: Instant, sample: Duration) {
        let start = *self.epoch_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= MIN_RTT_EPOCH {
            self.previous = self.current.take();
            self.epoch_start = Some(now);
        }
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
