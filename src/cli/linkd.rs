//! `p2pcopy link`: the daemon holding a link that stays, serving its control socket (its
//! clients, `send --to` and `status`, are [`super::linkc`]). The protocol is
//! [`super::control`]'s; the link is [`crate::session::Duplex`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc};

use super::control::{self, Request};
use super::endpoint::{self, Form, Incoming, Listener, Stream};
use super::output::Output;
use super::run::{connect_with, session_config};
use super::watch::{Due, Watch};
use super::LinkArgs;
use crate::error::Error;
use crate::events::{millis, seconds, to_line, value_line, Event};
use crate::session::{Arrival, Cleanup, Duplex, DuplexOptions, Events};
use crate::transfer::delete::Ledger;
use crate::transfer::{self, Report};
use crate::wire::DeleteStatus;

/// What `status` reports beside the path: the daemon's counts.
#[derive(Debug, Default)]
struct Counts {
    queued: u64,
    sent_jobs: u64,
    sent_bytes: u64,
    received_jobs: u64,
    received_bytes: u64,
    failed_jobs: u64,
    /// The last job's rate either way, bytes per second.
    last_rate: u64,
}

/// What the connection handlers share.
struct Daemon {
    name: String,
    socket: PathBuf,
    duplex: Duplex,
    counts: Mutex<Counts>,
    events: broadcast::Sender<String>,
    started: Instant,
    next_job: Mutex<u64>,
    /// What the watch sent, for its deletions.
    sent: Mutex<Ledger>,
    out: Output,
}

impl Daemon {
    /// Tells the daemon's own output and every `events` listener `v`.
    fn tell(&self, v: Value) {
        let line = value_line(&v);
        if self.out.is_json() {
            println!("{line}");
        }
        let _ = self.events.send(line);
    }
}

/// The session's events: printed as for any run, and streamed on the socket too.
#[derive(Clone)]
struct Tee {
    out: Output,
    events: broadcast::Sender<String>,
    start: Instant,
}

impl Events for Tee {
    fn event(&mut self, event: &Event) {
        self.out.event(event);
        if event.in_json() {
            let _ = self
                .events
                .send(to_line(event, seconds(self.start.elapsed())));
        }
    }
}

/// `p2pcopy link --name NAME`: takes the name's socket first (a clash fails before any
/// ticket is exchanged), connects as any run does, then holds the link until Ctrl-C or
/// the peer closes it.
pub async fn link(args: LinkArgs, out: Output, cleanup: &Cleanup) -> Result<(), Error> {
    transfer::check_output_dir(&args.output)?;
    if let Some(dir) = &args.watch {
        super::watch::check_apart(dir, &args.output)?;
    }
    let form = Form::chosen(std::env::var("P2PCOPY_CONTROL").ok().as_deref())?;
    let listener = endpoint::bind(&args.name, form)?;
    let socket = listener.path().to_owned();
    let result = hold(args, &socket, listener, out, cleanup).await;
    let _ = std::fs::remove_file(&socket);
    result
}

async fn hold(
    args: LinkArgs,
    socket: &std::path::Path,
    listener: Listener,
    out: Output,
    cleanup: &Cleanup,
) -> Result<(), Error> {
    let (events, _) = broadcast::channel(1024);
    let tee = Tee {
        out,
        events: events.clone(),
        start: Instant::now(),
    };
    let mut config = session_config(crate::ticket::Role::Receiver, &args.net)?;
    config.link = true;
    let link = connect_with(config, &args.net, out, tee, cleanup).await?;
    let opts = DuplexOptions {
        overwrite: args.overwrite,
        allow_delete: args.allow_delete,
        reconnect_for: args.reconnect_for.map(Duration::from_secs),
        ..DuplexOptions::new(args.output.clone())
    };
    let (duplex, mut arrivals) = link.into_duplex(opts);
    super::run::say_line(
        out,
        &format!(
            "Link {} is up; send with `p2pcopy send --to {} PATH...` (control socket {})",
            args.name,
            args.name,
            socket.display()
        ),
    );
    let daemon = Arc::new(Daemon {
        name: args.name.clone(),
        socket: socket.to_owned(),
        duplex,
        counts: Mutex::default(),
        events,
        started: Instant::now(),
        next_job: Mutex::new(0),
        sent: Mutex::default(),
        out,
    });
    let watching = watching(args.watch.as_deref(), args.delete, out, &daemon)?;
    let serving = serve(listener, daemon.clone());
    let receiving = async {
        while let Some(a) = arrivals.next().await {
            arrived(&daemon, a);
        }
    };
    let result = tokio::select! {
        _ = serving => Err(Error::Internal("the control socket stopped".into())),
        _ = receiving => ended(&daemon).await,
        r = watching => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Interrupted("interrupted".into())),
    };
    // Ctrl-C is how a link is meant to end: the peer hears a close, not a lost path, and
    // ends its link too (exit code 0 there).
    daemon.duplex.close().await;
    result
}

/// Starts watching `dir`, if given (its deletions too with `deletions`), and returns what
/// sends its changes over the link (or waits for ever).
fn watching(
    dir: Option<&std::path::Path>,
    deletions: bool,
    out: Output,
    daemon: &Arc<Daemon>,
) -> Result<impl std::future::Future<Output = Result<(), Error>>, Error> {
    let watch = match dir {
        Some(dir) => {
            let watch = Watch::start(dir.to_owned(), deletions)?;
            let what = if deletions {
                "deletions of what this link sent are sent too"
            } else {
                "deletions are not sent"
            };
            super::run::say_line(
                out,
                &format!("Watching {}: what appears or changes there is sent once quiet for 1 s ({what})", dir.display()),
            );
            Some(watch)
        }
        None => None,
    };
    let daemon = daemon.clone();
    Ok(async move {
        let Some(watch) = watch else {
            return std::future::pending().await;
        };
        // One at a time, in the order they came due: a file's deletion must not overtake
        // its sending, nor a folder's the deletion of its files.
        let (tx, mut due) = mpsc::unbounded_channel();
        let work = async {
            while let Some(d) = due.recv().await {
                match d {
                    Due::File(name, path) => {
                        let (_, done) = start_job(&daemon, What::Named(name, path), None);
                        let _ = done.await;
                    }
                    Due::Gone(name) => send_deletion(&daemon, name).await,
                }
            }
        };
        tokio::select! {
            r = watch.run(move |d| {
                let _ = tx.send(d);
            }) => r,
            () = work => Ok(()),
        }
    })
}

/// Asks the peer to delete `name` (gone from the watched folder), if this link sent it,
/// and tells what became of it.
async fn send_deletion(daemon: &Daemon, name: String) {
    let asked = daemon
        .sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .deletion(&name);
    let Some(hash) = asked else {
        tracing::debug!(name, "gone, but never sent: no deletion to send");
        return;
    };
    match daemon.duplex.delete(&name, hash).await {
        Ok(status) => {
            if matches!(status, DeleteStatus::Deleted | DeleteStatus::Missing) {
                daemon
                    .sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget(&name);
            }
            let result = crate::events::delete_status_name(status);
            super::run::say_line(
                daemon.out,
                &format!("Deleted {name}: your peer says {result}"),
            );
            daemon.tell(json!({"event": "delete_sent", "path": name, "result": result}));
        }
        Err(e) => {
            super::run::say_line(
                daemon.out,
                &format!("Could not send the deletion of {name}: {e}"),
            );
            daemon.tell(json!({"event": "delete_failed", "path": name, "code": e.exit_code(), "message": e.to_string()}));
        }
    }
}

/// Why the link ended once the peer's jobs stopped coming: a peer that closed its link is
/// no error.
async fn ended(daemon: &Daemon) -> Result<(), Error> {
    let e = daemon.duplex.wait_ended().await;
    match e {
        Error::PeerStopped(ref why) if why == "done" => {
            super::run::say_line(daemon.out, "Your peer closed the link");
            Ok(())
        }
        e => Err(e),
    }
}

/// Counts, prints and streams a job the peer sent.
fn arrived(daemon: &Daemon, a: Arrival) {
    let r = &a.report;
    {
        let mut c = daemon.counts.lock().unwrap_or_else(|p| p.into_inner());
        match a.result {
            Ok(()) => c.received_jobs += 1,
            Err(_) => c.failed_jobs += 1,
        }
        c.received_bytes += r.moved;
        c.last_rate = crate::events::rate(r.moved, r.elapsed);
    }
    for (path, hash) in &a.saved {
        super::run::say_line(
            daemon.out,
            &format!("Received {path}, BLAKE3 {hash} verified"),
        );
    }
    let saved: Vec<Value> = a
        .saved
        .iter()
        .map(|(p, h)| json!({"path": p, "blake3": h.to_hex().as_str()}))
        .collect();
    let mut v = json!({"event": "job_received", "saved": saved});
    summary_fields(&mut v, r);
    if let Err(e) = &a.result {
        super::run::say_line(daemon.out, &format!("A job from your peer failed: {e}"));
        v["code"] = json!(e.exit_code());
        v["message"] = json!(e.to_string());
    }
    daemon.tell(v);
}

/// A job's numbers, as today's `summary` event names them.
fn summary_fields(v: &mut Value, r: &Report) {
    v["files"] = json!(r.files);
    v["folders"] = json!(r.dirs);
    v["total_bytes"] = json!(r.total);
    v["moved_bytes"] = json!(r.moved);
    v["resumed_bytes"] = json!(r.resumed);
    v["already_there"] = json!(r.already_there);
    v["reconnects"] = json!(r.reconnects);
    v["elapsed_s"] = json!(seconds(r.elapsed));
    v["bytes_per_s"] = json!(crate::events::rate(r.moved, r.elapsed));
}

/// Accepts control connections for ever, one task each.
async fn serve(listener: Listener, daemon: Arc<Daemon>) {
    loop {
        match listener.accept().await {
            Ok(caller) => {
                tokio::spawn(handle(caller, daemon.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Writes one reply line; a caller that hung up is no error of ours.
async fn reply(stream: &mut Stream, v: &Value) -> bool {
    let mut line = value_line(v);
    line.push('\n');
    stream.write_all(line.as_bytes()).await.is_ok()
}

/// Serves one control connection: checks who it is, reads its request, answers.
async fn handle(caller: Incoming, daemon: Arc<Daemon>) {
    // The socket's folder and mode keep others out; who calls is checked anyway.
    let mut stream = match caller.admit(&daemon.name).await {
        Ok(stream) => stream,
        Err((mut stream, e)) => {
            reply(&mut stream, &control::error_reply(None, &e)).await;
            return;
        }
    };
    let mut line = String::new();
    let got = BufReader::new((&mut stream).take(control::MAX_REQUEST))
        .read_line(&mut line)
        .await;
    let request = match got {
        Ok(_) => Request::parse(&line),
        Err(e) => Err(Error::Usage(format!("cannot read the request: {e}"))),
    };
    match request {
        Err(e) => {
            reply(&mut stream, &control::error_reply(None, &e)).await;
        }
        Ok(Request::Status) => {
            reply(&mut stream, &status_of(&daemon)).await;
        }
        Ok(Request::Events) => {
            let mut rx = daemon.events.subscribe();
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        let line = line + "\n";
                        if stream.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(missed = n, "an events listener fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
        Ok(Request::Send {
            paths,
            wait,
            events,
        }) => send_job(stream, daemon, paths, wait, wait && events).await,
    }
}

/// What a job sends: paths as `send` names them, or one watched file under its name
/// below the watched folder.
enum What {
    Paths(Vec<PathBuf>),
    Named(String, PathBuf),
}

/// A job's events as lines for the caller that asked for it, `t` counted from its request.
struct JobLines {
    lines: mpsc::UnboundedSender<String>,
    start: Instant,
}

impl Events for JobLines {
    fn event(&mut self, event: &Event) {
        if event.in_json() {
            let _ = self
                .lines
                .send(to_line(event, seconds(self.start.elapsed())));
        }
    }
}

/// Queues a job and starts it; the receiver gets the reply for its caller once it ended,
/// `lines` the job's events on the way if given.
fn start_job(
    daemon: &Arc<Daemon>,
    what: What,
    lines: Option<JobLines>,
) -> (u64, tokio::sync::oneshot::Receiver<Value>) {
    let job = {
        let mut n = daemon.next_job.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        *n
    };
    daemon
        .counts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .queued += 1;
    let shown: Vec<String> = match &what {
        What::Paths(paths) => paths.iter().map(|p| p.display().to_string()).collect(),
        What::Named(_, path) => vec![path.display().to_string()],
    };
    daemon.tell(json!({"event": "job_queued", "job": job, "paths": shown}));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let d = daemon.clone();
    tokio::spawn(async move {
        let result = match (what, lines) {
            (What::Paths(paths), Some(lines)) => d.duplex.send_observed(&paths, lines).await,
            (What::Paths(paths), None) => d.duplex.send(&paths).await,
            (What::Named(name, path), _) => match named_job(name, path).await {
                Ok(job) => {
                    let r = d.duplex.send_job(job).await;
                    if let Ok(r) = &r {
                        // Named by its path below the watched folder: its deletion's key.
                        let mut sent = d.sent.lock().unwrap_or_else(|p| p.into_inner());
                        for (name, hash) in &r.hashes {
                            sent.add(name, *hash);
                        }
                    }
                    r
                }
                Err(e) => Err(e),
            },
        };
        let v = sent(&d, job, &result);
        let _ = tx.send(v);
    });
    (job, rx)
}

/// A one-file job for `path`, announced as `name` (a path below the watched folder).
async fn named_job(name: String, path: PathBuf) -> Result<transfer::Outgoing, Error> {
    let mut scan = tokio::task::spawn_blocking(move || crate::manifest::scan(&[path]))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    match scan.entries.as_mut_slice() {
        [entry] => entry.path = name,
        _ => return Err(Error::Internal("a watched file scanned as several".into())),
    }
    Ok(transfer::Outgoing::new(scan))
}

/// Queues a job, answers `queued`, then (if the caller waits) the job's events if asked
/// for, and `done` or `error` once the peer verified it or it failed. The job goes on if
/// the caller hangs up.
async fn send_job(
    mut stream: Stream,
    daemon: Arc<Daemon>,
    paths: Vec<PathBuf>,
    wait: bool,
    events: bool,
) {
    let (tx, mut lines) = mpsc::unbounded_channel();
    let job_lines = events.then(|| JobLines {
        lines: tx,
        start: Instant::now(),
    });
    let (job, mut rx) = start_job(&daemon, What::Paths(paths), job_lines);
    if !reply(&mut stream, &json!({"reply": "queued", "job": job})).await || !wait {
        return;
    }
    let done = loop {
        tokio::select! {
            // The job's events are all queued before its outcome: drain them first.
            biased;
            Some(line) = lines.recv() => {
                if stream.write_all((line + "\n").as_bytes()).await.is_err() {
                    return;
                }
            }
            v = &mut rx => break v,
        }
    };
    while let Ok(line) = lines.try_recv() {
        if stream.write_all((line + "\n").as_bytes()).await.is_err() {
            return;
        }
    }
    if let Ok(v) = done {
        reply(&mut stream, &v).await;
    }
}

/// Counts, prints and streams a job of ours that ended; returns the reply for its caller.
fn sent(daemon: &Daemon, job: u64, result: &Result<Report, Error>) -> Value {
    let mut c = daemon.counts.lock().unwrap_or_else(|p| p.into_inner());
    c.queued = c.queued.saturating_sub(1);
    match result {
        Ok(r) => {
            c.sent_jobs += 1;
            c.sent_bytes += r.moved;
            c.last_rate = crate::events::rate(r.moved, r.elapsed);
            drop(c);
            let mut v = json!({"event": "job_sent", "job": job});
            summary_fields(&mut v, r);
            daemon.tell(v.clone());
            super::run::say_line(
                daemon.out,
                &format!("Sent job {job}: {} files, verified by your peer", r.files),
            );
            v["reply"] = json!("done");
            v.as_object_mut().map(|o| o.remove("event"));
            v
        }
        Err(e) => {
            c.failed_jobs += 1;
            drop(c);
            let mut v = control::error_reply(Some(job), e);
            daemon.tell(json!({"event": "job_failed", "job": job, "code": e.exit_code(), "message": e.to_string()}));
            super::run::say_line(daemon.out, &format!("Job {job} failed: {e}"));
            v["job"] = json!(job);
            v
        }
    }
}

/// The `status` reply.
fn status_of(daemon: &Daemon) -> Value {
    let c = daemon.counts.lock().unwrap_or_else(|p| p.into_inner());
    let path = daemon.duplex.connection();
    json!({
        "reply": "status",
        "name": daemon.name,
        "socket": daemon.socket.display().to_string(),
        "up": path.is_some(),
        "peer": path.as_ref().map(|(conn, _)| conn.remote_address().to_string()),
        "path_kind": path.as_ref().map(|(_, kind)| kind),
        "rtt_ms": path.as_ref().map(|(conn, _)| millis(conn.rtt())),
        "mapping": daemon.duplex.mapping().map(|a| a.to_string()),
        "reconnects": daemon.duplex.reconnects(),
        "queue": c.queued,
        "sent_jobs": c.sent_jobs,
        "sent_bytes": c.sent_bytes,
        "received_jobs": c.received_jobs,
        "received_bytes": c.received_bytes,
        "failed_jobs": c.failed_jobs,
        "bytes_per_s": c.last_rate,
        "uptime_s": seconds(daemon.started.elapsed()),
    })
}
