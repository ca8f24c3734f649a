//! Moving one file over an established QUIC connection.
//!
//! One bidirectional stream: the sender's [`Header`], the receiver's [`Accept`], the data,
//! the sender's BLAKE3 hash, and the receiver's [`Verdict`]. File I/O and hashing run on
//! blocking threads connected by small bounded channels, so memory stays at a few chunks and
//! the network task never waits for the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ConnectionError, ReadError, ReadExactError, RecvStream, WriteError};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::progress::Progress;
use crate::wire::{
    Accept, Header, Verdict, WireError, ACCEPT_LEN, FLAG_AUTHENTICATED, HEADER_FIXED_LEN,
    STOP_STORE_FAILED,
};

/// Size of one chunk read from disk and handed to QUIC.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight between the disk thread and the network task.
const PIPELINE: usize = 4;

/// What a finished transfer reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Bytes of file data moved.
    pub bytes: u64,
    /// BLAKE3 of the file.
    pub hash: blake3::Hash,
    /// How long the data took.
    pub elapsed: Duration,
    /// Where the receiver stored the file (receiver only).
    pub saved_as: Option<PathBuf>,
    /// The name the sender announced (receiver only).
    pub announced_name: String,
    /// Whether the peer checked our certificate against our ticket.
    pub peer_authenticated: bool,
}

impl Options {
    /// The `FLAG_*` bits this side announces.
    fn flags(&self) -> u8 {
        if self.authenticated {
            FLAG_AUTHENTICATED
        } else {
            0
        }
    }
}

impl Summary {
    /// `(181.64 MiB) in 16.3 s, 11.14 MiB/s` for the closing line.
    pub fn amount_and_rate(&self) -> String {
        let rate = crate::progress::rate(self.bytes, self.elapsed);
        format!(
            "({}) in {:.1} s, {}/s",
            indicatif::HumanBytes(self.bytes),
            self.elapsed.as_secs_f64(),
            indicatif::HumanBytes(rate)
        )
    }
}

/// Options for one side of a transfer.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// We checked the peer's certificate against its ticket.
    pub authenticated: bool,
    /// Show no progress.
    pub quiet: bool,
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::ConnectionLost(e.to_string())
}

/// The error for a connection that ended under us.
///
/// A p2pcopy peer that fails closes the connection with its own exit code and its error
/// message as reason, so a full disk or a failed verification on the other side is reported
/// as such here, not as a lost connection.
pub fn closed(e: &ConnectionError) -> Error {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            let code = u64::from(c.error_code);
            let store_failed = Error::DiskFull {
                path: PathBuf::new(),
            }
            .exit_code();
            let verify_failed = Error::Verify(String::new()).exit_code();
            match code {
                _ if code == u64::from(store_failed) => Error::PeerStore(reason),
                _ if code == u64::from(verify_failed) => {
                    Error::Verify(format!("on the receiver: {reason}"))
                }
                _ if reason.is_empty() => {
                    Error::ConnectionLost("your peer closed the connection".into())
                }
                _ => Error::ConnectionLost(format!("your peer stopped: {reason}")),
            }
        }
        ConnectionError::TimedOut => Error::ConnectionLost(
            "no answer from your peer for 30 s (network gone, or the peer's computer asleep?)"
                .into(),
        ),
        ConnectionError::Reset => Error::ConnectionLost(
            "the peer no longer knows this connection (it was restarted?)".into(),
        ),
        other => Error::ConnectionLost(other.to_string()),
    }
}

fn lost_read(e: ReadError) -> Error {
    match e {
        ReadError::ConnectionLost(c) => closed(&c),
        other => lost(other),
    }
}

fn peer_cannot_store() -> Error {
    Error::PeerStore("its disk is full or its output folder is not writable".into())
}

fn lost_write(e: WriteError) -> Error {
    match e {
        WriteError::Stopped(code) if code == STOP_STORE_FAILED.into() => peer_cannot_store(),
        WriteError::ConnectionLost(c) => closed(&c),
        other => lost(other),
    }
}

fn read_exact_err(e: ReadExactError) -> Error {
    match e {
        ReadExactError::FinishedEarly(_) => {
            Error::Protocol("the peer ended the stream early".into())
        }
        ReadExactError::ReadError(e) => lost_read(e),
    }
}

fn wire(e: WireError) -> Error {
    Error::Protocol(e.to_string())
}

/// Sends the file at `path` (already opened and measured by the caller) as `name`.
pub async fn send(
    conn: &Connection,
    path: &Path,
    file: File,
    size: u64,
    name: &str,
    opts: Options,
) -> Result<Summary, Error> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
    let flags = opts.flags();
    let header = Header {
        flags,
        size,
        name: name.to_owned(),
    };
    send.write_all(&header.encode()).await.map_err(lost_write)?;
    let mut accept = [0u8; ACCEPT_LEN];
    recv.read_exact(&mut accept).await.map_err(read_exact_err)?;
    let accept = Accept::decode(&accept).map_err(wire)?;

    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(PIPELINE);
    let reader = tokio::task::spawn_blocking(move || read_and_hash(file, tx));
    let mut progress = Progress::new(size, &format!("Sending {name}"), opts.quiet);
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|source| Error::Input {
            path: path.to_owned(),
            source,
        })?;
        sent += chunk.len() as u64;
        if sent > size {
            break;
        }
        let n = chunk.len() as u64;
        send.write_chunk(chunk).await.map_err(lost_write)?;
        progress.inc(n);
    }
    drop(rx);
    let hash = reader.await.map_err(|e| Error::Internal(e.to_string()))?;
    if sent != size {
        // Closing without the hash makes the receiver discard what it got.
        let _ = send.reset(0u32.into());
        return Err(Error::Input {
            path: path.to_owned(),
            source: io::Error::other(format!(
                "the file changed size while being sent ({size} bytes announced, {sent} read)"
            )),
        });
    }
    send.write_all(hash.as_bytes()).await.map_err(lost_write)?;
    send.finish().map_err(lost)?;
    progress.finish();
    let mut verdict = [0u8; 1];
    recv.read_exact(&mut verdict)
        .await
        .map_err(read_exact_err)?;
    // Measured to the verdict: the last bytes may sit in QUIC's send buffer until then.
    let elapsed = progress.elapsed();
    match Verdict::decode(verdict[0]).map_err(wire)? {
        Verdict::Ok => {}
        Verdict::HashMismatch => return Err(Error::Verify(
            "the receiver's copy does not match; was the file modified while it was being sent?"
                .into(),
        )),
        Verdict::StoreFailed => return Err(peer_cannot_store()),
    }
    Ok(Summary {
        bytes: size,
        hash,
        elapsed,
        saved_as: None,
        announced_name: name.to_owned(),
        peer_authenticated: accept.flags & FLAG_AUTHENTICATED != 0,
    })
}

/// Reads the whole file in chunks, hashing as it goes; returns the hash.
fn read_and_hash(mut file: File, tx: mpsc::Sender<io::Result<Bytes>>) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    loop {
        let mut buf = BytesMut::zeroed(CHUNK);
        let mut filled = 0;
        let res = loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == CHUNK {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(e));
            return hasher.finalize();
        }
        if filled == 0 {
            return hasher.finalize();
        }
        buf.truncate(filled);
        hasher.update(&buf);
        if tx.blocking_send(Ok(buf.freeze())).is_err() {
            return hasher.finalize();
        }
    }
}

/// Receives one file into `dir`.
pub async fn receive(conn: &Connection, dir: &Path, opts: Options) -> Result<Summary, Error> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| closed(&e))?;
    let mut fixed = [0u8; HEADER_FIXED_LEN];
    recv.read_exact(&mut fixed).await.map_err(read_exact_err)?;
    let (flags, size, name_len) = Header::decode_fixed(&fixed).map_err(wire)?;
    let mut name = vec![0u8; name_len];
    recv.read_exact(&mut name).await.map_err(read_exact_err)?;
    let header = Header::from_parts(flags, size, &name).map_err(wire)?;
    let safe = safe_file_name(&header.name);
    let part = PartFile::create(dir, &safe)?;
    let flags = opts.flags();
    send.write_all(&Accept { flags }.encode())
        .await
        .map_err(lost_write)?;

    let mut progress = Progress::new(size, &format!("Receiving {safe}"), opts.quiet);
    let file = part
        .file
        .try_clone()
        .map_err(|e| Error::write(part.path.clone(), e))?;
    let (tx, rx) = mpsc::channel::<Bytes>(PIPELINE);
    let writer = tokio::task::spawn_blocking(move || write_and_hash(file, rx));
    let got = pump(&mut recv, &tx, size, &mut progress).await;
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(e.to_string()))?;
    got?;
    let hash = match written {
        Ok(h) => h,
        Err(e) => {
            refuse_to_store(&mut send, &mut recv).await;
            return Err(Error::write(part.path.clone(), e));
        }
    };
    let mut theirs = [0u8; 32];
    recv.read_exact(&mut theirs).await.map_err(read_exact_err)?;
    // Anything after the hash is a lie about the size.
    match recv.read_chunk(1, true).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(Error::Protocol(format!(
                "the sender sent more than the {size} bytes it announced"
            )))
        }
        Err(e) => return Err(lost_read(e)),
    }
    progress.finish();
    if hash != blake3::Hash::from_bytes(theirs) {
        let _ = send.write_all(&[Verdict::HashMismatch.encode()]).await;
        let _ = send.finish();
        return Err(Error::Verify(format!(
            "BLAKE3 of the received data differs from the sender's; {} discarded",
            header.name
        )));
    }
    let saved_as = match part.persist(dir, &safe) {
        Ok(p) => p,
        Err(e) => {
            refuse_to_store(&mut send, &mut recv).await;
            return Err(e);
        }
    };
    send.write_all(&[Verdict::Ok.encode()])
        .await
        .map_err(lost_write)?;
    let _ = send.finish();
    Ok(Summary {
        bytes: size,
        hash,
        elapsed: progress.elapsed(),
        saved_as: Some(saved_as),
        announced_name: header.name,
        peer_authenticated: header.flags & FLAG_AUTHENTICATED != 0,
    })
}

/// Tells the sender we cannot store the file: stop its data at once, and say so in the verdict.
async fn refuse_to_store(send: &mut quinn::SendStream, recv: &mut RecvStream) {
    let _ = recv.stop(STOP_STORE_FAILED.into());
    let _ = send.write_all(&[Verdict::StoreFailed.encode()]).await;
    let _ = send.finish();
}

/// Moves exactly `size` bytes from the stream to the writer.
async fn pump(
    recv: &mut RecvStream,
    tx: &mpsc::Sender<Bytes>,
    size: u64,
    progress: &mut Progress,
) -> Result<(), Error> {
    let mut remaining = size;
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64) as usize;
        match recv.read_chunk(want, true).await.map_err(lost_read)? {
            Some(chunk) => {
                let n = chunk.bytes.len() as u64;
                remaining -= n;
                progress.inc(n);
                if tx.send(chunk.bytes).await.is_err() {
                    // The writer failed; its error is reported by the caller.
                    return Ok(());
                }
            }
            None => {
                return Err(Error::ConnectionLost(format!(
                    "the sender stopped after {} of {size} bytes",
                    size - remaining
                )))
            }
        }
    }
    Ok(())
}

fn write_and_hash(mut file: File, mut rx: mpsc::Receiver<Bytes>) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(hasher.finalize())
}

/// A partly received file, deleted unless persisted.
struct PartFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl PartFile {
    fn create(dir: &Path, name: &str) -> Result<PartFile, Error> {
        for _ in 0..100 {
            let tag: u32 = rand::random();
            let path = dir.join(format!(".{name}.{tag:08x}.p2pcopy-part"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(PartFile {
                        path,
                        file,
                        keep: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::write(path, e)),
            }
        }
        Err(Error::Internal(
            "cannot find a free temporary file name".into(),
        ))
    }

    /// Gives the verified file its final name, never replacing an existing file.
    fn persist(mut self, dir: &Path, name: &str) -> Result<PathBuf, Error> {
        for n in 0..10_000 {
            let target = dir.join(numbered(name, n));
            // A hard link fails if the target exists, so a file created meanwhile is safe too.
            match fs::hard_link(&self.path, &target) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.path);
                    self.keep = true;
                    return Ok(target);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) if !target.exists() => {
                    // File systems without hard links: a rename after the check.
                    fs::rename(&self.path, &target).map_err(|e| Error::write(target.clone(), e))?;
                    self.keep = true;
                    return Ok(target);
                }
                Err(e) => return Err(Error::write(target, e)),
            }
        }
        Err(Error::Write {
            path: dir.join(name),
            source: io::Error::other("no free name left"),
        })
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `name` for n = 0, else `stem (n).ext`.
pub fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// Reduces a peer-supplied name to one safe file name: no directories, no control
/// characters, nothing a file system treats specially.
pub fn safe_file_name(raw: &str) -> String {
    const FALLBACK: &str = "received-file";
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    // Windows drops trailing dots and spaces, turning "a." into "a".
    let trimmed = cleaned.trim().trim_end_matches(['.', ' ']);
    if trimmed.is_empty() || trimmed.chars().all(|c| c == '.') {
        return FALLBACK.to_owned();
    }
    let mut name = trimmed.to_owned();
    let stem = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        name.insert(0, '_');
    }
    // Leave room for " (9999)" and the temporary name's decoration within 255 bytes.
    const MAX: usize = 200;
    if name.len() > MAX {
        let ext = name
            .rfind('.')
            .map(|d| name[d..].to_owned())
            .filter(|e| e.len() <= 16)
            .unwrap_or_default();
        let mut cut = MAX - ext.len();
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{ext}", &name[..cut]);
    }
    name
}

/// Checks that received files can be created in `dir`, before any network work.
pub fn check_output_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::Output {
        path: dir.to_owned(),
        source,
    };
    let meta = fs::metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(io::Error::other("not a directory")));
    }
    let probe = PartFile::create(dir, "write-test").map_err(|e| match e {
        Error::Write { source, .. } => err(source),
        Error::DiskFull { .. } => err(io::Error::other("disk full")),
        other => other,
    })?;
    drop(probe);
    Ok(())
}

/// Keeps the send half alive until the peer has read the verdict, then closes.
pub async fn linger(conn: &Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_confined() {
        let cases = [
            ("x.tif", "x.tif"),
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("C:\\Windows\\system32\\evil.dll", "evil.dll"),
            ("..", "received-file"),
            (".", "received-file"),
            ("", "received-file"),
            ("dir/", "received-file"),
            ("a\u{0}b\nc", "a_b_c"),
            ("con.txt", "_con.txt"),
            ("LPT1", "_LPT1"),
            ("COMPUTER.txt", "COMPUTER.txt"),
            ("what?.txt", "what_.txt"),
            ("trailing. . ", "trailing"),
            (".bashrc", ".bashrc"),
        ];
        for (raw, want) in cases {
            assert_eq!(safe_file_name(raw), want, "{raw:?}");
        }
        let long = format!("{}.tar.gz", "é".repeat(300));
        let s = safe_file_name(&long);
        assert!(s.len() <= 200 && s.ends_with(".gz"), "{s}");
    }

    #[test]
    fn numbering() {
        assert_eq!(numbered("x.tif", 0), "x.tif");
        assert_eq!(numbered("x.tif", 2), "x (2).tif");
        assert_eq!(numbered("Makefile", 1), "Makefile (1)");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
    }

    #[test]
    fn persist_never_overwrites_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"old").unwrap();
        let mut part = PartFile::create(dir.path(), "a.txt").unwrap();
        part.file.write_all(b"new").unwrap();
        let saved = part.persist(dir.path(), "a.txt").unwrap();
        assert_eq!(saved, dir.path().join("a (1).txt"));
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"old");
        assert_eq!(fs::read(&saved).unwrap(), b"new");
        // A dropped part file leaves nothing behind.
        drop(PartFile::create(dir.path(), "b.txt").unwrap());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a (1).txt", "a.txt"]);
    }

    #[test]
    fn output_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        check_output_dir(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(matches!(
            check_output_dir(&dir.path().join("missing")),
            Err(Error::Output { .. })
        ));
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(matches!(check_output_dir(&file), Err(Error::Output { .. })));
    }
}
