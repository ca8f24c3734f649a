//! The link to the peer: a QUIC connection that is punched again whenever its path dies,
//! the job run over it, and the close that tells the peer how the run ended.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::SendStream;

use super::observe::{Progress, Tee};
use super::remap::Remap;
use super::{Events, Owned};
use crate::error::{CloseCode, Error};
use crate::events::{millis, seconds, Event};
use crate::net::{self, ConnectFailure, Dialer, Progress as NetProgress};
use crate::punch::PathKind;
use crate::ticket::{NatKind, Role};
use crate::transfer::{self, Incoming, Observer, Outgoing, Report};
use crate::{nat, ntp};

/// The job a link runs: what to send, or where to receive into.
pub enum Job<'a> {
    /// A sender's job.
    Send(&'a mut Outgoing),
    /// A receiver's job.
    Receive(&'a mut Incoming),
}

/// What (re)connecting needs besides the dialer, fixed once both tickets are known.
pub(super) struct Plan {
    pub(super) role: Role,
    pub(super) clock: ntp::Clock,
    pub(super) timeout: Duration,
    pub(super) stall_timeout: Option<Duration>,
    pub(super) needs_rounds: bool,
    pub(super) nat: NatKind,
    pub(super) peer_nat: Option<NatKind>,
    /// The public address our router forwards to us, if the ticket carries one.
    pub(super) port_mapping: Option<SocketAddr>,
    /// The STUN servers that answered at the start and where they saw us: asked again
    /// after a lost path ([`super::remap`]); empty when that says nothing.
    pub(super) stun_answers: Vec<crate::stun::Mapping>,
}

/// A connection to the peer that outlives its paths: [`Link::send`] and [`Link::receive`]
/// punch again and resume when the path dies. It owns the socket and the router's port
/// mapping; [`Link::close`] tells the peer how the run ended and removes the mapping.
pub struct Link {
    dialer: Dialer,
    path: net::Link,
    plan: Plan,
    events: Box<dyn Events>,
    cleanup: Owned,
    /// Connections after the first.
    reconnects: u32,
    progress: Option<Progress>,
    /// STUN asked again when a path dies, if there is anything to compare with.
    remap: Option<Remap>,
    /// The received job's control stream, until [`Link::finish`] lingers on it.
    control: Option<SendStream>,
    /// The peer acknowledged all we sent but its close never came: closing need not wait.
    peer_has_all: bool,
}

impl Link {
    /// Punches and connects the first time; the deadline counts from the paste.
    pub(super) async fn first(
        mut dialer: Dialer,
        plan: Plan,
        mut events: Box<dyn Events>,
        cleanup: Owned,
        deadline: Instant,
    ) -> Result<Link, Error> {
        let path = connect(&mut dialer, &plan, &mut *events, deadline, 0, None).await?;
        let remap = Remap::new(
            dialer.restun(),
            &plan.stun_answers,
            dialer.schedule().period,
        );
        Ok(Link {
            dialer,
            path,
            plan,
            events,
            cleanup,
            reconnects: 0,
            progress: None,
            remap,
            control: None,
            peer_has_all: false,
        })
    }

    /// The QUIC connection of the current path.
    pub fn connection(&self) -> &quinn::Connection {
        &self.path.connection
    }

    /// The peer's address on the current path.
    pub fn remote(&self) -> SocketAddr {
        self.path.remote
    }

    /// How the peer's address on the current path was learned.
    pub fn path_kind(&self) -> PathKind {
        self.path.kind
    }

    /// Whether we checked the peer's certificate against its ticket.
    pub fn authenticated(&self) -> bool {
        self.path.authenticated
    }

    /// The code both users compare, when either side could not check the other's
    /// certificate (one of them used a bare `ip:port`); `peer_authenticated` is the job's
    /// [`Report::peer_authenticated`].
    pub fn code_to_compare(&self, peer_authenticated: bool) -> Option<&str> {
        (!self.path.authenticated || !peer_authenticated)
            .then_some(self.path.verification_code.as_str())
    }

    /// Sends `job`, reconnecting whenever the path dies, until the receiver verified every
    /// file or the run cannot go on; `observer` hears what the job does (the session's
    /// events get `plan`, `progress` and `file_done` as well).
    pub async fn send(
        &mut self,
        job: &mut Outgoing,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        self.run(Job::Send(job), observer).await
    }

    /// Receives into `job`, as [`Link::send`] sends.
    pub async fn receive(
        &mut self,
        job: &mut Incoming,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        self.run(Job::Receive(job), observer).await
    }

    /// The stall bound the session was configured with.
    pub(super) fn stall_timeout(&self) -> Option<Duration> {
        self.plan.stall_timeout
    }

    /// Tells the session's events `event`.
    pub(super) fn event(&mut self, event: &Event) {
        self.events.event(event);
    }

    /// Runs `job` (which must suit our role) with today's reconnect loop.
    pub async fn run(
        &mut self,
        mut job: Job<'_>,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let ours = match job {
            Job::Send(_) => Role::Sender,
            Job::Receive(_) => Role::Receiver,
        };
        if ours != self.plan.role {
            return Err(Error::Usage(format!(
                "a {} cannot run a {ours}'s job",
                self.plan.role
            )));
        }
        loop {
            let opts = transfer::Options {
                stall_timeout: self.plan.stall_timeout,
                ..transfer::Options::new(self.path.authenticated)
            };
            let mut tee = Tee {
                events: &mut *self.events,
                progress: &mut self.progress,
                inner: observer,
                path: self.path.path.as_mut(),
            };
            let conn = &self.path.connection;
            let result = match &mut job {
                Job::Send(j) => j.run(conn, opts, &mut tee).await,
                Job::Receive(j) => j.run(conn, opts, &mut tee).await,
            };
            transfer::log_path_stats(conn);
            self.remap_if_ready().await;
            match result {
                Ok(()) => {
                    if let Job::Receive(j) = &mut job {
                        self.control = j.take_control();
                    }
                    return Ok(());
                }
                Err(Error::ConnectionLost(why)) => self.reconnect(why).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Punches a new path after the last one died (`why`), for up to the plan's timeout.
    pub(super) async fn reconnect(&mut self, why: String) -> Result<(), Error> {
        self.announce_reconnect(&why, Some(self.plan.timeout));
        self.punch_again(why).await
    }

    /// Tells the program the path died (`why`) and for how long a new one is sought
    /// (`None`: until one is found).
    pub(super) fn announce_reconnect(&mut self, why: &str, limit: Option<Duration>) {
        self.events.event(&Event::Reconnecting {
            reason: why.to_owned(),
            timeout_s: limit.map(|l| l.as_secs()),
        });
    }

    /// One attempt, up to the plan's timeout, at a new path after the last one died.
    pub(super) async fn punch_again(&mut self, why: String) -> Result<(), Error> {
        let timeout = self.plan.timeout.as_secs();
        self.dialer.remember(&self.path.connection).await;
        self.path
            .connection
            .close(CloseCode::NO_ERROR.into(), b"lost");
        let deadline = Instant::now() + self.plan.timeout;
        self.reconnects += 1;
        // Asked beside the punching: the reconnect waits for no answer.
        if let Some(r) = &mut self.remap {
            r.start();
        }
        let events = &mut *self.events;
        let remap = self.remap.as_mut();
        self.path = connect(&mut self.dialer, &self.plan, events, deadline, self.reconnects, remap)
            .await
            .map_err(|e| match e {
                Error::Connect(_) => Error::ConnectionLost(format!(
                    "{why}, and no new path was found within {timeout} s; run both commands again to resume"
                )),
                other => other,
            })?;
        Ok(())
    }

    /// Waits for the STUN check started when the last path died (for ever if none runs)
    /// and tells what it found. Cancel-safe: a link that stays waits on it beside its
    /// connection.
    pub(super) async fn remap_answer(&mut self) {
        let Some(r) = self.remap.as_mut() else {
            return std::future::pending().await;
        };
        if let Some(event) = r.answer().await.and_then(|seen| r.heard(seen)) {
            self.events.event(&event);
        }
    }

    /// Tells what the last check found if it has ended, without waiting: a one-shot run's
    /// path may come back before STUN answers.
    async fn remap_if_ready(&mut self) {
        if self.remap.as_ref().is_some_and(Remap::ready) {
            self.remap_answer().await;
        }
    }

    /// Our public address as STUN last saw it (the ticket's until a path dies), kept up
    /// to date; `None` inside without STUN answers to compare.
    pub(super) fn mapping(&self) -> Option<tokio::sync::watch::Receiver<Option<SocketAddr>>> {
        self.remap.as_ref().map(Remap::watch)
    }

    /// The job is done and everything is written where the program wants it: reports the
    /// `summary` (last, so that a reader sees it only when nothing can fail any more), then
    /// the sender closes and the receiver waits for the sender's close (or, should it be
    /// lost, until the sender has acknowledged every verdict: [`transfer::linger`]).
    pub async fn finish(&mut self, report: &Report) {
        let summary = Event::Summary {
            role: self.plan.role,
            files: report.files,
            folders: report.dirs,
            links: report.links,
            total_bytes: report.total,
            moved_bytes: report.moved,
            resumed_bytes: report.resumed,
            already_there: report.already_there,
            reconnects: report.reconnects,
            elapsed_s: seconds(report.elapsed),
            bytes_per_s: crate::events::rate(report.moved, report.elapsed),
            verification_code: self
                .code_to_compare(report.peer_authenticated)
                .map(str::to_owned),
        };
        self.events.event(&summary);
        match self.plan.role {
            Role::Sender => self
                .path
                .connection
                .close(CloseCode::NO_ERROR.into(), b"done"),
            Role::Receiver => {
                let control = self.control.take();
                self.peer_has_all = transfer::linger(&self.path.connection, control).await;
            }
        }
    }

    /// Tells the peer how the run ended (`outcome`: our close code, which is the exit code,
    /// and the message), waits until it has heard (bounded), and removes the port mapping.
    pub async fn close(mut self, outcome: &Result<(), Error>) {
        if let Some(p) = self.progress.as_mut() {
            p.event(&mut *self.events, true);
        }
        self.dialer.remember(&self.path.connection).await;
        let (code, reason) = close_reason(outcome, self.plan.stall_timeout);
        // Tell the peer at once instead of letting it wait for the idle timeout.
        let reason = &reason.as_bytes()[..reason.len().min(200)];
        // A peer that closed first needs nothing more from us (QUIC's draining state sends
        // nothing), so the wait below, three probe timeouts (~0.8 s on a 200 ms path), is
        // only for the side whose CONNECTION_CLOSE may need repeating.
        let peer_closed = matches!(
            self.path.connection.close_reason(),
            Some(
                quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::ConnectionClosed(_)
            )
        );
        self.path.connection.close(code.into(), reason);
        let endpoint = self.dialer.endpoint();
        endpoint.close(code.into(), reason);
        if !peer_closed && !self.peer_has_all {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        self.dialer.release_relay().await;
        self.cleanup.0.release().await;
    }
}

/// The close code and reason that tell the peer how our run ended.
fn close_reason(
    outcome: &Result<(), Error>,
    stall_timeout: Option<Duration>,
) -> (CloseCode, String) {
    match outcome {
        Ok(()) => (CloseCode::NO_ERROR, "done".to_owned()),
        // Our message speaks of "your peer"; the peer prints this after "your peer stopped: ".
        Err(e @ Error::Stalled(_)) => (
            e.close_code(),
            format!(
                "it saw no progress from you for {} s (its --stall-timeout)",
                stall_timeout.unwrap_or_default().as_secs()
            ),
        ),
        Err(e) => (e.close_code(), e.to_string()),
    }
}

/// Punches and connects, reporting `connecting`, the rounds and `connected`; `reconnects`
/// counts the connections this run had before. `remap`'s check, if given, is told as
/// soon as it answers (the punching goes on meanwhile) and learns when the link is back.
async fn connect(
    dialer: &mut Dialer,
    plan: &Plan,
    events: &mut dyn Events,
    deadline: Instant,
    reconnects: u32,
    remap: Option<&mut Remap>,
) -> Result<net::Link, Error> {
    // The schedule both tickets agree on: every 10 s in lanes, or every 40 s with a peer
    // whose ticket lists none.
    let schedule = dialer.schedule();
    let now_unix = plan.clock.now_unix();
    let first_unix = schedule.first_round_unix(now_unix);
    let wait = first_unix.saturating_sub(now_unix);
    let needs_rounds = plan.needs_rounds;
    events.event(&Event::Connecting {
        rounds: needs_rounds,
        round_period_s: needs_rounds.then_some(schedule.period.as_secs()),
        next_round_in_s: needs_rounds.then_some(wait.as_secs()),
    });
    // Without rounds nothing waits for a boundary (public peers, or a local network).
    let first_round = if needs_rounds {
        Instant::now() + wait
    } else {
        deadline
    };
    // Both the rounds and the STUN check tell the events while the punching runs.
    // (A mutex, not a RefCell: the future must be Send; it is never contended.)
    let shared = std::sync::Mutex::new(&mut *events);
    let tell = |e: &Event| shared.lock().unwrap_or_else(|p| p.into_inner()).event(e);
    let dialing = dialer.connect(
        first_round,
        schedule.index(first_unix),
        deadline,
        |p| match p {
            NetProgress::Round(n) if needs_rounds => {
                tell(&Event::PunchRound { round: n + 1 });
            }
            NetProgress::Round(_) => {}
        },
    );
    let link = match remap {
        None => dialing.await,
        Some(remap) => {
            tokio::pin!(dialing);
            let link = loop {
                tokio::select! {
                    link = &mut dialing => break link,
                    seen = remap.answer() => {
                        if let Some(e) = seen.and_then(|seen| remap.heard(seen)) {
                            tell(&e);
                        }
                    }
                }
            };
            remap.connected();
            link
        }
    };
    let link = match link {
        Ok(link) => link,
        Err(ConnectFailure::Fatal(e)) => return Err(e),
        Err(ConnectFailure::TimedOut { rounds, heard_peer }) => {
            return Err(Error::Connect(nat::explain_failure(
                plan.nat,
                plan.peer_nat,
                heard_peer,
                rounds,
                plan.timeout.as_secs(),
            )))
        }
    };
    events.event(&Event::Connected {
        path_kind: link.kind,
        remote: link.remote,
        rtt_ms: millis(link.connection.rtt()),
        authenticated: link.authenticated,
        verification_code: (!link.authenticated).then(|| link.verification_code.clone()),
        reconnects,
        // The peer saw us at our router's forwarded port: a port mapping made the path.
        via_port_mapping: link.observed.is_some() && link.observed == plan.port_mapping,
    });
    Ok(link)
}
