//! What a transfer tells its `transfer::Observer`: a real sender and receiver in one process,
//! over QUIC on loopback, each with an observer that writes down every call.

mod common;

use std::path::{Path, PathBuf};

use p2pcopy::error::CloseCode;
use p2pcopy::transfer::{FileDone, Incoming, Observer, Outgoing, Plan, Store};
use p2pcopy::wire::FileStatus;

/// One call an observer heard.
#[derive(Clone, Debug, PartialEq)]
enum Heard {
    Plan(Plan),
    Started(String, u64),
    Moved(u64, u64),
    Done {
        path: String,
        size: u64,
        hash: blake3::Hash,
        status: FileStatus,
        saved_as: Option<PathBuf>,
    },
    Finish,
}

#[derive(Default)]
struct Notes(Vec<Heard>);

/// A file an observer was told is done: its path as announced, status, and where it is.
type Arrived = (String, FileStatus, Option<PathBuf>);

impl Observer for Notes {
    fn plan(&mut self, plan: &Plan) {
        self.0.push(Heard::Plan(*plan));
    }
    fn file_started(&mut self, path: &str, done: u64) {
        self.0.push(Heard::Started(path.to_owned(), done));
    }
    fn moved(&mut self, n: u64, done: u64) {
        self.0.push(Heard::Moved(n, done));
    }
    fn file_done(&mut self, f: &FileDone<'_>) {
        self.0.push(Heard::Done {
            path: f.path.to_owned(),
            size: f.size,
            hash: f.hash,
            status: f.status,
            saved_as: f.saved_as.map(|p| p.to_owned()),
        });
    }
    fn finish(&mut self) {
        self.0.push(Heard::Finish);
    }
}

impl Notes {
    /// Checks the calls hang together: one plan first, `finish` last and once, and every
    /// count continuing the one before (no resume claim is refused in these jobs).
    /// Returns the plan, the bytes moved, and the files done (path, status, saved_as); each
    /// file's size and hash are checked against its source in `src`.
    fn check(&self, src: &Path) -> (Plan, u64, Vec<Arrived>) {
        let Some(Heard::Plan(plan)) = self.0.first() else {
            panic!("no plan first: {:?}", self.0.first());
        };
        assert_eq!(self.0.last(), Some(&Heard::Finish));
        assert_eq!(self.0.iter().filter(|h| **h == Heard::Finish).count(), 1);
        let (mut done, mut moved, mut files) = (plan.held, 0, Vec::new());
        for h in &self.0[1..] {
            match h {
                Heard::Plan(p) => panic!("a second plan on one connection: {p:?}"),
                Heard::Started(_, d) => assert_eq!(*d, done),
                Heard::Moved(n, d) => {
                    done += n;
                    moved += n;
                    assert_eq!(*d, done);
                }
                Heard::Done {
                    path,
                    size,
                    hash,
                    status,
                    saved_as,
                } => {
                    let data = std::fs::read(src.join(path)).unwrap();
                    assert_eq!((*size, *hash), (data.len() as u64, blake3::hash(&data)));
                    files.push((path.clone(), *status, saved_as.clone()));
                }
                Heard::Finish => {}
            }
        }
        assert_eq!(done, plan.total);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        (*plan, moved, files)
    }
}

use common::{connected_pair, run_job};

/// Sends `src/job` into `out`; returns what the sender's and the receiver's observers heard.
async fn send_job(src: &Path, out: &Path) -> (Notes, Notes) {
    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let mut outgoing = Outgoing::new(p2pcopy::manifest::scan(&[src.join("job")]).unwrap());
    let mut incoming = Incoming::new(Store::new(out.to_owned(), false));
    let (mut sent, mut received) = (Notes::default(), Notes::default());
    run_job(
        &client_conn,
        &server_conn,
        &mut outgoing,
        &mut incoming,
        &mut sent,
        &mut received,
    )
    .await;
    client_conn.close(CloseCode::NO_ERROR.into(), b"");
    (sent, received)
}

#[tokio::test]
async fn both_sides_hear_the_plan_every_byte_and_each_verified_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("job/sub")).unwrap();
    // Past a chunk and a segment boundary, so bytes move in many calls.
    let big: Vec<u8> = (0..(3 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(src.join("job/big.bin"), &big).unwrap();
    std::fs::write(src.join("job/sub/small.txt"), b"ten bytes!").unwrap();
    let out = tempfile::tempdir().unwrap();
    let total = big.len() as u64 + 10;
    let want_plan = |held| Plan {
        files: 2,
        dirs: 2,
        links: 0,
        total,
        held,
    };

    let (sent, received) = send_job(src, out.path()).await;
    let saved = |name: &str| Some(out.path().join(name));
    let (plan, moved, files) = sent.check(src);
    assert_eq!((plan, moved), (want_plan(0), total));
    assert_eq!(
        files,
        [
            ("job/big.bin".into(), FileStatus::Stored, None),
            ("job/sub/small.txt".into(), FileStatus::Stored, None),
        ]
    );
    let (plan, moved, files) = received.check(src);
    assert_eq!((plan, moved), (want_plan(0), total));
    assert_eq!(
        files,
        [
            (
                "job/big.bin".into(),
                FileStatus::Stored,
                saved("job/big.bin")
            ),
            (
                "job/sub/small.txt".into(),
                FileStatus::Stored,
                saved("job/sub/small.txt")
            ),
        ]
    );

    // Again into the same folder: everything is there, held from the start, nothing moves.
    let (sent, received) = send_job(src, out.path()).await;
    for (notes, receiver) in [(sent, false), (received, true)] {
        let (plan, moved, files) = notes.check(src);
        assert_eq!((plan, moved), (want_plan(total), 0));
        let statuses: Vec<_> = files
            .iter()
            .map(|(p, s, a)| (p.as_str(), *s, a.is_some()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("job/big.bin", FileStatus::AlreadyThere, receiver),
                ("job/sub/small.txt", FileStatus::AlreadyThere, receiver),
            ]
        );
    }
}
