//! A flood for the p2pcopy lab: what a third host that read a ticket can aim at a peer's
//! public port.
//!
//! It mixes four kinds of datagram in turn: random junk; punch probes in p2pcopy's real
//! wire format with a random (wrong) session tag; QUIC v1 long-header Initials of 1200
//! bytes with random connection ids; and STUN Binding success responses with random
//! transaction ids whose XOR-MAPPED-ADDRESS is this host's own address. It paces itself
//! to a rate and stops by itself after a count or a time, whichever comes first.
//!
//! Usage: `p2pcopy-lab-flood IP:PORT [--pps N] [--seconds S] [--count N] [--while-pid PID]`
//! (defaults 20000 pps, 30 s, 1,000,000 datagrams; with `--while-pid`, it also stops when
//! that process has exited: the flood then covers exactly one p2pcopy run). Only lab addresses are accepted as
//! targets: 198.18.0.0/15 (the lab's "internet") and loopback.
//! Prints one line when done: what was sent, in how long, and the rate achieved.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use p2pcopy::stun::message::{encode_response, BindingResponse};
use p2pcopy::wire::{Probe, ProbeKind};

/// Hard ceilings, whatever the flags say: the flood must end by itself.
const MAX_SECONDS: f64 = 300.0;
const MAX_COUNT: u64 = 10_000_000;
const MAX_PPS: u64 = 200_000;

struct Opts {
    target: SocketAddr,
    pps: u64,
    duration: Duration,
    count: u64,
    while_pid: Option<u32>,
}

/// xorshift64*: plenty for junk, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        self.fill(&mut a);
        a
    }
}

fn lab_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback() || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let target: SocketAddr = args
        .next()
        .ok_or("usage: p2pcopy-lab-flood IP:PORT [--pps N] [--seconds S] [--count N] [--while-pid PID]")?
        .parse()
        .map_err(|e| format!("target: {e}"))?;
    if !lab_address(target.ip()) {
        return Err(format!(
            "{target} is not a lab address (198.18.0.0/15 or loopback)"
        ));
    }
    let mut o = Opts {
        target,
        pps: 20_000,
        duration: Duration::from_secs(30),
        count: 1_000_000,
        while_pid: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--pps" => o.pps = (num(&value)? as u64).clamp(1, MAX_PPS),
            "--seconds" => {
                o.duration = Duration::from_secs_f64(num(&value)?.clamp(0.0, MAX_SECONDS))
            }
            "--count" => o.count = (num(&value)? as u64).min(MAX_COUNT),
            "--while-pid" => o.while_pid = Some(value.parse().map_err(|e| format!("{flag}: {e}"))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

/// One datagram of kind `k` (0 junk, 1 forged probe, 2 QUIC Initial, 3 STUN answer).
fn datagram(k: usize, rng: &mut Rng, me: SocketAddr, buf: &mut Vec<u8>) {
    buf.clear();
    match k {
        0 => {
            buf.resize(20 + (rng.next() % 1180) as usize, 0);
            rng.fill(buf);
            // Not a probe, not STUN, not a QUIC v1 long header: junk by any reading.
            buf[0] = 0x17;
        }
        1 => buf.extend_from_slice(
            &Probe {
                kind: if rng.next() & 1 == 0 {
                    ProbeKind::Ping
                } else {
                    ProbeKind::Pong
                },
                from: rng.array(),
                to: rng.array(),
                seq: rng.next() as u32,
                observed: None,
            }
            .encode(),
        ),
        2 => {
            // Long header, Initial, version 1, 8-byte DCID and SCID, no token, then a
            // length and "encrypted" bytes up to the 1200 an Initial must fill.
            buf.push(0xc3);
            buf.extend_from_slice(&1u32.to_be_bytes());
            buf.push(8);
            buf.extend_from_slice(&rng.array::<8>());
            buf.push(8);
            buf.extend_from_slice(&rng.array::<8>());
            buf.push(0);
            let rest = 1200 - buf.len() - 2;
            buf.extend_from_slice(&(0x4000 | rest as u16).to_be_bytes());
            let at = buf.len();
            buf.resize(1200, 0);
            rng.fill(&mut buf[at..]);
        }
        _ => buf.extend_from_slice(&encode_response(&BindingResponse {
            transaction: rng.array(),
            mapped: me,
            response_origin: None,
            other_address: None,
        })),
    }
}

fn run(o: &Opts) -> Result<String, String> {
    let bind: SocketAddr = match o.target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?,
        SocketAddr::V6(_) => "[::]:0".parse().map_err(|e| format!("{e}"))?,
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    sock.connect(o.target)
        .map_err(|e| format!("connect: {e}"))?;
    let me = sock
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut rng = Rng(seed | 1);
    let mut buf = Vec::with_capacity(1500);
    let (mut sent, mut errors) = ([0u64; 4], 0u64);
    let start = Instant::now();
    let mut total = 0u64;
    let mut k = 0usize;
    let proc_dir = o
        .while_pid
        .map(|p| std::path::PathBuf::from(format!("/proc/{p}")));
    let mut last_check = start;
    while total < o.count {
        let elapsed = start.elapsed();
        if elapsed >= o.duration {
            break;
        }
        if let Some(dir) = &proc_dir {
            if last_check.elapsed() >= Duration::from_millis(20) {
                last_check = Instant::now();
                if !dir.exists() {
                    break;
                }
            }
        }
        // Send what the rate allows by now, then nap: bursts of ~1 ms worth.
        let due = ((elapsed.as_secs_f64() * o.pps as f64) as u64 + 1).min(o.count);
        while total < due {
            datagram(k, &mut rng, me, &mut buf);
            match sock.send(&buf) {
                Ok(_) => sent[k] += 1,
                // ICMP unreachable from an earlier datagram, a full buffer: keep going.
                Err(_) => errors += 1,
            }
            total += 1;
            k = (k + 1) % 4;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let ok: u64 = sent.iter().sum();
    Ok(format!(
        "flood: sent {ok} datagrams to {} from {me} in {secs:.1} s ({:.0} pps): junk {}, forged probes {}, QUIC Initials {}, STUN answers {}; {errors} send errors",
        o.target,
        ok as f64 / secs.max(1e-9),
        sent[0],
        sent[1],
        sent[2],
        sent[3]
    ))
}

fn main() -> ExitCode {
    match parse().and_then(|o| run(&o)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2pcopy-lab-flood: {e}");
            ExitCode::from(2)
        }
    }
}
