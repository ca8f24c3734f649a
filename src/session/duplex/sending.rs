//! The sending task of a link that stays: the queued jobs and deletions, one at a time in
//! the order asked for, each on the path up now and resumed on the next if it dies.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::{usable, Path};
use crate::error::Error;
use crate::events::{rate, seconds, Event};
use crate::session::observe::{Progress, Tee};
use crate::session::Events;
use crate::ticket::Role;
use crate::transfer::{self, Outgoing, Report, Silent};
use crate::wire::DeleteStatus;

/// What the sending task does next, in the order asked for.
pub(super) enum Request {
    /// A job to send, who hears how it goes, and where its outcome goes.
    Send {
        job: Box<Outgoing>,
        events: Box<dyn Events>,
        reply: oneshot::Sender<Result<Report, Error>>,
    },
    /// A path for the peer to delete (see [`Duplex::delete`]).
    Delete {
        path: String,
        hash: Option<blake3::Hash>,
        reply: oneshot::Sender<Result<DeleteStatus, Error>>,
    },
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

/// The sending task: runs the queued jobs one at a time.
pub(super) async fn sending(
    mut queue: mpsc::UnboundedReceiver<Request>,
    mut path: watch::Receiver<Path>,
    stall: Option<Duration>,
    retries: u32,
    notes: mpsc::UnboundedSender<Event>,
) {
    while let Some(req) = queue.recv().await {
        match req {
            Request::Send {
                mut job,
                mut events,
                reply,
            } => {
                let events = &mut *events;
                let result = send_one(&mut job, events, &mut path, stall, retries, &notes).await;
                let result = result.map(|code| {
                    let r = job.report().clone();
                    events.event(&summary(&r, code));
                    r
                });
                let _ = reply.send(result);
            }
            Request::Delete {
                path: p,
                hash,
                reply,
            } => {
                let _ = reply.send(delete_one(&p, hash, &mut path, stall).await);
            }
        }
    }
}

/// Asks the peer to delete `name`, on the next path if this one dies meanwhile.
async fn delete_one(
    name: &str,
    hash: Option<blake3::Hash>,
    path: &mut watch::Receiver<Path>,
    stall: Option<Duration>,
) -> Result<DeleteStatus, Error> {
    let mut stale = None;
    loop {
        let c = usable(path, stale).await?;
        match transfer::delete::ask(&c.conn, name, hash, stall).await {
            Err(Error::ConnectionLost(_) | Error::Stalled(_))
                if c.conn.close_reason().is_some() =>
            {
                stale = Some(c.gen);
            }
            other => return other,
        }
    }
}

/// A sent job's `summary` event, as a one-shot sender's; `code` is the code to compare
/// when either side could not check the other's certificate.
fn summary(r: &Report, code: Option<String>) -> Event {
    Event::Summary {
        role: Role::Sender,
        files: r.files,
        folders: r.dirs,
        links: r.links,
        total_bytes: r.total,
        moved_bytes: r.moved,
        resumed_bytes: r.resumed,
        already_there: r.already_there,
        reconnects: r.reconnects,
        elapsed_s: seconds(r.elapsed),
        bytes_per_s: rate(r.moved, r.elapsed),
        verification_code: code,
    }
}

/// Sends one job until the peer verified it: on a new path after a lost one, or again on
/// the same connection after a stall (at most `retries` times). `events` hears the job's
/// plans, progress, files and stall retries. Returns the code to compare, if one applies.
async fn send_one(
    job: &mut Outgoing,
    events: &mut dyn Events,
    path: &mut watch::Receiver<Path>,
    stall: Option<Duration>,
    retries: u32,
    notes: &mpsc::UnboundedSender<Event>,
) -> Result<Option<String>, Error> {
    let (mut stale, mut tried) = (None, 0);
    // Kept across connections, like the job: a resumed job's bar goes on where it was.
    let mut progress: Option<Progress> = None;
    loop {
        let c = usable(path, stale).await?;
        let opts = transfer::Options {
            stall_timeout: stall,
            ..transfer::Options::new(c.authenticated)
        };
        let mut tee = Tee {
            events: &mut *events,
            progress: &mut progress,
            inner: &mut Silent,
            path: None,
        };
        let e = match job.run(&c.conn, opts, &mut tee).await {
            Ok(()) => {
                let peer_checked = job.report().peer_authenticated;
                return Ok(c.code.filter(|_| !c.authenticated || !peer_checked));
            }
            Err(e @ (Error::ConnectionLost(_) | Error::Stalled(_))) => e,
            Err(e) => return Err(e),
        };
        if c.conn.close_reason().is_some() {
            // The driver punches a new path; the job resumes there.
            stale = Some(c.gen);
            continue;
        }
        tried += 1;
        if tried > retries {
            return Err(e);
        }
        let warning = Event::Warning {
            message: format!("{e}; sending the job again ({tried} of {retries})"),
        };
        events.event(&warning);
        let _ = notes.send(warning);
        // The same connection again: a retry, not a reconnect.
        job.retry_on_same_connection();
        stale = None;
    }
}
