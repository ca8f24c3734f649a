//! The control socket of a link that stays: where it lives, who may use it, and what is
//! said on it.
//!
//! `p2pcopy link --name NAME` listens on a Unix socket, `$XDG_RUNTIME_DIR/p2pcopy/NAME.sock`
//! (or `$TMPDIR/p2pcopy-UID/NAME.sock` where no runtime dir is set): the folder is made
//! mode 0700 and must be ours and private, the socket is mode 0600, and the daemon also
//! checks the connecting process's uid, so another local user is refused twice over. One
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
//! This file is the sans-IO part (names, paths, requests, replies) and the socket's set-up
//! (a stale socket from a dead daemon is replaced, a live one is not stolen).

use std::path::{Path, PathBuf};

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

/// The folder of this user's control sockets: `$XDG_RUNTIME_DIR/p2pcopy`, or
/// `$TMPDIR/p2pcopy-UID` where the runtime dir is not set.
pub fn socket_dir(runtime_dir: Option<&Path>, uid: u32) -> PathBuf {
    match runtime_dir.filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.join("p2pcopy"),
        None => std::env::temp_dir().join(format!("p2pcopy-{uid}")),
    }
}

/// The socket of the link `name` for this process's user.
pub fn socket_path(name: &str) -> Result<PathBuf, Error> {
    check_name(name)?;
    let uid = crate::sys::effective_uid().unwrap_or(0);
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    Ok(socket_dir(runtime.as_deref(), uid).join(format!("{name}.sock")))
}

/// The names of this user's link sockets (running links, and stale sockets of dead ones).
pub fn running_names() -> Result<Vec<String>, Error> {
    let dir = socket_path("x")?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let name = name.strip_suffix(".sock")?.to_owned();
            check_name(&name).ok().map(|()| name)
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(unix)]
pub use unix::{bind, connect};

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    use tokio::net::{UnixListener, UnixStream};

    use crate::error::Error;

    /// Makes the socket folder (0700) or checks that an existing one is ours and private.
    fn private_dir(dir: &Path) -> Result<(), Error> {
        let made = std::fs::DirBuilder::new().mode(0o700).create(dir);
        if let Err(e) = made {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(Error::Control(format!(
                    "cannot make the control folder {}: {e}",
                    dir.display()
                )));
            }
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| {
            Error::Control(format!(
                "cannot read the control folder {}: {e}",
                dir.display()
            ))
        })?;
        let uid = crate::sys::effective_uid().unwrap_or(0);
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(Error::Control(format!(
                "the control folder {} is not a private folder of yours (owner uid {}, mode {:o}); remove it",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// Listens on `path` (mode 0600 in a private folder). A socket left by a dead daemon
    /// (nobody answers) is replaced; a live one is not stolen.
    pub fn bind(path: &Path, name: &str) -> Result<UnixListener, Error> {
        let dir = path.parent().unwrap_or(Path::new("."));
        private_dir(dir)?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(Error::Control(format!(
                    "{} is in the way and is not a socket; remove it",
                    path.display()
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Control(format!(
                    "a link named {name} is already running (its socket {} answers); pick another --name",
                    path.display()
                )));
            }
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::Control(format!("cannot listen on {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Control(format!("cannot make {} private: {e}", path.display())))?;
        Ok(listener)
    }

    /// Connects to the link `name`'s socket, with a clear error for a missing link and for
    /// another user's.
    pub async fn connect(path: &Path, name: &str) -> Result<UnixStream, Error> {
        UnixStream::connect(path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Error::Control(format!(
                "permission denied: the link {name} ({}) belongs to another user",
                path.display()
            )),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                Error::Control(format!(
                    "no link named {name} is running (start one with `p2pcopy link --name {name}`)"
                ))
            }
            _ => Error::Control(format!("cannot reach the link {name}: {e}")),
        })
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

    #[test]
    fn the_runtime_dir_is_preferred() {
        assert_eq!(
            socket_dir(Some(Path::new("/run/user/1000")), 1000),
            Path::new("/run/user/1000/p2pcopy")
        );
        let fallback = socket_dir(None, 1000);
        assert!(fallback.ends_with("p2pcopy-1000"), "{fallback:?}");
        assert_eq!(socket_dir(Some(Path::new("")), 7), socket_dir(None, 7));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p2pcopy");
        let path = dir.join("t.sock");
        let live = bind(&path, "t").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
        let e = bind(&path, "t").unwrap_err();
        assert!(e.to_string().contains("already running"), "{e}");
        assert_eq!(e.exit_code(), 11);
        connect(&path, "t").await.unwrap();
        drop(live);
        // The dead daemon's socket file is still there: replaced, and it answers again.
        assert!(path.exists());
        let _again = bind(&path, "t").unwrap();
        connect(&path, "t").await.unwrap();
        let missing = connect(&dir.join("none.sock"), "none").await.unwrap_err();
        assert!(
            missing.to_string().contains("no link named none"),
            "{missing}"
        );
        // A folder others can enter is refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = bind(&dir.join("u.sock"), "u").unwrap_err();
        assert!(e.to_string().contains("not a private folder"), "{e}");
    }
}
