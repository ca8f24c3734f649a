//! The disk thread: each file read in turn, a resume claim proven or refused by hashing,
//! the rest read in chunks with its hash, and a file that changed on the way flagged.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::manifest::split_time;
use crate::shown::shown;
use crate::transfer::CHUNK;
use crate::wire::{Claim, DataHead, Trailer};

/// What the disk thread tells the network task.
pub(super) enum DiskEvent {
    Start(DataHead),
    Data(Bytes),
    End(Trailer),
    Failed(PathBuf, io::Error),
}

/// One file for the disk thread.
pub(super) struct Job {
    pub(super) index: u32,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) mtime: (i64, u32),
    pub(super) claim: Option<Claim>,
    pub(super) known: Option<blake3::Hash>,
}

/// The disk thread: every file in turn, proving or refusing the receiver's claim, then
/// streaming the rest with its hash.
pub(super) fn read_all(jobs: Vec<Job>, tx: mpsc::Sender<DiskEvent>) {
    for job in jobs {
        let path = job.path.clone();
        match read_one(job, &tx) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.blocking_send(DiskEvent::Failed(path, e));
                return;
            }
        }
    }
}

/// Sends one file's events; `Ok(false)` when the network side has gone.
fn read_one(job: Job, tx: &mpsc::Sender<DiskEvent>) -> io::Result<bool> {
    let send = |r| tx.blocking_send(r).is_ok();
    // Already there and already hashed in this run: nothing to read.
    if let (Some(c), Some(h)) = (job.claim, job.known) {
        if c.offset == job.size && c.hash == *h.as_bytes() {
            return Ok(send(DiskEvent::Start(DataHead {
                index: job.index,
                start: job.size,
            })) && send(DiskEvent::End(Trailer::Complete(c.hash))));
        }
    }
    let mut file = File::open(&job.path)?;
    let mut hasher = blake3::Hasher::new();
    let mut start = 0;
    if let Some(c) = job.claim.filter(|c| c.offset <= job.size) {
        // The receiver's prefix must hash like ours; otherwise start the file over.
        let n = copy_hashing(&mut (&mut file).take(c.offset), &mut hasher, |_| true)?;
        if n == c.offset && *hasher.finalize().as_bytes() == c.hash {
            start = c.offset;
        } else {
            tracing::info!(path = %shown(&job.path.to_string_lossy()), "resume claim does not match; sending the whole file");
            hasher.reset();
            file.seek(SeekFrom::Start(0))?;
        }
    }
    if !send(DiskEvent::Start(DataHead {
        index: job.index,
        start,
    })) {
        return Ok(false);
    }
    let want = job.size - start;
    let mut alive = true;
    let n = copy_hashing(&mut (&mut file).take(want), &mut hasher, |chunk| {
        alive = send(DiskEvent::Data(chunk));
        alive
    })?;
    if !alive {
        return Ok(false);
    }
    // Same length and time as scanned, else the bytes we sent may mix two versions.
    let meta = file.metadata()?;
    let unchanged = n == want
        && meta.len() == job.size
        && meta.modified().map(split_time).ok() == Some(job.mtime);
    let trailer = if unchanged {
        Trailer::Complete(*hasher.finalize().as_bytes())
    } else {
        tracing::info!(path = %shown(&job.path.to_string_lossy()), "changed while being read");
        Trailer::SourceChanged
    };
    Ok(send(DiskEvent::End(trailer)))
}

/// Reads `r` to its end in chunks, hashing each and handing it to `sink` (which returns
/// false to stop); returns the bytes read.
fn copy_hashing(
    r: &mut impl Read,
    hasher: &mut blake3::Hasher,
    mut sink: impl FnMut(Bytes) -> bool,
) -> io::Result<u64> {
    let mut total = 0;
    loop {
        // Each chunk is a new buffer: QUIC holds it until the peer acknowledges it.
        // read_to_end reads a File into the spare capacity without zeroing it first (which
        // was 3 % of the LAN sender's CPU).
        let mut buf = Vec::with_capacity(CHUNK);
        let filled = r.take(CHUNK as u64).read_to_end(&mut buf)?;
        if filled == 0 {
            return Ok(total);
        }
        hasher.update(&buf);
        total += filled as u64;
        if !sink(Bytes::from(buf)) {
            return Ok(total);
        }
        if filled < CHUNK {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn job_for(path: &std::path::Path, claim: Option<Claim>) -> Job {
        let meta = std::fs::metadata(path).unwrap();
        Job {
            index: 3,
            path: path.to_owned(),
            size: meta.len(),
            mtime: split_time(meta.modified().unwrap()),
            claim,
            known: None,
        }
    }

    fn events(job: Job) -> (DataHead, Vec<u8>, Trailer) {
        let (tx, mut rx) = mpsc::channel(1024);
        std::thread::spawn(move || read_all(vec![job], tx))
            .join()
            .unwrap();
        let mut head = None;
        let mut data = Vec::new();
        let mut trailer = None;
        while let Ok(ev) = rx.try_recv() {
            match ev {
                DiskEvent::Start(h) => head = Some(h),
                DiskEvent::Data(d) => data.extend_from_slice(&d),
                DiskEvent::End(t) => trailer = Some(t),
                DiskEvent::Failed(_, e) => panic!("{e}"),
            }
        }
        (head.unwrap(), data, trailer.unwrap())
    }

    #[test]
    fn claims_are_proven_before_skipping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..3 * CHUNK as u32 + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        let whole = blake3::hash(&content);

        let (h, data, t) = events(job_for(&path, None));
        assert_eq!((h.index, h.start), (3, 0));
        assert_eq!(data, content);
        assert_eq!(t, Trailer::Complete(*whole.as_bytes()));

        let at = CHUNK as u64 + 5;
        let good = Claim {
            index: 3,
            offset: at,
            hash: *blake3::hash(&content[..at as usize]).as_bytes(),
        };
        let (h, data, t) = events(job_for(&path, Some(good)));
        assert_eq!(h.start, at);
        assert_eq!(data, &content[at as usize..]);
        assert_eq!(t, Trailer::Complete(*whole.as_bytes()));

        // A prefix that differs, or claims past the end, restarts the file.
        for bad in [
            Claim {
                hash: [0; 32],
                ..good
            },
            Claim {
                offset: content.len() as u64 + 1,
                ..good
            },
        ] {
            let (h, data, t) = events(job_for(&path, Some(bad)));
            assert_eq!(h.start, 0);
            assert_eq!(data, content);
            assert_eq!(t, Trailer::Complete(*whole.as_bytes()));
        }
    }

    #[test]
    fn a_file_changed_after_the_scan_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"version one").unwrap();
        let job = job_for(&path, None);
        // Same length, new content and time: only the time tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"version two").unwrap();
        drop(f);
        let (_, _, t) = events(job);
        assert_eq!(t, Trailer::SourceChanged);
        // Shrunk.
        let job = job_for(&path, None);
        std::fs::write(&path, b"short").unwrap();
        let (_, data, t) = events(job);
        assert_eq!(t, Trailer::SourceChanged);
        assert_eq!(data, b"short");
    }
}
