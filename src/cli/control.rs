//! What is said on the control socket of a link that stays.
//!
//! `p2pcopy link --name NAME` serves it ([`super::endpoint`] says where it lives and who
//! may use it: a private Unix socket, or a loopback port with a token file). One
//! request per connection, one JSON object per line (NDJSON); the replies follow, one per
//! line, and the daemon closes the connection after the last (the README documents them):
//!
//! ```text
//! {"op":"send","paths":["/abs/a.txt"],"wait":true} -> {"reply":"queued","job":1}
//!                                                     {"reply":"done","job":1,...} or {"reply":"error",...}
//! {"op":"send",...,"events":true}                  -> {"reply":"queued","job":1}
//!                                                     {"t":0.01,"event":"plan",...} ... (the job's events)
//!                                                     {"reply":"done",...} or {"reply":"error",...}
//! {"op":"status"}                                  -> {"reply":"status",...}
//! {"op":"events"}                                  -> {"event":...} lines, as they happen
//! ```
//!
//! This file is the sans-IO part (names, requests, replies); [`super::endpoint`] is where
//! the socket lives and who may use it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Longest request line the daemon reads.
pub const MAX_REQUEST: u64 = 1 << 20;

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Send these paths (absolute) as one job; with `wait`, reply again once the peer
    /// verified it.
    Send {
        /// Files and folders, absolute (the daemon's working folder is not the caller's).
        paths: Vec<PathBuf>,
        /// Reply `done` (or `error`) when the job ended, not only `queued`.
        #[serde(default = "yes")]
        wait: bool,
        /// With `wait`, also stream the job's events between `queued` and the last reply,
        /// as `p2pcopy sender --json` prints them (`t`: seconds since the request).
        #[serde(default)]
        events: bool,
    },
    /// The link's state, once.
    Status,
    /// Every event of the link from now on, until the caller hangs up.
    Events,
}

fn yes() -> bool {
    true
}

impl Request {
    /// Reads one request line; the error is the line for the caller.
    pub fn parse(line: &str) -> Result<Request, Error> {
        let req: Request = serde_json::from_str(line.trim())
            .map_err(|e| Error::Usage(format!("not a control request: {e}")))?;
        if let Request::Send { paths, .. } = &req {
            if paths.is_empty() {
                return Err(Error::Usage("nothing to send".into()));
            }
            if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
                return Err(Error::Usage(format!(
                    "paths must be absolute: {}",
                    p.display()
                )));
            }
        }
        Ok(req)
    }

    /// The request as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// A job's event line from the link (`{"t":T,"event":...}`, `t` counted from the
/// request) with `t` moved on by `offset` seconds, so it counts from the caller's start as
/// every `--json` line does; `None` for a line that is not an event.
pub fn restamp(line: &str, offset: f64) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("event")?.as_str()?;
    let t = v.get("t")?.as_f64()?;
    // The link writes `t` first (events::to_line); the rest of the line stays as written.
    let rest = line.trim_end().strip_prefix("{\"t\":")?;
    let (_, rest) = rest.split_once(',')?;
    let t = std::time::Duration::try_from_secs_f64((t + offset).max(0.0)).ok()?;
    let t = crate::events::seconds(t);
    Some(format!("{{\"t\":{},{rest}", serde_json::Value::from(t)))
}

/// An error reply: the error's message and exit code.
pub fn error_reply(job: Option<u64>, e: &Error) -> serde_json::Value {
    serde_json::json!({
        "reply": "error",
        "job": job,
        "code": e.exit_code(),
        "message": e.to_string(),
    })
}

/// The error an `error` reply stands for, as `p2pcopy send` exits with it.
pub fn reply_error(v: &serde_json::Value) -> Error {
    let code = v["code"].as_u64().and_then(|c| u8::try_from(c).ok());
    let message = v["message"]
        .as_str()
        .unwrap_or("the link failed")
        .to_owned();
    match code {
        Some(11) => Error::Control(message),
        Some(code) => Error::Job { code, message },
        None => Error::Job { code: 1, message },
    }
}

/// Refuses a link name that could leave the socket folder or hide from `ls`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "a link's name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.': {:?}",
            crate::shown::shown(name)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        assert_eq!(
            Request::parse(r#"{"op":"send","paths":["/a","/b c"]}"#).unwrap(),
            Request::Send {
                paths: vec!["/a".into(), "/b c".into()],
                wait: true,
                events: false,
            }
        );
        assert_eq!(
            Request::parse(r#"{"op":"send","paths":["/a"],"wait":false}"#).unwrap(),
            Request::Send {
                paths: vec!["/a".into()],
                wait: false,
                events: false,
            }
        );
        assert_eq!(
            Request::parse(r#"{"op":"send","paths":["/a"],"events":true}"#).unwrap(),
            Request::Send {
                paths: vec!["/a".into()],
                wait: true,
                events: true,
            }
        );
        assert_eq!(
            Request::parse(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            Request::parse(" {\"op\":\"events\"}\n").unwrap(),
            Request::Events
        );
        for bad in [
            "",
            "status",
            r#"{"op":"format_disk"}"#,
            r#"{"op":"send","paths":[]}"#,
            r#"{"op":"send","paths":["relative"]}"#,
            r#"{"op":"send","paths":["/a"],"wait":"yes"}"#,
            r#"{"op":"send","paths":["/a"],"events":1}"#,
            r#"{"op":"send","paths":["/a"],"evnets":true}"#,
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        let req = Request::Send {
            paths: vec!["/x".into()],
            wait: false,
            events: true,
        };
        assert_eq!(Request::parse(&req.line()).unwrap(), req);
    }

    #[test]
    fn job_events_count_from_the_callers_start() {
        let e = crate::events::Event::FileDone {
            path: "a\u{1b}[2J.txt".into(),
            size: 5,
            blake3: "ab".repeat(32),
            status: crate::wire::FileStatus::Stored,
            saved_as: None,
        };
        let line = crate::events::to_line(&e, 0.25);
        let moved = restamp(&line, 1.5).unwrap();
        let want = crate::events::to_line(&e, 1.75);
        assert_eq!(moved, want);
        // Rounded to milliseconds as every line is; a clock skew never goes below zero.
        let odd = restamp(&crate::events::to_line(&e, 0.1), 0.2).unwrap();
        assert!(odd.starts_with(r#"{"t":0.3,"event":"file_done""#), "{odd}");
        assert!(restamp(&line, -9.0).unwrap().starts_with(r#"{"t":0.0,"#));
        for not_an_event in [
            r#"{"reply":"done","job":1}"#,
            r#"{"t":1,"reply":"done"}"#,
            r#"{"event":"plan","t":1}"#,
            r#"{"t":"x","event":"plan"}"#,
            "not json",
            "",
        ] {
            assert_eq!(restamp(not_an_event, 1.0), None, "{not_an_event}");
        }
    }

    #[test]
    fn error_replies_keep_the_exit_code() {
        let e = Error::Verify("a.txt differs".into());
        let back = reply_error(&error_reply(Some(3), &e));
        assert_eq!(back.exit_code(), 8);
        assert_eq!(back.to_string(), e.to_string());
        let c = reply_error(&error_reply(None, &Error::Control("no".into())));
        assert_eq!(c.exit_code(), 11);
        // A code no error has is a bug, not a success.
        let odd = reply_error(&serde_json::json!({"reply":"error","code":0,"message":"x"}));
        assert_eq!(odd.exit_code(), 1);
        let none = reply_error(&serde_json::json!({"reply":"error"}));
        assert_eq!(none.exit_code(), 1);
    }

    #[test]
    fn names_stay_in_the_folder() {
        for good in ["lab-pc", "a", "x.y_z-1"] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert_eq!(check_name(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
