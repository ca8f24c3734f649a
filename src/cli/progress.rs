//! Progress display for a person: one indicatif bar for the whole job on a terminal (with
//! the current file's name), a plain line every few seconds otherwise; and [`Reporter`], the
//! CLI's [`Observer`] of a transfer, which drives it. (For `--json`, the session itself
//! reports `plan`, `progress` and `file_done` events.)

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::Output;
use crate::events::rate;
use crate::shown::shown;
use crate::transfer::{Observer, Plan};

/// How often plain progress lines are printed when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Byte progress of one job.
pub struct Progress {
    mode: Mode,
    total: u64,
    done: u64,
    /// Bytes counted by [`Progress::inc`]: the ones that crossed the network, for the rate.
    moved: u64,
    start: Instant,
}

enum Mode {
    Bar(ProgressBar),
    Lines { label: String, last: Instant },
    Off,
}

impl Progress {
    /// A progress display for `total` bytes, in the form `out` asks for.
    pub fn new(total: u64, label: &str, out: Output) -> Progress {
        let mode = if !out.is_chatty() {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
                )
                .expect("static template")
                .progress_chars("#>-"),
            );
            bar.set_prefix(label.to_owned());
            Mode::Bar(bar)
        } else {
            Mode::Lines {
                label: label.to_owned(),
                last: Instant::now(),
            }
        };
        Progress {
            mode,
            total,
            done: 0,
            moved: 0,
            start: Instant::now(),
        }
    }

    /// Records `n` more bytes.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.moved += n;
        match &mut self.mode {
            Mode::Bar(bar) => bar.inc(n),
            Mode::Lines { label, last } if last.elapsed() >= LINE_INTERVAL => {
                *last = Instant::now();
                eprintln!(
                    "{label}: {}",
                    progress_line(self.done, self.total, self.start.elapsed())
                );
            }
            _ => {}
        }
    }

    /// Sets the byte count outright (a resumed job starts past zero; a refused resume
    /// claim moves it back).
    pub fn set(&mut self, done: u64) {
        self.done = done;
        if let Mode::Bar(bar) = &self.mode {
            bar.set_position(done);
        }
    }

    /// Moves the count to `done`: forward as [`Progress::inc`] (the plain lines come out
    /// too), back as [`Progress::set`].
    pub fn advance_to(&mut self, done: u64) {
        match done.checked_sub(self.done) {
            Some(n) => self.inc(n),
            None => self.set(done),
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Names what is being moved now (the current file), escaped on the bar (see
    /// [`crate::shown`]).
    pub fn set_message(&mut self, msg: &str) {
        if let Mode::Bar(bar) = &mut self.mode {
            bar.set_message(shown(msg).to_string());
        }
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }

    /// Time since the display was created.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The CLI's [`Observer`] of a transfer: the job's [`Progress`] (made at the first plan and
/// kept across reconnects, like the job).
pub struct Reporter {
    out: Output,
    label: &'static str,
    progress: Option<Progress>,
}

impl Reporter {
    /// Reports through `out`; `label` names the job on the bar (`Sending`, `Receiving`).
    pub fn new(out: Output, label: &'static str) -> Reporter {
        Reporter {
            out,
            label,
            progress: None,
        }
    }
}

impl Observer for Reporter {
    fn plan(&mut self, plan: &Plan) {
        let (out, label) = (self.out, self.label);
        self.progress
            .get_or_insert_with(|| Progress::new(plan.total, label, out))
            .set(plan.held);
    }

    fn file_started(&mut self, path: &str, done: u64) {
        if let Some(p) = &mut self.progress {
            if done != p.done() {
                p.set(done);
            }
            p.set_message(path);
        }
    }

    fn moved(&mut self, n: u64, _done: u64) {
        if let Some(p) = &mut self.progress {
            p.inc(n);
        }
    }

    fn finish(&mut self) {
        if let Some(p) = &mut self.progress {
            p.finish();
        }
    }
}

/// `45% (12.0 MiB of 27.0 MiB, 5.1 MiB/s)`.
pub fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    format!(
        "{pct}% ({} of {}, {}/s)",
        HumanBytes(done),
        HumanBytes(total),
        HumanBytes(rate(done, elapsed))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            progress_line(50, 200, Duration::from_secs(1)),
            "25% (50 B of 200 B, 50 B/s)"
        );
        assert_eq!(
            progress_line(0, 0, Duration::ZERO),
            "100% (0 B of 0 B, 0 B/s)"
        );
    }
}
