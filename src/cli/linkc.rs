//! `p2pcopy send --to NAME` and `p2pcopy status`: the clients of a link's control socket
//! (the daemon is [`super::linkd`], the protocol [`super::control`]'s).
//!
//! `send` shows its job as a `sender` run shows one: with `--json` the job's events exactly
//! as `p2pcopy sender --json` prints them (the link forwards them, `t` moved to count from
//! this process's start), for a person a progress bar drawn from the same events.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::control::{self, Request};
use super::endpoint::{self, Stream};
use super::output::Output;
use super::progress::Progress;
use super::{SendArgs, StatusArgs};
use crate::error::Error;
use crate::events::value_line;

/// Sends one request to the link `name` and returns a reader of its replies.
async fn ask(name: &str, request: &Request) -> Result<BufReader<Stream>, Error> {
    let mut stream = endpoint::connect(name).await?;
    let wrote = stream.write_all(request.line().as_bytes()).await;
    let mut replies = BufReader::new(stream);
    if let Err(e) = wrote {
        // A link that refuses us says why before it hangs up, maybe before our request
        // was written.
        next_line(&mut replies).await?;
        return Err(Error::Control(format!("the link {name} hung up: {e}")));
    }
    Ok(replies)
}

/// The next line from the link, as written and parsed; `None` once the daemon closed. An
/// `error` reply is returned as the error it stands for.
async fn next_line(replies: &mut BufReader<Stream>) -> Result<Option<(String, Value)>, Error> {
    let mut line = String::new();
    let n = replies
        .read_line(&mut line)
        .await
        .map_err(|e| Error::Control(format!("cannot read the link's reply: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| Error::Control(format!("the link's reply is not JSON: {e}")))?;
    if v["reply"] == "error" {
        return Err(control::reply_error(&v));
    }
    Ok(Some((line, v)))
}

/// The next reply, parsed; `None` once the daemon closed.
async fn next_reply(replies: &mut BufReader<Stream>) -> Result<Option<Value>, Error> {
    Ok(next_line(replies).await?.map(|(_, v)| v))
}

/// `p2pcopy send --to NAME PATHS...`: returns once the peer verified the job (or at once
/// with `--no-wait`), with the exit code the job ended with.
pub async fn send(args: SendArgs, out: Output) -> Result<(), Error> {
    let mut paths = Vec::new();
    for p in &args.paths {
        let abs = std::path::absolute(p).map_err(|e| Error::Input {
            path: p.clone(),
            source: e,
        })?;
        paths.push(abs);
    }
    let wait = !args.no_wait;
    // Nobody reads the events with --quiet: the link need not send them.
    let events = wait && (out.is_json() || out.is_chatty());
    let asked = out.elapsed_s();
    let request = Request::Send {
        paths,
        wait,
        events,
    };
    let mut replies = ask(&args.to, &request).await?;
    let gone = || Error::Control(format!("the link {} stopped before the job ended", args.to));
    let queued = next_reply(&mut replies).await?.ok_or_else(gone)?;
    let job = queued["job"].as_u64().unwrap_or_default();
    if out.is_json() {
        println!(
            "{{\"t\":{},\"event\":\"job_queued\",\"job\":{job}}}",
            Value::from(asked)
        );
    }
    super::run::say_line(out, &format!("Queued as job {job} on the link {}", args.to));
    if !wait {
        return Ok(());
    }
    let mut view = JobView::new(out, asked);
    let done = loop {
        let (line, v) = next_line(&mut replies).await?.ok_or_else(gone)?;
        if v.get("reply").is_some() {
            break v;
        }
        view.event(&line, &v);
    };
    view.finish();
    super::run::say_line(
        out,
        &format!(
            "Sent {} files ({} bytes) in {} s; your peer verified them (BLAKE3)",
            done["files"], done["total_bytes"], done["elapsed_s"]
        ),
    );
    if let (Some(h), 1) = (&view.hash, view.files) {
        super::run::say_line(out, &format!("The receiver verified it: BLAKE3 {h}"));
    }
    Ok(())
}

/// A job's events as the link forwards them: printed for a program, a progress bar for a
/// person.
struct JobView {
    out: Output,
    /// When the request went out, in this process's seconds.
    asked: f64,
    progress: Option<Progress>,
    files: u64,
    /// The last verified file's BLAKE3, for the one-file closing line.
    hash: Option<String>,
}

impl JobView {
    fn new(out: Output, asked: f64) -> JobView {
        JobView {
            out,
            asked,
            progress: None,
            files: 0,
            hash: None,
        }
    }

    /// One event line (`line` as written, `v` parsed).
    fn event(&mut self, line: &str, v: &Value) {
        if self.out.is_json() {
            if let Some(line) = control::restamp(line, self.asked) {
                println!("{line}");
            }
            return;
        }
        let n = |k: &str| v[k].as_u64().unwrap_or_default();
        match v["event"].as_str().unwrap_or_default() {
            "plan" => {
                let out = self.out;
                self.progress
                    .get_or_insert_with(|| Progress::new(n("total_bytes"), "Sending", out))
                    .set(n("held_bytes"));
            }
            "progress" => {
                if let Some(p) = &mut self.progress {
                    p.advance_to(n("done_bytes"));
                    if let Some(file) = v["file"].as_str() {
                        p.set_message(file);
                    }
                }
            }
            "file_done" => {
                self.files += 1;
                self.hash = v["blake3"].as_str().map(str::to_owned);
            }
            "warning" => {
                let message = v["message"].as_str().unwrap_or_default();
                super::run::say_line(self.out, &format!("p2pcopy: warning: {message}"));
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some(p) = &mut self.progress {
            p.finish();
        }
    }
}

/// `p2pcopy status [--name NAME]`: each running link's state, once.
pub async fn status(args: StatusArgs, out: Output) -> Result<(), Error> {
    let names = match args.name {
        Some(name) => vec![name],
        None => endpoint::running_names(),
    };
    if names.is_empty() {
        return Err(Error::Control(
            "no link is running (start one with `p2pcopy link --name NAME`)".into(),
        ));
    }
    for name in &names {
        let v = match ask(name, &Request::Status).await {
            Ok(mut replies) => next_reply(&mut replies)
                .await?
                .ok_or_else(|| Error::Control(format!("the link {name} did not answer")))?,
            // A socket left by a dead daemon is no running link.
            Err(_) if names.len() > 1 => continue,
            Err(e) => return Err(e),
        };
        if out.is_json() {
            println!("{}", value_line(&v));
        } else {
            print_status(out, name, &v);
        }
    }
    Ok(())
}

/// A link's status for a person.
fn print_status(out: Output, name: &str, v: &Value) {
    let peer = v["peer"].as_str().unwrap_or("none (reconnecting)");
    out.print(format_args!(
        "link {name}: peer {peer} ({}), rtt {} ms, {} reconnects",
        v["path_kind"], v["rtt_ms"], v["reconnects"]
    ));
    if let Some(mapping) = v["mapping"].as_str() {
        out.print(format_args!(
            "  our public address (as STUN last saw it): {mapping}"
        ));
    }
    out.print(format_args!(
        "  queue {}, sent {} jobs ({} bytes), received {} jobs ({} bytes), {} failed, last rate {} B/s",
        v["queue"],
        v["sent_jobs"],
        v["sent_bytes"],
        v["received_jobs"],
        v["received_bytes"],
        v["failed_jobs"],
        v["bytes_per_s"]
    ));
}
