//! A user-space delay line for the p2pcopy lab, because the lab's kernel has no netem qdisc.
//!
//! It bridges Ethernet frames between two interfaces through AF_PACKET sockets, holding each
//! frame for a fixed one-way delay, optionally dropping a random share and limiting the rate
//! with a bounded queue (tail drop), and optionally adding jitter: each frame waits a further
//! random 0..J ms, but never leaves before the frame ahead of it (the queueing delay of a
//! Wi-Fi or LTE hop varies, and it does not reorder). Being a layer-2 bridge, it is invisible to IP: TTLs,
//! addresses and NAT behaviour are those of the routers on either side.
//!
//! Usage: `p2pcopy-lab-netem IF_A IF_B [--delay-ms N] [--loss P] [--rate-mbit R] [--queue-ms Q]
//! [--jitter-ms J]`
//! Runs until killed, printing each second in which frames moved one line of cumulative
//! counts per direction (sent, random drops, tail drops, failed sends). Offloads
//! (GSO/TSO/GRO) must be off on the interfaces involved, or frames larger than the MTU
//! arrive and cannot be sent on.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

struct Opts {
    delay: Duration,
    loss: f64,
    rate_bps: Option<f64>,
    queue: Duration,
    jitter: Duration,
}

/// One direction: frames read from `rx` wait in `queue` until due, then go out on `tx`.
struct Direction {
    rx: RawFd,
    tx: RawFd,
    queue: VecDeque<(Instant, Vec<u8>)>,
    next_free: Instant,
    counts: Counts,
}

/// What became of the frames read in one direction, printed once a second while it changes:
/// a bench run can then tell its transfer's losses apart into the path's random ones and
/// the bounded queue's tail drops (which the sender's own rate caused).
#[derive(Clone, Copy, Default, PartialEq)]
struct Counts {
    sent: u64,
    random: u64,
    tail: u64,
    failed: u64,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the given size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn open(ifname: &str) -> io::Result<RawFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls on values we own.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto as libc::c_int,
        )
    })?;
    let name = CString::new(ifname).map_err(|_| io::Error::other("bad interface name"))?;
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::other(format!("no interface {ifname}")));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: sll lives for the call and its size is passed.
    check(unsafe {
        libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    })?;
    let mreq = libc::packet_mreq {
        mr_ifindex: index as i32,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
    // Without this the socket also reads the frames we send out of the other socket's side.
    let one: libc::c_int = 1;
    setopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)?;
    let buf: libc::c_int = 8 << 20;
    setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buf)
        .or_else(|_| setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &buf))?;
    setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &buf)
        .or_else(|_| setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &buf))?;
    Ok(fd)
}

/// xorshift64*: loss decisions need no cryptographic quality.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Direction {
    fn enqueue(&mut self, now: Instant, frame: Vec<u8>, opts: &Opts, rng: &mut Rng) {
        if opts.loss > 0.0 && rng.next_f64() < opts.loss {
            self.counts.random += 1;
            return;
        }
        let mut due = match opts.rate_bps {
            None => now + opts.delay,
            Some(bps) => {
                // Tail drop once the frames waiting for the link would take longer than
                // `queue` to leave. Frames already on the wire (in the delay) are not in
                // the router's buffer: counting them, as this once did, left a path whose
                // one-way delay matches `queue` with no buffer at all.
                let limit = bps / 8.0 * opts.queue.as_secs_f64();
                let backlog =
                    self.next_free.saturating_duration_since(now).as_secs_f64() * bps / 8.0;
                if backlog + frame.len() as f64 > limit.max(3000.0) {
                    self.counts.tail += 1;
                    return;
                }
                let wire_time = Duration::from_secs_f64(frame.len() as f64 * 8.0 / bps);
                self.next_free = self.next_free.max(now) + wire_time;
                self.next_free + opts.delay
            }
        };
        if !opts.jitter.is_zero() {
            due += opts.jitter.mul_f64(rng.next_f64());
            if let Some((ahead, _)) = self.queue.back() {
                due = due.max(*ahead);
            }
        }
        self.queue.push_back((due, frame));
    }

    fn flush(&mut self, now: Instant) {
        while let Some((due, _)) = self.queue.front() {
            if *due > now {
                break;
            }
            let (_, frame) = self.queue.pop_front().expect("front exists");
            // SAFETY: frame is a live buffer of the given length.
            let rc = unsafe {
                libc::send(
                    self.tx,
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            if rc < 0 {
                // A full send buffer or an oversized frame: the network lost it.
                self.counts.failed += 1;
            } else {
                self.counts.sent += 1;
            }
        }
    }

    fn read_all(&mut self, opts: &Opts, rng: &mut Rng) {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is a live buffer of the given length.
            let n =
                unsafe { libc::recv(self.rx, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                return;
            }
            self.enqueue(Instant::now(), buf[..n as usize].to_vec(), opts, rng);
        }
    }
}

/// One line of cumulative counts per report, `a>b` for frames read on IF_A.
fn report(at: Duration, dirs: &[Direction; 2]) {
    let mut line = format!("{:.1}s", at.as_secs_f64());
    for (name, d) in ["a>b", "b>a"].iter().zip(dirs) {
        let c = d.counts;
        line += &format!(
            " {name} sent {} random-drop {} tail-drop {} send-failed {}",
            c.sent, c.random, c.tail, c.failed
        );
    }
    println!("{line}");
}

fn parse() -> Result<(String, String, Opts), String> {
    let mut args = std::env::args().skip(1);
    let a = args.next().ok_or("missing IF_A")?;
    let b = args.next().ok_or("missing IF_B")?;
    let mut opts = Opts {
        delay: Duration::ZERO,
        loss: 0.0,
        rate_bps: None,
        queue: Duration::from_millis(100),
        jitter: Duration::ZERO,
    };
    while let Some(flag) = args.next() {
        let value: f64 = args
            .next()
            .ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--delay-ms" => opts.delay = Duration::from_secs_f64(value / 1000.0),
            "--loss" => opts.loss = value,
            "--rate-mbit" => opts.rate_bps = Some(value * 1e6),
            "--queue-ms" => opts.queue = Duration::from_secs_f64(value / 1000.0),
            "--jitter-ms" => opts.jitter = Duration::from_secs_f64(value / 1000.0),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok((a, b, opts))
}

fn main() {
    let (a, b, opts) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("p2pcopy-lab-netem: {e}\nusage: p2pcopy-lab-netem IF_A IF_B [--delay-ms N] [--loss P] [--rate-mbit R] [--queue-ms Q] [--jitter-ms J]");
            std::process::exit(2);
        }
    };
    let (fa, fb) = match (open(&a), open(&b)) {
        (Ok(fa), Ok(fb)) => (fa, fb),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("p2pcopy-lab-netem: {e}");
            std::process::exit(1);
        }
    };
    let now = Instant::now();
    let mut dirs = [
        Direction {
            rx: fa,
            tx: fb,
            queue: VecDeque::new(),
            next_free: now,
            counts: Counts::default(),
        },
        Direction {
            rx: fb,
            tx: fa,
            queue: VecDeque::new(),
            next_free: now,
            counts: Counts::default(),
        },
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let start = now;
    let mut next_report = now + Duration::from_secs(1);
    let mut reported = [Counts::default(); 2];
    loop {
        let now = Instant::now();
        if now >= next_report {
            next_report = now + Duration::from_secs(1);
            if dirs.iter().zip(&reported).any(|(d, r)| d.counts != *r) {
                report(now - start, &dirs);
                reported = [dirs[0].counts, dirs[1].counts];
            }
        }
        for d in &mut dirs {
            d.flush(now);
        }
        // The next frame due, or the next report: the wait is always bounded.
        let until = dirs
            .iter()
            .filter_map(|d| d.queue.front().map(|(t, _)| *t))
            .fold(next_report, Instant::min);
        let wait = until.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let mut fds = [
            libc::pollfd {
                fd: fa,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fb,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds and ts outlive the call.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("p2pcopy-lab-netem: poll: {e}");
                std::process::exit(1);
            }
        }
        for (i, d) in dirs.iter_mut().enumerate() {
            if fds[i].revents & libc::POLLIN != 0 {
                d.read_all(&opts, &mut rng);
            }
        }
    }
}
