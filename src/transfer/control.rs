//! The order of a job's control sequence, as one sans-IO state machine per side.
//!
//! On the control stream the sender sends `Offer` and `Entry` × n; the receiver answers
//! `Accept`, `Claim` × k and `PlanEnd`; then each file's data streams start with a
//! [`DataHead`], and the receiver confirms every file with `FileDone` and the job with
//! `JobDone`. `Busy` may come from a side busy on its own disk (see [`Frame::Busy`]).
//!
//! [`Sender`] and [`Receiver`] own the rules of that sequence: which frame may come in
//! which phase, the counts and limits (entries against the offer and the memory limit,
//! claims and verdicts against the files, data for files announced and not yet received,
//! nothing after `JobDone`), and the [`Error`] each violation ends the run with (always
//! [`Error::Protocol`], exit code 10, naming the phase and the frame). They touch no socket,
//! no disk and no clock, as quinn-proto does not: `send` and `receive` read a frame
//! or a data head, feed it in (`handle_*`), and do what comes out (frames to send from
//! `poll_transmit`, the plan, files to open, verdicts to report). So every order rule is
//! unit-tested here and fuzzed (`fuzz/fuzz_targets/control.rs`) without a connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::wire::{
    entry_cost, segment_end, Claim, DataHead, Entry, EntryKind, FileStatus, Frame, Offer,
};

/// A frame named for an error message: its type, and the entry it is about, never a path
/// (a peer's path may be 4 KiB long; the caller shows names it needs, escaped).
fn named(f: &Frame) -> String {
    match f {
        Frame::Offer(_) => "Offer".into(),
        Frame::Entry(_) => "Entry".into(),
        Frame::Accept { .. } => "Accept".into(),
        Frame::Claim(c) => format!("Claim for entry {}", c.index),
        Frame::PlanEnd => "PlanEnd".into(),
        Frame::FileDone { index, .. } => format!("FileDone for entry {index}"),
        Frame::JobDone => "JobDone".into(),
        Frame::Busy => "Busy".into(),
        Frame::Delete { .. } => "Delete".into(),
        Frame::Deleted { .. } => "Deleted".into(),
    }
}

/// Where the sender's side of the sequence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendPhase {
    /// Offer and manifest sent; waiting for `Accept`.
    Accept,
    /// Accepted; reading resume claims until `PlanEnd`.
    Claims,
    /// Data flows; reading a `FileDone` per file, then `JobDone`.
    Files,
    /// The receiver said `JobDone`: nothing more may come.
    Done,
}

impl fmt::Display for SendPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendPhase::Accept => "while we waited for its answer to the offer",
            SendPhase::Claims => "among its resume claims",
            SendPhase::Files => "while the files were sent",
            SendPhase::Done => "after JobDone",
        })
    }
}

/// What the receiver told the sender, for the sender to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendEvent {
    /// The receiver accepted the offer with these `FLAG_*` bits.
    Accepted {
        /// Its `FLAG_*` bits.
        flags: u8,
    },
    /// The plan is complete: the receiver's resume claims, by entry index (each a file of
    /// the job, at most one per file). Data may flow now.
    Plan(HashMap<u32, Claim>),
    /// The receiver's verdict on one file (at most one per file).
    Verdict {
        /// Entry index.
        index: u32,
        /// How it ended.
        status: FileStatus,
    },
    /// Every file has its verdict and the whole tree is in place: the job is done.
    JobDone,
}

/// What one entry of our manifest is, as far as the sequence cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// A folder or a link: neither claimed nor confirmed.
    Other,
    /// A file, whether the receiver claimed it (this connection) and confirmed it.
    File { claimed: bool, confirmed: bool },
}

/// The sender's side of one connection's control sequence.
///
/// Made with the job's entries once the offer and manifest are written; then every frame
/// the receiver sends goes to [`Sender::handle_frame`], which says what it means.
#[derive(Debug)]
pub struct Sender {
    phase: SendPhase,
    slots: Vec<Slot>,
    files: usize,
    claims: HashMap<u32, Claim>,
    verdicts: Vec<(u32, FileStatus)>,
    peer_flags: u8,
}

impl Sender {
    /// The sequence for a job of `entries`, whose offer (see [`Sender::offer`]) and entries
    /// are on their way.
    pub fn new(entries: &[Entry]) -> Sender {
        let slots: Vec<Slot> = entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File => Slot::File {
                    claimed: false,
                    confirmed: false,
                },
                _ => Slot::Other,
            })
            .collect();
        let files = slots.iter().filter(|s| **s != Slot::Other).count();
        Sender {
            phase: SendPhase::Accept,
            slots,
            files,
            claims: HashMap::new(),
            verdicts: Vec::with_capacity(files),
            peer_flags: 0,
        }
    }

    /// The offer that opens the sequence for `entries` with our `flags`.
    pub fn offer(entries: &[Entry], flags: u8) -> Offer {
        Offer {
            flags,
            entries: entries.len() as u32,
            total: entries.iter().map(|e| e.size).sum(),
        }
    }

    /// Where the sequence stands.
    pub fn phase(&self) -> SendPhase {
        self.phase
    }

    /// The receiver's `FLAG_*` bits (0 until it accepted).
    pub fn peer_flags(&self) -> u8 {
        self.peer_flags
    }

    /// Files in the job, each of which gets one verdict.
    pub fn files(&self) -> usize {
        self.files
    }

    /// The verdicts so far, in the order they came.
    pub fn verdicts(&self) -> &[(u32, FileStatus)] {
        &self.verdicts
    }

    fn refuse(&self, f: &Frame, why: &str) -> Error {
        Error::Protocol(format!(
            "the receiver sent {} {}{why}",
            named(f),
            self.phase
        ))
    }

    /// Takes in the receiver's next control frame. `Ok(None)` for a heartbeat, whose
    /// arrival the watchdog has already counted.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<Option<SendEvent>, Error> {
        match (self.phase, frame) {
            (SendPhase::Done, f) => Err(self.refuse(&f, "")),
            (_, Frame::Busy) => Ok(None),
            (SendPhase::Accept, Frame::Accept { flags }) => {
                self.peer_flags = flags;
                self.phase = SendPhase::Claims;
                Ok(Some(SendEvent::Accepted { flags }))
            }
            (SendPhase::Claims, Frame::Claim(c)) => {
                let slot = self.slots.get_mut(c.index as usize);
                match slot {
                    Some(Slot::File { claimed, .. }) if !*claimed => *claimed = true,
                    Some(Slot::File { .. }) => {
                        return Err(self.refuse(&Frame::Claim(c), ": that file is claimed twice"))
                    }
                    _ => {
                        return Err(Error::Protocol(format!(
                            "the receiver claims entry {} which is not a file",
                            c.index
                        )))
                    }
                }
                self.claims.insert(c.index, c);
                Ok(None)
            }
            (SendPhase::Claims, Frame::PlanEnd) => {
                self.phase = SendPhase::Files;
                Ok(Some(SendEvent::Plan(std::mem::take(&mut self.claims))))
            }
            (SendPhase::Files, Frame::FileDone { index, status }) => {
                let f = Frame::FileDone { index, status };
                match self.slots.get_mut(index as usize) {
                    Some(Slot::File { confirmed, .. }) if !*confirmed => *confirmed = true,
                    Some(Slot::File { .. }) => {
                        return Err(self.refuse(&f, ": that file was confirmed already"))
                    }
                    _ => return Err(self.refuse(&f, ": that entry is not a file")),
                }
                self.verdicts.push((index, status));
                Ok(Some(SendEvent::Verdict { index, status }))
            }
            (SendPhase::Files, Frame::JobDone) if self.verdicts.len() == self.files => {
                self.phase = SendPhase::Done;
                Ok(Some(SendEvent::JobDone))
            }
            (SendPhase::Files, f @ Frame::JobDone) => {
                let why = format!(
                    " with {} of {} files confirmed",
                    self.verdicts.len(),
                    self.files
                );
                Err(self.refuse(&f, &why))
            }
            (_, f) => Err(self.refuse(&f, "")),
        }
    }
}

/// Where the receiver's side of the sequence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvPhase {
    /// Waiting for the sender's `Offer`.
    Offer,
    /// Reading the entries the offer announced.
    Manifest,
    /// The manifest is complete and checked against the offer: the disk side prepares
    /// (confines paths, makes folders, finds what is held), then [`Receiver::prepared`].
    Prepare,
    /// The plan is sent; data streams arrive, one file after another.
    Files,
    /// Every file has its verdict: links and folder times, then [`Receiver::tree_finished`].
    Tree,
    /// `JobDone` is queued: nothing more may come.
    Done,
}

impl fmt::Display for RecvPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvPhase::Offer => "before its offer",
            RecvPhase::Manifest => "in its file list",
            RecvPhase::Prepare => "before our plan",
            RecvPhase::Files => "while files were received",
            RecvPhase::Tree => "after the last file",
            RecvPhase::Done => "after JobDone",
        })
    }
}

/// How a data stream's head fits the sequence ([`Receiver::handle_data_head`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// The first stream of an awaited file; `claimed` bytes of it were claimed (the head
    /// starts at 0 or there).
    First {
        /// What our claim said we hold of it (0 without a claim).
        claimed: u64,
    },
    /// The next segment of the file being received, where the last one ended.
    Next,
}

/// The file whose data streams are arriving.
#[derive(Clone, Copy, Debug)]
struct Current {
    index: u32,
    /// Where its latest segment starts.
    at: u64,
    size: u64,
}

/// The receiver's side of one connection's control sequence.
///
/// Frames from the control stream go to [`Receiver::handle_frame`] until the phase is
/// [`RecvPhase::Prepare`]; [`Receiver::prepared`] queues the plan; each data stream's head
/// goes to [`Receiver::handle_data_head`], each file's end to [`Receiver::file_received`]
/// and its verdict (then or later) to [`Receiver::file_finished`].
/// What to send comes out of [`Receiver::poll_transmit`].
#[derive(Debug)]
pub struct Receiver {
    flags: u8,
    limit: u64,
    phase: RecvPhase,
    offer: Option<Offer>,
    /// The entries as they arrive; handed over as [`Receiver::manifest`] once complete.
    building: Vec<Entry>,
    manifest: Arc<Vec<Entry>>,
    sum: u64,
    cost: u64,
    /// Files whose data has not started yet, with the offset our claim said each may
    /// resume at (0 without a claim). One map for both: the receiver's memory per entry is
    /// budgeted (`wire::entry_cost`), and this replaced a pending set of the same size.
    pending: HashMap<u32, u64>,
    current: Option<Current>,
    /// Files whose data is complete and whose verdict is still to come (verified files
    /// wait for their durability round before they get their final names).
    unconfirmed: HashSet<u32>,
    transmits: VecDeque<Frame>,
}

impl Receiver {
    /// The sequence of a receiver announcing `flags`, whose peer's manifest may cost at
    /// most `manifest_limit` bytes of memory (see [`entry_cost`]).
    pub fn new(flags: u8, manifest_limit: u64) -> Receiver {
        Receiver {
            flags,
            limit: manifest_limit,
            phase: RecvPhase::Offer,
            offer: None,
            building: Vec::new(),
            manifest: Arc::default(),
            sum: 0,
            cost: 0,
            pending: HashMap::new(),
            current: None,
            unconfirmed: HashSet::new(),
            transmits: VecDeque::new(),
        }
    }

    /// Where the sequence stands.
    pub fn phase(&self) -> RecvPhase {
        self.phase
    }

    /// The sender's offer, once it came.
    pub fn offer(&self) -> Option<Offer> {
        self.offer
    }

    /// The complete manifest (empty before [`RecvPhase::Prepare`]); shared, so the disk
    /// side can read it on another thread without a copy of every path.
    pub fn manifest(&self) -> &Arc<Vec<Entry>> {
        &self.manifest
    }

    /// Files announced whose data has not started.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next frame to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmits.pop_front()
    }

    fn refuse(&self, f: &Frame) -> Error {
        let at = match self.phase {
            RecvPhase::Manifest => format!(
                " (after entry {} of {})",
                self.building.len(),
                self.offer.map_or(0, |o| o.entries)
            ),
            _ => String::new(),
        };
        Error::Protocol(format!("the sender sent {} {}{at}", named(f), self.phase))
    }

    fn too_large(&self, at: String) -> Error {
        Error::Protocol(format!(
            "the sender's file list is larger than this receiver accepts (the limit is {} of memory for the list; {at}); send the files in several runs",
            indicatif::HumanBytes(self.limit),
        ))
    }

    /// Takes in the sender's next control frame: its offer, then its entries.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), Error> {
        match (self.phase, frame) {
            (RecvPhase::Offer, Frame::Offer(o)) => self.handle_offer(o),
            (RecvPhase::Manifest, Frame::Entry(e)) => self.handle_entry(e),
            (_, f) => Err(self.refuse(&f)),
        }
    }

    fn handle_offer(&mut self, o: Offer) -> Result<(), Error> {
        // Even the shortest entries would not fit: no need to read them.
        let least = entry_cost(&Entry {
            kind: EntryKind::Dir,
            path: String::new(),
            size: 0,
            mode: 0,
            mtime_secs: 0,
            mtime_nanos: 0,
            target: String::new(),
        });
        if u64::from(o.entries) * least > self.limit {
            return Err(self.too_large(format!("{} entries announced", o.entries)));
        }
        self.offer = Some(o);
        self.building = Vec::with_capacity(o.entries.min(4096) as usize);
        self.phase = RecvPhase::Manifest;
        self.manifest_complete()
    }

    fn handle_entry(&mut self, e: Entry) -> Result<(), Error> {
        let n = self.offer.map_or(0, |o| o.entries);
        self.sum = self
            .sum
            .checked_add(e.size)
            .ok_or_else(|| Error::Protocol("the announced file sizes overflow".into()))?;
        self.cost += entry_cost(&e);
        if self.cost > self.limit {
            let at = format!("entry {} of {n} passed it", self.building.len() + 1);
            return Err(self.too_large(at));
        }
        self.building.push(e);
        self.manifest_complete()
    }

    /// Moves on to [`RecvPhase::Prepare`] once the offer's count of entries is in.
    fn manifest_complete(&mut self) -> Result<(), Error> {
        let Some(o) = self.offer else { return Ok(()) };
        if self.building.len() < o.entries as usize {
            return Ok(());
        }
        if self.sum != o.total {
            return Err(Error::Protocol(format!(
                "the announced file sizes add up to {} bytes, not the {} announced",
                self.sum, o.total
            )));
        }
        self.manifest = Arc::new(std::mem::take(&mut self.building));
        self.phase = RecvPhase::Prepare;
        Ok(())
    }

    /// The disk side found what we hold: `claims` (ours, each for a file of the manifest,
    /// at most its size). Queues `Accept`, the claims in entry order and `PlanEnd`.
    pub fn prepared(&mut self, mut claims: Vec<Claim>) -> Result<(), Error> {
        if self.phase != RecvPhase::Prepare {
            return Err(Error::Internal(format!("plan made {}", self.phase)));
        }
        self.pending = (0..self.manifest.len() as u32)
            .filter(|&i| self.manifest[i as usize].kind == EntryKind::File)
            .map(|i| (i, 0))
            .collect();
        claims.sort_by_key(|c| c.index);
        self.transmits
            .push_back(Frame::Accept { flags: self.flags });
        for c in claims {
            let size = self.manifest.get(c.index as usize).map_or(0, |e| e.size);
            let fits = match self.pending.get_mut(&c.index) {
                // Sorted: a second claim for a file would follow the first.
                Some(at)
                    if c.offset <= size
                        && !matches!(self.transmits.back(), Some(Frame::Claim(p)) if p.index == c.index) =>
                {
                    *at = c.offset;
                    true
                }
                _ => false,
            };
            if !fits {
                return Err(Error::Internal(format!("bad claim for entry {}", c.index)));
            }
            self.transmits.push_back(Frame::Claim(c));
        }
        self.transmits.push_back(Frame::PlanEnd);
        self.phase = RecvPhase::Files;
        self.next_phase_after_file();
        Ok(())
    }

    /// Checks the head of a data stream: the first stream of an awaited file, starting at
    /// 0 or where our claim said, or the file's next segment where the last one ended.
    pub fn handle_data_head(&mut self, head: DataHead) -> Result<Segment, Error> {
        if self.phase != RecvPhase::Files {
            return Err(Error::Protocol(format!(
                "the sender sent data for entry {} {}",
                head.index, self.phase
            )));
        }
        if let Some(cur) = self.current.as_mut() {
            let at = segment_end(cur.at, cur.size);
            if head.index != cur.index || head.start != at || at >= cur.size {
                return Err(Error::Protocol(format!(
                    "the sender interrupted entry {} at byte {at} with a stream for entry {} at byte {}",
                    cur.index, head.index, head.start
                )));
            }
            cur.at = at;
            return Ok(Segment::Next);
        }
        let Some(claimed) = self.pending.remove(&head.index) else {
            return Err(Error::Protocol(format!(
                "the sender sent data for entry {} which is not an awaited file",
                head.index
            )));
        };
        let entry = &self.manifest[head.index as usize];
        if head.start != 0 && head.start != claimed {
            return Err(Error::Protocol(format!(
                "the sender continues {} at byte {} but {} were claimed",
                entry.path, head.start, claimed
            )));
        }
        self.current = Some(Current {
            index: head.index,
            at: head.start,
            size: entry.size,
        });
        Ok(Segment::First { claimed })
    }

    /// All data of the file being received is in (its trailer read): the next file's data
    /// may start. Its verdict follows with [`Receiver::file_finished`].
    pub fn file_received(&mut self, index: u32) -> Result<(), Error> {
        match self.current.take() {
            Some(c) if c.index == index => {
                self.unconfirmed.insert(index);
                Ok(())
            }
            other => {
                self.current = other;
                Err(Error::Internal(format!(
                    "entry {index} received but was not being received"
                )))
            }
        }
    }

    /// A received file ended as `status`: queues its `FileDone`.
    pub fn file_finished(&mut self, index: u32, status: FileStatus) -> Result<(), Error> {
        if !self.unconfirmed.remove(&index) {
            return Err(Error::Internal(format!(
                "entry {index} finished but was not received"
            )));
        }
        self.transmits.push_back(Frame::FileDone { index, status });
        self.next_phase_after_file();
        Ok(())
    }

    /// Files received whose verdict is still to come.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    fn next_phase_after_file(&mut self) {
        if self.pending.is_empty() && self.current.is_none() && self.unconfirmed.is_empty() {
            self.phase = RecvPhase::Tree;
        }
    }

    /// Links and folder times are in place: queues `JobDone`.
    pub fn tree_finished(&mut self) -> Result<(), Error> {
        if self.phase != RecvPhase::Tree {
            return Err(Error::Internal(format!("tree finished {}", self.phase)));
        }
        self.transmits.push_back(Frame::JobDone);
        self.phase = RecvPhase::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
