//! quinn's view of one of our UDP sockets, with receive holds ([`super::hold`]): on a
//! paced path the socket leaves the runtime's `epoll` set for reading while data flows and
//! is read on a timer instead, so a batch of datagrams costs one wake-up rather than one
//! each.
//!
//! Outside holds the socket is registered as quinn's own wrapper registers it: one
//! descriptor, for reading and writing. A split arrangement (a second descriptor for
//! reading, registered apart from the writes) cost ~13 % of the LAN's rate and lost
//! packets there, as branch `recv`'s did (bench/RESULTS.md, "Receive holds on a timer").
//! During a hold the socket is registered anew (through a second descriptor of it, the
//! first closed) for writability alone, which arrivals never trigger; a task waiting to
//! write is woken at each switch, since its waker stays with the registration it waited
//! on. Anything else registered for reading on the same socket would wake the runtime at
//! each arrival all the same: the probe handles are plain sockets for that reason
//! ([`super::driver::ProbeIo`]).

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::hold::{Coalescer, PathRtt};

/// The socket's registration with the runtime.
struct Io {
    fd: AsyncFd<UdpSocket>,
    /// Registered for writability alone (a hold): arrivals do not wake the runtime.
    write_only: bool,
}

impl Io {
    // `with_interest` is deprecated as unsound for inners whose descriptor may change or
    // close under it; a `UdpSocket` owns its descriptor, so it is sound here (and keeps
    // `unsafe` in `sys` alone).
    #[allow(deprecated)]
    fn register(sock: UdpSocket, write_only: bool) -> io::Result<AsyncFd<UdpSocket>> {
        let interest = match write_only {
            true => Interest::WRITABLE,
            false => Interest::READABLE | Interest::WRITABLE,
        };
        AsyncFd::with_interest(sock, interest)
    }
}

/// What only the receiving side touches: quinn reads a socket from one task.
struct Recv {
    /// Whether a hold is under way.
    holding: bool,
    timer: HoldTimer,
    coalescer: Coalescer,
}

/// What a hold waits on: a `timerfd` on Linux (a hold lasts what it asks), tokio's timer
/// elsewhere (whole milliseconds).
enum HoldTimer {
    #[cfg(target_os = "linux")]
    Fd(AsyncFd<crate::sys::TimerFd>),
    Tokio(Option<Pin<Box<tokio::time::Sleep>>>),
}

impl HoldTimer {
    #[allow(deprecated)] // as in `HeldSocket::new`: the timer owns its descriptor
    fn new() -> HoldTimer {
        #[cfg(target_os = "linux")]
        match crate::sys::TimerFd::new().and_then(|t| AsyncFd::with_interest(t, Interest::READABLE))
        {
            Ok(fd) => return HoldTimer::Fd(fd),
            Err(e) => tracing::debug!(error = %e, "no timerfd: holds on tokio's timer"),
        }
        HoldTimer::Tokio(None)
    }

    /// Whether a hold lasts up to a whole extra millisecond.
    fn coarse(&self) -> bool {
        matches!(self, HoldTimer::Tokio(_))
    }

    fn start(&mut self, hold: Duration) {
        match self {
            #[cfg(target_os = "linux")]
            HoldTimer::Fd(fd) => {
                if let Err(e) = fd.get_ref().arm(hold) {
                    tracing::debug!(error = %e, "cannot arm the timerfd: holds on tokio's timer");
                    *self = HoldTimer::Tokio(Some(Box::pin(tokio::time::sleep(hold))));
                }
            }
            HoldTimer::Tokio(sleep) => *sleep = Some(Box::pin(tokio::time::sleep(hold))),
        }
    }

    fn poll(&mut self, cx: &mut Context) -> Poll<()> {
        match self {
            #[cfg(target_os = "linux")]
            HoldTimer::Fd(fd) => loop {
                let Ok(mut ready) = ready!(fd.poll_read_ready(cx)) else {
                    return Poll::Ready(());
                };
                // Not yet fired: readiness cleared, wait for the next. A read error
                // ends the hold rather than stalling the socket.
                if ready.try_io(|t| t.get_ref().fired()).is_ok() {
                    return Poll::Ready(());
                }
            },
            HoldTimer::Tokio(sleep) => {
                if let Some(s) = sleep.as_mut() {
                    ready!(s.as_mut().poll(cx));
                }
                *sleep = None;
                Poll::Ready(())
            }
        }
    }
}

/// One of the run's UDP sockets as quinn's [`AsyncUdpSocket`] ([module docs](self)).
pub struct HeldSocket {
    state: UdpSocketState,
    /// Read-locked by every send and receive, write-locked only by the receiving side to
    /// switch, so a send never waits for a receive's system call or the other way round:
    /// quinn sends from the connection's task and receives from the endpoint's, which a
    /// program embedding the library may run on two threads at once (the CLI's one
    /// thread never contends).
    io: RwLock<Io>,
    /// The task last told the socket was not writable, to wake at a switch: its waker
    /// stays with the registration it waited on. Stored under `io`'s read lock, so no
    /// switch falls between the wait and the storing.
    writer: Mutex<Option<Waker>>,
    recv: Mutex<Recv>,
    rtt: Arc<PathRtt>,
    local: SocketAddr,
}

impl fmt::Debug for HeldSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldSocket").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HeldSocket {
    /// Wraps a non-blocking socket; needs a runtime. `rtt` says when holds may start.
    pub fn new(sock: UdpSocket, rtt: Arc<PathRtt>) -> io::Result<HeldSocket> {
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let local = sock.local_addr()?;
        let fd = Io::register(sock, false)?;
        Ok(HeldSocket {
            state,
            io: RwLock::new(Io {
                fd,
                write_only: false,
            }),
            writer: Mutex::new(None),
            recv: Mutex::new(Recv {
                holding: false,
                timer: HoldTimer::new(),
                coalescer: Coalescer::default(),
            }),
            rtt,
            local,
        })
    }

    fn io(&self) -> RwLockReadGuard<'_, Io> {
        self.io.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the socket anew, for writability alone or for both; whether it was not
    /// so registered already. A second descriptor of the socket is registered first, so a
    /// failure (out of memory) leaves the old registration as it was; dropping the old one
    /// closes its descriptor.
    fn switch(&self, write_only: bool) -> io::Result<bool> {
        {
            let mut io = self.io.write().unwrap_or_else(|e| e.into_inner());
            if io.write_only == write_only {
                return Ok(false);
            }
            io.fd = Io::register(io.fd.get_ref().try_clone()?, write_only)?;
            io.write_only = write_only;
        }
        if let Some(w) = lock(&self.writer).take() {
            w.wake();
        }
        Ok(true)
    }

    /// Takes the socket out of `epoll` for reading and starts a hold.
    fn start_hold(&self, recv: &mut Recv, hold: Duration) {
        match self.switch(true) {
            Ok(true) => tracing::trace!(?hold, "receive holds start"),
            Ok(false) => {}
            // Still registered for reading: the hold only batches less.
            Err(e) => tracing::debug!(error = %e, "cannot take the socket out of epoll"),
        }
        recv.timer.start(hold);
        recv.holding = true;
    }

    /// Puts the socket back into `epoll` for reading, to be woken by the next arrival
    /// (datagrams that came meanwhile make it ready at once). Should that fail, the
    /// socket goes on being read on the timer.
    fn wake_on_arrival(&self, recv: &mut Recv) {
        if let Err(e) = self.switch(false) {
            tracing::debug!(error = %e, "cannot register the socket for reading");
            recv.timer.start(super::hold::MAX_HOLD);
            recv.holding = true;
        }
    }
}

/// Counts what a read brought, for the [`Coalescer`].
fn datagrams(meta: &[RecvMeta]) -> (usize, usize) {
    meta.iter().fold((0, 0), |(count, bytes), m| {
        let stride = m.stride.max(1);
        (count + m.len.div_ceil(stride), bytes + m.len)
    })
}

impl AsyncUdpSocket for HeldSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.io().fd.try_io(Interest::WRITABLE, |sock| {
            self.state.send(UdpSockRef::from(sock), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut recv = lock(&self.recv);
        loop {
            if !recv.holding {
                let coarse = recv.timer.coarse();
                if let Some(hold) = recv.coalescer.hold(self.rtt.get(), coarse) {
                    self.start_hold(&mut recv, hold);
                }
            }
            if recv.holding {
                ready!(recv.timer.poll(cx));
                recv.holding = false;
            }
            let got = {
                let io = self.io();
                if io.write_only {
                    self.state
                        .recv(UdpSockRef::from(io.fd.get_ref()), bufs, meta)
                } else {
                    let mut ready = ready!(io.fd.poll_read_ready(cx))?;
                    let read = |fd: &AsyncFd<UdpSocket>| {
                        self.state.recv(UdpSockRef::from(fd.get_ref()), bufs, meta)
                    };
                    match ready.try_io(read) {
                        Ok(got) => got,
                        // Readiness was stale: cleared, wait for the next.
                        Err(_) => continue,
                    }
                }
            };
            match got {
                Ok(n) => {
                    let (count, bytes) = datagrams(&meta[..n]);
                    recv.coalescer.received(count, bytes);
                    return Poll::Ready(Ok(n));
                }
                Err(e) => {
                    // Empty (or a read error, which quinn's own wrapper also waits out):
                    // hold again while data flows, else be woken by the next arrival.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "receive failed");
                    }
                    recv.coalescer.received(0, 0);
                    if recv.coalescer.drained() {
                        self.wake_on_arrival(&mut recv);
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// Waits for the socket to be writable.
struct Writable(Arc<HeldSocket>);

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let io = self.0.io();
        let polled = io.fd.poll_write_ready(cx).map_ok(drop);
        if polled.is_pending() {
            *lock(&self.0.writer) = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::{Duration, Instant};

    use super::*;

    /// What quinn's receive task would see: reads until `want` datagrams came or `limit`
    /// passed; returns the datagrams, the reads that brought any, and how many of those
    /// came after a hold (the socket out of `epoll` for reading when the read returned:
    /// every read that follows a hold returns so).
    async fn read(sock: &HeldSocket, want: usize, limit: Duration) -> (usize, usize, usize) {
        let size = 1500 * sock.max_receive_segments();
        let mut storage = vec![vec![0u8; size]; 8];
        let mut meta = vec![RecvMeta::default(); 8];
        let (mut got, mut reads, mut held) = (0, 0, 0);
        let deadline = tokio::time::Instant::now() + limit;
        while got < want {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = poll_fn(|cx| sock.poll_recv(cx, &mut bufs, &mut meta));
            match tokio::time::timeout_at(deadline, n).await {
                Ok(n) => {
                    let n = n.expect("receive");
                    got += datagrams(&meta[..n]).0;
                    reads += 1;
                    held += usize::from(sock.io().write_only);
                }
                Err(_) => break,
            }
        }
        (got, reads, held)
    }

    /// Sends `count` data-sized datagrams to `to`, one every `gap`, from a thread.
    fn paced(to: SocketAddr, count: usize, gap: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let out = UdpSocket::bind("127.0.0.1:0").unwrap();
            let start = Instant::now();
            for k in 0..count {
                // Spaced from the start, so a late wake-up does not stretch the flow.
                let due = start + gap * u32::try_from(k).unwrap();
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                out.send_to(&[7u8; 1400], to).unwrap();
            }
        })
    }

    fn held(rtt: Option<Duration>) -> HeldSocket {
        // The run's own binding (its socket buffers), non-blocking.
        let sock = super::super::socket::bind([127, 0, 0, 1].into(), 0).unwrap();
        let path = Arc::new(PathRtt::default());
        for _ in 0..PathRtt::CONFIRMED {
            path.set(rtt);
        }
        HeldSocket::new(sock, path).unwrap()
    }

    #[tokio::test]
    async fn a_paced_flow_on_a_long_path_is_read_in_batches_and_nothing_is_left_behind() {
        let sock = held(Some(Duration::from_millis(50)));
        let to = sock.local_addr().unwrap();
        // 10 datagrams per millisecond: a hold of 1 ms (RTT/40, capped) brings about 10.
        let sender = paced(to, 300, Duration::from_micros(100));
        let (got, reads, _) = read(&sock, 300, Duration::from_secs(5)).await;
        sender.join().unwrap();
        assert_eq!(got, 300, "every datagram arrives");
        assert!(reads <= 100, "{reads} reads for 300 datagrams: no batches");
        // After the flow paused the socket is woken again by a lone arrival.
        tokio::time::sleep(Duration::from_millis(20)).await;
        paced(to, 1, Duration::ZERO).join().unwrap();
        assert_eq!(read(&sock, 1, Duration::from_secs(2)).await.0, 1);
    }

    #[tokio::test]
    async fn a_short_path_is_read_as_datagrams_come() {
        let sock = held(Some(Duration::from_millis(5)));
        let to = sock.local_addr().unwrap();
        let sender = paced(to, 100, Duration::from_micros(500));
        let (got, reads, held) = read(&sock, 100, Duration::from_secs(5)).await;
        sender.join().unwrap();
        assert_eq!(got, 100);
        // Woken by each datagram, never held. (Counting reads instead failed under load:
        // a busy machine queues several datagrams between two wake-ups, holds or not.)
        assert_eq!(
            held, 0,
            "{held} of {reads} reads after a hold on a short path"
        );
    }
}
