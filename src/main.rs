//! The `p2pcopy` binary: parse flags, set up logging, run, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use p2pcopy::cli::config::{self, ParseError};
use p2pcopy::cli::{self, output::Output};
use p2pcopy::events::Event;

fn main() -> ExitCode {
    let json_asked = std::env::args_os().any(|a| a == "--json");
    let (cli, config_warning) = match config::parse_args(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::NoConfigNeeded(cli)) => (*cli, None),
        Err(ParseError::Config(e)) => {
            let out = if json_asked {
                Output::json()
            } else {
                Output::human(false)
            };
            out.fail(2, &e.to_string());
            return ExitCode::from(2);
        }
        // Flags that do not parse leave no `Cli` to ask for --json; a program that asked
        // for it still gets its usage error as an event. Help and version go out as usual.
        Err(ParseError::Flags(e)) if e.use_stderr() && json_asked => {
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            Output::json().fail(code, first.strip_prefix("error: ").unwrap_or(first));
            return ExitCode::from(code);
        }
        Err(ParseError::Flags(e)) => e.exit(),
    };
    let out = cli.output();
    if let Some(message) = config_warning {
        out.say(format_args!("p2pcopy: warning: {message}"));
        out.emit(|| Event::Warning { message });
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "p2pcopy=info",
        2 => "p2pcopy=debug,quinn=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // One connection is driven by one task at a time, so more async threads only add
    // cross-core wake-ups: one worker moved 17 % more per CPU-second on the LAN bench
    // than two, and one thread for everything (the connection, and the task reading or
    // writing its streams) ~6 % more again than one worker beside the main thread
    // (LAN, 6 runs each: median 6580 -> 7010 Mbit/s, 1.25 -> 1.16 CPU-s/GiB per side).
    // Disk reads, writes and hashing run on tokio's blocking threads, beside it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.fail(1, &format!("cannot start: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cli::run(cli, out));
    // Dropping the runtime would wait for every blocking thread, and one may be stuck
    // reading the peer's ticket from stdin (Ctrl-C at the prompt): the process then hung
    // until Enter. Disk writes still in flight get a moment to land.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.fail(e.exit_code(), &e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}
