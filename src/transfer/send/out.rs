//! The data streams of the file being sent: one per segment, each opened below the last
//! in priority, so repairs of older data go out first.

use std::time::Instant;

use bytes::Bytes;
use quinn::Connection;

use crate::error::Error;
use crate::transfer::watchdog::{Waiting, Watch};
use crate::transfer::window::SendWindow;
use crate::transfer::{closed, lost, lost_write};
use crate::wire::{segment_end, DataHead, Trailer, RESET_SOURCE_CHANGED};

/// The data streams of the file being sent.
pub(super) struct Out<'a> {
    conn: &'a Connection,
    watch: &'a Watch,
    stream: Option<quinn::SendStream>,
    priority: SegmentPriority,
    window: SendWindow,
    current: Option<Sending>,
}

impl<'a> Out<'a> {
    pub(super) fn new(conn: &'a Connection, watch: &'a Watch) -> Out<'a> {
        Out {
            conn,
            watch,
            stream: None,
            priority: SegmentPriority::default(),
            window: SendWindow::default(),
            current: None,
        }
    }

    /// Opens the first data stream of a file of `size` bytes.
    pub(super) async fn start(&mut self, head: DataHead, size: u64) -> Result<(), Error> {
        let priority = self.priority.next();
        self.stream = Some(open_segment(self.conn, self.watch, head, priority).await?);
        self.current = Some(Sending {
            index: head.index,
            at: head.start,
            segment_end: segment_end(head.start, size),
            size,
        });
        Ok(())
    }

    /// Writes a chunk of the current file, opening its next segments as it goes.
    pub(super) async fn data(&mut self, mut chunk: Bytes) -> Result<(), Error> {
        let stats = self.conn.stats();
        let now = Instant::now();
        if let Some(w) = self.window.update(now, stats.udp_tx.bytes, stats.path.rtt) {
            tracing::debug!(window = w, "send window");
            self.conn.set_send_window(w);
        }
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| Error::Internal("data before start".into()))?;
        while !chunk.is_empty() {
            if cur.at == cur.segment_end {
                if cur.at >= cur.size {
                    return Err(Error::Internal("read past the announced size".into()));
                }
                if let Some(mut s) = self.stream.take() {
                    s.finish().map_err(lost)?;
                }
                let head = DataHead {
                    index: cur.index,
                    start: cur.at,
                };
                let priority = self.priority.next();
                self.stream = Some(open_segment(self.conn, self.watch, head, priority).await?);
                cur.segment_end = segment_end(cur.at, cur.size);
            }
            let s = self
                .stream
                .as_mut()
                .ok_or_else(|| Error::Internal("no data stream".into()))?;
            let take = (cur.segment_end - cur.at).min(chunk.len() as u64);
            let piece = chunk.split_to(take as usize);
            self.watch
                .guard(Waiting::Credit, async {
                    s.write_chunk(piece).await.map_err(lost_write)
                })
                .await?;
            cur.at += take;
        }
        Ok(())
    }

    /// Ends the current file with `trailer`; returns the file and its hash if it was read
    /// as announced.
    pub(super) async fn end(
        &mut self,
        trailer: Trailer,
    ) -> Result<Option<(u32, blake3::Hash)>, Error> {
        let mut s = self
            .stream
            .take()
            .ok_or_else(|| Error::Internal("end before start".into()))?;
        let index = self.current.take().map_or(0, |c| c.index);
        match trailer {
            Trailer::Complete(h) => {
                self.watch
                    .guard(Waiting::Credit, async {
                        s.write_all(&trailer.encode()).await.map_err(lost_write)
                    })
                    .await?;
                s.finish().map_err(lost)?;
                Ok(Some((index, blake3::Hash::from_bytes(h))))
            }
            Trailer::SourceChanged => {
                // Resetting drops whatever is still queued: the receiver discards the file
                // either way.
                let _ = s.reset(RESET_SOURCE_CHANGED.into());
                Ok(None)
            }
        }
    }
}

/// Where the file being sent stands.
struct Sending {
    index: u32,
    /// Offset of the next byte to send.
    at: u64,
    /// Where the current data stream's segment ends.
    segment_end: u64,
    size: u64,
}

/// Priorities of data streams, in the order they are opened: each lower than the last.
///
/// The receiver reads segments in order, so the oldest data, repairs included, must go out
/// first. quinn sends higher priorities first; among equal ones it either round-robins or
/// (`send_fairness(false)`, which this replaced) finishes a stream before the next but
/// puts a stream whose packets were lost at the back of the queue. A repair queued behind
/// the whole send buffer (32 MiB) held the file up for seconds: on a 200 ms path with 2 %
/// loss the sender sat in `open_uni` for 8-11 s at a time waiting for the receiver to free
/// streams. With a priority per segment a hole is repaired in the next packet out.
#[derive(Default)]
struct SegmentPriority(i32);

impl SegmentPriority {
    fn next(&mut self) -> i32 {
        // Below the control stream's 0; 2^31 segments are 2 PiB.
        self.0 = self.0.saturating_sub(1);
        self.0
    }
}

/// Opens the data stream for the segment that `head` starts.
async fn open_segment(
    conn: &Connection,
    watch: &Watch,
    head: DataHead,
    priority: i32,
) -> Result<quinn::SendStream, Error> {
    // Opening waits for the receiver to accept earlier streams.
    watch
        .guard(Waiting::Credit, async {
            let mut s = conn.open_uni().await.map_err(|e| closed(&e))?;
            s.set_priority(priority)
                .map_err(|_| Error::Internal("data stream closed at open".into()))?;
            s.write_all(&head.encode()).await.map_err(lost_write)?;
            Ok(s)
        })
        .await
}
