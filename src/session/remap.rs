//! After a lost path: does our NAT still map the link's socket where our ticket says?
//!
//! A NAT that dropped its mapping (a reboot, a long outage, a new uplink) may give the next
//! packets a new public port. The peer knows only the ticket's address; without a
//! rendezvous it cannot learn the new one, so the user must hear of it. When a path dies,
//! the STUN servers that answered at the start are asked again from the same socket
//! ([`crate::net::Restun`]), beside the punching, never before it: nothing waits for the
//! answer. A server that does not answer is asked again each round until one does (or the
//! link is back); silence is only logged. The answer is compared with what the same server
//! saw at the start, since a NAT may map by destination.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::events::Event;
use crate::net::Restun;
use crate::stun::Mapping;

/// What one server saw: at the start (the ticket's address) and now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) announced: SocketAddr,
    pub(super) now: SocketAddr,
}

/// The check running since the last path died.
struct Check {
    task: tokio::task::JoinHandle<Option<Seen>>,
    /// Set once the link is back: a server still silent is not asked again.
    connected: Arc<AtomicBool>,
}

impl Drop for Check {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks STUN again whenever the link's path dies, and tells what changed.
pub(super) struct Remap {
    restun: Restun,
    /// The servers that answered at the start, and where each saw us then.
    asked: Arc<[Mapping]>,
    /// How long to wait before asking silent servers again: a round.
    period: Duration,
    check: Option<Check>,
    /// The new address the user was last told of.
    told: Option<SocketAddr>,
    /// Our public address as STUN last saw it, for `status`.
    now: watch::Sender<Option<SocketAddr>>,
}

impl Remap {
    /// `None` without STUN answers to check against (`--no-stun`, a symmetric NAT).
    pub(super) fn new(restun: Restun, asked: &[Mapping], period: Duration) -> Option<Remap> {
        let first = asked.first()?.mapped;
        Some(Remap {
            restun,
            asked: asked.into(),
            period,
            check: None,
            told: None,
            now: watch::Sender::new(Some(first)),
        })
    }

    /// Our public address as STUN last saw it, kept up to date.
    pub(super) fn watch(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.now.subscribe()
    }

    /// Starts asking (a path died), dropping any check still running.
    pub(super) fn start(&mut self) {
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(ask(
            self.restun.clone(),
            self.asked.clone(),
            self.period,
            connected.clone(),
        ));
        self.check = Some(Check { task, connected });
    }

    /// The link is back: servers that have not answered yet are not asked again.
    pub(super) fn connected(&self) {
        if let Some(c) = &self.check {
            c.connected.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a check has ended and [`Remap::answer`] would not wait.
    pub(super) fn ready(&self) -> bool {
        self.check.as_ref().is_some_and(|c| c.task.is_finished())
    }

    /// Waits for the running check (for ever if none runs): what a server saw, if one
    /// answered. Cancel-safe.
    pub(super) async fn answer(&mut self) -> Option<Seen> {
        let Some(check) = self.check.as_mut() else {
            return std::future::pending().await;
        };
        let seen = (&mut check.task).await.ok().flatten();
        self.check = None;
        seen
    }

    /// Takes in what a server saw; the event to tell, if our address changed.
    pub(super) fn heard(&mut self, seen: Seen) -> Option<Event> {
        self.now.send_replace(Some(seen.now));
        let (event, told) = judge(seen, self.told);
        self.told = told;
        match &event {
            Some(_) => {
                tracing::info!(old = %seen.announced, new = %seen.now, "our NAT mapping changed")
            }
            None if seen.now == seen.announced => {
                tracing::info!(mapped = %seen.now, "STUN sees this link where the ticket says")
            }
            None => tracing::debug!(mapped = %seen.now, "STUN sees this link where we said"),
        }
        event
    }
}

/// Asks the servers in turn until one answers: each once, then again a round later, until
/// the link is back.
async fn ask(
    restun: Restun,
    asked: Arc<[Mapping]>,
    period: Duration,
    connected: Arc<AtomicBool>,
) -> Option<Seen> {
    for (i, m) in asked.iter().cycle().enumerate() {
        if let Some(now) = restun.query(m.server).await {
            return Some(Seen {
                announced: m.mapped,
                now,
            });
        }
        if (i + 1) % asked.len() == 0 {
            tokio::time::sleep(period).await;
        }
        if connected.load(Ordering::Relaxed) {
            break;
        }
    }
    None
}

/// Whether `seen` is news: an address other than the ticket's that the user was not
/// told of yet (`told`). Returns the event and what the user then knows. Back at the
/// ticket's address, the next move is news again.
fn judge(seen: Seen, told: Option<SocketAddr>) -> (Option<Event>, Option<SocketAddr>) {
    if seen.now == seen.announced {
        return (None, None);
    }
    if told == Some(seen.now) {
        return (None, told);
    }
    let event = Event::MappingChanged {
        old: seen.announced,
        new: seen.now,
    };
    (Some(event), Some(seen.now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_address_is_told_once() {
        let ticket = a("198.18.1.2:4300");
        let seen = |now: &str| Seen {
            announced: ticket,
            now: a(now),
        };
        let changed = |new: &str| {
            Some(Event::MappingChanged {
                old: ticket,
                new: a(new),
            })
        };
        // Unchanged: nothing said.
        assert_eq!(judge(seen("198.18.1.2:4300"), None), (None, None));
        // Moved: said once, not again on the next reconnect at the same address.
        let (e, told) = judge(seen("198.18.1.2:40000"), None);
        assert_eq!(e, changed("198.18.1.2:40000"));
        assert_eq!(judge(seen("198.18.1.2:40000"), told), (None, told));
        // Moved again: said again.
        let (e, told) = judge(seen("198.18.1.2:40001"), told);
        assert_eq!(e, changed("198.18.1.2:40001"));
        // Back at the ticket's address, then moved to the same port as before: news again.
        let (e, told) = judge(seen("198.18.1.2:4300"), told);
        assert_eq!((e, told), (None, None));
        assert_eq!(
            judge(seen("198.18.1.2:40001"), told).0,
            changed("198.18.1.2:40001")
        );
    }
}
