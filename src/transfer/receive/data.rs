//! One file's data streams into its part file: segments checked against the plan, bytes
//! gathered into chunks, written and hashed off the runtime, and the trailer's verdict.

use std::io::{self, Write};
use std::time::Duration;

use quinn::{Connection, ReadError, RecvStream};
use tokio::sync::mpsc;

use super::pipeline::Job;
use super::{FileRef, Files};
use crate::error::Error;
use crate::shown::shown;
use crate::transfer::control::{self, Segment};
use crate::transfer::store::{Held, Part, Store};
use crate::transfer::watchdog::{Waiting, Watch};
use crate::transfer::{closed, lost_read, read_exact_err, wire, Observer, Report, CHUNK, PIPELINE};
use crate::wire::{
    segment_end, DataHead, FileStatus, Trailer, DATA_HEAD_LEN, RESET_SOURCE_CHANGED,
    STOP_STORE_FAILED, TRAILER_LEN,
};

/// How one file ended.
pub(super) enum Outcome {
    /// Verified, still in its part file.
    Verified(Part),
    /// Anything else the sender is told.
    Status(FileStatus),
}

/// Receives one file's data streams, the first already past its head; an error ends the
/// job. `stream` is left at the file's last segment, which the caller stops on a store
/// error.
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_file(
    store: &Store,
    rx: &mut Files<'_, '_>,
    stream: &mut RecvStream,
    file: &FileRef<'_>,
    start: u64,
    claim: Option<Held>,
    observer: &mut dyn Observer,
    report: &mut Report,
) -> Result<(Outcome, blake3::Hash), Error> {
    let size = file.entry.size;
    // "Already there": the sender proved our complete copy; nothing is written.
    let watch = rx.ctl.watch;
    if let Some(h) = claim.as_ref().filter(|h| h.complete && start == size) {
        let status = match watch.guard(Waiting::MidFile, read_trailer(stream)).await? {
            Trailer::Complete(theirs) if theirs == *h.hash.as_bytes() => FileStatus::AlreadyThere,
            Trailer::Complete(_) => {
                return Err(Error::Protocol(format!(
                    "the sender skipped {} but its hash differs from ours",
                    file.entry.path
                )))
            }
            Trailer::SourceChanged => FileStatus::SourceChanged,
        };
        return Ok((Outcome::Status(status), h.hash));
    }
    let hasher = match claim {
        Some(Held {
            hasher: Some(h), ..
        }) if start > 0 => *h,
        _ => blake3::Hasher::new(),
    };
    let part = store.open_part(file.rel, start)?;
    let out = part
        .file
        .try_clone()
        .map_err(|e| Error::write(part.path.clone(), e))?;
    let (tx, chunks) = mpsc::channel::<Filled>(PIPELINE);
    let (spare_tx, mut spare) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_blocking(move || write_and_hash(out, hasher, chunks, spare_tx));
    let mut at = start;
    let got = loop {
        let end = segment_end(at, size);
        let got = pump(stream, &tx, &mut spare, end - at, observer, report, watch).await;
        if got.is_err() || end == size {
            break got;
        }
        at = end;
        match next_segment(rx.conn, stream, &mut rx.seq, watch).await {
            Ok(next) => *stream = next,
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(e.to_string()))?;
    // On a write error the part data stays for the next run: the disk is the problem.
    let ours = written.map_err(|e| Error::write(part.path.clone(), e))?;
    let trailer = match got {
        Ok(()) => watch.guard(Waiting::MidFile, read_trailer(stream)).await?,
        Err(Pumped::SourceChanged) => Trailer::SourceChanged,
        Err(Pumped::Failed(e)) => return Err(e),
    };
    let status = match trailer {
        Trailer::SourceChanged => FileStatus::SourceChanged,
        Trailer::Complete(theirs) if theirs != *ours.as_bytes() => {
            tracing::warn!(path = %shown(&file.entry.path), "BLAKE3 mismatch; discarding");
            FileStatus::HashMismatch
        }
        // Its final name comes with the next durability round (`Incoming::commit`).
        Trailer::Complete(_) => return Ok((Outcome::Verified(part), ours)),
    };
    store.discard(part);
    Ok((Outcome::Status(status), ours))
}

/// Reads a small file into memory and hands it to the disk pipeline.
pub(super) async fn receive_small(
    rx: &mut Files<'_, '_>,
    stream: &mut RecvStream,
    file: &FileRef<'_>,
    start: u64,
    claim: Option<Held>,
    observer: &mut dyn Observer,
    report: &mut Report,
) -> Result<(), Error> {
    let rest = file.entry.size - start;
    let hasher = match claim {
        Some(Held {
            hasher: Some(h), ..
        }) if start > 0 => *h,
        _ => blake3::Hasher::new(),
    };
    // Waiting for memory is waiting for our own disk: the sender hears we are busy.
    let pipe = &rx.pipe;
    let permit = rx.ctl.wait(pipe.reserve(rest)).await??;
    let watch = rx.ctl.watch;
    let (data, trailer) = read_small(stream, rest, observer, report, watch).await?;
    rx.seq.file_received(file.index)?;
    rx.pipe.push(Job {
        index: file.index,
        rel: file.rel.to_owned(),
        entry: file.entry.clone(),
        start,
        hasher,
        data,
        trailer,
        permit,
    })
}

/// Reads the rest of a small file (`len` bytes, one segment) and its trailer into memory,
/// for the disk pipeline; the stream must be past its head.
async fn read_small(
    stream: &mut RecvStream,
    len: u64,
    observer: &mut dyn Observer,
    report: &mut Report,
    watch: &Watch,
) -> Result<(Vec<u8>, Trailer), Error> {
    let (tx, mut filled) = mpsc::channel::<Filled>(1);
    let (_spare_tx, mut spare) = mpsc::unbounded_channel();
    let got = pump(stream, &tx, &mut spare, len, observer, report, watch).await;
    let trailer = match got {
        Ok(()) => watch.guard(Waiting::MidFile, read_trailer(stream)).await?,
        Err(Pumped::SourceChanged) => Trailer::SourceChanged,
        Err(Pumped::Failed(e)) => return Err(e),
    };
    // At most CHUNK bytes: `pump` sent them as one buffer (none for an empty file).
    let data = match filled.try_recv() {
        Ok((mut buf, n)) => {
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    };
    Ok((data, trailer))
}

/// Stops a data stream when we cannot store its file, so the sender stops sending at once
/// and can say why.
pub(super) fn stop_if_store_failed(stream: &mut RecvStream, e: &Error) {
    if matches!(
        e,
        Error::DiskFull { .. } | Error::Write { .. } | Error::Output { .. }
    ) {
        let _ = stream.stop(STOP_STORE_FAILED.into());
    }
}

/// Accepts the next data stream and reads the head it starts with.
pub(super) async fn accept_data(conn: &Connection) -> Result<(RecvStream, DataHead), Error> {
    let mut stream = conn.accept_uni().await.map_err(|e| closed(&e))?;
    let mut h = [0u8; DATA_HEAD_LEN];
    stream.read_exact(&mut h).await.map_err(read_exact_err)?;
    Ok((stream, DataHead::decode(&h)))
}

/// Checks that a full segment's stream ends there, and has `seq` check that the next data
/// stream continues the same file where it ended.
async fn next_segment(
    conn: &Connection,
    stream: &mut RecvStream,
    seq: &mut control::Receiver,
    watch: &Watch,
) -> Result<RecvStream, Pumped> {
    let end = watch
        .guard(Waiting::MidFile, async {
            Ok(stream.read_chunk(1, true).await)
        })
        .await
        .map_err(Pumped::Failed)?;
    match end.map_err(read_failed)? {
        None => {}
        Some(_) => {
            return Err(Pumped::Failed(Error::Protocol(
                "the sender put more than a segment on one data stream".into(),
            )))
        }
    }
    let (next, head) = watch
        .guard(Waiting::MidFile, accept_data(conn))
        .await
        .map_err(Pumped::Failed)?;
    match seq.handle_data_head(head).map_err(Pumped::Failed)? {
        Segment::Next => Ok(next),
        Segment::First { .. } => Err(Pumped::Failed(Error::Internal(
            "a new file in the middle of one".into(),
        ))),
    }
}

/// Reads the trailer and checks the stream ends right after it.
async fn read_trailer(stream: &mut RecvStream) -> Result<Trailer, Error> {
    let mut t = [0u8; TRAILER_LEN];
    stream.read_exact(&mut t).await.map_err(read_exact_err)?;
    let trailer = Trailer::decode(&t).map_err(wire)?;
    // Anything after the trailer is a lie about the size.
    match stream.read_chunk(1, true).await {
        Ok(None) => Ok(trailer),
        Ok(Some(_)) => Err(Error::Protocol(
            "the sender sent more bytes than it announced".into(),
        )),
        Err(e) => Err(lost_read(e)),
    }
}

enum Pumped {
    SourceChanged,
    Failed(Error),
}

/// What a failed read of a data stream means: the sender resets a stream whose source
/// changed; anything else is a lost connection.
fn read_failed(e: ReadError) -> Pumped {
    match e {
        ReadError::Reset(code) if code == RESET_SOURCE_CHANGED.into() => Pumped::SourceChanged,
        e => Pumped::Failed(lost_read(e)),
    }
}

/// A buffer and how many of its bytes are data.
type Filled = (Vec<u8>, usize);

/// Moves exactly `len` bytes from the stream to the writer.
///
/// QUIC hands data over a packet at a time (about 1.4 KB). Passed on like that, every
/// packet cost a channel hand-over, a write syscall and a hash step too short for BLAKE3's
/// SIMD paths; gathering CHUNK bytes first took the receiver from 3.9 to 1.6 CPU-seconds
/// per GiB on the LAN bench (commit 4eefca9). Buffers come back from the writer through
/// `spare`, so at most PIPELINE + 2 of them ever exist.
async fn pump(
    stream: &mut RecvStream,
    tx: &mpsc::Sender<Filled>,
    spare: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    len: u64,
    observer: &mut dyn Observer,
    report: &mut Report,
    watch: &Watch,
) -> Result<(), Pumped> {
    let mut remaining = len;
    // One timer for the whole segment, not one per read (a read is about a packet), moved
    // on only when it fires and the peer has made progress meanwhile.
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
    let mut dog = watch.start();
    let mut alarm = std::pin::pin!(tokio::time::sleep_until(dog.map_or(far, |d| d.deadline())));
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64) as usize;
        let mut buf = spare.try_recv().unwrap_or_default();
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut filled = 0;
        let mut failed = None;
        while filled < want {
            let read = tokio::select! {
                biased;
                r = stream.read(&mut buf[filled..want]) => r,
                _ = &mut alarm, if dog.is_some() => {
                    let Some(d) = dog.as_mut() else { continue };
                    match watch.check(d, Waiting::MidFile) {
                        Ok(next) => {
                            alarm.as_mut().reset(next);
                            continue;
                        }
                        Err(stall) => {
                            failed = Some(Pumped::Failed(stall));
                            break;
                        }
                    }
                }
            };
            match read {
                Ok(Some(n)) => {
                    filled += n;
                    report.moved(observer, n as u64);
                }
                Ok(None) => {
                    failed = Some(Pumped::Failed(Error::Protocol(format!(
                        "the sender ended a file after {} of {len} bytes",
                        len - remaining + filled as u64
                    ))));
                    break;
                }
                Err(e) => {
                    failed = Some(read_failed(e));
                    break;
                }
            }
        }
        // What arrived before a failure still goes to the part file: a resume needs it.
        if filled > 0 && tx.send((buf, filled)).await.is_err() {
            // The writer failed; its error is reported by the caller.
            return Ok(());
        }
        if let Some(f) = failed {
            return Err(f);
        }
        remaining -= want as u64;
        // Waiting for our own disk is not the peer stalling: watch afresh from here.
        if dog.is_some() {
            dog = watch.start();
            if let Some(d) = &dog {
                alarm.as_mut().reset(d.deadline());
            }
        }
    }
    Ok(())
}

fn write_and_hash(
    mut file: std::fs::File,
    mut hasher: blake3::Hasher,
    mut rx: mpsc::Receiver<Filled>,
    spare: mpsc::UnboundedSender<Vec<u8>>,
) -> io::Result<blake3::Hash> {
    while let Some((buf, n)) = rx.blocking_recv() {
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        let _ = spare.send(buf);
    }
    Ok(hasher.finalize())
}
