//! The controller against a simulated bottleneck: a FIFO link with a rate, a tail-drop
//! queue, a one-way delay and random loss, driven the way quinn drives a controller (its
//! pacer sends at 1.25 × window / smoothed RTT; loss is declared three packets later).

use super::*;

const PKT: u64 = 1400;

struct Path {
    /// Bottleneck rate over time: (from second, bytes per second).
    rates: Vec<(f64, f64)>,
    delay: f64,
    queue_s: f64,
    loss: f64,
}

impl Path {
    fn rate_at(&self, t: f64) -> f64 {
        self.rates
            .iter()
            .rev()
            .find(|(from, _)| t >= *from)
            .expect("rate")
            .1
    }
}

#[derive(Default)]
struct Flow {
    /// Delivered bytes per whole second of the run.
    delivered: Vec<u64>,
    /// Packets sent and dropped at the queue per whole second.
    sent: Vec<u64>,
    drops: Vec<u64>,
}

/// Runs one flow for `secs` and returns what it delivered.
fn simulate(path: &Path, secs: f64, seed: u64) -> Flow {
    let t0 = Instant::now();
    let at = |t: f64| t0 + Duration::from_secs_f64(t);
    let mut cc = Core::new(t0, PKT);
    let mut rng = seed | 1;
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let n = secs.ceil() as usize + 1;
    let mut flow = Flow {
        delivered: vec![0; n],
        sent: vec![0; n],
        drops: vec![0; n],
    };
    // (packet number, sent at, ACK arrives at or None if lost)
    let mut outstanding: VecDeque<(u64, f64, Option<f64>)> = VecDeque::new();
    let mut in_flight = 0u64;
    let mut link_free = 0.0f64;
    let mut srtt: Option<f64> = None;
    let mut next_pn = 0u64;
    let (mut tokens, mut last_refill) = (10.0 * PKT as f64, 0.0f64);
    let mut now = 0.0f64;
    while now < secs {
        // Pacer: tokens at 1.25 × window / srtt, a burst of at most 10 packets.
        let window = cc.window();
        let rtt = srtt.unwrap_or(0.333);
        let pace = 1.25 * window as f64 / rtt;
        tokens = (tokens + (now - last_refill) * pace).min(10.0 * PKT as f64);
        last_refill = now;
        let next_send = if in_flight + PKT > window {
            f64::INFINITY
        } else if tokens >= PKT as f64 {
            now
        } else {
            now + (PKT as f64 - tokens) / pace
        };
        let next_ack = outstanding
            .iter()
            .find_map(|&(_, _, a)| a)
            .unwrap_or(f64::INFINITY);
        let oldest_lost = outstanding
            .front()
            .filter(|o| o.2.is_none())
            .map(|o| o.1 + 1.125 * rtt)
            .unwrap_or(f64::INFINITY);
        let t = next_send.min(next_ack).min(oldest_lost);
        assert!(t.is_finite(), "the flow stalled at {now}");
        now = t.max(now);
        if now == next_send {
            tokens -= PKT as f64;
            let pn = next_pn;
            next_pn += 1;
            cc.on_sent(pn);
            in_flight += PKT;
            flow.sent[now as usize] += 1;
            let rate = path.rate_at(now);
            let backlog = (link_free - now).max(0.0) * rate;
            let ack = if backlog + PKT as f64 > rate * path.queue_s {
                flow.drops[now as usize] += 1;
                None
            } else {
                link_free = link_free.max(now) + PKT as f64 / rate;
                (random() >= path.loss).then_some(link_free + 2.0 * path.delay)
            };
            outstanding.push_back((pn, now, ack));
        } else if now == next_ack {
            let i = outstanding
                .iter()
                .position(|o| o.2 == Some(now))
                .expect("acked");
            let (pn, sent, _) = outstanding.remove(i).expect("acked");
            in_flight -= PKT;
            let sample = now - sent;
            srtt = Some(srtt.map_or(sample, |s| 0.875 * s + 0.125 * sample));
            flow.delivered[now as usize] += PKT;
            cc.on_ack(at(now), at(sent), PKT, false);
            cc.on_end_acks(at(now), false, Some(pn));
            // Packet threshold: three newer packets acknowledged.
            let mut lost = 0;
            while outstanding
                .front()
                .is_some_and(|o| o.2.is_none() && o.0 + 3 <= pn)
            {
                outstanding.pop_front();
                lost += PKT;
            }
            if lost > 0 {
                in_flight -= lost;
                cc.on_loss(at(now), false, lost);
            }
        } else {
            outstanding.pop_front();
            in_flight -= PKT;
            cc.on_loss(at(now), false, PKT);
        }
    }
    flow
}

fn mbit(bytes: f64) -> f64 {
    bytes * 8.0 / 1e6
}

/// Share of the packets sent in seconds `from..to` that the queue dropped.
fn drops(flow: &Flow, from: usize, to: usize) -> f64 {
    let d: u64 = flow.drops[from..to].iter().sum();
    let s: u64 = flow.sent[from..to].iter().sum();
    d as f64 / s as f64
}

/// Mean delivered Mbit/s over whole seconds `from..to`.
fn goodput(flow: &Flow, from: usize, to: usize) -> f64 {
    mbit(flow.delivered[from..to].iter().sum::<u64>() as f64) / (to - from) as f64
}

#[test]
fn long_lossy_path_is_filled_without_overflowing_its_queue() {
    // 200 ms, 100 Mbit/s, 2 % random loss, a queue of 100 ms: the bench's "long" path.
    let path = Path {
        rates: vec![(0.0, 12.5e6)],
        delay: 0.1,
        queue_s: 0.1,
        loss: 0.02,
    };
    let flow = simulate(&path, 30.0, 7);
    let rate = goodput(&flow, 10, 30);
    // The link delivers 98 Mbit/s of what it carries.
    assert!(rate > 0.9 * 98.0, "goodput {rate:.1} Mbit/s");
    let d = drops(&flow, 10, 30);
    assert!(d < 0.01, "{:.1} % dropped at the queue", d * 100.0);
}

#[test]
fn high_bdp_path_is_filled() {
    // 1 Gbit/s x 100 ms, no loss.
    let path = Path {
        rates: vec![(0.0, 125e6)],
        delay: 0.05,
        queue_s: 0.1,
        loss: 0.0,
    };
    let flow = simulate(&path, 8.0, 3);
    let rate = goodput(&flow, 3, 8);
    assert!(rate > 900.0, "goodput {rate:.0} Mbit/s");
    let d = drops(&flow, 3, 8);
    assert!(d < 0.01, "{:.1} % dropped at the queue", d * 100.0);
}

#[test]
fn a_halved_bottleneck_is_followed_down_and_its_queue_recovers() {
    // 50 ms path at 100 Mbit/s that drops to 50 Mbit/s after 10 s (another flow arrived,
    // or the radio got worse).
    let path = Path {
        rates: vec![(0.0, 12.5e6), (10.0, 6.25e6)],
        delay: 0.025,
        queue_s: 0.05,
        loss: 0.0,
    };
    let flow = simulate(&path, 25.0, 11);
    let before = goodput(&flow, 5, 10);
    let after = goodput(&flow, 15, 25);
    assert!(before > 90.0, "before {before:.1} Mbit/s");
    assert!(after > 45.0, "after {after:.1} Mbit/s");
    // Once adapted it stops overflowing the queue.
    let d = drops(&flow, 15, 25);
    assert!(d < 0.01, "{:.1} % dropped at the queue", d * 100.0);
}

#[test]
fn loss_well_above_random_ends_startup() {
    let now = Instant::now();
    let mut cc = Core::new(now, PKT);
    let rtt = Duration::from_millis(50);
    let mut t = now;
    let mut pn = 0;
    // Round trips of 20 packets with 8 of them lost: congestion, not noise.
    for _ in 0..2 {
        for _ in 0..20 {
            cc.on_sent(pn);
            pn += 1;
        }
        t += rtt;
        for i in 0..12 {
            cc.on_ack(t, t - rtt, PKT, false);
            cc.on_end_acks(t, false, Some(pn - 20 + i));
        }
        cc.on_loss(t, false, 8 * PKT);
        cc.on_end_acks(t, false, Some(pn - 1));
    }
    assert!(!cc.in_startup());
    assert!(cc.bandwidth() > 0.0);
}

#[test]
fn random_loss_does_not_end_startup() {
    let now = Instant::now();
    let mut cc = Core::new(now, PKT);
    let rtt = Duration::from_millis(50);
    let mut t = now;
    let mut pn = 0;
    for _ in 0..6 {
        let n = cc.window() / PKT;
        for _ in 0..n {
            cc.on_sent(pn);
            pn += 1;
        }
        t += rtt;
        let lost = n / 50;
        for i in 0..n - lost {
            cc.on_ack(t, t - rtt, PKT, false);
            cc.on_end_acks(t, false, Some(pn - n + i));
        }
        cc.on_loss(t, false, lost * PKT);
    }
    assert!(cc.in_startup());
    assert!(cc.window() > 20 * initial_window(PKT));
}

#[test]
fn persistent_congestion_starts_over() {
    let now = Instant::now();
    let mut cc = Core::new(now, PKT);
    cc.on_sent(0);
    cc.on_ack(now + Duration::from_millis(10), now, 100 * PKT, false);
    cc.on_end_acks(now + Duration::from_millis(10), false, Some(0));
    assert!(cc.window() > initial_window(PKT));
    cc.on_loss(now + Duration::from_secs(1), true, PKT);
    assert_eq!(cc.window(), initial_window(PKT));
    assert!(cc.in_startup());
}

#[test]
fn windowed_min_forgets_after_two_epochs() {
    let now = Instant::now();
    let mut m = WindowedMin::default();
    m.update(now, Duration::from_millis(10));
    m.update(now + MIN_RTT_EPOCH, Duration::from_millis(50));
    assert_eq!(m.get(), Some(Duration::from_millis(10)));
    m.update(now + 2 * MIN_RTT_EPOCH, Duration::from_millis(60));
    assert_eq!(m.get(), Some(Duration::from_millis(50)));
}
