//! Port mapping: asking the home router to forward a public UDP port to our socket.
//!
//! Many home routers take such requests from their LAN in one of three protocols: PCP
//! (RFC 6887), its predecessor NAT-PMP (RFC 6886), and UPnP-IGD (`AddPortMapping`). A forwarded
//! port accepts packets from anywhere, so a peer reaches us through it whatever its own NAT
//! does: it turns the one pair hole punching cannot cross (two symmetric NATs) into a direct
//! path, and early probes cannot poison it.
//!
//! [`Mapper::start`] asks in all three protocols at once, right after the socket is bound and
//! while STUN runs; the first answer wins and the attempt is bounded by [`ATTEMPT_TIMEOUT`].
//! Each protocol waits up to [`SILENCE_TIMEOUT`] for a router's first answer, but the ticket
//! waits only [`QUIET_GRACE`] for a router that has said nothing at all, so a network without
//! one costs the ticket a quarter of a second; a mapping that comes later is still kept. The
//! mapping is renewed at half its lease while the run lasts and removed when it ends
//! ([`Mapper::release`]). Nothing here is ever an error for the user: a router that does not
//! answer just means one candidate less.
//!
//! The protocols themselves come from crates: `crab_nat` (PCP, falling back to NAT-PMP) and
//! `igd-next` (UPnP). This module picks the gateway and our address as it sees us, runs the
//! race, cleans up after the losers and keeps the winner's lease alive.

mod lease;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::shown::shown;
use lease::{via_gateway, via_upnp, Lease};

/// Lease asked for (the RFCs' recommended two hours); renewed at half of what is granted.
pub const LEASE: Duration = Duration::from_secs(2 * 60 * 60);
/// Lease asked for by `doctor`'s test mapping, which it removes at once anyway: the shortest
/// PCP servers commonly grant (RFC 6887 suggests a 120 s minimum).
pub const TEST_LEASE: Duration = Duration::from_secs(120);
/// How long the whole attempt may take, a slow router's HTTP exchanges for UPnP included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long each protocol waits for a router's first answer. A router on the LAN answers
/// within milliseconds, so this is what a network without one costs (STUN runs beside it).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the ticket waits for a router that has not answered at all. PCP and NAT-PMP
/// routers answer within milliseconds and a UPnP router's search answer comes as fast; one
/// that has answered is waited for up to [`ATTEMPT_TIMEOUT`] ([`Mapper::mapping`]). So a
/// network without such a router no longer costs the ticket [`SILENCE_TIMEOUT`].
pub const QUIET_GRACE: Duration = Duration::from_millis(250);
/// How long removing the mapping may take at exit (it expires by itself otherwise).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before retrying a failed renewal.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// What the router shows in its list of mappings.
const DESCRIPTION: &str = "p2pcopy";
/// Request timing for PCP and NAT-PMP: three tries in 200 + 400 + 400 ms, the
/// [`SILENCE_TIMEOUT`] (the RFCs' 3 s first timeout is meant for daemons, not for a person
/// waiting for a ticket).
const GATEWAY_TIMING: crab_nat::TimeoutConfig = crab_nat::TimeoutConfig {
    initial_timeout: Duration::from_millis(200),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_millis(400)),
};

/// The protocol a router answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886), PCP's predecessor.
    NatPmp,
    /// UPnP Internet Gateway Device, `AddPortMapping`.
    Upnp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP",
        })
    }
}

/// A port the router forwards to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Which protocol made it.
    pub protocol: Protocol,
    /// The public address the router forwards (its external address and port).
    pub external: SocketAddrV4,
    /// Where it forwards to: our LAN address and socket port.
    pub internal: SocketAddrV4,
    /// The lease granted; zero for a permanent mapping (some UPnP routers grant no other).
    pub lease: Duration,
}

/// Why one protocol did not give a mapping; logged, never shown as an error.
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    /// No IPv4 default route, so no gateway to ask with PCP or NAT-PMP.
    #[error("no default gateway")]
    NoGateway,
    /// The PCP or NAT-PMP exchange failed (no server, refused, timed out).
    #[error("{0}")]
    Gateway(#[from] crab_nat::MappingFailure),
    /// A NAT-PMP request after the mapping failed.
    #[error("NAT-PMP({0})")]
    NatPmp(#[from] crab_nat::natpmp::Failure),
    /// The UPnP exchange failed (no device answered, refused, timed out).
    #[error("UPnP({0})")]
    Upnp(#[from] igd_next::Error),
    /// Our own address towards the router could not be found.
    #[error("local address: {0}")]
    Local(std::io::Error),
    /// The router took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// The router answered with an address that is not IPv4.
    #[error("the router's external address {0} is not IPv4")]
    NotIpv4(IpAddr),
    /// Another protocol got a mapping first; this one stood down before mapping anything.
    #[error("not needed: another protocol answered first")]
    NotNeeded,
}

/// Whether asking makes sense for a socket bound to `bound`: not on loopback (no router
/// forwards there), and only for IPv4, where home NATs are.
pub fn worth_trying(bound: IpAddr) -> bool {
    matches!(bound, IpAddr::V4(ip) if !ip.is_loopback())
}

/// The IPv4 default gateway in Linux's `/proc/net/route`: the default route with the
/// lowest metric that goes through a gateway.
pub fn default_gateway(route_table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|s| u32::from_str_radix(s, 16).ok());
            let (dest, gateway, flags, metric, mask) =
                (hex(1)?, hex(2)?, hex(3)?, f.get(6)?, hex(7)?);
            let metric: u32 = metric.parse().ok()?;
            let default =
                dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            // The kernel prints the address's bytes as one native-endian word.
            (default && gateway != 0).then(|| (metric, Ipv4Addr::from(gateway.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

#[cfg(target_os = "linux")]
fn find_gateway() -> Option<Ipv4Addr> {
    default_gateway(&std::fs::read_to_string("/proc/net/route").ok()?)
}

#[cfg(not(target_os = "linux"))]
fn find_gateway() -> Option<Ipv4Addr> {
    // Without a route table to read, PCP and NAT-PMP are not asked; UPnP finds its router
    // by multicast and still works.
    None
}

/// Our address as `peer` sees it: the bound address, or the one the kernel would send from.
fn local_ip_towards(bound: Ipv4Addr, peer: IpAddr) -> Result<Ipv4Addr, PortMapError> {
    if !bound.is_unspecified() {
        return Ok(bound);
    }
    // Connecting a UDP socket sends nothing; it only picks the route and source address.
    let probe =
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(PortMapError::Local)?;
    probe.connect((peer, 9)).map_err(PortMapError::Local)?;
    match probe.local_addr().map_err(PortMapError::Local)?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        other => Err(PortMapError::NotIpv4(other)),
    }
}

fn ipv4(ip: IpAddr) -> Result<Ipv4Addr, PortMapError> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().ok_or(PortMapError::NotIpv4(ip)),
    }
}

fn whole_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// When to renew a lease of `granted`: at half of it, or never for a permanent mapping.
fn renew_at(granted: Duration) -> Option<Instant> {
    (!granted.is_zero()).then(|| Instant::now() + granted / 2)
}

/// Waits for the first attempt in `set` that succeeds, until `deadline`; the others stay in
/// the set.
async fn first_success<T: 'static>(
    set: &mut JoinSet<Result<T, PortMapError>>,
    deadline: Instant,
) -> Option<T> {
    loop {
        match tokio::time::timeout_at(deadline.into(), set.join_next()).await {
            Err(_) => {
                tracing::debug!("port mapping: no router answered in time");
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Ok(Ok(won)))) => return Some(won),
            Ok(Some(Ok(Err(e)))) => {
                tracing::debug!(error = %shown(&e.to_string()), "port mapping attempt failed")
            }
            Ok(Some(Err(e))) => tracing::debug!(error = %e, "port mapping task failed"),
        }
    }
}

/// Lets the attempts that lost the race finish and removes what they mapped, unless it is
/// the winner's own mapping (one router entry answering two protocols).
async fn tidy(mut set: JoinSet<Result<Lease, PortMapError>>, keep: Option<SocketAddrV4>) {
    while let Some(done) = set.join_next().await {
        if let Ok(Ok(lease)) = done {
            if Some(lease.mapping.external) == keep {
                continue;
            }
            tracing::debug!(protocol = %lease.mapping.protocol, external = %lease.mapping.external, "removing a second port mapping");
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, lease.remove()).await;
        }
    }
}

/// Asks every protocol at once for `lease`; returns the first mapping, and the task that
/// cleans up after the others (bounded: each attempt is). `progress`, if given, learns when
/// a router has answered before its mapping is made ([`State::Heard`]).
async fn attempt(
    bound: SocketAddrV4,
    lease: Duration,
    progress: Option<Arc<watch::Sender<State>>>,
) -> (Option<Lease>, JoinHandle<()>) {
    let mut set = JoinSet::new();
    let Some(port) = NonZeroU16::new(bound.port()) else {
        return (None, tokio::spawn(async {}));
    };
    let ip = *bound.ip();
    let decided = Arc::new(AtomicBool::new(false));
    // Each attempt has a hard limit past the race's, so the clean-up always ends; one cut
    // off mid-request may leave a mapping that expires with its lease.
    match find_gateway() {
        Some(gw) => {
            set.spawn(bounded(via_gateway(gw, ip, port, lease)));
        }
        None => tracing::debug!(error = %PortMapError::NoGateway, "PCP and NAT-PMP not asked"),
    }
    let heard = move || {
        if let Some(state) = progress {
            state.send_if_modified(|s| {
                let first = *s == State::Trying;
                if first {
                    *s = State::Heard;
                }
                first
            });
        }
    };
    set.spawn(bounded(via_upnp(ip, port, lease, decided.clone(), heard)));
    let won = first_success(&mut set, Instant::now() + ATTEMPT_TIMEOUT).await;
    // Whatever is still running maps nothing more (past the point of no return, it is
    // removed by `tidy`).
    decided.store(true, Ordering::Release);
    let keep = won.as_ref().map(|l| l.mapping.external);
    (won, tokio::spawn(tidy(set, keep)))
}

/// One attempt with a hard limit past the race's.
async fn bounded(
    f: impl std::future::Future<Output = Result<Lease, PortMapError>>,
) -> Result<Lease, PortMapError> {
    tokio::time::timeout(ATTEMPT_TIMEOUT + RELEASE_TIMEOUT, f)
        .await
        .unwrap_or(Err(PortMapError::Timeout))
}

/// What a [`Mapper`] has found so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Trying,
    /// A router answered the UPnP search; its mapping exchanges are under way.
    Heard,
    Mapped(Mapping),
    Unavailable,
}

/// Gets a port mapping for one socket and keeps it for the run: asks, renews at half the
/// lease, and removes it when released.
#[derive(Debug)]
pub struct Mapper {
    started: Instant,
    state: watch::Receiver<State>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Mapper {
    /// Starts asking the router for a mapping of the socket bound at `bound` (which must be
    /// [worth trying](worth_trying)); returns at once. Needs a Tokio runtime.
    pub fn start(bound: SocketAddr) -> Mapper {
        let (state_tx, state) = watch::channel(State::Trying);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            match bound {
                SocketAddr::V4(v4) => keep(v4, Arc::new(state_tx), stop_rx).await,
                SocketAddr::V6(_) => {
                    state_tx.send_replace(State::Unavailable);
                }
            }
        });
        Mapper {
            started: Instant::now(),
            state,
            stop: Some(stop),
            task,
        }
    }

    /// The mapping, once the attempt is over; `None` when no router gave one, or none had
    /// answered [`QUIET_GRACE`] after the start. A router that has answered is waited for
    /// (within [`ATTEMPT_TIMEOUT`]). The attempt goes on after a `None` for silence: a
    /// mapping that comes later is kept, renewed and removed at exit like any other.
    pub async fn mapping(&mut self) -> Option<Mapping> {
        let quiet_until = self.started + QUIET_GRACE;
        let answered = |s: &State| *s != State::Trying;
        if tokio::time::timeout_at(quiet_until.into(), self.state.wait_for(answered))
            .await
            .is_err()
        {
            tracing::info!(after = ?self.started.elapsed(), "no router answered port mapping yet; the ticket goes without one");
            return None;
        }
        let decided = |s: &State| !matches!(s, State::Trying | State::Heard);
        match *self.state.wait_for(decided).await.ok()? {
            State::Mapped(m) => Some(m),
            _ => None,
        }
    }

    /// Removes the mapping from the router (best effort, bounded): the attempt is allowed to
    /// finish first, so nothing it maps is left behind.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let budget = ATTEMPT_TIMEOUT + RELEASE_TIMEOUT;
        if tokio::time::timeout(budget, &mut self.task).await.is_err() {
            tracing::info!(
                "gave up removing the port mapping; the router drops it when its lease ends"
            );
            self.task.abort();
        }
    }
}

/// The mapper's task: attempt, then renew until stopped, then remove.
async fn keep(
    bound: SocketAddrV4,
    state: Arc<watch::Sender<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let (won, tidying) = attempt(bound, LEASE, Some(state.clone())).await;
    let Some(mut lease) = won else {
        tracing::info!(after = ?started.elapsed(), "no port mapping: no router answered PCP, NAT-PMP or UPnP");
        state.send_replace(State::Unavailable);
        let _ = tidying.await;
        return;
    };
    tracing::info!(protocol = %lease.mapping.protocol, external = %lease.mapping.external, lease = ?lease.mapping.lease, after = ?started.elapsed(), "port mapping");
    state.send_replace(State::Mapped(lease.mapping));
    loop {
        let renewal = async {
            match lease.renew_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = renewal => {
                let before = lease.mapping.external;
                match lease.renew(LEASE).await {
                    Ok(()) if lease.mapping.external != before => tracing::warn!(%before, now = %lease.mapping.external, "the router moved our port mapping; the ticket names the old one"),
                    Ok(()) => tracing::debug!(lease = ?lease.mapping.lease, "port mapping renewed"),
                    Err(e) => {
                        tracing::info!(error = %shown(&e.to_string()), "could not renew the port mapping; trying again in a minute");
                        lease.renew_at = Some(Instant::now() + RENEW_RETRY);
                    }
                }
                state.send_replace(State::Mapped(lease.mapping));
            }
        }
    }
    let _ = tidying.await;
    remove(lease).await;
}

async fn remove(lease: Lease) {
    let (protocol, external) = (lease.mapping.protocol, lease.mapping.external);
    match tokio::time::timeout(RELEASE_TIMEOUT, lease.remove()).await {
        Ok(Ok(())) => tracing::info!(%protocol, %external, "port mapping removed"),
        Ok(Err(e)) => {
            tracing::info!(%protocol, %external, error = %shown(&e.to_string()), "could not remove the port mapping; the router drops it when its lease ends")
        }
        Err(_) => {
            tracing::info!(%protocol, %external, "removing the port mapping timed out; the router drops it when its lease ends")
        }
    }
}

/// What `doctor`'s test mapping showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    /// The mapping the router made.
    pub mapping: Mapping,
    /// Whether the router confirmed removing it again.
    pub removed: bool,
}

/// Maps the socket bound at `bound` with a short lease and removes it at once: which
/// protocol answers, and which external address it gives.
pub async fn check(bound: SocketAddr) -> Option<Check> {
    let SocketAddr::V4(bound) = bound else {
        return None;
    };
    let (won, tidying) = attempt(bound, TEST_LEASE, None).await;
    let _ = tokio::time::timeout(ATTEMPT_TIMEOUT + RELEASE_TIMEOUT, tidying).await;
    let lease = won?;
    let mapping = lease.mapping;
    let removed = matches!(
        tokio::time::timeout(RELEASE_TIMEOUT, lease.remove()).await,
        Ok(Ok(()))
    );
    Some(Check { mapping, removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_from_the_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        // Lowest metric wins; bytes are in memory order.
        let want = Ipv4Addr::from(u32::from_str_radix("010200C0", 16).unwrap().to_ne_bytes());
        assert_eq!(default_gateway(table), Some(want));
        if cfg!(target_endian = "little") {
            assert_eq!(want, Ipv4Addr::new(192, 0, 2, 1));
        }
        // No default route, a route that is down, or one without a gateway: none.
        assert_eq!(default_gateway("Iface\tDestination\n"), None);
        assert_eq!(
            default_gateway("h\neth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"),
            None
        );
        assert_eq!(
            default_gateway("h\neth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"),
            None
        );
        // Garbage lines are skipped.
        assert_eq!(default_gateway("h\nnonsense\n\n"), None);
    }

    #[test]
    fn only_ipv4_sockets_off_loopback_are_mapped() {
        assert!(worth_trying("0.0.0.0".parse().unwrap()));
        assert!(worth_trying("192.168.1.20".parse().unwrap()));
        assert!(!worth_trying("127.0.0.1".parse().unwrap()));
        assert!(!worth_trying("::".parse().unwrap()));
    }

    #[test]
    fn bound_address_is_our_address() {
        let ip = Ipv4Addr::new(192, 168, 1, 20);
        assert_eq!(
            local_ip_towards(ip, "192.168.1.1".parse().unwrap()).unwrap(),
            ip
        );
        // Unbound: the kernel's choice towards loopback is loopback (nothing is sent).
        assert_eq!(
            local_ip_towards(Ipv4Addr::UNSPECIFIED, "127.0.0.1".parse().unwrap()).unwrap(),
            Ipv4Addr::LOCALHOST
        );
    }

    #[test]
    fn leases_renew_at_half() {
        assert_eq!(renew_at(Duration::ZERO), None);
        let at = renew_at(Duration::from_secs(7200)).unwrap();
        let half = at.duration_since(Instant::now());
        assert!(
            half <= Duration::from_secs(3600) && half > Duration::from_secs(3590),
            "{half:?}"
        );
    }

    #[tokio::test]
    async fn first_success_wins_and_failures_are_skipped() {
        let mut set: JoinSet<Result<u32, PortMapError>> = JoinSet::new();
        set.spawn(async { Err(PortMapError::NoGateway) });
        set.spawn(async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(2)
        });
        set.spawn(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(3)
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        assert_eq!(first_success(&mut set, deadline).await, Some(2));
        // The slower one is still there, for the clean-up.
        assert_eq!(set.len(), 1);
        assert_eq!(set.join_next().await.unwrap().unwrap().unwrap(), 3);
    }

    #[tokio::test]
    async fn first_success_gives_up_at_the_deadline() {
        let mut set: JoinSet<Result<u32, PortMapError>> = JoinSet::new();
        set.spawn(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(1)
        });
        let t0 = Instant::now();
        assert_eq!(
            first_success(&mut set, t0 + Duration::from_millis(50)).await,
            None
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
        let mut all_fail: JoinSet<Result<u32, PortMapError>> = JoinSet::new();
        all_fail.spawn(async { Err(PortMapError::Timeout) });
        let t0 = Instant::now();
        assert_eq!(
            first_success(&mut all_fail, t0 + Duration::from_secs(5)).await,
            None
        );
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "returns once all failed"
        );
    }
}
