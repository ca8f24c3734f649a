//! Command-line interface: the flags (here), the runs as a shell over
//! [`crate::session`] (`run`), the writer of every line a person or a program reads
//! ([`output`]), and the progress bar ([`progress`]).

pub mod config;
pub mod control;
pub mod endpoint;
mod linkc;
mod linkd;
pub mod output;
pub mod progress;
pub mod relay_args;
mod run;
mod watch;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::transfer;
use output::Output;

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
    /// Read defaults (relays, STUN and NTP servers, --output, --timeout) from FILE instead
    /// of the platform's config file (e.g. ~/.config/p2pcopy/config.toml); flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Hold a link that stays: after one ticket exchange, both sides send any number of
    /// jobs, any time (`p2pcopy send --to NAME`), until Ctrl-C; the peer's land in --output.
    Link(LinkArgs),
    /// Send files or folders over a running link (`p2pcopy link --name NAME`); returns once
    /// the peer verified them.
    Send(SendArgs),
    /// Show the running links: peer, path, RTT, queue, jobs done, rate.
    Status(StatusArgs),
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
    /// TURN relay flags (cli/relay_args.rs).
    #[command(flatten)]
    pub relay: relay_args::RelayArgs,
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

/// Flags of `p2pcopy link`.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// The link's name, for `p2pcopy send --to NAME` and `status` (letters, digits, `.`,
    /// `_`, `-`).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Directory the peer's files land in (as a receiver's --output).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Replace existing files of the same name instead of numbering the new ones.
    #[arg(long)]
    pub overwrite: bool,
    /// Also send what appears or changes under DIR (recursively), each file once it has
    /// been quiet for 1 s, under its path below DIR; deletions are not sent (see --delete).
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// With --watch: also send deletions. The peer removes its copy only if its link has
    /// --allow-delete and the copy is still what this link sent.
    #[arg(long, requires = "watch")]
    pub delete: bool,
    /// Honour the peer's deletions (its --watch --delete) under --output: a file only while
    /// it holds exactly what the peer sent, a folder only when empty.
    #[arg(long)]
    pub allow_delete: bool,
    /// Give up after this many seconds without a path (default: keep trying for ever;
    /// --timeout bounds each attempt).
    #[arg(long, value_name = "SECS")]
    pub reconnect_for: Option<u64>,
    /// Network flags.
    #[command(flatten)]
    pub net: NetArgs,
}

/// Flags of `p2pcopy send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The running link to send over (its --name).
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// Files or folders to send, as one job.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Return once the link has queued the job, without waiting for the peer.
    #[arg(long)]
    pub no_wait: bool,
}

/// Flags of `p2pcopy status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this link (default: every running link of yours).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
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
    /// Start every connection from ten packets: do not use the rate the last transfer over
    /// the same path measured, nor remember this one's (kept in the cache folder,
    /// e.g. ~/.cache/p2pcopy/rates).
    #[arg(long)]
    pub no_rate_memory: bool,
    /// TURN relay flags (cli/relay_args.rs).
    #[command(flatten)]
    pub relay: relay_args::RelayArgs,
}

pub use run::run;

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
}
