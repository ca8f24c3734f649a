//! A job's observations as events: the `plan`, `progress` and `file_done` events a session
//! reports, beside whatever observer the program passed in (a progress bar, say).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Events;
use crate::events::{rate, Event};
use crate::net::PathNow;
use crate::transfer::{FileDone, Observer, Plan};

/// Least time between two `progress` events: often enough for a smooth bar in a GUI, rare
/// enough that a fast LAN copy does not flood the reader.
const EVENT_INTERVAL: Duration = Duration::from_millis(250);

/// Byte progress of one job, kept across reconnects like the job: made at the first plan.
#[derive(Debug)]
pub(super) struct Progress {
    total: u64,
    done: u64,
    /// Bytes that crossed the network, for the rate.
    moved: u64,
    start: Instant,
    /// When the last event went out, and the count it carried.
    last: Option<(Instant, u64)>,
    file: Option<String>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            done: 0,
            moved: 0,
            start: Instant::now(),
            last: None,
            file: None,
        }
    }

    /// Sends a `progress` event if one is due (see [`event_due`]).
    pub(super) fn event(&mut self, events: &mut dyn Events, final_count: bool) {
        let now = Instant::now();
        if !event_due(self.last, self.done, final_count, now) {
            return;
        }
        self.last = Some((now, self.done));
        events.event(&Event::Progress {
            done_bytes: self.done,
            total_bytes: self.total,
            bytes_per_s: rate(self.moved, self.start.elapsed()),
            file: self.file.clone(),
        });
    }
}

/// The observer a job runs with: reports to the session's [`Events`], then tells `inner`.
pub(super) struct Tee<'a> {
    pub(super) events: &'a mut dyn Events,
    pub(super) progress: &'a mut Option<Progress>,
    pub(super) inner: &'a mut dyn Observer,
    /// Which way the data goes, when a relay is in play: a change is reported as
    /// `path_changed` at the job's next step (a sender whose data all sits in QUIC's send
    /// buffer takes its next step only at the end).
    pub(super) path: Option<&'a mut watch::Receiver<PathNow>>,
}

impl Tee<'_> {
    /// Reports a change of the data's path since the last look.
    fn path_news(&mut self) {
        let Some(path) = self.path.as_mut() else {
            return;
        };
        if path.has_changed().unwrap_or(false) {
            let now = *path.borrow_and_update();
            self.events.event(&Event::PathChanged {
                path_kind: now.kind,
                remote: now.remote,
            });
        }
    }
}

impl Observer for Tee<'_> {
    fn plan(&mut self, plan: &Plan) {
        self.events.event(&Event::Plan {
            files: plan.files,
            folders: plan.dirs,
            links: plan.links,
            total_bytes: plan.total,
            held_bytes: plan.held,
        });
        let p = self
            .progress
            .get_or_insert_with(|| Progress::new(plan.total));
        p.done = plan.held;
        p.event(self.events, false);
        self.inner.plan(plan);
    }

    fn file_started(&mut self, path: &str, done: u64) {
        self.path_news();
        if let Some(p) = self.progress.as_mut() {
            if done != p.done {
                p.done = done;
                p.event(self.events, false);
            }
            p.file = Some(path.to_owned());
        }
        self.inner.file_started(path, done);
    }

    fn moved(&mut self, n: u64, done: u64) {
        self.path_news();
        if let Some(p) = self.progress.as_mut() {
            p.done += n;
            p.moved += n;
            p.event(self.events, false);
        }
        self.inner.moved(n, done);
    }

    fn file_done(&mut self, file: &FileDone<'_>) {
        self.events.event(&Event::FileDone {
            path: file.path.to_owned(),
            size: file.size,
            blake3: file.hash.to_hex().to_string(),
            status: file.status,
            saved_as: file.saved_as.map(|p| p.display().to_string()),
        });
        self.inner.file_done(file);
    }

    fn finish(&mut self) {
        self.path_news();
        if let Some(p) = self.progress.as_mut() {
            p.event(self.events, true);
        }
        self.inner.finish();
    }
}

/// Whether a `progress` event for `done` bytes should go out at `now`, after the one sent
/// at `last` (when, and its count): the first at once, then at most one per
/// [`EVENT_INTERVAL`], and the final count unless it already went out, so a reader always
/// sees where the job ended.
fn event_due(last: Option<(Instant, u64)>, done: u64, final_count: bool, now: Instant) -> bool {
    match last {
        None => true,
        Some((_, sent)) if final_count => sent != done,
        Some((at, _)) => now.saturating_duration_since(at) >= EVENT_INTERVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_throttled_but_the_final_count_goes_out() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(event_due(None, 0, false, t0));
        assert!(!event_due(Some((t0, 0)), 5, false, ms(249)));
        assert!(event_due(Some((t0, 0)), 5, false, ms(250)));
        // The final count goes out at once, but only if it is news.
        assert!(event_due(Some((t0, 0)), 5, true, ms(1)));
        assert!(!event_due(Some((t0, 5)), 5, true, ms(1000)));
        assert!(event_due(None, 5, true, t0));
    }
}
