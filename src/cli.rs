//! Command-line interface: flags, the user's screen, and the order of a run.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::{CloseCode, Error};
use crate::events::{millis, Event, Output};
use crate::net::{self, ConnectFailure, Dialer, Link, Progress as NetProgress};
use crate::punch::{self, PathKind, DEFAULT_OPENER_TTL};
use crate::ticket::{Candidate, CandidateKind, FullTicket, NatKind, Role, Ticket};
use crate::tls::Identity;
use crate::{nat, ntp, portmap, progress, stun, transfer};

/// Copy files and folders straight from one computer to another, across NATs, with no server
/// in between.
///
/// Both users run p2pcopy (one `sender`, one `receiver`), paste each other the line it
/// prints, and the files flow directly between the two machines over an encrypted,
/// authenticated QUIC connection, verified with BLAKE3. An interrupted transfer continues
/// where it stopped when both run the same commands again.
#[derive(Debug, Parser)]
#[command(name = "p2pcopy", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bar and no informational messages; errors are still printed.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print newline-delimited JSON events on stdout instead of messages and a progress bar,
    /// for scripts and GUIs (the README documents every event).
    #[arg(long, global = true)]
    pub json: bool,
}

impl Cli {
    /// Where this run reports, as its flags ask.
    pub fn output(&self) -> Output {
        if self.json {
            Output::json()
        } else {
            Output::human(self.quiet)
        }
    }
}

/// The two roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files or folders.
    Sender(SenderArgs),
    /// Receive into the current directory (or --output).
    Receiver(ReceiverArgs),
    /// Run a STUN server (RFC 5389; RFC 5780 NAT behaviour discovery with --alternate-ip),
    /// for networks that cannot reach public ones: give its address to --stun-server.
    StunServer(StunServerArgs),
    /// Check what this network allows: STUN reachability and latency, NAT mapping and
    /// filtering (RFC 5780), hairpinning, NTP; ends with which peers you can reach.
    Doctor(DoctorArgs),
    /// Print a shell completion script for SHELL on stdout, e.g.
    /// `p2pcopy completions bash > ~/.local/share/bash-completion/completions/p2pcopy`.
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, e.g. `p2pcopy man > p2pcopy.1`.
    Man,
}

/// Flags of `p2pcopy doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Local UDP port to test from (0 picks a free one); test the one you use with transfers.
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = 0)]
    pub localport: u16,
    /// Local IPv4 address to bind (0.0.0.0: all interfaces).
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// STUN server to ask (repeatable) [default: public servers]. One that offers RFC 5780
    /// (such as `p2pcopy stun-server --alternate-ip`) also tells the NAT's filtering.
    #[arg(long = "stun-server", value_name = "HOST:PORT")]
    pub stun_servers: Vec<String>,
    /// NTP server (repeatable) [default: public pools].
    #[arg(long = "ntp-server", value_name = "HOST[:PORT]")]
    pub ntp_servers: Vec<String>,
    /// Skip the NTP check.
    #[arg(long, conflicts_with = "ntp_servers")]
    pub no_ntp: bool,
    /// Skip the port-mapping check (PCP, NAT-PMP, UPnP test mapping on the router).
    #[arg(long)]
    pub no_portmap: bool,
}

/// Flags of `p2pcopy sender`.
#[derive(Debug, Args)]
pub struct SenderArgs {
    /// A file or folder to send (repeatable; folders are sent with everything in them).
    #[arg(short, long, value_name = "PATH", required = true)]
    pub file: Vec<PathBuf>,
    /// Also write each file's BLAKE3 to this file, in `b3sum` format.
    #[arg(long, value_name = "FILE")]
    pub checksums: Option<PathBuf>,
    /// Network flags.
    #[command(flatten)]
    pub net: NetArgs,
}

/// Flags of `p2pcopy receiver`.
#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Directory to write into. Existing files are never replaced (a different file with
    /// the same name arrives as `name (1).ext`), unless --overwrite.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Replace existing files of the same name instead of numbering the new ones.
    #[arg(long)]
    pub overwrite: bool,
    /// Also write each received file's BLAKE3 to this file, in `b3sum` format (paths
    /// relative to --output), so `b3sum --check` can verify them later.
    #[arg(long, value_name = "FILE")]
    pub checksums: Option<PathBuf>,
    /// Network flags.
    #[command(flatten)]
    pub net: NetArgs,
}

/// Flags of `p2pcopy stun-server`.
#[derive(Debug, Args)]
pub struct StunServerArgs {
    /// Address and port to answer on.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:3478")]
    pub listen: SocketAddr,
    /// A second IP address of this host: the server then also answers on it and on the next
    /// port, as RFC 5780 needs to tell NAT filtering behaviour.
    #[arg(long, value_name = "IP")]
    pub alternate_ip: Option<IpAddr>,
}

/// Flags both roles share.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Local UDP port to use (0 picks a free one). A port forwarded on your router helps.
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = 0)]
    pub localport: u16,
    /// Local IPv4 address to bind (0.0.0.0: all interfaces).
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// Your peer's ticket (or ip:port); skips the prompt.
    #[arg(long, value_name = "TICKET")]
    pub peer: Option<String>,
    /// STUN server to learn your public address from (repeatable) [default: public servers].
    #[arg(long = "stun-server", value_name = "HOST:PORT")]
    pub stun_servers: Vec<String>,
    /// Skip STUN: only LAN addresses go into the ticket (same network, or no internet).
    #[arg(long, conflicts_with = "stun_servers")]
    pub no_stun: bool,
    /// NTP server for the shared round clock (repeatable) [default: public pools].
    #[arg(long = "ntp-server", value_name = "HOST[:PORT]")]
    pub ntp_servers: Vec<String>,
    /// Skip NTP and trust this computer's clock.
    #[arg(long, conflicts_with = "ntp_servers")]
    pub no_ntp: bool,
    /// Do not ask the router to forward a port (PCP, NAT-PMP, UPnP-IGD); --no-stun implies it.
    #[arg(long)]
    pub no_portmap: bool,
    /// Give up connecting after this many seconds from the moment the ticket is entered,
    /// and reconnecting after this many seconds from the moment a path is lost.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Give up when the peer keeps the connection alive but moves nothing for this many
    /// seconds: no file list, no data, no verdict (0: wait for ever).
    #[arg(long, value_name = "SECS", default_value_t = transfer::DEFAULT_STALL_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub stall_timeout: u64,
}

/// Prints an informational line on stderr for a person (not with --quiet or --json).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.say(format_args!($($arg)*))
    };
}

/// Runs one p2pcopy command to completion, reporting through `out`; the caller reports the
/// error that ends it.
pub async fn run(cli: Cli, out: Output) -> Result<(), Error> {
    match &cli.command {
        Command::Completions { shell } => {
            return print_generated(|w| {
                clap_complete::generate(*shell, &mut Cli::command(), "p2pcopy", w);
                Ok(())
            })
        }
        Command::Man => {
            return print_generated(|w| clap_mangen::Man::new(Cli::command()).render(w))
        }
        _ => {}
    }
    if let Command::StunServer(args) = &cli.command {
        return tokio::select! {
            r = serve_stun(args, out) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted("stopped".into())),
        };
    }
    if let Command::Doctor(args) = &cli.command {
        return tokio::select! {
            r = doctor(args, out) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted("interrupted".into())),
        };
    }
    // The router's port mapping, if any, outlives the transfer's futures so it is removed
    // however the run ends: done, failed, or Ctrl-C (even mid-attempt).
    let mut mapper = None;
    let result = transfer_run(cli, out, &mut mapper).await;
    if let Some(mapper) = mapper {
        mapper.release().await;
    }
    result
}

/// A sender's or receiver's run, from binding the socket to telling the peer how it ended.
async fn transfer_run(
    cli: Cli,
    out: Output,
    mapper: &mut Option<portmap::Mapper>,
) -> Result<(), Error> {
    let interrupted = || Error::Interrupted("interrupted".into());
    let (mut dialer, mut link, mut job, ctx) = tokio::select! {
        r = connect_phase(cli, out, mapper) => r?,
        _ = tokio::signal::ctrl_c() => return Err(interrupted()),
    };
    // Kept, like the job, until the run ends: the bar stays up until then.
    let label = match job {
        Job::Send(..) => "Sending",
        Job::Receive(..) => "Receiving",
    };
    let mut reporter = progress::Reporter::new(ctx.out, label);
    let result = tokio::select! {
        // Dropping the transfer leaves part files in place for a later run to resume.
        r = transfer_phase(&mut dialer, &mut link, &mut job, &mut reporter, &ctx) => r,
        _ = tokio::signal::ctrl_c() => Err(interrupted()),
    };
    if let (Err(e), Job::Receive(inc, _)) = (&result, &job) {
        let r = inc.report();
        if r.moved > 0 && !matches!(e, Error::Verify(_)) {
            say!(
                ctx.out,
                "p2pcopy: what arrived is kept; run both commands again to resume"
            );
        }
    }
    let (code, reason) = match &result {
        Ok(()) => (CloseCode::NO_ERROR, "done".to_owned()),
        // Our message speaks of "your peer"; the peer prints this after "your peer stopped: ".
        Err(e @ Error::Stalled(_)) => (
            e.close_code(),
            format!(
                "it saw no progress from you for {} s (its --stall-timeout)",
                ctx.stall_timeout.unwrap_or_default().as_secs()
            ),
        ),
        Err(e) => (e.close_code(), e.to_string()),
    };
    // Tell the peer at once, with our close code (the exit code) and message, instead of
    // letting it wait for the idle timeout. The link lives out here, not in the transfer
    // future, because dropping the last handle would close the connection first, silently,
    // with code 0.
    let reason = &reason.as_bytes()[..reason.len().min(200)];
    // A peer that closed first needs nothing more from us (QUIC's draining state sends
    // nothing), so the wait below, three probe timeouts (~0.8 s on a 200 ms path), is
    // only for the side whose CONNECTION_CLOSE may need repeating.
    let peer_closed = matches!(
        link.connection.close_reason(),
        Some(
            quinn::ConnectionError::ApplicationClosed(_)
                | quinn::ConnectionError::ConnectionClosed(_)
        )
    );
    link.connection.close(code.into(), reason);
    dialer.endpoint().close(code.into(), reason);
    if !peer_closed {
        let _ = tokio::time::timeout(Duration::from_secs(2), dialer.endpoint().wait_idle()).await;
    }
    result
}

/// The work of a run, kept across reconnects.
enum Job {
    Send(Box<transfer::Outgoing>, Option<PathBuf>),
    Receive(Box<transfer::Incoming>, Option<PathBuf>),
}

/// What reconnecting needs besides the dialer.
struct Ctx {
    out: Output,
    clock: ntp::Clock,
    timeout: u64,
    /// `--stall-timeout`, `None` for 0.
    stall_timeout: Option<Duration>,
    needs_rounds: bool,
    nat: NatKind,
    peer_nat: Option<NatKind>,
    /// The public address our router forwards to us, if the ticket carries one.
    port_mapping: Option<SocketAddr>,
}

impl Ctx {
    /// The next synchronised round of `schedule` as an `Instant`, how far away it is, and
    /// its index (which picks its lane).
    fn next_round(&self, schedule: punch::Schedule) -> (Instant, Duration, u64) {
        let now_unix = self.clock.now_unix();
        let first = schedule.first_round_unix(now_unix);
        let wait = first.saturating_sub(now_unix);
        (Instant::now() + wait, wait, schedule.index(first))
    }

    /// Punches and connects, telling the user about rounds; `reconnects` counts the
    /// connections this run had before.
    async fn connect(
        &self,
        dialer: &mut Dialer,
        deadline: Instant,
        reconnects: u32,
    ) -> Result<Link, Error> {
        let schedule = dialer.schedule();
        let (first_round, wait, first_index) = self.next_round(schedule);
        let out = self.out;
        let needs_rounds = self.needs_rounds;
        if needs_rounds {
            say!(
                out,
                "Connecting: synchronised rounds start every {} s; next in {} s",
                schedule.period.as_secs(),
                wait.as_secs()
            );
        } else {
            say!(out, "Connecting...");
        }
        out.emit(|| Event::Connecting {
            rounds: needs_rounds,
            round_period_s: needs_rounds.then_some(schedule.period.as_secs()),
            next_round_in_s: needs_rounds.then_some(wait.as_secs()),
        });
        // Without rounds nothing waits for a boundary (public peers, or a local network).
        let first_round = if needs_rounds { first_round } else { deadline };
        let link = dialer
            .connect(first_round, first_index, deadline, |p| match p {
                NetProgress::Round(n) if needs_rounds => {
                    say!(out, "Round {}: probing your peer...", n + 1);
                    out.emit(|| Event::PunchRound { round: n + 1 });
                }
                NetProgress::Round(_) => {}
            })
            .await;
        let link = match link {
            Ok(link) => link,
            Err(ConnectFailure::Fatal(e)) => return Err(e),
            Err(ConnectFailure::TimedOut { rounds, heard_peer }) => {
                return Err(Error::Connect(nat::explain_failure(
                    self.nat,
                    self.peer_nat,
                    heard_peer,
                    rounds,
                    self.timeout,
                )))
            }
        };
        let remote = link.remote;
        let rtt_ms = millis(link.connection.rtt());
        // The peer saw us at our router's forwarded port: say what made the path work.
        let via_ours = link.observed.is_some() && link.observed == self.port_mapping;
        say!(
            out,
            "Connected directly to {} ({}{}), round trip {} ms",
            remote,
            link.kind.describe(),
            if via_ours {
                ", through your router's port mapping"
            } else {
                ""
            },
            rtt_ms
        );
        out.emit(|| Event::Connected {
            path_kind: link.kind,
            remote,
            rtt_ms,
            authenticated: link.authenticated,
            verification_code: (!link.authenticated).then(|| link.verification_code.clone()),
            reconnects,
        });
        Ok(link)
    }
}

async fn connect_phase(
    cli: Cli,
    out: Output,
    mapper: &mut Option<portmap::Mapper>,
) -> Result<(Dialer, Link, Job, Ctx), Error> {
    let (role, net_args, job) = match cli.command {
        Command::Sender(a) => {
            let scan = crate::manifest::scan(&a.file)?;
            for (path, why) in &scan.skipped {
                let message = format!("not sending {}: {why}", path.display());
                say!(out, "p2pcopy: {message}");
                out.emit(|| Event::Warning { message });
            }
            if scan.entries.is_empty() {
                return Err(Error::Usage("nothing to send".into()));
            }
            (
                Role::Sender,
                a.net,
                Job::Send(Box::new(transfer::Outgoing::new(scan)), a.checksums),
            )
        }
        Command::Receiver(a) => {
            transfer::check_output_dir(&a.output)?;
            let store = transfer::Store::new(a.output, a.overwrite);
            (
                Role::Receiver,
                a.net,
                Job::Receive(Box::new(transfer::Incoming::new(store)), a.checksums),
            )
        }
        Command::StunServer(_)
        | Command::Doctor(_)
        | Command::Completions { .. }
        | Command::Man => return Err(Error::Internal("not a transfer command".into())),
    };
    let identity = Identity::generate()?;
    let socket = net::bind(net_args.bind, net_args.localport)?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    say!(out, "Using local port: {}", local.port());

    // The router is asked while STUN runs (--no-stun means LAN addresses only).
    if !net_args.no_portmap && !net_args.no_stun && portmap::worth_trying(local.ip()) {
        *mapper = Some(portmap::Mapper::start(local));
    }

    // NTP runs while the users exchange tickets.
    let ntp_task = (!net_args.no_ntp).then(|| {
        let servers = or_defaults(&net_args.ntp_servers, ntp::DEFAULT_SERVERS);
        tokio::spawn(async move { ntp::query(&servers).await })
    });

    let host_ips = net::host_ips(local.ip());
    let mut candidates = Vec::new();
    // Counting the NATs on the way out takes up to a few hundred ms per silent router and is
    // needed only for punching, so it runs while the users exchange tickets.
    let mut hops_task = None;
    let mut lanes = None;
    let (nat_kind, socket) = if net_args.no_stun {
        (NatKind::Unknown, socket)
    } else {
        let servers = or_defaults(&net_args.stun_servers, stun::DEFAULT_SERVERS);
        let tokio_sock =
            tokio::net::UdpSocket::from_std(socket).map_err(|e| Error::Internal(e.to_string()))?;
        // The lane sockets are mapped side by side with the main one.
        let (mappings, mapped_lanes) = tokio::join!(
            stun::discover(&tokio_sock, &servers),
            net::LaneSockets::map(local.ip(), &servers)
        );
        let mappings = mappings?;
        lanes = mapped_lanes;
        let socket = tokio_sock
            .into_std()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mapped: Vec<SocketAddr> = mappings.iter().map(|m| m.mapped).collect();
        let kind = nat::classify(local.port(), &host_ips, &mapped);
        say!(out, "Your NAT: {}", nat::describe(kind));
        if kind != NatKind::None {
            let (ip, server) = (local.ip(), mappings[0].server);
            hops_task = Some(tokio::spawn(crate::hops::trace(ip, server)));
        }
        // Most preferred first: a forwarded port reaches us from behind any NAT.
        if let Some(m) = port_mapping(mapper, &mapped, out).await {
            candidates.push(Candidate {
                kind: CandidateKind::PortMapped,
                addr: m.external.into(),
            });
        }
        for m in &mapped {
            let c = Candidate {
                kind: CandidateKind::Mapped,
                addr: *m,
            };
            // A cone NAT that kept the port shows STUN the forwarded address itself.
            let forwarded = candidates
                .iter()
                .any(|p| p.kind == CandidateKind::PortMapped && p.addr == *m);
            if !candidates.contains(&c) && !forwarded {
                candidates.push(c);
            }
        }
        (kind, socket)
    };
    // IPv6 next to IPv4: both are tried together and the first path that works wins.
    let v6_ips = if local.ip().is_unspecified() {
        net::host_ips_v6()
    } else {
        Vec::new()
    };
    let v6_socket = if v6_ips.is_empty() {
        None
    } else {
        let unspecified = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        net::bind(unspecified, local.port())
            .or_else(|_| net::bind(unspecified, 0))
            .inspect_err(|e| tracing::info!(error = %e, "no IPv6 socket"))
            .ok()
    };
    if let Some(port) = v6_socket
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.port())
    {
        for ip in &v6_ips {
            candidates.push(Candidate {
                kind: CandidateKind::Host,
                addr: SocketAddr::new(IpAddr::V6(*ip), port),
            });
        }
    }
    for ip in &host_ips {
        candidates.push(Candidate {
            kind: CandidateKind::Host,
            addr: SocketAddr::new(*ip, local.port()),
        });
    }
    candidates.truncate(crate::ticket::MAX_CANDIDATES);
    if candidates.is_empty() {
        return Err(Error::Usage(
            "this computer has no usable IP address; use --bind or connect to a network".into(),
        ));
    }
    let ours = FullTicket {
        role,
        nat: nat_kind,
        fingerprint: *identity.fingerprint(),
        candidates,
        lane_ports: lanes.as_ref().map(|l| l.ports.clone()).unwrap_or_default(),
    };
    out.print(format_args!("Tell this to your peer: {ours}"));
    out.emit(|| Event::Ticket {
        role,
        ticket: ours.to_string(),
        local_port: local.port(),
        nat: nat_kind,
        candidates: ours.candidates.clone(),
    });

    let peer = match &net_args.peer {
        Some(text) => check_peer(text.parse()?, &ours)?,
        None => prompt_for_peer(&ours, out).await?,
    };
    let pasted = Instant::now();
    let peer_nat = peer.nat();
    // A router's port mapping on either side reaches through any NAT, symmetric included:
    // it is probed at once, so it is no reason to fail, nor to warn.
    let port_mapped = ours.has_port_mapping() || peer.has_port_mapping();
    // Both symmetric: rounds cannot help, only addresses probed at once (a shared local
    // network, IPv6, a port mapping); without any, say so now rather than after minutes of
    // rounds that cannot succeed.
    let lan_only = nat::both_symmetric(nat_kind, peer_nat);
    if lan_only
        && !port_mapped
        && !net::shares_a_network(&peer)
        && !net::both_have_ipv6(&ours, &peer)
    {
        return Err(Error::Connect(nat::explain_failure(
            nat_kind,
            peer_nat,
            false,
            0,
            net_args.timeout,
        )));
    }
    let warning = if port_mapped {
        None
    } else {
        nat::warn_before(nat_kind, peer_nat)
    };
    if let Some(warning) = &warning {
        say!(out, "p2pcopy: warning: {warning}");
    }
    out.emit(|| Event::Nat {
        ours: nat_kind,
        peer: peer_nat,
        warning: warning.clone(),
    });
    let deadline = pasted + Duration::from_secs(net_args.timeout);

    let clock = match ntp_task {
        None => ntp::Clock::default(),
        Some(task) => match task.await.ok().flatten() {
            Some((_, clock)) => clock,
            None => {
                let message = "no NTP server answered; using this computer's clock, so connecting may take longer if your clocks differ";
                say!(out, "p2pcopy: warning: {message}");
                out.emit(|| Event::Warning {
                    message: message.into(),
                });
                ntp::Clock::default()
            }
        },
    };
    let opener_ttl = match hops_task {
        Some(task) => {
            let hops = task.await.unwrap_or_default();
            let ttl = crate::hops::opener_ttl_for(&hops);
            tracing::info!(?hops, opener_ttl = ttl, "routers on the way out");
            ttl
        }
        None => DEFAULT_OPENER_TTL,
    };
    let needs_rounds = !lan_only
        && net::targets(&peer)
            .iter()
            .any(|t| matches!(t.kind, PathKind::Mapped | PathKind::Typed));
    let ctx = Ctx {
        out,
        clock,
        timeout: net_args.timeout,
        stall_timeout: (net_args.stall_timeout > 0)
            .then(|| Duration::from_secs(net_args.stall_timeout)),
        needs_rounds,
        nat: nat_kind,
        peer_nat,
        port_mapping: ours
            .candidates
            .iter()
            .find(|c| c.kind == CandidateKind::PortMapped)
            .map(|c| c.addr),
    };
    let mut dialer = Dialer::new(
        socket,
        v6_socket,
        role == Role::Sender,
        identity,
        peer,
        Some(opener_ttl),
        // A port mapping connects at once, without guessing ports (both sides see both
        // tickets, so they agree).
        nat::birthday_part(nat_kind, peer_nat).filter(|_| !port_mapped),
        lanes,
    )?;
    let link = ctx.connect(&mut dialer, deadline, 0).await?;
    Ok((dialer, link, job, ctx))
}

/// The mapper's result, if it is one a peer can use: its external address must be the public
/// address STUN saw (`mapped`), else another NAT sits in front of the router and the forward
/// leads nowhere; such a mapping is removed at once. Tells the user about a usable one.
async fn port_mapping(
    mapper: &mut Option<portmap::Mapper>,
    mapped: &[SocketAddr],
    out: Output,
) -> Option<portmap::Mapping> {
    let m = mapper.as_mut()?.mapping().await?;
    if !mapped
        .iter()
        .any(|a| a.ip() == IpAddr::V4(*m.external.ip()))
    {
        tracing::info!(protocol = %m.protocol, external = %m.external, ?mapped, "the router's port mapping is not on the public address STUN saw (another NAT in front of it?); not using it");
        if let Some(mapper) = mapper.take() {
            mapper.release().await;
        }
        return None;
    }
    let lease = match m.lease.as_secs() {
        0 => String::new(),
        s if s % 3600 == 0 => format!(", {} h lease renewed while p2pcopy runs", s / 3600),
        s => format!(", {} min lease renewed while p2pcopy runs", s.div_ceil(60)),
    };
    say!(
        out,
        "Port mapping: your router forwards {} to this computer ({}{lease}; removed at exit)",
        m.external,
        m.protocol
    );
    out.emit(|| Event::PortMapping {
        protocol: m.protocol,
        external: m.external.into(),
        lease_s: m.lease.as_secs(),
    });
    Some(m)
}

/// Moves the job, reconnecting whenever the path dies, until it is done or cannot go on.
async fn transfer_phase(
    dialer: &mut Dialer,
    link: &mut Link,
    job: &mut Job,
    reporter: &mut progress::Reporter,
    ctx: &Ctx,
) -> Result<(), Error> {
    let out = ctx.out;
    let mut reconnects = 0;
    loop {
        let opts = transfer::Options {
            stall_timeout: ctx.stall_timeout,
            ..transfer::Options::new(link.authenticated)
        };
        let result = match job {
            Job::Send(sending, _) => sending.run(&link.connection, opts, reporter).await,
            Job::Receive(inc, _) => inc.run(&link.connection, opts, reporter).await,
        };
        transfer::log_path_stats(&link.connection);
        match result {
            Ok(()) => break,
            Err(Error::ConnectionLost(why)) => {
                say!(
                    out,
                    "Connection lost ({why}); reconnecting for up to {} s. Received data is kept.",
                    ctx.timeout
                );
                out.emit(|| Event::Reconnecting {
                    reason: why.clone(),
                    timeout_s: ctx.timeout,
                });
                link.connection.close(CloseCode::NO_ERROR.into(), b"lost");
                let deadline = Instant::now() + Duration::from_secs(ctx.timeout);
                reconnects += 1;
                *link = ctx.connect(dialer, deadline, reconnects).await.map_err(|e| match e {
                    Error::Connect(_) => Error::ConnectionLost(format!(
                        "{why}, and no new path was found within {} s; run both commands again to resume",
                        ctx.timeout
                    )),
                    other => other,
                })?;
            }
            Err(e) => return Err(e),
        }
    }
    match job {
        Job::Send(sending, checksums) => {
            let r = sending.report();
            say_done(out, link, "Sent", r);
            match r.hashes.as_slice() {
                [] => {}
                [(_, h)] => say!(out, "The receiver verified it: BLAKE3 {h}"),
                many => say!(
                    out,
                    "The receiver verified all {} files (BLAKE3)",
                    many.len()
                ),
            }
            if let Some(path) = checksums {
                write_checksums(path, r.hashes.iter().map(|(p, h)| (p.clone(), *h)))?;
            }
            // Last, so that a program sees `summary` only when nothing can fail any more.
            out.emit(|| summary(Role::Sender, r, link));
            link.connection.close(CloseCode::NO_ERROR.into(), b"done");
        }
        Job::Receive(inc, checksums) => {
            let r = inc.report();
            say_done(out, link, "Received", r);
            let root = inc.store().root().to_owned();
            if let (1, Some(saved)) = (r.files + r.dirs + r.links, inc.saved_as()) {
                say!(out, "Saved as {}", saved.display());
            } else {
                say!(out, "Saved into {}", root.display());
            }
            for (name, at) in r.renamed.iter().take(5) {
                say!(
                    out,
                    "  {name} was saved as {} (the name was taken)",
                    at.display()
                );
            }
            if r.renamed.len() > 5 {
                say!(
                    out,
                    "  ... and {} more under new names",
                    r.renamed.len() - 5
                );
            }
            match r.hashes.as_slice() {
                [] => {}
                [(_, h)] => say!(out, "BLAKE3 {h} verified"),
                many => say!(out, "All {} files verified (BLAKE3)", many.len()),
            }
            if let Some(path) = checksums {
                write_checksums(path, inc.saved_hashes())?;
            }
            out.emit(|| summary(Role::Receiver, r, link));
            transfer::linger(&link.connection).await;
        }
    }
    Ok(())
}

/// The closing `summary` event, with the same numbers as the human closing lines.
fn summary(role: Role, r: &transfer::Report, link: &Link) -> Event {
    Event::Summary {
        role,
        files: r.files,
        folders: r.dirs,
        links: r.links,
        total_bytes: r.total,
        moved_bytes: r.moved,
        resumed_bytes: r.resumed,
        already_there: r.already_there,
        reconnects: r.reconnects,
        elapsed_s: crate::events::seconds(r.elapsed),
        bytes_per_s: crate::progress::rate(r.moved, r.elapsed),
        verification_code: code_to_compare(link, r.peer_authenticated).map(str::to_owned),
    }
}

/// `3 files (181.64 MiB) in 16.3 s, 11.14 MiB/s` for the closing line.
fn amount_and_rate(r: &transfer::Report) -> String {
    let rate = progress::rate(r.moved, r.elapsed);
    let what = match (r.files, r.dirs) {
        (1, 0) => String::new(),
        (f, 0) => format!("{f} files "),
        (f, d) => format!(
            "{f} file{} in {d} folder{} ",
            if f == 1 { "" } else { "s" },
            if d == 1 { "" } else { "s" }
        ),
    };
    format!(
        "{what}({}) in {:.1} s, {}/s",
        indicatif::HumanBytes(r.total),
        r.elapsed.as_secs_f64(),
        indicatif::HumanBytes(rate)
    )
}

/// What was not sent because the receiver had it, or `None` when everything was sent.
fn reuse_note(r: &transfer::Report) -> Option<String> {
    let mut parts = Vec::new();
    if r.resumed > 0 {
        parts.push(format!(
            "{} resumed from an earlier run",
            indicatif::HumanBytes(r.resumed)
        ));
    }
    if r.already_there > 0 {
        parts.push(format!(
            "{} file{} already there",
            r.already_there,
            if r.already_there == 1 { "" } else { "s" }
        ));
    }
    if r.reconnects > 0 {
        parts.push(format!(
            "reconnected {} time{}",
            r.reconnects,
            if r.reconnects == 1 { "" } else { "s" }
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `x.tif ` for a one-file job, else nothing (the amount names the count).
fn single_name(r: &transfer::Report) -> String {
    match (r.files + r.dirs + r.links, r.hashes.first()) {
        (1, Some((p, _))) => format!("{p} "),
        _ => String::new(),
    }
}

/// Writes what `generate` makes to stdout; a reader that stops early (`| head`) is no error.
/// Made in memory first: clap_complete panics on a failed write.
fn print_generated(
    generate: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> Result<(), Error> {
    let mut text = Vec::new();
    generate(&mut text).map_err(|e| Error::Internal(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Output {
            path: "standard output".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes `hash  path` lines, the format `b3sum --check` reads.
fn write_checksums(
    path: &std::path::Path,
    hashes: impl Iterator<Item = (String, blake3::Hash)>,
) -> Result<(), Error> {
    let text: String = hashes.map(|(p, h)| checksum_line(&p, &h)).collect();
    std::fs::write(path, text).map_err(|e| Error::Output {
        path: path.to_owned(),
        source: e,
    })
}

/// One `b3sum` line for `path`. A name holding a backslash or a line break is written the
/// way b3sum writes it (and `b3sum --check` reads it back): the line starts with a backslash and
/// those characters are escaped, so such a name cannot break the file into false lines.
fn checksum_line(path: &str, hash: &blake3::Hash) -> String {
    if path.contains(['\\', '\n', '\r']) {
        let escaped = path
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{hash}  {escaped}\n")
    } else {
        format!("{hash}  {path}\n")
    }
}

async fn doctor(args: &DoctorArgs, out: Output) -> Result<(), Error> {
    let stun = or_defaults(&args.stun_servers, stun::DEFAULT_SERVERS);
    let ntp = or_defaults(&args.ntp_servers, ntp::DEFAULT_SERVERS);
    let findings = crate::doctor::run(
        args.bind,
        args.localport,
        &stun,
        (!args.no_ntp).then_some(&ntp[..]),
        !args.no_portmap,
    )
    .await?;
    for line in crate::doctor::render(&findings) {
        out.print(format_args!("{line}"));
    }
    out.emit(|| findings.event());
    if findings.servers.iter().all(|s| s.mapped.is_none()) {
        return Err(Error::Stun {
            tried: stun.join(", "),
        });
    }
    Ok(())
}

async fn serve_stun(args: &StunServerArgs, out: Output) -> Result<(), Error> {
    if args.alternate_ip.is_some() && args.listen.ip().is_unspecified() {
        return Err(Error::Usage(
            "--alternate-ip needs a specific --listen address (RFC 5780 answers name both)".into(),
        ));
    }
    let server = stun::server::Server::bind(args.listen, args.alternate_ip).await?;
    for &addr in server.local_addrs() {
        out.print(format_args!("STUN server listening on {addr}"));
        out.emit(|| Event::Listening { addr });
    }
    server.run().await
}

/// The code both users compare, when either side could not check the other's certificate
/// (one of them used a bare `ip:port`).
fn code_to_compare(link: &Link, peer_authenticated: bool) -> Option<&str> {
    (!link.authenticated || !peer_authenticated).then_some(link.verification_code.as_str())
}

/// The lines both sides print when the job is done: the code to compare (if any), what
/// moved, and what an earlier run had already done.
fn say_done(out: Output, link: &Link, verb: &str, r: &transfer::Report) {
    if let Some(code) = code_to_compare(link, r.peer_authenticated) {
        say!(out, "Verification code: {code} (an ip:port was used instead of a ticket, so compare this code with your peer; if it differs, someone is in the middle)");
    }
    say!(out, "{verb} {}{}", single_name(r), amount_and_rate(r));
    if let Some(note) = reuse_note(r) {
        say!(out, "({note})");
    }
}

fn or_defaults(given: &[String], defaults: &[&str]) -> Vec<String> {
    if given.is_empty() {
        defaults.iter().map(|s| s.to_string()).collect()
    } else {
        given.to_vec()
    }
}

/// Rejects tickets that cannot lead anywhere: our own, or one of the same role.
fn check_peer(peer: Ticket, ours: &FullTicket) -> Result<Ticket, Error> {
    if let Ticket::Full(t) = &peer {
        if t.fingerprint == ours.fingerprint {
            return Err(Error::Roles(
                "that is your own ticket; paste the one your peer sent you".into(),
            ));
        }
        if t.role == ours.role {
            return Err(Error::Roles(format!(
                "your peer also ran `p2pcopy {}`; one of you must run `p2pcopy {}`",
                ours.role,
                ours.role.opposite()
            )));
        }
    }
    Ok(peer)
}

async fn prompt_for_peer(ours: &FullTicket, out: Output) -> Result<Ticket, Error> {
    // A program reading --json sends the ticket unasked, and a mistyped one is an error it
    // sees as an event rather than a question on a terminal it may not show.
    let person = !out.is_json();
    let interactive = person && std::io::stdin().is_terminal();
    loop {
        if person {
            eprint!("Enter your peer's ticket (or ip:port): ");
            let _ = std::io::stderr().flush();
        }
        let line = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).map(|n| (n, s))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
        if person && !interactive {
            // A terminal echoes the user's Enter; a pipe does not, so end the prompt line here.
            eprintln!();
        }
        let line = match line {
            Ok((0, _)) => {
                return Err(Error::Usage(
                    "no ticket entered (standard input closed)".into(),
                ))
            }
            Ok((_, s)) => s,
            Err(e) => return Err(Error::Usage(format!("cannot read the ticket: {e}"))),
        };
        match line
            .parse::<Ticket>()
            .map_err(Error::from)
            .and_then(|t| check_peer(t, ours))
        {
            Ok(t) => return Ok(t),
            // On a terminal a typo deserves another try; in a script it is an error.
            // The line may hold what was pasted: escaped like every other error.
            Err(e) if interactive => eprintln!("{}", crate::events::error_line(&e.to_string())),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use clap::CommandFactory;

    #[test]
    fn checksum_lines_escape_names_the_way_b3sum_does() {
        // Expected lines as b3sum 1.2 (Debian) printed them for files holding "x", "y", "z".
        let h = |data: &[u8]| blake3::hash(data);
        assert_eq!(
            checksum_line("a\\b", &h(b"x")),
            "\\3ae7d805f6789a6402acb70ad4096a85a56bf6804eaf25c0493ac697548d30b5  a\\\\b\n"
        );
        assert_eq!(
            checksum_line("c\nd", &h(b"y")),
            "\\08112a9e334ce73042b531c25668cf5cb12a1ee040a4326afeac065461079a06  c\\nd\n"
        );
        assert_eq!(
            checksum_line("plain", &h(b"z")),
            "1104908ab930e671002c7cd7f3fc921570b1bf64ecfa12fe363585c630eaca6b  plain\n"
        );
        assert!(checksum_line("x\ry", &h(b"")).ends_with("  x\\ry\n"));
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn original_usage_parses() {
        let cli = Cli::try_parse_from([
            "p2pcopy",
            "sender",
            "--localport",
            "4300",
            "--file",
            "x.tif",
        ])
        .unwrap();
        match cli.command {
            Command::Sender(a) => {
                assert_eq!(a.net.localport, 4300);
                assert_eq!(a.file, [PathBuf::from("x.tif")]);
                assert_eq!(a.net.timeout, 120);
                assert_eq!(a.net.stall_timeout, 120);
            }
            _ => panic!(),
        }
        let cli = Cli::try_parse_from(["p2pcopy", "receiver", "--localport", "21300"]).unwrap();
        assert!(matches!(cli.command, Command::Receiver(ref a) if a.output.as_os_str() == "."));
    }

    #[test]
    fn no_portmap_flag() {
        for role in ["sender", "receiver"] {
            let mut args = vec!["p2pcopy", role, "--no-portmap"];
            if role == "sender" {
                args.extend(["--file", "x"]);
            }
            let net = match Cli::try_parse_from(&args).unwrap().command {
                Command::Sender(a) => a.net,
                Command::Receiver(a) => a.net,
                _ => panic!(),
            };
            assert!(net.no_portmap);
        }
        let cli = Cli::try_parse_from(["p2pcopy", "doctor", "--no-portmap"]).unwrap();
        assert!(matches!(cli.command, Command::Doctor(ref a) if a.no_portmap));
        let cli = Cli::try_parse_from(["p2pcopy", "receiver"]).unwrap();
        assert!(matches!(cli.command, Command::Receiver(ref a) if !a.net.no_portmap));
    }

    #[test]
    fn stall_timeout_flag() {
        for (given, want) in [("0", 0), ("1", 1), ("600", 600)] {
            let cli =
                Cli::try_parse_from(["p2pcopy", "receiver", "--stall-timeout", given]).unwrap();
            assert!(matches!(cli.command, Command::Receiver(ref a) if a.net.stall_timeout == want));
        }
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            vec!["p2pcopy", "receiver", "--localport", "70000"],
            vec!["p2pcopy", "receiver", "--timeout", "0"],
            vec!["p2pcopy", "receiver", "--stall-timeout", "-1"],
            vec!["p2pcopy", "receiver", "--stall-timeout", "86401"],
            vec!["p2pcopy", "sender"],
            vec![
                "p2pcopy",
                "receiver",
                "--no-stun",
                "--stun-server",
                "1.2.3.4:3478",
            ],
        ] {
            let e = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn same_role_and_own_ticket_are_refused() {
        let ours = FullTicket {
            role: Role::Sender,
            nat: NatKind::Unknown,
            fingerprint: Fingerprint::from_bytes([1; 32]),
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr: "10.0.0.1:1".parse().unwrap(),
            }],
            lane_ports: Vec::new(),
        };
        let same = Ticket::Full(FullTicket {
            fingerprint: Fingerprint::from_bytes([2; 32]),
            ..ours.clone()
        });
        assert!(matches!(check_peer(same, &ours), Err(Error::Roles(m)) if m.contains("receiver")));
        assert!(
            matches!(check_peer(Ticket::Full(ours.clone()), &ours), Err(Error::Roles(m)) if m.contains("own ticket"))
        );
        let good = Ticket::Full(FullTicket {
            fingerprint: Fingerprint::from_bytes([2; 32]),
            role: Role::Receiver,
            ..ours.clone()
        });
        assert!(check_peer(good, &ours).is_ok());
    }
}
