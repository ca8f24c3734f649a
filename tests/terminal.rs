//! Hostile file names on two real screens: both peers run the real binary with stdin, stdout
//! and stderr on a pseudo-terminal of their own, as two people at their keyboards (so the
//! progress bar is drawn and the ticket is typed at the prompt). Everything each terminal
//! was sent is read from the pty's master side, and the escape sequences the names carry
//! must never be in it raw, only in their visible, escaped form.
//!
//! Loopback only: `--bind 127.0.0.1 --no-stun --no-ntp --no-portmap`.
// openpty's signature differs between libcs (Linux takes const pointers), and Linux is
// where CI runs this.
#![cfg(target_os = "linux")]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

/// OSC 0 (set the window title, ended by BEL), CSI 2J (clear the screen), CSI 31m (red), and
/// a right-to-left override: what the issue's example name does to a terminal.
const EVIL: &str = "evil\x1b]0;PWNED\x07\x1b[2J\x1b[31mred\u{202e}txt.exe";
/// [`EVIL`] as the screen must show it.
const EVIL_SHOWN: &str = r"evil\e]0;PWNED\a\e[2J\e[31mred\u{202e}txt.exe";

/// The sequences that must never reach a screen raw. p2pcopy's own drawing (indicatif's
/// cursor moves and line clearing) uses other sequences, and never BEL.
const INJECTED: [(&str, &str); 5] = [
    ("\x1b]0;PWNED", "OSC window title"),
    ("\x1b[2J", "CSI clear screen"),
    ("\x1b[31m", "CSI red"),
    ("\u{202e}", "right-to-left override"),
    ("\x07", "BEL"),
];

/// A pseudo-terminal: (master, slave), 160 columns so the progress bar has room for a name.
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into the two ints, which we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", io::Error::last_os_error());
    // SAFETY: both are open descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// One p2pcopy process on a terminal of its own.
struct Screen {
    child: Child,
    /// The keyboard: what is written here, the process reads on stdin.
    keys: File,
    /// Everything the process wrote to its terminal so far.
    seen: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

impl Screen {
    fn start(role: &str, args: &[&str], dir: &Path) -> Screen {
        let (master, slave) = pty();
        let mut cmd = command();
        cmd.arg(role)
            .args([
                "--bind",
                "127.0.0.1",
                "--no-stun",
                "--no-ntp",
                "--no-portmap",
                "--timeout",
                "20",
            ])
            .args(args)
            .current_dir(dir)
            .env("TERM", "xterm-256color")
            .env_remove("RUST_LOG")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("spawn p2pcopy");
        // Our copies of the slave side must go, or the master never sees the end.
        drop(cmd);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut screen = File::from(master.try_clone().unwrap());
        let sink = Arc::clone(&seen);
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match screen.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EIO: the process and its terminal are gone.
                    Err(_) => break,
                }
            }
        });
        Screen {
            child,
            keys: File::from(master),
            seen,
            reader,
        }
    }

    /// The ticket the process printed, once it has.
    fn ticket(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned();
            if let Some(rest) = text.split("Tell this to your peer: ").nth(1) {
                if let Some(end) = rest.find(['\r', '\n']) {
                    return rest[..end].to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no ticket on the screen: {text:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `line` and Enter.
    fn type_line(&mut self, line: &str) {
        self.keys.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for the process to end; returns whether it succeeded and all its screen got.
    fn finish(mut self, deadline: Instant) -> (bool, Vec<u8>) {
        let ok = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            thread::sleep(Duration::from_millis(50));
        };
        self.reader.join().unwrap();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (ok, seen)
    }
}

/// Runs a sender of `files` (in `src`) against a receiver writing into `out`, both on
/// terminals, tickets typed at the prompts; returns both screens.
fn transfer(src: &Path, files: &[&str], out: &Path) -> (Vec<u8>, Vec<u8>) {
    let out = out.to_str().unwrap();
    let mut receiver = Screen::start("receiver", &["--output", out], src);
    let send_args: Vec<&str> = files.iter().flat_map(|f| ["--file", *f]).collect();
    let mut sender = Screen::start("sender", &send_args, src);
    let (st, rt) = (sender.ticket(), receiver.ticket());
    sender.type_line(&rt);
    receiver.type_line(&st);
    let deadline = Instant::now() + Duration::from_secs(40);
    let (s_ok, s_screen) = sender.finish(deadline);
    let (r_ok, r_screen) = receiver.finish(deadline);
    assert!(
        s_ok && r_ok,
        "sender ok: {s_ok}, receiver ok: {r_ok}\nsender: {:?}\nreceiver: {:?}",
        String::from_utf8_lossy(&s_screen),
        String::from_utf8_lossy(&r_screen)
    );
    (s_screen, r_screen)
}

/// Nothing any name injected is on `screen` raw. (Failures print the screen with `{:?}`,
/// so the terminal running the tests is not attacked either.)
fn assert_inert(who: &str, screen: &[u8]) {
    let text = String::from_utf8_lossy(screen);
    for (raw, what) in INJECTED {
        assert!(
            !contains(screen, raw.as_bytes()),
            "{who}'s terminal got a raw {what}: {text:?}"
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn assert_shows(who: &str, screen: &[u8], visible: &str) {
    let text = String::from_utf8_lossy(screen);
    assert!(
        text.contains(visible),
        "{who} does not show {visible:?}: {text:?}"
    );
}

/// Content big enough that the progress bar is drawn while the file is on its way.
fn data() -> Vec<u8> {
    (0..4u32 << 20).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_hostile_file_name_is_shown_escaped_on_both_screens() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::write(src.path().join(EVIL), data()).unwrap();
    // The receiver already has a file of that (cleaned) name, so it also names the new one
    // in its "was saved as" line.
    let cleaned = "evil_]0;PWNED__[2J_[31mred\u{202e}txt.exe";
    fs::write(out.path().join(cleaned), b"older").unwrap();
    let (sender, receiver) = transfer(src.path(), &[EVIL], out.path());
    assert_inert("the sender", &sender);
    assert_inert("the receiver", &receiver);
    assert_shows("the sender", &sender, &format!("Sent {EVIL_SHOWN} ("));
    assert_shows(
        "the receiver",
        &receiver,
        &format!("Received {EVIL_SHOWN} ("),
    );
    assert_shows(
        "the receiver",
        &receiver,
        &format!("  {EVIL_SHOWN} was saved as "),
    );
    assert_shows(
        "the receiver",
        &receiver,
        r"evil_]0;PWNED__[2J_[31mred\u{202e}txt (1).exe",
    );
    // The progress bar named the file too (its label, then the name on the same line).
    for (who, screen, label) in [
        ("the sender", &sender, "Sending ["),
        ("the receiver", &receiver, "Receiving ["),
    ] {
        let text = String::from_utf8_lossy(screen);
        assert!(
            text.split(label).skip(1).any(|bar| bar
                .lines()
                .next()
                .unwrap_or_default()
                .contains(EVIL_SHOWN)),
            "{who}'s progress bar does not name the file: {text:?}"
        );
    }
    // What is on disk is the file sent, under the cleaned name.
    assert_eq!(
        fs::read(
            out.path()
                .join("evil_]0;PWNED__[2J_[31mred\u{202e}txt (1).exe")
        )
        .unwrap(),
        data()
    );
}

#[test]
fn hostile_names_inside_a_folder_are_shown_escaped_on_both_screens() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = "dir\x1b[2J";
    let names = [
        "a\x1b]0;PWNED\x07.txt",
        "b\u{202e}fdp.exe",
        "c\x1b[31mred\nline.txt",
    ];
    fs::create_dir(src.path().join(dir)).unwrap();
    for n in names {
        fs::write(src.path().join(dir).join(n), data()).unwrap();
    }
    let (sender, receiver) = transfer(src.path(), &[dir], out.path());
    assert_inert("the sender", &sender);
    assert_inert("the receiver", &receiver);
    assert_shows("the sender", &sender, "Sent 3 files in 1 folder");
    assert_shows("the receiver", &receiver, "Received 3 files in 1 folder");
    // The names show only on the progress bars: each screen named at least one file, and
    // whatever it named, it named escaped.
    let shown = [
        r"dir\e[2J/a\e]0;PWNED\a.txt",
        r"dir\e[2J/b\u{202e}fdp.exe",
        r"dir\e[2J/c\e[31mred\nline.txt",
    ];
    for (who, screen) in [("the sender", &sender), ("the receiver", &receiver)] {
        let text = String::from_utf8_lossy(screen);
        assert!(
            shown.iter().any(|s| text.contains(s)),
            "{who}'s progress bar named no file: {text:?}"
        );
    }
    for n in names {
        let cleaned: String = n
            .chars()
            .map(|c| if c.is_control() { '_' } else { c })
            .collect();
        assert_eq!(
            fs::read(out.path().join("dir_[2J").join(cleaned)).unwrap(),
            data()
        );
    }
}
