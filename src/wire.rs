//! Byte layouts that cross the network: hole-punch probes (`probe`) and the transfer framing
//! (control frames, and the head and trailer of each file's data stream).
//!
//! Pure encode/decode functions, no I/O, so every layout is unit-tested and fuzzable.

mod probe;

pub use probe::{is_probe, Probe, ProbeKind, PROBE_LEN, PROBE_MAGIC, PROBE_VERSION};

/// Magic at the start of the control stream.
pub const STREAM_MAGIC: [u8; 8] = *b"p2pcopy\0";
/// Transfer protocol version. Version 2 carries whole trees and resumes; version 1 (one
/// file, no resume) is no longer spoken.
pub const STREAM_VERSION: u8 = 2;
/// Longest relative path (and symlink target) accepted from the peer, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Most entries (files, folders, links) one job may announce, whatever else; the memory
/// the entries cost the receiver is bounded by [`MAX_MANIFEST_COST`], which with short
/// paths is reached at about 85,000 entries.
pub const MAX_ENTRIES: u32 = 1_000_000;
/// Most memory a receiver lets one job's manifest cost it, as counted by [`entry_cost`]
/// while the entries arrive (and what a sender checks its own job against before
/// connecting). [`MAX_ENTRIES`] alone would let a hostile manifest of long paths cost
/// gigabytes.
pub const MAX_MANIFEST_COST: u64 = 64 << 20;
/// What the receiver keeps per entry besides its path: the entry and its confined path
/// (104 bytes), and per file the claim map (about 150 with hash-table slack), the pending
/// set, the verdict list, the verified map (150), the reported and stored sets, and the
/// checksum list (56).
const ENTRY_COST_FIXED: u64 = 576;
/// Copies of a path the receiver keeps over a job (as sent, confined, in the verified map
/// and in the checksum list), each with the allocator's overhead.
const PATH_COPIES: u64 = 4;
/// An allocator's overhead per heap block, rounded up.
const ALLOC_OVERHEAD: u64 = 32;

/// An upper bound on the memory the receiver holds for `e` over a job; see
/// [`MAX_MANIFEST_COST`].
pub fn entry_cost(e: &Entry) -> u64 {
    ENTRY_COST_FIXED
        + PATH_COPIES * (e.path.len() as u64 + ALLOC_OVERHEAD)
        + e.target.len() as u64
        + ALLOC_OVERHEAD
}

/// Bytes before a frame's payload: type (1) and payload length (4, big-endian).
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest payload of any control frame: an entry with the longest path and target.
pub const MAX_FRAME_PAYLOAD: usize = 32 + 2 * (2 + MAX_PATH_LEN);
/// Size of a [`DataHead`].
pub const DATA_HEAD_LEN: usize = 12;
/// Size of a [`Trailer`].
pub const TRAILER_LEN: usize = 33;

/// Flag: the side that sent this message checked the peer's certificate against a ticket.
pub const FLAG_AUTHENTICATED: u8 = 1;
/// Flag: the side that sent this message understands [`Frame::Busy`] on the control stream.
/// Older versions ignore unknown flag bits, and are never sent a `Busy`.
pub const FLAG_HEARTBEAT: u8 = 2;

/// Code with which the receiver stops a data stream when it cannot store the file, so the
/// sender stops sending at once and can say why.
pub const STOP_STORE_FAILED: u32 = 2;
/// Code with which the sender resets a data stream whose source file cannot be sent as
/// announced (it shrank or became unreadable while being read).
pub const RESET_SOURCE_CHANGED: u32 = 3;

/// Why bytes from the peer are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not our protocol at all.
    #[error("the peer is not speaking the p2pcopy transfer protocol")]
    Magic,
    /// Our protocol, another version.
    #[error("the peer uses transfer protocol version {0}, this p2pcopy speaks version {STREAM_VERSION}; use the same p2pcopy version on both sides")]
    Version(u8),
    /// A frame type this version does not know.
    #[error("unknown message type {0}")]
    FrameType(u8),
    /// A frame longer than any valid one; refused before reading it.
    #[error("message of {0} bytes is longer than any valid one")]
    FrameTooLong(u32),
    /// A frame whose payload does not match its type's layout.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A path or link target longer than [`MAX_PATH_LEN`].
    #[error("announced path is {0} bytes long (limit {MAX_PATH_LEN})")]
    PathTooLong(usize),
    /// A path or link target that is not UTF-8.
    #[error("announced path is not valid UTF-8")]
    PathEncoding,
    /// More entries than [`MAX_ENTRIES`].
    #[error("the sender announced {0} entries (limit {MAX_ENTRIES})")]
    TooManyEntries(u32),
    /// A status byte this version does not know.
    #[error("unknown status {0}")]
    Status(u8),
}

/// What one manifest entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file; its data follows on a data stream.
    File,
    /// A folder (sent so that empty folders and folder times arrive too).
    Dir,
    /// A symbolic link with a relative target inside the job.
    Symlink,
}

/// One file, folder or link of a job, as announced by the sender.
///
/// `path` is relative and `/`-separated, exactly as the peer sent it: the receiver must
/// confine it (see `manifest::confine`) before touching the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// File, folder or link.
    pub kind: EntryKind,
    /// Relative path, `/`-separated.
    pub path: String,
    /// File size in bytes (0 for folders and links).
    pub size: u64,
    /// Unix permission bits (`0o777` at most).
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Modification time: nanoseconds within the second.
    pub mtime_nanos: u32,
    /// Target of a link (empty otherwise).
    pub target: String,
}

/// The job's first message, from the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Number of [`Entry`] frames that follow.
    pub entries: u32,
    /// Sum of all file sizes.
    pub total: u64,
}

/// The receiver's statement that it already holds the first `offset` bytes of a file, with
/// their BLAKE3 hash as proof. The sender continues from `offset` only if its own prefix
/// hashes the same; otherwise it starts that file over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Entry index.
    pub index: u32,
    /// Bytes held.
    pub offset: u64,
    /// BLAKE3 of those bytes.
    pub hash: [u8; 32],
}

/// How a file ended on the receiver, reported back to the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Verified and stored under its final name.
    Stored,
    /// The receiver already had it, identical: nothing was written.
    AlreadyThere,
    /// The data arrived but its BLAKE3 differs from the sender's: discarded.
    HashMismatch,
    /// The sender reported that the file changed while being read: discarded.
    SourceChanged,
}

impl FileStatus {
    fn encode(self) -> u8 {
        match self {
            FileStatus::Stored => 0,
            FileStatus::AlreadyThere => 1,
            FileStatus::HashMismatch => 2,
            FileStatus::SourceChanged => 3,
        }
    }

    fn decode(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0 => FileStatus::Stored,
            1 => FileStatus::AlreadyThere,
            2 => FileStatus::HashMismatch,
            3 => FileStatus::SourceChanged,
            other => return Err(WireError::Status(other)),
        })
    }
}

/// What became of a link's request to delete a path ([`Frame::Delete`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteStatus {
    /// Removed.
    Deleted,
    /// Nothing was there (already gone).
    Missing,
    /// Kept: the file differs from what was sent (changed there, or another file of that
    /// name), or the folder is not empty.
    Kept,
    /// Refused: the receiving link does not allow deletions, the path is not what the
    /// peer sent it over this link, or not a plain file or folder inside its output folder
    /// (a symlink on the way, say).
    Refused,
}

impl DeleteStatus {
    fn encode(self) -> u8 {
        match self {
            DeleteStatus::Deleted => 0,
            DeleteStatus::Missing => 1,
            DeleteStatus::Kept => 2,
            DeleteStatus::Refused => 3,
        }
    }

    fn decode(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0 => DeleteStatus::Deleted,
            1 => DeleteStatus::Missing,
            2 => DeleteStatus::Kept,
            3 => DeleteStatus::Refused,
            other => return Err(WireError::Status(other)),
        })
    }
}

/// A message on the job's control stream (one bidirectional QUIC stream the sender opens).
///
/// Order: sender `Offer`, `Entry` × n; receiver `Accept`, `Claim` × k, `PlanEnd`; then, while
/// file data flows on unidirectional streams, receiver `FileDone` per file and `JobDone`.
/// A link that stays may open a control stream with `Delete` instead of `Offer`; the other
/// side answers `Deleted` and the stream ends (no job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Sender: what follows.
    Offer(Offer),
    /// Sender: one entry.
    Entry(Entry),
    /// Receiver: the offer is acceptable (its `FLAG_*` bits).
    Accept {
        /// `FLAG_*` bits.
        flags: u8,
    },
    /// Receiver: a resume claim.
    Claim(Claim),
    /// Receiver: no more claims; send the data.
    PlanEnd,
    /// Receiver: one file is finished.
    FileDone {
        /// Entry index.
        index: u32,
        /// How it ended.
        status: FileStatus,
    },
    /// Receiver: every entry is in place (folders' times and links included).
    JobDone,
    /// Either side, to a peer that set [`FLAG_HEARTBEAT`]: still working on its own disk
    /// (hashing what it holds, flushing a file, proving a claim). Carries nothing; its
    /// arrival keeps the peer's stall watchdog quiet. The receiver sends it anywhere among
    /// its control frames; the sender only after its manifest, where the receiver no longer
    /// reads (the frames only count as they arrive; at one per 2 s, the receiver's 2 MiB
    /// stream window would fill after a week of a disk that never answers).
    Busy,
    /// A link's sender, instead of an `Offer`: delete this path under your output folder,
    /// if it still holds what we sent (`hash`: a file with this BLAKE3; `None`: an empty
    /// folder).
    Delete {
        /// Relative, `/`-separated, as a manifest entry's path.
        path: String,
        /// The file's BLAKE3 as sent; `None` for a folder.
        hash: Option<[u8; 32]>,
    },
    /// The answer to `Delete`.
    Deleted {
        /// What became of the path.
        status: DeleteStatus,
    },
}

const T_OFFER: u8 = 1;
const T_ENTRY: u8 = 2;
const T_ACCEPT: u8 = 3;
const T_CLAIM: u8 = 4;
const T_PLAN_END: u8 = 5;
const T_FILE_DONE: u8 = 6;
const T_JOB_DONE: u8 = 7;
const T_BUSY: u8 = 8;
const T_DELETE: u8 = 9;
const T_DELETED: u8 = 10;

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let ty = match self {
            Frame::Offer(o) => {
                out.extend_from_slice(&STREAM_MAGIC);
                out.push(STREAM_VERSION);
                out.push(o.flags);
                out.extend_from_slice(&o.entries.to_be_bytes());
                out.extend_from_slice(&o.total.to_be_bytes());
                T_OFFER
            }
            Frame::Entry(e) => {
                out.push(match e.kind {
                    EntryKind::File => 1,
                    EntryKind::Dir => 2,
                    EntryKind::Symlink => 3,
                });
                out.extend_from_slice(&e.size.to_be_bytes());
                out.extend_from_slice(&e.mode.to_be_bytes());
                out.extend_from_slice(&e.mtime_secs.to_be_bytes());
                out.extend_from_slice(&e.mtime_nanos.to_be_bytes());
                put_str(out, &e.path);
                put_str(out, &e.target);
                T_ENTRY
            }
            Frame::Accept { flags } => {
                out.push(STREAM_VERSION);
                out.push(*flags);
                T_ACCEPT
            }
            Frame::Claim(c) => {
                out.extend_from_slice(&c.index.to_be_bytes());
                out.extend_from_slice(&c.offset.to_be_bytes());
                out.extend_from_slice(&c.hash);
                T_CLAIM
            }
            Frame::PlanEnd => T_PLAN_END,
            Frame::FileDone { index, status } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.push(status.encode());
                T_FILE_DONE
            }
            Frame::JobDone => T_JOB_DONE,
            Frame::Busy => T_BUSY,
            Frame::Delete { path, hash } => {
                match hash {
                    Some(h) => {
                        out.push(1);
                        out.extend_from_slice(h);
                    }
                    None => out.push(2),
                }
                put_str(out, path);
                T_DELETE
            }
            Frame::Deleted { status } => {
                out.push(status.encode());
                T_DELETED
            }
        };
        let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
        out[start] = ty;
        out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Checks a frame header; returns the type and payload length to read next.
    pub fn decode_header(h: &[u8; FRAME_HEADER_LEN]) -> Result<(u8, usize), WireError> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if !(T_OFFER..=T_DELETED).contains(&h[0]) {
            return Err(WireError::FrameType(h[0]));
        }
        if len as usize > MAX_FRAME_PAYLOAD {
            return Err(WireError::FrameTooLong(len));
        }
        Ok((h[0], len as usize))
    }

    /// Decodes the payload of a frame of type `ty`.
    pub fn decode_payload(ty: u8, p: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader(p);
        let frame = match ty {
            T_OFFER => Frame::Offer(decode_offer(&mut r)?),
            T_ENTRY => Frame::Entry(decode_entry(&mut r)?),
            T_ACCEPT => {
                let version = r.u8().ok_or(WireError::Malformed("accept"))?;
                if version != STREAM_VERSION {
                    return Err(WireError::Version(version));
                }
                let flags = r.u8().ok_or(WireError::Malformed("accept"))?;
                Frame::Accept { flags }
            }
            T_CLAIM => {
                let bad = || WireError::Malformed("claim");
                let index = r.u32().ok_or_else(bad)?;
                let offset = r.u64().ok_or_else(bad)?;
                let hash = r.take(32).ok_or_else(bad)?.try_into().expect("32 bytes");
                Frame::Claim(Claim {
                    index,
                    offset,
                    hash,
                })
            }
            T_PLAN_END => Frame::PlanEnd,
            T_FILE_DONE => {
                let index = r.u32().ok_or(WireError::Malformed("file-done"))?;
                let status = FileStatus::decode(r.u8().ok_or(WireError::Malformed("file-done"))?)?;
                Frame::FileDone { index, status }
            }
            T_JOB_DONE => Frame::JobDone,
            T_BUSY => Frame::Busy,
            T_DELETE => {
                let bad = || WireError::Malformed("delete");
                let hash = match r.u8().ok_or_else(bad)? {
                    1 => Some(r.take(32).ok_or_else(bad)?.try_into().expect("32 bytes")),
                    2 => None,
                    _ => return Err(bad()),
                };
                Frame::Delete {
                    path: r.string()?,
                    hash,
                }
            }
            T_DELETED => Frame::Deleted {
                status: DeleteStatus::decode(r.u8().ok_or(WireError::Malformed("deleted"))?)?,
            },
            other => return Err(WireError::FrameType(other)),
        };
        if !r.0.is_empty() {
            return Err(WireError::Malformed("trailing bytes in a"));
        }
        Ok(frame)
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are needed,
    /// else the frame and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
        let Some(h) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let (ty, len) = Frame::decode_header(h)?;
        let Some(p) = buf[FRAME_HEADER_LEN..].get(..len) else {
            return Ok(None);
        };
        Ok(Some((
            Frame::decode_payload(ty, p)?,
            FRAME_HEADER_LEN + len,
        )))
    }
}

/// Reads an offer's fields, refusing another protocol or version first.
fn decode_offer(r: &mut Reader<'_>) -> Result<Offer, WireError> {
    let magic = r.take(8).ok_or(WireError::Magic)?;
    if magic != STREAM_MAGIC {
        return Err(WireError::Magic);
    }
    let version = r.u8().ok_or(WireError::Malformed("offer"))?;
    if version != STREAM_VERSION {
        return Err(WireError::Version(version));
    }
    let flags = r.u8().ok_or(WireError::Malformed("offer"))?;
    let entries = r.u32().ok_or(WireError::Malformed("offer"))?;
    let total = r.u64().ok_or(WireError::Malformed("offer"))?;
    if entries > MAX_ENTRIES {
        return Err(WireError::TooManyEntries(entries));
    }
    Ok(Offer {
        flags,
        entries,
        total,
    })
}

/// Reads one manifest entry's fields, refusing a mode or a time no file can have.
fn decode_entry(r: &mut Reader<'_>) -> Result<Entry, WireError> {
    let bad = WireError::Malformed("entry");
    let kind = match r.u8().ok_or(bad.clone())? {
        1 => EntryKind::File,
        2 => EntryKind::Dir,
        3 => EntryKind::Symlink,
        _ => return Err(bad),
    };
    let size = r.u64().ok_or(bad.clone())?;
    let mode = r.u32().ok_or(bad.clone())?;
    let mtime_secs = r.u64().ok_or(bad.clone())? as i64;
    let mtime_nanos = r.u32().ok_or(bad.clone())?;
    let path = r.string()?;
    let target = r.string()?;
    if mode > 0o7777 || mtime_nanos >= 1_000_000_000 {
        return Err(bad);
    }
    Ok(Entry {
        kind,
        path,
        size,
        mode,
        mtime_secs,
        mtime_nanos,
        target,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_PATH_LEN)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A cursor over a payload; `None` when it runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let bad = WireError::Malformed("entry");
        let len = u16::from_be_bytes(self.take(2).ok_or(bad.clone())?.try_into().expect("2"));
        if len as usize > MAX_PATH_LEN {
            return Err(WireError::PathTooLong(len as usize));
        }
        let b = self.take(len as usize).ok_or(bad)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::PathEncoding)
    }
}

/// Most file bytes one data stream carries.
///
/// A file travels as a run of data streams, each starting with a [`DataHead`] and holding
/// the next `SEGMENT_LEN` bytes (fewer for the last); only the last carries the
/// [`Trailer`]. Why not one stream per file: quinn ends a connection once a stream's
/// receive buffer holds more than 1024 separate pieces, and a congestion controller
/// overshooting a tail-drop router drops every other packet for a while. With a
/// multi-megabyte stream window that is thousands of holes, and a lossy long path killed
/// the connection in the bench. A 1 MiB stream has at most ~450 holes (1 MiB of 1.2 KB
/// packets, every other one lost), while the connection window still lets dozens of
/// segments be in flight at once.
pub const SEGMENT_LEN: u64 = 1 << 20;

/// Where the segment that starts at `at` ends, for a file of `size` bytes.
pub fn segment_end(at: u64, size: u64) -> u64 {
    at.saturating_add(SEGMENT_LEN).min(size)
}

/// First bytes of every data stream: which file, and from which byte on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHead {
    /// Entry index.
    pub index: u32,
    /// Offset of the first data byte. For a file's first segment: 0, or the offset of a
    /// claim the sender accepted; for each later one, where the previous segment ended.
    pub start: u64,
}

impl DataHead {
    /// The 12-byte layout.
    pub fn encode(&self) -> [u8; DATA_HEAD_LEN] {
        let mut b = [0; DATA_HEAD_LEN];
        b[..4].copy_from_slice(&self.index.to_be_bytes());
        b[4..].copy_from_slice(&self.start.to_be_bytes());
        b
    }

    /// Reads the 12-byte layout (every value is syntactically valid; the receiver checks
    /// index and offset against the manifest).
    pub fn decode(b: &[u8; DATA_HEAD_LEN]) -> DataHead {
        DataHead {
            index: u32::from_be_bytes(b[..4].try_into().expect("4")),
            start: u64::from_be_bytes(b[4..].try_into().expect("8")),
        }
    }
}

/// Last bytes of a file's last data stream: the sender's verdict on its own read, and the
/// BLAKE3 of the whole file (prefix included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trailer {
    /// The file was read as announced; its hash.
    Complete([u8; 32]),
    /// The file changed while being read; the data must be discarded.
    SourceChanged,
}

impl Trailer {
    /// The 33-byte layout.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0; TRAILER_LEN];
        match self {
            Trailer::Complete(h) => b[1..].copy_from_slice(h),
            Trailer::SourceChanged => b[0] = 1,
        }
        b
    }

    /// Reads the 33-byte layout.
    pub fn decode(b: &[u8; TRAILER_LEN]) -> Result<Trailer, WireError> {
        match b[0] {
            0 => Ok(Trailer::Complete(b[1..].try_into().expect("32"))),
            1 => Ok(Trailer::SourceChanged),
            other => Err(WireError::Status(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Offer(Offer {
                flags: FLAG_AUTHENTICATED,
                entries: 3,
                total: 181_640_000,
            }),
            Frame::Entry(Entry {
                kind: EntryKind::File,
                path: "photos/2024/03183u.tif".into(),
                size: 181_640_000,
                mode: 0o644,
                mtime_secs: 1_700_000_000,
                mtime_nanos: 999_999_999,
                target: String::new(),
            }),
            Frame::Entry(Entry {
                kind: EntryKind::Symlink,
                path: "photos/latest".into(),
                size: 0,
                mode: 0o777,
                mtime_secs: -5,
                mtime_nanos: 0,
                target: "2024/03183u.tif".into(),
            }),
            Frame::Accept { flags: 0 },
            Frame::Claim(Claim {
                index: 7,
                offset: 1 << 33,
                hash: [9; 32],
            }),
            Frame::PlanEnd,
            Frame::FileDone {
                index: 2,
                status: FileStatus::AlreadyThere,
            },
            Frame::JobDone,
            Frame::Busy,
            Frame::Delete {
                path: "sub/gone.txt".into(),
                hash: Some([7; 32]),
            },
            Frame::Delete {
                path: "sub".into(),
                hash: None,
            },
            Frame::Deleted {
                status: DeleteStatus::Deleted,
            },
            Frame::Deleted {
                status: DeleteStatus::Missing,
            },
            Frame::Deleted {
                status: DeleteStatus::Kept,
            },
            Frame::Deleted {
                status: DeleteStatus::Refused,
            },
        ]
    }

    #[test]
    fn delete_frames_reject_lies() {
        let enc = |f: Frame| {
            let mut b = Vec::new();
            f.encode(&mut b);
            b
        };
        let mut kind = enc(Frame::Delete {
            path: "a".into(),
            hash: None,
        });
        kind[FRAME_HEADER_LEN] = 3;
        assert_eq!(Frame::decode(&kind), Err(WireError::Malformed("delete")));
        // A file's hash cut short.
        let short = [T_DELETE, 0, 0, 0, 5, 1, 0, 0, 0, 0];
        assert_eq!(Frame::decode(&short), Err(WireError::Malformed("delete")));
        let mut bad = enc(Frame::Delete {
            path: "ab".into(),
            hash: None,
        });
        bad[FRAME_HEADER_LEN + 3] = 0xff;
        assert_eq!(Frame::decode(&bad), Err(WireError::PathEncoding));
        let status = [T_DELETED, 0, 0, 0, 1, 4];
        assert_eq!(Frame::decode(&status), Err(WireError::Status(4)));
        let empty = [T_DELETED, 0, 0, 0, 0];
        assert_eq!(Frame::decode(&empty), Err(WireError::Malformed("deleted")));
        assert_eq!(
            Frame::decode(&[11, 0, 0, 0, 0]),
            Err(WireError::FrameType(11))
        );
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut stream = Vec::new();
        for f in all_frames() {
            let mut one = Vec::new();
            f.encode(&mut one);
            assert_eq!(Frame::decode(&one), Ok(Some((f.clone(), one.len()))));
            // Any strict prefix asks for more bytes instead of failing or guessing.
            for cut in 0..one.len() {
                assert_eq!(Frame::decode(&one[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
            stream.extend_from_slice(&one);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, n)) = Frame::decode(&stream[at..]).unwrap() {
            got.push(f);
            at += n;
        }
        assert_eq!(got, all_frames());
    }

    #[test]
    fn frames_reject_lies() {
        let enc = |f: Frame| {
            let mut b = Vec::new();
            f.encode(&mut b);
            b
        };
        let offer = enc(Frame::Offer(Offer {
            flags: 0,
            entries: MAX_ENTRIES + 1,
            total: 0,
        }));
        assert_eq!(
            Frame::decode(&offer),
            Err(WireError::TooManyEntries(MAX_ENTRIES + 1))
        );
        let mut old = enc(Frame::Offer(Offer {
            flags: 0,
            entries: 1,
            total: 0,
        }));
        old[FRAME_HEADER_LEN + 8] = 1;
        assert_eq!(Frame::decode(&old), Err(WireError::Version(1)));
        old[FRAME_HEADER_LEN] = b'X';
        assert_eq!(Frame::decode(&old), Err(WireError::Magic));
        // A length beyond any valid frame is refused before waiting for its bytes.
        assert_eq!(
            Frame::decode(&[T_ENTRY, 0xff, 0xff, 0xff, 0xff]),
            Err(WireError::FrameTooLong(u32::MAX))
        );
        assert_eq!(
            Frame::decode(&[0x42, 0, 0, 0, 0]),
            Err(WireError::FrameType(0x42))
        );
        // Trailing bytes, bad UTF-8, bad enums.
        let mut done = enc(Frame::JobDone);
        done[4] = 1;
        done.push(0);
        assert!(matches!(Frame::decode(&done), Err(WireError::Malformed(_))));
        let mut entry = enc(Frame::Entry(Entry {
            kind: EntryKind::File,
            path: "ab".into(),
            size: 1,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            target: String::new(),
        }));
        let path_at = FRAME_HEADER_LEN + 1 + 8 + 4 + 8 + 4 + 2;
        entry[path_at] = 0xff;
        assert_eq!(Frame::decode(&entry), Err(WireError::PathEncoding));
        entry[FRAME_HEADER_LEN] = 9;
        assert_eq!(Frame::decode(&entry), Err(WireError::Malformed("entry")));
        let done = [T_FILE_DONE, 0, 0, 0, 5, 0, 0, 0, 1, 9];
        assert_eq!(Frame::decode(&done), Err(WireError::Status(9)));
    }

    #[test]
    fn fuzz_seeds_are_valid_frames() {
        // The fuzzer starts from these; if the layout changes they must be remade, or it
        // would fuzz nothing but the error paths.
        for (seed, frames) in [
            (
                &include_bytes!("../fuzz/seeds/frame/sender-manifest")[..],
                4,
            ),
            (&include_bytes!("../fuzz/seeds/frame/receiver-plan")[..], 5),
        ] {
            let mut at = 0;
            let mut n = 0;
            while at < seed.len() {
                let (_, used) = Frame::decode(&seed[at..]).unwrap().unwrap();
                at += used;
                n += 1;
            }
            assert_eq!(n, frames);
        }
    }

    #[test]
    fn data_head_and_trailer() {
        let h = DataHead {
            index: 12,
            start: 99 << 20,
        };
        assert_eq!(DataHead::decode(&h.encode()), h);
        assert_eq!(segment_end(0, 10), 10);
        assert_eq!(segment_end(5, 3 * SEGMENT_LEN), 5 + SEGMENT_LEN);
        assert_eq!(segment_end(u64::MAX - 1, u64::MAX), u64::MAX);
        for t in [Trailer::Complete([7; 32]), Trailer::SourceChanged] {
            assert_eq!(Trailer::decode(&t.encode()), Ok(t));
        }
        let mut bad = Trailer::SourceChanged.encode();
        bad[0] = 2;
        assert_eq!(Trailer::decode(&bad), Err(WireError::Status(2)));
    }
}
