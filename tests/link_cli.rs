//! `p2pcopy link`, `send --to` and `status` as a user runs them: two link daemons of the
//! real binary on loopback (tickets through stdin/stdout), jobs sent both ways at once over
//! their control sockets, the socket's refusals (another user, a name in use, no such
//! link) and a stale socket replaced.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_p2pcopy");

/// The binary, with its rate memory in the build's temporary folder, not the user's cache.
fn command() -> Command {
    let mut c = Command::new(BIN);
    c.env(
        "XDG_CACHE_HOME",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/cache"),
    );
    c
}

struct Daemon {
    child: Child,
    _stdin: ChildStdin,
    ticket: String,
    lines: mpsc::Receiver<String>,
}

/// Starts `p2pcopy link --name NAME` with its sockets under `xdg`.
fn link(name: &str, out: &Path, xdg: &Path) -> Daemon {
    link_with(name, out, xdg, &[])
}

/// [`link`] with more flags.
fn link_with(name: &str, out: &Path, xdg: &Path, extra: &[&str]) -> Daemon {
    link_env(name, out, xdg, extra, &[])
}

/// [`link_with`] with more environment.
fn link_env(name: &str, out: &Path, xdg: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut child = command()
        .args([
            "link",
            "--name",
            name,
            "--bind",
            "127.0.0.1",
            "--no-stun",
            "--no-ntp",
        ])
        .args(extra)
        .args(["--timeout", "20", "--output"])
        .arg(out)
        .env("XDG_RUNTIME_DIR", xdg)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn p2pcopy");
    let stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let ticket = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ticket line");
        if let Some(t) = line.strip_prefix("Tell this to your peer: ") {
            break t.to_owned();
        }
    };
    Daemon {
        child,
        _stdin: stdin,
        ticket,
        lines: rx,
    }
}

impl Daemon {
    fn paste(&mut self, ticket: &str) {
        writeln!(self._stdin, "{ticket}").unwrap();
    }

    /// Waits for a line containing `what` (20 s at most).
    fn wait_for(&self, what: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("no line with {what:?}: {e}"));
            eprintln!("daemon: {line}");
            if line.contains(what) {
                return line;
            }
        }
    }

    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("the link did not end within 30 s");
    }
}

/// Runs a client command with the sockets under `xdg`.
fn client(xdg: &Path, args: &[&str]) -> Output {
    command()
        .args(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn two_link_daemons_send_both_ways_and_refuse_strangers() {
    let tmp = tempfile::tempdir().unwrap();
    let (xdg, out_a, out_b, src) = two_link_dirs(tmp.path());
    let mut a = link("left", &out_a, &xdg);
    let mut b = link("right", &out_b, &xdg);
    let (ta, tb) = (a.ticket.clone(), b.ticket.clone());
    a.paste(&tb);
    b.paste(&ta);
    a.wait_for("Link left is up");
    b.wait_for("Link right is up");

    // A name in use is not stolen.
    let clash = client(&xdg, &["link", "--name", "left", "--no-stun", "--no-ntp"]);
    assert_eq!(clash.status.code(), Some(11), "{}", text(&clash));
    assert!(text(&clash).contains("already running"), "{}", text(&clash));
    let none = client(&xdg, &["send", "--to", "nowhere", "/etc/hostname"]);
    assert_eq!(none.status.code(), Some(11), "{}", text(&none));

    // Both ways at once, each side several jobs.
    let mut sends = Vec::new();
    for i in 0..4 {
        for (to, tag) in [("left", "l"), ("right", "r")] {
            let f = src.join(format!("{tag}{i}.txt"));
            std::fs::write(&f, format!("{tag} {i}").repeat(100 * (i + 1))).unwrap();
            let xdg = xdg.clone();
            sends.push(thread::spawn(move || {
                client(&xdg, &["send", "--to", to, f.to_str().unwrap()])
            }));
        }
    }
    for s in sends {
        let o = s.join().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    for i in 0..4 {
        let (l, r) = (format!("l{i}.txt"), format!("r{i}.txt"));
        assert_eq!(
            std::fs::read(out_b.join(&l)).unwrap(),
            std::fs::read(src.join(&l)).unwrap()
        );
        assert_eq!(
            std::fs::read(out_a.join(&r)).unwrap(),
            std::fs::read(src.join(&r)).unwrap()
        );
    }
    assert_eq!(std::fs::read_dir(&out_a).unwrap().count(), 4, "none twice");
    assert_eq!(std::fs::read_dir(&out_b).unwrap().count(), 4, "none twice");

    // --json: the job's events as `sender --json` prints them; a job that cannot be read
    // ends with its exit code and an `error` event.
    let j = client(
        &xdg,
        &[
            "--json",
            "send",
            "--to",
            "left",
            src.join("l0.txt").to_str().unwrap(),
        ],
    );
    assert!(j.status.success(), "{}", text(&j));
    assert_sender_events(&j.stdout, &std::fs::read(src.join("l0.txt")).unwrap());
    let missing = client(&xdg, &["send", "--to", "left", "/nonexistent/file"]);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing));
    let missing = client(
        &xdg,
        &["--json", "send", "--to", "left", "/nonexistent/file"],
    );
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing));
    let last: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&missing.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&last["event"], &last["code"]),
        (&"error".into(), &4.into())
    );
    // A person sees the closing lines, the hash among them.
    let h = client(
        &xdg,
        &["send", "--to", "left", src.join("l1.txt").to_str().unwrap()],
    );
    assert!(h.status.success(), "{}", text(&h));
    let hash = blake3::hash(&std::fs::read(src.join("l1.txt")).unwrap());
    assert!(
        text(&h).contains(&format!("The receiver verified it: BLAKE3 {hash}")),
        "{}",
        text(&h)
    );

    let st = client(&xdg, &["--json", "status"]);
    assert!(st.status.success(), "{}", text(&st));
    let links: Vec<serde_json::Value> = String::from_utf8_lossy(&st.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    assert_eq!(links[0]["name"], "left");
    assert_eq!(links[0]["up"], true);
    assert_eq!(links[0]["path_kind"], "lan");
    assert!(links[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(links[0]["sent_jobs"], 6, "{:?}", links[0]);
    assert_eq!(links[0]["failed_jobs"], 2, "{:?}", links[0]);
    assert_eq!(links[0]["received_jobs"], 4, "{:?}", links[0]);

    // Another local user is refused (root runs the test suite in CI; skipped otherwise).
    if is_root() {
        let (shared, bin) = binary_for_nobody();
        use std::os::unix::fs::PermissionsExt;
        let o = send_as_nobody(&bin, &xdg, shared.path());
        assert_eq!(o.status.code(), Some(11), "{}", text(&o));
        assert!(text(&o).contains("permission denied"), "{}", text(&o));
        // Folder and socket opened up by mistake: the link checks who calls anyway.
        for d in [tmp.path(), xdg.as_path(), &xdg.join("p2pcopy")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let sock = xdg.join("p2pcopy/left.sock");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let o = send_as_nobody(&bin, &xdg, shared.path());
        assert_eq!(o.status.code(), Some(11), "{}", text(&o));
        assert!(
            text(&o).contains("permission denied: the link left belongs to another user"),
            "{}",
            text(&o)
        );
        assert!(!out_b.join("hostname").exists(), "never a send");
    }

    // Ctrl-C ends a link; the peer hears a close and ends too, with no error.
    a.interrupt();
    assert_eq!(a.wait().code(), Some(130));
    b.wait_for("Your peer closed the link");
    assert!(b.wait().success());
    assert!(
        !xdg.join("p2pcopy/left.sock").exists(),
        "the socket is removed"
    );
}

/// The loopback form of the control socket (Windows' form; `P2PCOPY_CONTROL=tcp` here):
/// `send` and `status` through it, callers without the token refused, the port file private
/// and gone once the link ends.
#[test]
fn links_answer_on_a_loopback_port_with_a_token() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (xdg, out_a, out_b, src) = two_link_dirs(tmp.path());
    let tcp = [("P2PCOPY_CONTROL", "tcp")];
    let mut a = link_env("left", &out_a, &xdg, &[], &tcp);
    let mut b = link_env("right", &out_b, &xdg, &[], &tcp);
    let (ta, tb) = (a.ticket.clone(), b.ticket.clone());
    a.paste(&tb);
    b.paste(&ta);
    a.wait_for("Link left is up");
    b.wait_for("Link right is up");
    let port_file = xdg.join("p2pcopy/left.tcp");
    let mode = std::fs::metadata(&port_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!xdg.join("p2pcopy/left.sock").exists());

    let f = src.join("x.txt");
    std::fs::write(&f, b"over loopback".repeat(1000)).unwrap();
    let o = client(&xdg, &["send", "--to", "left", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(out_b.join("x.txt")).unwrap(),
        std::fs::read(&f).unwrap()
    );
    let o = client(&xdg, &["--json", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(s.lines().count(), 2, "both links: {s}");
    assert!(
        s.contains("left.tcp") && s.contains("\"sent_jobs\":1"),
        "{s}"
    );

    // The port answers anyone local: without the token, a request gets a refusal only.
    let text_file = std::fs::read_to_string(&port_file).unwrap();
    let (addr, token) = text_file.trim().split_once(' ').unwrap();
    for first in [
        "{\"op\":\"status\"}\n".to_owned(),
        format!("{}\n", "0".repeat(token.len())),
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(first.as_bytes()).unwrap();
        s.write_all(b"{\"op\":\"status\"}\n").unwrap();
        let mut lines = BufReader::new(s).lines();
        let reply = lines.next().unwrap().unwrap();
        assert!(reply.contains("permission denied"), "{reply}");
        assert!(lines.next().is_none(), "nothing after the refusal");
    }
    if is_root() {
        // Another user cannot read the token, even with the folders opened up by mistake.
        let (shared, bin) = binary_for_nobody();
        let open = std::fs::Permissions::from_mode(0o755);
        for d in [tmp.path(), &xdg, &xdg.join("p2pcopy")] {
            std::fs::set_permissions(d, open.clone()).unwrap();
        }
        let o = send_as_nobody(&bin, &xdg, shared.path());
        assert_eq!(o.status.code(), Some(11), "{}", text(&o));
        assert!(text(&o).contains("permission denied"), "{}", text(&o));
    }
    a.interrupt();
    assert_eq!(a.wait().code(), Some(130));
    b.wait_for("Your peer closed the link");
    assert!(b.wait().success());
    assert!(!port_file.exists(), "the port file is removed");
}

/// The folders two links need under `root`: the sockets' runtime dir, each side's output,
/// and a source folder.
fn two_link_dirs(root: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dirs = ["run", "a", "b", "src"].map(|d| root.join(d));
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
    }
    let [xdg, a, b, src] = dirs;
    (xdg, a, b, src)
}

/// `send --json`'s lines: `job_queued`, then what `sender --json` prints of a one-file
/// job (`plan`, `progress`, `file_done` with the file's BLAKE3, `summary` last, every
/// field of it), `t` never going back.
fn assert_sender_events(stdout: &[u8], data: &[u8]) {
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(names[..2], ["job_queued", "plan"], "{names:?}");
    assert_eq!(
        names[names.len() - 2..],
        ["file_done", "summary"],
        "{names:?}"
    );
    assert!(names.contains(&"progress"), "{names:?}");
    let t: Vec<f64> = lines.iter().map(|v| v["t"].as_f64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
    let done = &lines[names.len() - 2];
    assert_eq!(done["blake3"], blake3::hash(data).to_hex().as_str());
    assert_eq!(done["size"], data.len());
    let summary = lines.last().unwrap().as_object().unwrap();
    let mut keys: Vec<&str> = summary.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "already_there",
            "bytes_per_s",
            "elapsed_s",
            "event",
            "files",
            "folders",
            "links",
            "moved_bytes",
            "reconnects",
            "resumed_bytes",
            "role",
            "t",
            "total_bytes",
            "verification_code",
        ]
    );
    assert_eq!(
        (&summary["role"], &summary["files"]),
        (&"sender".into(), &1.into())
    );
}

/// A copy of the binary another user may run (the build folder may be closed to it), in a
/// folder of its own that it may also use as its home.
fn binary_for_nobody() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let shared = tempfile::Builder::new()
        .prefix("link-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    let bin = shared.path().join("p2pcopy");
    std::fs::copy(BIN, &bin).unwrap();
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(shared.path(), open.clone()).unwrap();
    std::fs::set_permissions(&bin, open).unwrap();
    (shared, bin)
}

/// `send --to left /etc/hostname` as uid 65534 with the sockets under `xdg`, with `home` as
/// its own home (root's config file is closed to it).
fn send_as_nobody(bin: &Path, xdg: &Path, home: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin)
        .args(["send", "--to", "left", "/etc/hostname"])
        .env("XDG_RUNTIME_DIR", xdg)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("setpriv runs")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn a_stale_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("run");
    std::fs::create_dir(&xdg).unwrap();
    let a = link("stale", tmp.path(), &xdg);
    let mut child = a.child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        xdg.join("p2pcopy/stale.sock").exists(),
        "a killed daemon leaves its socket"
    );
    let gone = client(&xdg, &["send", "--to", "stale", "/etc/hostname"]);
    assert_eq!(gone.status.code(), Some(11), "{}", text(&gone));
    assert!(
        text(&gone).contains("no link named stale"),
        "{}",
        text(&gone)
    );
    // A new daemon of the same name takes the socket over.
    let again = link("stale", tmp.path(), &xdg);
    let mut child = again.child;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits until `path` holds `want` (20 s at most); on failure shows what `sender` said.
fn wait_for_file(path: &Path, want: &[u8], sender: &Daemon) {
    for _ in 0..200 {
        if std::fs::read(path).ok().as_deref() == Some(want) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    while let Ok(line) = sender.lines.try_recv() {
        eprintln!("sender: {line}");
    }
    panic!(
        "{} never held {:?}",
        path.display(),
        String::from_utf8_lossy(want)
    );
}

#[test]
fn a_watched_folder_is_sent_as_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (xdg, watched, out_a, out_b) = (
        tmp.path().join("run"),
        tmp.path().join("outbox"),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );
    for d in [&xdg, &watched, &out_a, &out_b] {
        std::fs::create_dir(d).unwrap();
    }
    // A watched folder inside the output would send back what arrives.
    let inside = watched.join("in");
    std::fs::create_dir(&inside).unwrap();
    let o = client(
        &xdg,
        &[
            "link",
            "--name",
            "x",
            "--output",
            inside.to_str().unwrap(),
            "--watch",
            watched.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    std::fs::remove_dir(&inside).unwrap();

    let w = watched.to_str().unwrap();
    let mut a = link_with("watcher", &out_a, &xdg, &["--watch", w]);
    let mut b = link_with("inbox", &out_b, &xdg, &["--overwrite"]);
    let (ta, tb) = (a.ticket.clone(), b.ticket.clone());
    a.paste(&tb);
    b.paste(&ta);
    a.wait_for("Watching");
    b.wait_for("Link inbox is up");

    std::fs::write(watched.join("one.txt"), b"first").unwrap();
    wait_for_file(&out_b.join("one.txt"), b"first", &a);
    // A new folder with a file in it, written at once.
    std::fs::create_dir_all(watched.join("new/deeper")).unwrap();
    std::fs::write(watched.join("new/deeper/two.txt"), b"second").unwrap();
    wait_for_file(&out_b.join("new/deeper/two.txt"), b"second", &a);
    // A change is sent again (here replacing it: the inbox has --overwrite).
    std::fs::write(watched.join("one.txt"), b"first, changed").unwrap();
    wait_for_file(&out_b.join("one.txt"), b"first, changed", &a);
    // A rename arrives under the new name; a deletion is not sent.
    std::fs::rename(watched.join("one.txt"), watched.join("renamed.txt")).unwrap();
    wait_for_file(&out_b.join("renamed.txt"), b"first, changed", &a);
    std::fs::remove_file(watched.join("new/deeper/two.txt")).unwrap();
    thread::sleep(Duration::from_millis(1500));
    assert!(
        out_b.join("new/deeper/two.txt").exists(),
        "deletions are not sent"
    );
    assert!(
        out_b.join("one.txt").exists(),
        "nor are renames' old names removed"
    );

    a.interrupt();
    a.wait();
    assert!(b.wait().success());
}

/// Waits until `path` is gone (20 s at most).
fn wait_gone(path: &Path, sender: &Daemon) {
    for _ in 0..200 {
        if !path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    while let Ok(line) = sender.lines.try_recv() {
        eprintln!("sender: {line}");
    }
    panic!("{} is still there", path.display());
}

/// `--watch --delete` sends deletions of what it sent; the peer, with `--allow-delete`,
/// removes its copy only while it is as sent; a folder goes once empty.
#[test]
fn a_watched_folder_sends_deletions_with_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let (xdg, watched, out_a, out_b) = (
        tmp.path().join("run"),
        tmp.path().join("outbox"),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );
    for d in [&xdg, &watched, &out_a, &out_b] {
        std::fs::create_dir(d).unwrap();
    }
    // --delete without --watch means nothing: refused.
    let o = client(&xdg, &["link", "--name", "x", "--delete"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let w = watched.to_str().unwrap();
    let mut a = link_with("mirror", &out_a, &xdg, &["--watch", w, "--delete"]);
    let mut b = link_with("copy", &out_b, &xdg, &["--allow-delete"]);
    let (ta, tb) = (a.ticket.clone(), b.ticket.clone());
    a.paste(&tb);
    b.paste(&ta);
    a.wait_for("Watching");
    b.wait_for("Link copy is up");

    std::fs::create_dir(watched.join("sub")).unwrap();
    std::fs::write(watched.join("sub/one.txt"), b"one").unwrap();
    std::fs::write(watched.join("two.txt"), b"two").unwrap();
    wait_for_file(&out_b.join("sub/one.txt"), b"one", &a);
    wait_for_file(&out_b.join("two.txt"), b"two", &a);
    // Edited on the receiving side: its copy is no longer what was sent, so it stays.
    std::fs::write(out_b.join("two.txt"), b"two, edited there").unwrap();
    std::fs::remove_file(watched.join("two.txt")).unwrap();
    a.wait_for("Deleted two.txt: your peer says kept");
    assert_eq!(
        std::fs::read(out_b.join("two.txt")).unwrap(),
        b"two, edited there"
    );
    // A folder and its file: both go, the file first.
    std::fs::remove_dir_all(watched.join("sub")).unwrap();
    wait_gone(&out_b.join("sub"), &a);
    a.wait_for("Deleted sub: your peer says deleted");

    a.interrupt();
    a.wait();
    assert!(b.wait().success());
}

/// A one-shot `p2pcopy sender` may send into a link: its ticket says sender, the link's
/// says receiver, so the sender dials; its one job lands, then its close ends the link.
#[test]
fn a_one_shot_sender_sends_into_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    let (xdg, out) = (tmp.path().join("run"), tmp.path().join("out"));
    std::fs::create_dir(&xdg).unwrap();
    std::fs::create_dir(&out).unwrap();
    let file = tmp.path().join("old-peer.txt");
    std::fs::write(&file, b"from a one-shot sender").unwrap();
    let mut inbox = link("inbox", &out, &xdg);
    let mut sender = command()
        .args([
            "sender",
            "--bind",
            "127.0.0.1",
            "--no-stun",
            "--no-ntp",
            "--timeout",
            "20",
        ])
        .arg("--file")
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(sender.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let ticket = first
        .trim()
        .strip_prefix("Tell this to your peer: ")
        .expect("ticket line")
        .to_owned();
    writeln!(sender.stdin.as_mut().unwrap(), "{}", inbox.ticket).unwrap();
    inbox.paste(&ticket);
    let done = sender.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", text(&done));
    inbox.wait_for("Your peer closed the link");
    assert!(inbox.wait().success());
    assert_eq!(
        std::fs::read(out.join("old-peer.txt")).unwrap(),
        b"from a one-shot sender"
    );
}
