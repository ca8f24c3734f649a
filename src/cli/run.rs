//! The runs: a sender's and a receiver's as a thin shell over [`crate::session`] (flags to a
//! config, the prompt, Ctrl-C, the closing lines), and the other commands.

use std::io::{IsTerminal, Write};

use clap::CommandFactory;

use super::output::Output;
use super::progress::Reporter;
use super::relay_args;
use super::{Cli, Command, DoctorArgs, NetArgs, ReceiverArgs, SenderArgs, StunServerArgs};
use crate::error::Error;
use crate::events::Event;
use crate::session::{Cleanup, Events, Link, Session, SessionConfig};
use crate::ticket::{Role, Ticket};
use crate::{ntp, stun, transfer};

/// Prints an informational line on stderr for a person (not with --quiet or --json).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.say(format_args!($($arg)*))
    };
}

/// Runs one p2pcopy command to completion, reporting through `out`; the caller reports the
/// error that ends it.
pub async fn run(cli: Cli, out: Output) -> Result<(), Error> {
    match cli.command {
        Command::Completions { shell } => print_generated(|w| {
            clap_complete::generate(shell, &mut Cli::command(), "p2pcopy", w);
            Ok(())
        }),
        Command::Man => print_generated(|w| clap_mangen::Man::new(Cli::command()).render(w)),
        Command::StunServer(args) => tokio::select! {
            r = serve_stun(&args, out) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted("stopped".into())),
        },
        Command::Doctor(args) => tokio::select! {
            r = doctor(&args, out) => r,
            _ = tokio::signal::ctrl_c() => Err(interrupted()),
        },
        command => {
            // The router's port mapping, if any, outlives the run's futures so it is removed
            // however the run ends: done, failed, or Ctrl-C (even mid-attempt).
            let cleanup = Cleanup::default();
            let result = match command {
                Command::Sender(args) => sender(args, out, &cleanup).await,
                Command::Receiver(args) => receiver(args, out, &cleanup).await,
                Command::Link(args) => super::linkd::link(args, out, &cleanup).await,
                Command::Send(args) => super::linkc::send(args, out).await,
                Command::Status(args) => super::linkc::status(args, out).await,
                _ => Err(Error::Internal("not a transfer command".into())),
            };
            cleanup.release().await;
            result
        }
    }
}

/// What Ctrl-C ends a run with (exit code 130).
fn interrupted() -> Error {
    Error::Interrupted("interrupted".into())
}

/// The session's settings from the flags both roles share.
pub(super) fn session_config(role: Role, net: &NetArgs) -> Result<SessionConfig, Error> {
    Ok(SessionConfig {
        role,
        bind: net.bind,
        local_port: net.localport,
        stun_servers: net.stun_servers.clone(),
        ntp_servers: net.ntp_servers.clone(),
        no_stun: net.no_stun,
        no_ntp: net.no_ntp,
        no_portmap: net.no_portmap,
        timeout: std::time::Duration::from_secs(net.timeout),
        stall_timeout: (net.stall_timeout > 0)
            .then(|| std::time::Duration::from_secs(net.stall_timeout)),
        relays: relay_args::for_transfers(&net.relay)?,
        link: false,
        rate_memory: (!net.no_rate_memory)
            .then(|| dirs::cache_dir().map(|d| d.join("p2pcopy").join("rates")))
            .flatten(),
    })
}

/// Binds, shows our ticket (the session's `ticket` event), takes the peer's and connects.
async fn connect(role: Role, net: &NetArgs, out: Output, cleanup: &Cleanup) -> Result<Link, Error> {
    connect_with(session_config(role, net)?, net, out, out, cleanup).await
}

/// [`connect`] with a config of the caller's, and `events` hearing the session.
pub(super) async fn connect_with(
    config: SessionConfig,
    net: &NetArgs,
    out: Output,
    events: impl Events + 'static,
    cleanup: &Cleanup,
) -> Result<Link, Error> {
    let run = async {
        let session = Session::bind_with(config, events, cleanup).await?;
        let peer = match &net.peer {
            Some(text) => text.parse()?,
            None => prompt_for_peer(&session, out).await?,
        };
        session.connect(peer).await
    };
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(interrupted()),
    }
}

async fn sender(args: SenderArgs, out: Output, cleanup: &Cleanup) -> Result<(), Error> {
    let scan = crate::manifest::scan(&args.file)?;
    for (path, why) in &scan.skipped {
        // Our own words for a person here ("p2pcopy: ", no "warning: "); the event is exact.
        let message = format!("not sending {}: {why}", path.display());
        say!(out, "p2pcopy: {message}");
        out.emit(|| Event::Warning { message });
    }
    if scan.entries.is_empty() {
        return Err(Error::Usage("nothing to send".into()));
    }
    let mut job = transfer::Outgoing::new(scan);
    let mut link = connect(Role::Sender, &args.net, out, cleanup).await?;
    // Kept, like the job, until the run ends: the bar stays up until then.
    let mut reporter = Reporter::new(out, "Sending");
    let result = tokio::select! {
        // Dropping the transfer leaves the job for a later run to resume.
        r = async {
            link.send(&mut job, &mut reporter).await?;
            let r = job.report();
            say_sent(out, &link, r);
            if let Some(path) = &args.checksums {
                write_checksums(path, r.hashes.iter().map(|(p, h)| (p.clone(), *h)))?;
            }
            link.finish(r).await;
            Ok(())
        } => r,
        _ = tokio::signal::ctrl_c() => Err(interrupted()),
    };
    link.close(&result).await;
    result
}

async fn receiver(args: ReceiverArgs, out: Output, cleanup: &Cleanup) -> Result<(), Error> {
    transfer::check_output_dir(&args.output)?;
    let mut job = transfer::Incoming::new(transfer::Store::new(args.output, args.overwrite));
    let mut link = connect(Role::Receiver, &args.net, out, cleanup).await?;
    let mut reporter = Reporter::new(out, "Receiving");
    let result = tokio::select! {
        // Dropping the transfer leaves part files in place for a later run to resume.
        r = async {
            link.receive(&mut job, &mut reporter).await?;
            say_received(out, &link, &job);
            if let Some(path) = &args.checksums {
                write_checksums(path, job.saved_hashes())?;
            }
            link.finish(job.report()).await;
            Ok(())
        } => r,
        _ = tokio::signal::ctrl_c() => Err(interrupted()),
    };
    if let Err(e) = &result {
        if job.report().moved > 0 && !matches!(e, Error::Verify(_)) {
            say!(
                out,
                "p2pcopy: what arrived is kept; run both commands again to resume"
            );
        }
    }
    link.close(&result).await;
    result
}

/// An informational line for a person (not with --quiet or --json), escaped.
pub(super) fn say_line(out: Output, line: &str) {
    say!(out, "{line}");
}

/// The sender's closing lines.
fn say_sent(out: Output, link: &Link, r: &transfer::Report) {
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
}

/// The receiver's closing lines.
fn say_received(out: Output, link: &Link, inc: &transfer::Incoming) {
    let r = inc.report();
    say_done(out, link, "Received", r);
    if let (1, Some(saved)) = (r.files + r.dirs + r.links, inc.saved_as()) {
        say!(out, "Saved as {}", saved.display());
    } else {
        say!(out, "Saved into {}", inc.store().root().display());
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
}

/// The lines both sides print when the job is done: the code to compare (if any), what
/// moved, and what an earlier run had already done.
fn say_done(out: Output, link: &Link, verb: &str, r: &transfer::Report) {
    if let Some(code) = link.code_to_compare(r.peer_authenticated) {
        say!(out, "Verification code: {code} (an ip:port was used instead of a ticket, so compare this code with your peer; if it differs, someone is in the middle)");
    }
    say!(out, "{verb} {}{}", single_name(r), amount_and_rate(r));
    if let Some(note) = reuse_note(r) {
        say!(out, "({note})");
    }
}

fn amount_and_rate(r: &transfer::Report) -> String {
    let rate = crate::events::rate(r.moved, r.elapsed);
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
    let stun = crate::session::or_defaults(&args.stun_servers, stun::DEFAULT_SERVERS);
    let ntp = crate::session::or_defaults(&args.ntp_servers, ntp::DEFAULT_SERVERS);
    let mut findings = crate::doctor::run(
        args.bind,
        args.localport,
        &stun,
        (!args.no_ntp).then_some(&ntp[..]),
        !args.no_portmap,
    )
    .await?;
    let relays = relay_args::for_doctor(&args.relay)?;
    findings.relays = crate::relay::check(&relays).await;
    for line in crate::doctor::render(&findings) {
        out.print(format_args!("{line}"));
    }
    out.emit(|| findings.event());
    if findings.servers.iter().all(|s| s.mapped.is_none()) {
        return Err(Error::Stun {
            tried: stun.join(", "),
        });
    }
    relay_args::first_failure(&findings.relays)
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
async fn prompt_for_peer(session: &Session, out: Output) -> Result<Ticket, Error> {
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
            .and_then(|t| session.check_peer(&t).map(|()| t))
        {
            Ok(t) => return Ok(t),
            // On a terminal a typo deserves another try; in a script it is an error.
            // The line may hold what was pasted: escaped like every other error.
            Err(e) if interactive => eprintln!("{}", super::output::error_line(&e.to_string())),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
