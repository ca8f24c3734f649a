//! The CLI's writer: every line a person sees and every JSON line a program reads goes out
//! here, as `--json` and `--quiet` ask (the schema itself is [`crate::events`]).

use std::fmt;
use std::io::Write;
use std::time::Instant;

use crate::events::{seconds, to_line, Event};
use crate::nat;
use crate::punch::PathKind;
use crate::session::Events;
use crate::shown::shown;
use crate::wire::DeleteStatus;

/// Where a run reports: to a person (stderr lines, a progress bar, the ticket on stdout) or
/// to a program (JSON lines on stdout, nothing else there).
///
/// A session's events arrive through [`Events`]: a program gets each as a JSON line, a
/// person the line [`human`] renders from it, so both come from one source. The CLI's own
/// lines (the prompt, the closing lines) go through [`Output::say`] and [`Output::print`],
/// which do nothing for a program.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    start: Instant,
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Human { quiet: bool },
    Json,
}

impl Output {
    /// The human screen; `quiet` keeps only the ticket, the prompt and errors.
    pub fn human(quiet: bool) -> Output {
        Output {
            start: Instant::now(),
            mode: Mode::Human { quiet },
        }
    }

    /// JSON lines on stdout.
    pub fn json() -> Output {
        Output {
            start: Instant::now(),
            mode: Mode::Json,
        }
    }

    /// Seconds since the run started, as the `t` of its JSON lines.
    pub fn elapsed_s(&self) -> f64 {
        seconds(self.start.elapsed())
    }

    /// Whether a program reads this run (no prompts, no retries at a terminal).
    pub fn is_json(&self) -> bool {
        self.mode == Mode::Json
    }

    /// Whether informational lines and the progress bar are shown.
    pub fn is_chatty(&self) -> bool {
        self.mode == Mode::Human { quiet: false }
    }

    /// An informational line on stderr, for a person who did not ask for --quiet; what
    /// it holds from elsewhere (names, the peer's words) is escaped here (see
    /// [`crate::shown`]).
    pub fn say(&self, args: fmt::Arguments<'_>) {
        if self.is_chatty() {
            eprintln!("{}", human_line(args));
        }
    }

    /// A line on stdout for a person, even with --quiet (the ticket, which scripts read with
    /// `head -1`); escaped like [`Output::say`].
    pub fn print(&self, args: fmt::Arguments<'_>) {
        if let Mode::Human { .. } = self.mode {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", human_line(args));
            let _ = out.flush();
        }
    }

    /// Prints an event for a program; `event` is only built when one is listening.
    pub fn emit(&self, event: impl FnOnce() -> Event) {
        if self.is_json() {
            let line = to_line(&event(), seconds(self.start.elapsed()));
            let mut out = std::io::stdout().lock();
            // A reader that went away must not turn into a second error; the exit code
            // still tells how the run ended.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// Reports what ends the run with exit code `code`: [`error_line`] on stderr, or an
    /// `error` event with the exact message.
    pub fn fail(&self, code: u8, message: &str) {
        match self.mode {
            Mode::Human { .. } => eprintln!("{}", error_line(message)),
            Mode::Json => self.emit(|| Event::Error {
                code,
                message: message.to_owned(),
            }),
        }
    }
}

impl Events for Output {
    fn event(&mut self, event: &Event) {
        if self.is_json() {
            if event.in_json() {
                self.emit(|| event.clone());
            }
            return;
        }
        match human(event) {
            Some(Human::Say(line)) => self.say(format_args!("{line}")),
            Some(Human::Print(line)) => self.print(format_args!("{line}")),
            None => {}
        }
    }
}

/// A line for a person, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Human {
    /// An informational line on stderr (not with --quiet).
    Say(String),
    /// A line on stdout, even with --quiet (the ticket, which scripts read with `head -1`).
    Print(String),
}

/// The line a person sees for `event`, if any (unescaped: [`Output`] escapes it). Plans,
/// progress and files show on the progress bar instead; the summary's numbers are the
/// closing lines, which the CLI writes from the job's report.
pub fn human(event: &Event) -> Option<Human> {
    let say = |s: String| Some(Human::Say(s));
    match event {
        Event::Bound { local_port } => say(format!("Using local port: {local_port}")),
        Event::Measured { nat } => say(format!("Your NAT: {}", nat::describe(*nat))),
        Event::PortMapping {
            protocol,
            external,
            lease_s,
        } => {
            let lease = match lease_s {
                0 => String::new(),
                s if s % 3600 == 0 => format!(", {} h lease renewed while p2pcopy runs", s / 3600),
                s => format!(", {} min lease renewed while p2pcopy runs", s.div_ceil(60)),
            };
            say(format!("Port mapping: your router forwards {external} to this computer ({protocol}{lease}; removed at exit)"))
        }
        Event::Ticket { ticket, .. } => Some(Human::Print(format!("Tell this to your peer: {ticket}"))),
        Event::Nat {
            warning: Some(w), ..
        } => say(format!("p2pcopy: warning: {w}")),
        Event::Warning { message } => say(format!("p2pcopy: warning: {message}")),
        Event::Connecting {
            rounds: true,
            round_period_s,
            next_round_in_s,
        } => say(format!(
            "Connecting: synchronised rounds start every {} s; next in {} s",
            round_period_s.unwrap_or_default(),
            next_round_in_s.unwrap_or_default()
        )),
        Event::Connecting { rounds: false, .. } => say("Connecting...".into()),
        Event::PunchRound { round } => say(format!("Round {round}: probing your peer...")),
        Event::Connected {
            path_kind,
            remote,
            rtt_ms,
            via_port_mapping,
            ..
        } if *path_kind == PathKind::Relayed => say(format!(
            "Connected through the TURN relay at {remote}, round trip {rtt_ms} ms; punching goes on for a direct path"
        )),
        Event::Connected {
            path_kind,
            remote,
            rtt_ms,
            via_port_mapping,
            ..
        } => say(format!(
            "Connected directly to {remote} ({}{}), round trip {rtt_ms} ms",
            path_kind.describe(),
            if *via_port_mapping {
                ", through your router's port mapping"
            } else {
                ""
            },
        )),
        Event::PathChanged {
            path_kind: PathKind::Relayed,
            remote,
        } => say(format!(
            "The direct path stopped working; the data goes through the TURN relay at {remote} again"
        )),
        Event::PathChanged { path_kind, remote } => say(format!(
            "Found a direct path to {remote} ({}); the data moves onto it",
            path_kind.describe()
        )),
        Event::Reconnecting {
            reason,
            timeout_s: Some(timeout_s),
        } => say(format!(
            "Connection lost ({reason}); reconnecting for up to {timeout_s} s. Received data is kept."
        )),
        Event::Reconnecting {
            reason,
            timeout_s: None,
        } => say(format!(
            "Connection lost ({reason}); reconnecting until a new path is found (Ctrl-C to stop)."
        )),
        Event::MappingChanged { old, new } => say(format!(
            "p2pcopy: warning: your NAT now maps this link to {new}, not {old} as your ticket says; your peer cannot learn the new address, so the link comes back only if your peer's NAT lets your probes in (or through --relay); otherwise both sides may have to run again and paste new tickets (what was moved is kept)"
        )),
        Event::Deleted { path, result } => say(match result {
            DeleteStatus::Deleted => format!("Your peer deleted {path}; deleted here too"),
            DeleteStatus::Missing => format!("Your peer deleted {path}; it was not here"),
            DeleteStatus::Kept => format!(
                "Your peer deleted {path}; kept here: it differs from what your peer sent (or the folder is not empty)"
            ),
            DeleteStatus::Refused => format!(
                "Your peer asked to delete {path}; refused (this link has no --allow-delete, your peer did not send it over this link, or it is not a plain file or folder inside --output)"
            ),
        }),
        _ => None,
    }
}

/// One line of the human screen: `args` with what a terminal would act on escaped (see
/// [`crate::shown`]).
pub fn human_line(args: fmt::Arguments<'_>) -> String {
    match args.as_str() {
        Some(s) => shown(s).to_string(),
        None => shown(&args.to_string()).to_string(),
    }
}

/// The line a person sees for an error `message` (`p2pcopy: ...`), escaped: the message
/// may carry a file name or the peer's own words. The `error` event keeps them exact.
pub fn error_line(message: &str) -> String {
    format!("p2pcopy: {}", shown(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::Protocol;
    use crate::punch::PathKind;
    use crate::ticket::NatKind;

    fn said(e: Event) -> String {
        match human(&e) {
            Some(Human::Say(s)) => s,
            other => panic!("{e:?}: {other:?}"),
        }
    }

    /// The lines a person saw before the session reported events, word for word.
    #[test]
    fn events_render_the_human_lines() {
        assert_eq!(
            said(Event::Bound { local_port: 4300 }),
            "Using local port: 4300"
        );
        assert_eq!(
            said(Event::Measured {
                nat: NatKind::EndpointIndependent
            }),
            format!("Your NAT: {}", nat::describe(NatKind::EndpointIndependent))
        );
        for (lease_s, tail) in [
            (7200, ", 2 h lease renewed while p2pcopy runs"),
            (90, ", 2 min lease renewed while p2pcopy runs"),
            (0, ""),
        ] {
            assert_eq!(
                said(Event::PortMapping {
                    protocol: Protocol::Pcp,
                    external: "198.51.100.7:4300".parse().unwrap(),
                    lease_s,
                }),
                format!("Port mapping: your router forwards 198.51.100.7:4300 to this computer ({}{tail}; removed at exit)", Protocol::Pcp)
            );
        }
        assert_eq!(
            said(Event::Connecting {
                rounds: true,
                round_period_s: Some(40),
                next_round_in_s: Some(16)
            }),
            "Connecting: synchronised rounds start every 40 s; next in 16 s"
        );
        assert_eq!(
            said(Event::Connecting {
                rounds: false,
                round_period_s: None,
                next_round_in_s: None
            }),
            "Connecting..."
        );
        assert_eq!(
            said(Event::PunchRound { round: 2 }),
            "Round 2: probing your peer..."
        );
        let connected = |via_port_mapping| Event::Connected {
            path_kind: PathKind::Mapped,
            remote: "203.0.113.9:21300".parse().unwrap(),
            rtt_ms: 31,
            authenticated: true,
            verification_code: None,
            reconnects: 0,
            via_port_mapping,
        };
        let kind = PathKind::Mapped.describe();
        assert_eq!(
            said(connected(false)),
            format!("Connected directly to 203.0.113.9:21300 ({kind}), round trip 31 ms")
        );
        assert_eq!(
            said(connected(true)),
            format!("Connected directly to 203.0.113.9:21300 ({kind}, through your router's port mapping), round trip 31 ms")
        );
        assert_eq!(
            said(Event::Connected {
                path_kind: PathKind::Relayed,
                remote: "198.51.100.5:50000".parse().unwrap(),
                rtt_ms: 31,
                authenticated: true,
                verification_code: None,
                reconnects: 0,
                via_port_mapping: false,
            }),
            "Connected through the TURN relay at 198.51.100.5:50000, round trip 31 ms; punching goes on for a direct path"
        );
        assert_eq!(
            said(Event::PathChanged {
                path_kind: PathKind::Mapped,
                remote: "203.0.113.9:21300".parse().unwrap(),
            }),
            format!("Found a direct path to 203.0.113.9:21300 ({kind}); the data moves onto it")
        );
        assert_eq!(
            said(Event::PathChanged {
                path_kind: PathKind::Relayed,
                remote: "198.51.100.5:50000".parse().unwrap(),
            }),
            "The direct path stopped working; the data goes through the TURN relay at 198.51.100.5:50000 again"
        );
        assert_eq!(
            said(Event::Reconnecting {
                reason: "gone".into(),
                timeout_s: Some(120)
            }),
            "Connection lost (gone); reconnecting for up to 120 s. Received data is kept."
        );
        assert_eq!(
            said(Event::Reconnecting {
                reason: "gone".into(),
                timeout_s: None
            }),
            "Connection lost (gone); reconnecting until a new path is found (Ctrl-C to stop)."
        );
        let remapped = said(Event::MappingChanged {
            old: "198.51.100.7:4300".parse().unwrap(),
            new: "198.51.100.7:40000".parse().unwrap(),
        });
        assert!(
            remapped.starts_with("p2pcopy: warning: your NAT now maps this link to 198.51.100.7:40000, not 198.51.100.7:4300 as your ticket says;"),
            "{remapped}"
        );
        assert!(remapped.contains("new tickets"), "{remapped}");
        assert_eq!(
            said(Event::Warning {
                message: "no NTP".into()
            }),
            "p2pcopy: warning: no NTP"
        );
        let nat = |warning: Option<&str>| Event::Nat {
            ours: NatKind::EndpointDependent,
            peer: Some(NatKind::EndpointIndependent),
            warning: warning.map(str::to_owned),
        };
        assert_eq!(said(nat(Some("hard"))), "p2pcopy: warning: hard");
        assert_eq!(human(&nat(None)), None);
        assert_eq!(
            human(&Event::Ticket {
                role: crate::ticket::Role::Sender,
                ticket: "p2pcX".into(),
                local_port: 1,
                nat: NatKind::Unknown,
                candidates: vec![],
                lane_ports: vec![],
            }),
            Some(Human::Print("Tell this to your peer: p2pcX".into()))
        );
        assert_eq!(
            said(Event::Deleted {
                path: "a/b.txt".into(),
                result: DeleteStatus::Deleted
            }),
            "Your peer deleted a/b.txt; deleted here too"
        );
        assert!(said(Event::Deleted {
            path: "x".into(),
            result: DeleteStatus::Refused
        })
        .contains("--allow-delete"));
        assert!(!Event::Bound { local_port: 1 }.in_json());
        assert!(!Event::Measured { nat: NatKind::None }.in_json());
        assert!(Event::PunchRound { round: 1 }.in_json());
    }

    #[test]
    fn people_see_escapes() {
        let name = "evil\x1b]0;PWNED\x07\x1b[2J\u{9b}31m\u{202e}fdp.exe";
        assert_eq!(
            human_line(format_args!("Received {name} (5 B)")),
            r"Received evil\e]0;PWNED\a\e[2J\u{9b}31m\u{202e}fdp.exe (5 B)"
        );
        assert_eq!(
            human_line(format_args!("Using local port: 4300")),
            "Using local port: 4300"
        );
        assert_eq!(
            error_line(&format!("your peer stopped: {name}")),
            r"p2pcopy: your peer stopped: evil\e]0;PWNED\a\e[2J\u{9b}31m\u{202e}fdp.exe"
        );
    }
}
