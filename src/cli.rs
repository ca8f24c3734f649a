//! Command-line interface: flags, the user's screen, and the order of a run.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::net::{self, ConnectFailure, Progress as NetProgress, Session};
use crate::punch::{self, PathKind, DEFAULT_OPENER_TTL};
use crate::ticket::{Candidate, CandidateKind, FullTicket, NatKind, Role, Ticket};
use crate::tls::Identity;
use crate::{nat, ntp, stun, transfer};

/// Copy a file straight from one computer to another, across NATs, with no server in between.
///
/// Both users run p2pcopy (one `sender`, one `receiver`), paste each other the line it
/// prints, and the file flows directly between the two machines over an encrypted,
/// authenticated QUIC connection, verified with BLAKE3.
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
}

/// The two roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a file.
    Sender(SenderArgs),
    /// Receive a file into the current directory (or --output).
    Receiver(ReceiverArgs),
    /// Run a STUN server (RFC 5389; RFC 5780 NAT behaviour discovery with --alternate-ip),
    /// for networks that cannot reach public ones: give its address to --stun-server.
    StunServer(StunServerArgs),
}

/// Flags of `p2pcopy sender`.
#[derive(Debug, Args)]
pub struct SenderArgs {
    /// The file to send.
    #[arg(short, long, value_name = "PATH")]
    pub file: PathBuf,
    /// Network flags.
    #[command(flatten)]
    pub net: NetArgs,
}

/// Flags of `p2pcopy receiver`.
#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Directory the file is written into; an existing file is never replaced.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
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
    /// Give up connecting after this many seconds from the moment the ticket is entered.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

/// Prints an informational line on stderr unless --quiet.
macro_rules! say {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            eprintln!($($arg)*);
        }
    };
}

/// Runs one p2pcopy command to completion.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let quiet = cli.quiet;
    if let Command::StunServer(args) = &cli.command {
        return tokio::select! {
            r = serve_stun(args) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted("stopped".into())),
        };
    }
    let interrupted = || Error::Interrupted("interrupted".into());
    let (link, job) = tokio::select! {
        r = connect_phase(cli) => r?,
        _ = tokio::signal::ctrl_c() => return Err(interrupted()),
    };
    let result = tokio::select! {
        // Dropping the transfer future removes any partial file.
        r = transfer_phase(&link, job, quiet) => r,
        _ = tokio::signal::ctrl_c() => Err(interrupted()),
    };
    if let Err(e) = &result {
        // Tell the peer at once instead of letting it wait for the idle timeout.
        let reason = e.to_string();
        link.connection.close(
            u32::from(e.exit_code()).into(),
            &reason.as_bytes()[..reason.len().min(200)],
        );
    }
    link.endpoint.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_secs(2), link.endpoint.wait_idle()).await;
    result
}

enum Job {
    Send {
        path: PathBuf,
        file: File,
        size: u64,
        name: String,
    },
    Receive {
        dir: PathBuf,
    },
}

async fn connect_phase(cli: Cli) -> Result<(net::Link, Job), Error> {
    let quiet = cli.quiet;
    let (role, net_args, job) = match cli.command {
        Command::Sender(a) => {
            let path = a.file;
            let err = |source| Error::Input {
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(err)?;
            let meta = file.metadata().map_err(err)?;
            if !meta.is_file() {
                return Err(err(std::io::Error::other("not a regular file")));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            (
                Role::Sender,
                a.net,
                Job::Send {
                    path,
                    file,
                    size: meta.len(),
                    name,
                },
            )
        }
        Command::Receiver(a) => {
            transfer::check_output_dir(&a.output)?;
            (Role::Receiver, a.net, Job::Receive { dir: a.output })
        }
        Command::StunServer(_) => return Err(Error::Internal("not a transfer command".into())),
    };

    let identity = Identity::generate()?;
    let socket = net::bind(net_args.bind, net_args.localport)?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    say!(quiet, "Using local port: {}", local.port());

    // NTP runs while the users exchange tickets.
    let ntp_task = (!net_args.no_ntp).then(|| {
        let servers = or_defaults(&net_args.ntp_servers, ntp::DEFAULT_SERVERS);
        tokio::spawn(async move { ntp::query(&servers).await })
    });

    let host_ips = net::host_ips(local.ip());
    let mut candidates = Vec::new();
    let (nat_kind, socket) = if net_args.no_stun {
        (NatKind::Unknown, socket)
    } else {
        let servers = or_defaults(&net_args.stun_servers, stun::DEFAULT_SERVERS);
        let tokio_sock =
            tokio::net::UdpSocket::from_std(socket).map_err(|e| Error::Internal(e.to_string()))?;
        let mappings = stun::discover(&tokio_sock, &servers).await?;
        let socket = tokio_sock
            .into_std()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mapped: Vec<SocketAddr> = mappings.iter().map(|m| m.mapped).collect();
        let kind = nat::classify(local.port(), &host_ips, &mapped);
        for m in &mapped {
            let c = Candidate {
                kind: CandidateKind::Mapped,
                addr: *m,
            };
            if !candidates.contains(&c) {
                candidates.push(c);
            }
        }
        say!(quiet, "Your NAT: {}", nat::describe(kind));
        (kind, socket)
    };
    for ip in &host_ips {
        candidates.push(Candidate {
            kind: CandidateKind::Host,
            addr: SocketAddr::new(*ip, local.port()),
        });
    }
    candidates.truncate(crate::ticket::MAX_CANDIDATES);
    if candidates.is_empty() {
        return Err(Error::Usage(
            "this computer has no usable IPv4 address; use --bind or connect to a network".into(),
        ));
    }
    let ours = FullTicket {
        role,
        nat: nat_kind,
        fingerprint: *identity.fingerprint(),
        candidates,
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "Tell this to your peer: {ours}");
        let _ = out.flush();
    }

    let peer = match &net_args.peer {
        Some(text) => check_peer(text.parse()?, &ours)?,
        None => prompt_for_peer(&ours).await?,
    };
    let pasted = Instant::now();
    let peer_nat = peer.nat();
    if let Some(warning) = nat::warn_before(nat_kind, peer_nat) {
        say!(quiet, "p2pcopy: warning: {warning}");
    }
    let deadline = pasted + Duration::from_secs(net_args.timeout);

    let clock = match ntp_task {
        None => ntp::Clock::default(),
        Some(task) => match task.await.ok().flatten() {
            Some((_, clock)) => clock,
            None => {
                say!(quiet, "p2pcopy: warning: no NTP server answered; using this computer's clock, so connecting may take longer if your clocks differ");
                ntp::Clock::default()
            }
        },
    };
    let now_unix = clock.now_unix();
    let first_unix = punch::first_round_unix(now_unix);
    let wait = first_unix.saturating_sub(now_unix);
    let needs_rounds = net::targets(&peer)
        .iter()
        .any(|t| matches!(t.kind, PathKind::Mapped | PathKind::Typed));
    if needs_rounds {
        say!(
            quiet,
            "Connecting: synchronised rounds start every {} s; next in {} s",
            punch::ROUND_PERIOD.as_secs(),
            wait.as_secs()
        );
    } else {
        say!(quiet, "Connecting...");
    }

    let session = Session {
        socket,
        is_client: role == Role::Sender,
        identity,
        peer,
        first_round: Instant::now() + wait,
        deadline,
        opener_ttl: Some(DEFAULT_OPENER_TTL),
    };
    let link = match net::connect(session, |p| match p {
        NetProgress::Round(n) if needs_rounds => {
            say!(quiet, "Round {}: probing your peer...", n + 1)
        }
        NetProgress::Round(_) => {}
    })
    .await
    {
        Ok(link) => link,
        Err(ConnectFailure::Fatal(e)) => return Err(e),
        Err(ConnectFailure::TimedOut { rounds, heard_peer }) => {
            return Err(Error::Connect(nat::explain_failure(
                nat_kind,
                peer_nat,
                heard_peer,
                rounds,
                net_args.timeout,
            )))
        }
    };
    let remote = link.connection.remote_address();
    say!(
        quiet,
        "Connected directly to {remote} ({}), round trip {} ms",
        link.kind.describe(),
        link.connection.rtt().as_millis()
    );

    Ok((link, job))
}

async fn transfer_phase(link: &net::Link, job: Job, quiet: bool) -> Result<(), Error> {
    let opts = transfer::Options {
        authenticated: link.authenticated,
        quiet,
    };
    match job {
        Job::Send {
            path,
            file,
            size,
            name,
        } => {
            let r = transfer::send(&link.connection, &path, file, size, &name, opts).await;
            if let Ok(s) = &r {
                show_code(quiet, link, s.peer_authenticated);
                say!(quiet, "Sent {name} {}", s.amount_and_rate());
                say!(quiet, "The receiver verified it: BLAKE3 {}", s.hash);
                link.connection.close(0u32.into(), b"done");
            }
            r.map(drop)
        }
        Job::Receive { dir } => {
            let r = transfer::receive(&link.connection, &dir, opts).await;
            if let Ok(s) = &r {
                show_code(quiet, link, s.peer_authenticated);
                let saved = s.saved_as.as_deref().unwrap_or(&dir);
                say!(quiet, "Received {}", s.amount_and_rate());
                if saved
                    .file_name()
                    .map(|n| n.to_string_lossy() != s.announced_name)
                    .unwrap_or(false)
                {
                    say!(
                        quiet,
                        "Saved as {} (the name {:?} was taken or unsafe)",
                        saved.display(),
                        s.announced_name
                    );
                } else {
                    say!(quiet, "Saved as {}", saved.display());
                }
                say!(quiet, "BLAKE3 {} verified", s.hash);
                transfer::linger(&link.connection).await;
            }
            r.map(drop)
        }
    }
}

async fn serve_stun(args: &StunServerArgs) -> Result<(), Error> {
    if args.alternate_ip.is_some() && args.listen.ip().is_unspecified() {
        return Err(Error::Usage(
            "--alternate-ip needs a specific --listen address (RFC 5780 answers name both)".into(),
        ));
    }
    let server = stun::server::Server::bind(args.listen, args.alternate_ip).await?;
    {
        let mut out = std::io::stdout().lock();
        for a in server.local_addrs() {
            let _ = writeln!(out, "STUN server listening on {a}");
        }
        let _ = out.flush();
    }
    server.run().await
}

fn show_code(quiet: bool, link: &net::Link, peer_authenticated: bool) {
    if !link.authenticated || !peer_authenticated {
        say!(quiet, "Verification code: {} (an ip:port was used instead of a ticket, so compare this code with your peer; if it differs, someone is in the middle)", link.verification_code);
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

async fn prompt_for_peer(ours: &FullTicket) -> Result<Ticket, Error> {
    let interactive = std::io::stdin().is_terminal();
    loop {
        eprint!("Enter your peer's ticket (or ip:port): ");
        let _ = std::io::stderr().flush();
        let line = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).map(|n| (n, s))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
        if !interactive {
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
            Err(e) if interactive => eprintln!("p2pcopy: {e}"),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
                assert_eq!(a.file, PathBuf::from("x.tif"));
                assert_eq!(a.net.timeout, 120);
            }
            _ => panic!(),
        }
        let cli = Cli::try_parse_from(["p2pcopy", "receiver", "--localport", "21300"]).unwrap();
        assert!(matches!(cli.command, Command::Receiver(ref a) if a.output.as_os_str() == "."));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            vec!["p2pcopy", "receiver", "--localport", "70000"],
            vec!["p2pcopy", "receiver", "--timeout", "0"],
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
            fingerprint: [1; 32],
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr: "10.0.0.1:1".parse().unwrap(),
            }],
        };
        let same = Ticket::Full(FullTicket {
            fingerprint: [2; 32],
            ..ours.clone()
        });
        assert!(matches!(check_peer(same, &ours), Err(Error::Roles(m)) if m.contains("receiver")));
        assert!(
            matches!(check_peer(Ticket::Full(ours.clone()), &ours), Err(Error::Roles(m)) if m.contains("own ticket"))
        );
        let good = Ticket::Full(FullTicket {
            fingerprint: [2; 32],
            role: Role::Receiver,
            ..ours.clone()
        });
        assert!(check_peer(good, &ours).is_ok());
    }
}
