//! End-to-end runs of the real binary: two processes on loopback, tickets exchanged through
//! their stdin/stdout exactly as two users would paste them.
//!
//! Only 127.0.0.1 is used: `--bind 127.0.0.1 --no-stun --no-ntp` keeps every packet on this
//! machine. NAT traversal itself is tested in the namespace lab (`scripts/lab.sh`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
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

/// Distinct ports per test so tests can run in parallel.
fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 30_000 + (std::process::id() % 2000) as u16 * 10;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    ticket: String,
    /// The line the ticket came in: human text, or with --json the `ticket` event.
    first: String,
    rest: mpsc::Receiver<String>,
}

fn start(role: &str, extra: &[&str], dir: &Path) -> Peer {
    let p = port().to_string();
    let mut cmd = command();
    cmd.args([
        role,
        "--bind",
        "127.0.0.1",
        "--localport",
        &p,
        "--no-stun",
        "--no-ntp",
    ])
    .args(extra);
    if !extra.contains(&"--timeout") {
        cmd.args(["--timeout", "20"]);
    }
    cmd.current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn p2pcopy");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ticket line");
    let ticket = if extra.contains(&"--json") {
        let event: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
        assert_eq!(event["event"], "ticket", "{first}");
        event["ticket"].as_str().expect("ticket string").to_owned()
    } else {
        first
            .strip_prefix("Tell this to your peer: ")
            .expect("ticket prefix")
            .to_owned()
    };
    Peer {
        child,
        stdin,
        ticket,
        first,
        rest: rx,
    }
}

impl Peer {
    fn paste(&mut self, ticket: &str) {
        writeln!(self.stdin, "{ticket}").unwrap();
    }
    fn finish(self) -> Output {
        drop(self.stdin);
        drop(self.rest);
        wait_bounded(self.child)
    }
    /// Waits for the end and returns everything it printed on stdout, line by line.
    fn finish_with_stdout(self) -> (Output, Vec<String>) {
        drop(self.stdin);
        let output = wait_bounded(self.child);
        let mut lines = vec![self.first];
        // The reader thread ends when the pipe does, right after the process.
        while let Ok(line) = self.rest.recv_timeout(Duration::from_secs(10)) {
            lines.push(line);
        }
        (output, lines)
    }
}

fn wait_bounded(mut child: Child) -> Output {
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("p2pcopy did not exit within 60 s");
}

/// Runs p2pcopy to completion with no stdin, in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let child = command()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child)
}

fn assert_both_ok(a: &Output, b: &Output) {
    assert!(a.status.success(), "{}", stderr(a));
    assert!(b.status.success(), "{}", stderr(b));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a whole transfer of `data` named `name` into `out`; returns both outputs.
fn transfer(name: &str, data: &[u8], out: &Path) -> (Output, Output) {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join(name), data).unwrap();
    job(src.path(), &[name], out, &[])
}

fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn copies_a_file_and_verifies_it() {
    let out = tempfile::tempdir().unwrap();
    let data = pseudo_random(5 << 20);
    let (s, r) = transfer("image.tif", &data, out.path());
    assert_both_ok(&s, &r);
    assert_eq!(fs::read(out.path().join("image.tif")).unwrap(), data);
    // Nothing else (no temporary files) is left in the output directory.
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
}

#[test]
fn empty_file() {
    let out = tempfile::tempdir().unwrap();
    let (s, r) = transfer("empty", b"", out.path());
    assert_both_ok(&s, &r);
    assert_eq!(fs::read(out.path().join("empty")).unwrap(), b"");
}

#[test]
fn never_overwrites_an_existing_file() {
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join("notes.txt"), b"precious").unwrap();
    let (s, r) = transfer("notes.txt", b"incoming", out.path());
    assert_both_ok(&s, &r);
    assert_eq!(fs::read(out.path().join("notes.txt")).unwrap(), b"precious");
    assert_eq!(
        fs::read(out.path().join("notes (1).txt")).unwrap(),
        b"incoming"
    );
}

#[test]
fn bare_ip_port_works_and_shows_a_verification_code() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"hello").unwrap();
    let file = src.path().join("f");
    let mut receiver = start(
        "receiver",
        &["--output", out.path().to_str().unwrap()],
        src.path(),
    );
    // The receiver is given only the sender's ip:port, as with the original p2pcopy.
    let sender_port = port();
    let sp = sender_port.to_string();
    let mut sender = command()
        .args([
            "sender",
            "--bind",
            "127.0.0.1",
            "--localport",
            &sp,
            "--no-stun",
            "--no-ntp",
            "--timeout",
            "60",
        ])
        .args(["--file", file.to_str().unwrap(), "--peer", &receiver.ticket])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = sender.stdout.take();
    receiver.paste(&format!("127.0.0.1:{sender_port}"));
    // The receiver must wait for a synchronised round (an ip:port may be behind a NAT).
    let s = wait_bounded(sender);
    let r = receiver.finish();
    assert_both_ok(&s, &r);
    assert_eq!(fs::read(out.path().join("f")).unwrap(), b"hello");
    assert!(stderr(&s).contains("Verification code:"), "{}", stderr(&s));
}

#[test]
fn exit_codes_for_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| run_in(dir.path(), args);
    let base = ["--bind", "127.0.0.1", "--no-stun", "--no-ntp"];
    let check = |o: &Output, code: i32, needle: &str| {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(code), "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("p2pcopy: ") && last.contains(needle),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    // Missing file: 4.
    let o = run(&[&["sender", "--file", "nope.bin"][..], &base].concat());
    check(&o, 4, "nope.bin");
    // Unusable output directory: 4.
    let o = run(&[&["receiver", "--output", "missing-dir"][..], &base].concat());
    check(&o, 4, "missing-dir");
    // A damaged ticket: 3.
    let o = run(&[&["receiver", "--peer", "p2pcXXXXgarbage"][..], &base].concat());
    check(&o, 3, "invalid ticket");
    // Not a ticket at all: 3.
    let o = run(&[&["receiver", "--peer", "hello"][..], &base].concat());
    check(&o, 3, "invalid ticket");
    // No ticket on stdin: 2.
    let o = run(&[&["receiver"][..], &base].concat());
    check(&o, 2, "no ticket");
    // Port out of range: clap's usage error, 2.
    let o = run(&["receiver", "--localport", "99999"]);
    assert_eq!(o.status.code(), Some(2));
    // No STUN server answers (nothing listens on 127.0.0.1:9): 5.
    let o = run(&[
        "receiver",
        "--bind",
        "127.0.0.1",
        "--no-ntp",
        "--stun-server",
        "127.0.0.1:9",
    ]);
    check(&o, 5, "no STUN server answered");
    // Nobody there: 6 within the timeout.
    let o = run(&[
        &["receiver", "--peer", "127.0.0.1:9", "--timeout", "2"][..],
        &base,
    ]
    .concat());
    check(&o, 6, "could not connect");
}

#[test]
fn port_in_use_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let p = holder.local_addr().unwrap().port().to_string();
    let args = [
        "receiver",
        "--bind",
        "127.0.0.1",
        "--localport",
        &p,
        "--no-stun",
        "--no-ntp",
    ];
    let o = run_in(dir.path(), &args);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("cannot use UDP port {p}")));
}

#[test]
fn same_role_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = start("receiver", &[], dir.path());
    let mut b = start("receiver", &[], dir.path());
    b.paste(&a.ticket);
    let o = b.finish();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("p2pcopy sender"));
    let _ = a.finish();
}

#[test]
fn a_stranger_with_the_ticket_cannot_connect() {
    // Mallory learned the receiver's ticket but has her own certificate; the receiver expects
    // the sender whose ticket it was given, so it must refuse Mallory and still accept Alice.
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::write(src.path().join("secret"), b"for the receiver only").unwrap();
    fs::write(src.path().join("evil"), b"injected").unwrap();
    let mut receiver = start(
        "receiver",
        &["--output", out.path().to_str().unwrap()],
        src.path(),
    );
    let mut alice = start("sender", &["--file", "secret"], src.path());
    let mut mallory = start("sender", &["--file", "evil", "--timeout", "5"], src.path());
    mallory.paste(&receiver.ticket);
    receiver.paste(&alice.ticket);
    let m = mallory.finish();
    assert!(!m.status.success(), "mallory got through: {}", stderr(&m));
    alice.paste(&receiver.ticket);
    let (a, r) = (alice.finish(), receiver.finish());
    assert_both_ok(&a, &r);
    let names: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"]);
}

#[test]
fn own_stun_server_answers_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = command()
        .args(["stun-server", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("STUN server listening on ")
        .expect("address line")
        .to_owned();
    // A receiver asks it; on loopback the mapped address is its own, so "no NAT".
    let args = [
        "receiver",
        "--bind",
        "127.0.0.1",
        "--no-ntp",
        "--stun-server",
        &addr,
    ];
    let o = run_in(
        dir.path(),
        &[&args[..], &["--peer", "127.0.0.1:9", "--timeout", "1"]].concat(),
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(stderr(&o).contains("Your NAT: none"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
}

/// Runs a whole job: the sender sends `paths` (relative to `src`), the receiver writes into
/// `out` with `recv_extra` flags.
fn job(src: &Path, paths: &[&str], out: &Path, recv_extra: &[&str]) -> (Output, Output) {
    let mut recv_args = vec!["--output", out.to_str().unwrap()];
    recv_args.extend_from_slice(recv_extra);
    let mut receiver = start("receiver", &recv_args, src);
    let send_args: Vec<&str> = paths.iter().flat_map(|p| ["--file", *p]).collect();
    let mut sender = start("sender", &send_args, src);
    let (st, rt) = (sender.ticket.clone(), receiver.ticket.clone());
    sender.paste(&rt);
    receiver.paste(&st);
    (sender.finish(), receiver.finish())
}

/// Everything under `root`, sorted: path, kind, permission bits, size, mtime, and content
/// hash (files) or target (links).
#[cfg(unix)]
fn listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.permissions().mode() & 0o777;
            let mtime = m
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o} {mtime}")
            } else {
                let hash = blake3::hash(&fs::read(&p).unwrap());
                format!("file {mode:o} {} {mtime} {hash}", m.len())
            };
            out.push(format!("{rel}: {what}"));
        }
    }
    out.sort();
    out
}

#[cfg(unix)]
fn make_tree(src: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let proj = src.join("proj");
    fs::create_dir_all(proj.join("sub/deep")).unwrap();
    fs::create_dir_all(proj.join("empty-dir/nested-empty")).unwrap();
    fs::write(proj.join("a.txt"), b"alpha").unwrap();
    fs::write(proj.join("empty.bin"), b"").unwrap();
    fs::write(proj.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(proj.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(proj.join("a.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::write(proj.join("sub/deep/b.bin"), pseudo_random(3 << 20)).unwrap();
    for i in 0..40 {
        fs::write(
            proj.join(format!("sub/small-{i:02}.txt")),
            format!("file {i}"),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("sub/deep/b.bin", proj.join("latest")).unwrap();
    fs::write(src.join("notes.txt"), b"lone file").unwrap();
    // An old time, to see times travel; folders last, since writing into them changes theirs.
    let old = std::time::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let set = |p: &Path| fs::File::open(p).unwrap().set_modified(old).unwrap();
    set(&proj.join("sub/deep/b.bin"));
    set(&proj.join("empty-dir/nested-empty"));
    set(&proj.join("sub"));
}

#[cfg(unix)]
#[test]
fn copies_a_folder_tree_with_modes_times_and_links() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let (s, r) = job(src.path(), &["proj", "notes.txt"], out.path(), &[]);
    assert_both_ok(&s, &r);
    // Links are compared by target only: their own time is not carried (no lutimes).
    let want = listing(src.path());
    assert_eq!(listing(out.path()), want);
    assert!(
        stderr(&s).contains("45 files in 5 folders"),
        "{}",
        stderr(&s)
    );
    assert!(
        stderr(&r).contains("All 45 files verified"),
        "{}",
        stderr(&r)
    );

    // The same job again: everything is already there, nothing is duplicated.
    let (s, r) = job(src.path(), &["proj", "notes.txt"], out.path(), &[]);
    assert_both_ok(&s, &r);
    assert!(
        stderr(&s).contains("45 files already there"),
        "{}",
        stderr(&s)
    );
    assert_eq!(listing(out.path()), want);
}

#[test]
fn resumes_from_a_partial_file_and_restarts_a_wrong_one() {
    let src = tempfile::tempdir().unwrap();
    let data = pseudo_random(8 << 20);
    fs::write(src.path().join("big.bin"), &data).unwrap();
    for (prefix, resumed) in [
        (data[..3 << 20].to_vec(), true),
        (vec![7u8; 3 << 20], false),
    ] {
        let out = tempfile::tempdir().unwrap();
        // What an interrupted earlier run leaves behind.
        fs::write(out.path().join(".big.bin.p2pcopy-part"), &prefix).unwrap();
        let (s, r) = job(
            src.path(),
            &["big.bin"],
            out.path(),
            &["--checksums", "sums.b3"],
        );
        assert_both_ok(&s, &r);
        assert_eq!(fs::read(out.path().join("big.bin")).unwrap(), data);
        assert_eq!(
            stderr(&s).contains("3.00 MiB resumed from an earlier run"),
            resumed,
            "{}",
            stderr(&s)
        );
        let sums = fs::read_to_string(src.path().join("sums.b3")).unwrap();
        assert_eq!(sums, format!("{}  big.bin\n", blake3::hash(&data)));
        let names: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["big.bin"]);
    }
}

#[test]
fn overwrite_replaces_only_when_asked() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::write(src.path().join("notes.txt"), b"incoming").unwrap();
    fs::write(out.path().join("notes.txt"), b"precious").unwrap();
    let (s, r) = job(src.path(), &["notes.txt"], out.path(), &["--overwrite"]);
    assert_both_ok(&s, &r);
    assert_eq!(fs::read(out.path().join("notes.txt")).unwrap(), b"incoming");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
}

/// Parses every stdout line of a --json run: each must be one JSON object with an `event`
/// name and a time `t` that never goes back.
fn events(lines: &[String]) -> Vec<serde_json::Value> {
    let mut last_t = 0.0;
    lines
        .iter()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v["event"].is_string(), "{line}");
            let t = v["t"].as_f64().unwrap_or_else(|| panic!("no time: {line}"));
            assert!(t >= last_t, "time went back: {line}");
            last_t = t;
            v
        })
        .collect()
}

/// The events named `name`.
fn named<'a>(events: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// Exactly one event named `name`.
fn one<'a>(events: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    match named(events, name)[..] {
        [e] => e,
        ref other => panic!("{} `{name}` events in {events:#?}", other.len()),
    }
}

/// Runs a job with --json on both sides; returns each side's exit status, events and stderr.
fn json_job(src: &Path, files: &[&str], out: &Path) -> [(Output, Vec<serde_json::Value>); 2] {
    let mut receiver = start(
        "receiver",
        &["--json", "--output", out.to_str().unwrap()],
        src,
    );
    let mut send_args = vec!["--json"];
    send_args.extend(files.iter().flat_map(|f| ["--file", *f]));
    let mut sender = start("sender", &send_args, src);
    let (st, rt) = (sender.ticket.clone(), receiver.ticket.clone());
    sender.paste(&rt);
    receiver.paste(&st);
    let (s, s_lines) = sender.finish_with_stdout();
    let (r, r_lines) = receiver.finish_with_stdout();
    assert_both_ok(&s, &r);
    [(s, events(&s_lines)), (r, events(&r_lines))]
}

#[test]
fn json_events_describe_the_transfer() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = pseudo_random(8 << 20);
    let small = b"a small one".to_vec();
    fs::write(src.path().join("big.bin"), &big).unwrap();
    fs::write(src.path().join("small.txt"), &small).unwrap();
    let files = [("big.bin", &big), ("small.txt", &small)];
    let total = (big.len() + small.len()) as u64;
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();

    let [(s, se), (r, re)] = json_job(src.path(), &names, out.path());
    for (role, o, ev) in [("sender", &s, &se), ("receiver", &r, &re)] {
        // Nothing for a person: no messages, no prompt, no progress lines.
        let err = stderr(o);
        for human in [
            "Using local port",
            "Enter your peer",
            "Connected",
            "verified",
        ] {
            assert!(!err.contains(human), "{role} stderr: {err}");
        }
        assert_eq!(ev.first().unwrap()["event"], "ticket", "{role}: {ev:#?}");
        assert_eq!(ev.last().unwrap()["event"], "summary", "{role}: {ev:#?}");
        let ticket = one(ev, "ticket");
        assert_eq!(ticket["role"], role);
        assert_eq!(ticket["nat"], "unknown");
        let port = ticket["local_port"].as_u64().unwrap();
        assert_eq!(
            ticket["candidates"],
            serde_json::json!([{"kind": "host", "addr": format!("127.0.0.1:{port}")}])
        );
        // --no-stun: no lanes (nothing here needs rounds).
        assert_eq!(ticket["lane_ports"], serde_json::json!([]));
        let nat = one(ev, "nat");
        assert_eq!(
            (&nat["ours"], &nat["peer"]),
            (&"unknown".into(), &"unknown".into())
        );
        assert!(nat["warning"].is_null());
        // Both peers' host addresses are probed at once: no rounds.
        assert_eq!(one(ev, "connecting")["rounds"], false);
        assert!(named(ev, "punch_round").is_empty());
        let plan = one(ev, "plan");
        assert_eq!(plan["files"], 2);
        assert_eq!(plan["total_bytes"], total);
        assert_eq!(plan["held_bytes"], 0);

        let progress = named(ev, "progress");
        let last = progress.last().expect("progress events");
        assert_eq!(last["done_bytes"], total, "{role}: {progress:#?}");
        for pair in progress.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(b["total_bytes"], total);
            assert!(b["done_bytes"].as_u64() >= a["done_bytes"].as_u64());
            // At most four a second, except the final count.
            if !std::ptr::eq(b, *last) {
                let gap = b["t"].as_f64().unwrap() - a["t"].as_f64().unwrap();
                assert!(gap >= 0.2485, "{role}: progress {gap} s apart");
            }
        }

        let done = named(ev, "file_done");
        assert_eq!(done.len(), files.len(), "{role}: {done:#?}");
        for (name, data) in files {
            let e = done
                .iter()
                .find(|e| e["path"] == name)
                .unwrap_or_else(|| panic!("{role}: no file_done for {name}"));
            assert_eq!(e["blake3"], blake3::hash(data).to_hex().as_str(), "{role}");
            assert_eq!(e["size"], data.len());
            assert_eq!(e["status"], "stored");
            let saved = out.path().join(name).display().to_string();
            match role {
                "receiver" => assert_eq!(e["saved_as"], saved.as_str()),
                _ => assert!(e["saved_as"].is_null()),
            }
        }

        let sum = one(ev, "summary");
        assert_eq!(sum["role"], role);
        assert_eq!(sum["files"], 2);
        assert_eq!(sum["total_bytes"], total);
        assert_eq!(sum["moved_bytes"], total);
        assert_eq!(sum["resumed_bytes"], 0);
        assert_eq!(sum["already_there"], 0);
        assert_eq!(sum["reconnects"], 0);
        assert!(sum["verification_code"].is_null());
        assert!(sum["elapsed_s"].as_f64().unwrap() > 0.0);
    }
    // Each side is connected to the address the other announced.
    let port_of = |ev: &[serde_json::Value]| one(ev, "ticket")["local_port"].clone();
    for (ev, peer) in [(&se, &re), (&re, &se)] {
        let c = one(ev, "connected");
        assert_eq!(c["remote"], format!("127.0.0.1:{}", port_of(peer)));
        assert_eq!(c["path_kind"], "lan");
        assert_eq!(c["authenticated"], true);
        assert!(c["verification_code"].is_null());
        assert_eq!(c["reconnects"], 0);
    }
    for (name, data) in files {
        assert_eq!(&fs::read(out.path().join(name)).unwrap(), data);
    }

    // The same job again: the receiver holds everything, nothing crosses.
    let [(_, se), (_, re)] = json_job(src.path(), &names, out.path());
    for ev in [&se, &re] {
        assert_eq!(one(ev, "plan")["held_bytes"], total);
        let done = named(ev, "file_done");
        assert_eq!(done.len(), 2);
        assert!(
            done.iter().all(|e| e["status"] == "already_there"),
            "{done:#?}"
        );
        let sum = one(ev, "summary");
        assert_eq!(sum["already_there"], 2);
        assert_eq!(sum["moved_bytes"], 0);
    }
}

#[test]
fn json_errors_are_events_with_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["--json", "--bind", "127.0.0.1", "--no-stun", "--no-ntp"];
    let check = |args: &[&str], code: i32, needle: &str| {
        let o = run_in(dir.path(), &[args, &base].concat());
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        // The human error line is replaced by the event, not added to it.
        assert!(!stderr(&o).contains("p2pcopy: "), "{}", stderr(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let ev = events(&lines);
        let err = ev.last().expect("events");
        assert_eq!(err["event"], "error", "{text}");
        assert_eq!(err["code"], code, "{text}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(needle), "{text}");
        assert_eq!(named(&ev, "error").len(), 1, "{text}");
        ev
    };
    // A damaged ticket: 3, after our own ticket was printed.
    let ev = check(
        &["receiver", "--peer", "p2pcXXXXgarbage"],
        3,
        "invalid ticket",
    );
    assert_eq!(ev[0]["event"], "ticket");
    assert_eq!(ev.len(), 2);
    // No ticket on stdin: 2, with no prompt on stderr (checked above).
    check(&["receiver"], 2, "no ticket entered");
    // A missing file: 4, before any ticket.
    let ev = check(&["sender", "--file", "nope.bin"], 4, "nope.bin");
    assert_eq!(ev.len(), 1);
    // Flags that do not parse: clap's usage error, still as an event.
    check(&["receiver", "--localport", "99999"], 2, "99999");
}

#[cfg(unix)]
#[test]
fn ctrl_c_at_the_prompt_exits_at_once() {
    // The prompt's stdin stays open: a blocking read of the ticket must not hold the exit.
    let dir = tempfile::tempdir().unwrap();
    let mut peer = start("receiver", &[], dir.path());
    let pid = i32::try_from(peer.child.id()).unwrap();
    thread::sleep(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    // SAFETY: sends a signal to our own child process; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    for _ in 0..100 {
        if peer.child.try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let status = peer.child.try_wait().unwrap();
    let _ = peer.child.kill();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "still running {:?} after Ctrl-C",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}
