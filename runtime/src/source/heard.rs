//! When a source and each of its splits were last heard from: noted as their chunks
//! are sent into the pipeline's channel, not as the pipeline takes them out. A split
//! whose rows wait in the channel behind a busy pipeline is not idle; counted by when
//! the pipeline took its last chunk, it would look idle, the other splits would move
//! the watermark on, and its waiting rows would be late.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{SendError, SyncSender, TrySendError};

use parking_lot::Mutex;

use super::Chunk;
use crate::pipeline::now_ms;

/// Wall-clock ms of the last chunk sent, for the source (or taken, whichever is later)
/// and for each split (the pipeline keeps its own take times, see `SplitWatermarks`).
#[derive(Debug)]
pub struct Heard {
    source_ms: AtomicI64,
    splits: Mutex<BTreeMap<u32, i64>>,
}

impl Default for Heard {
    /// Heard from now: a source that never sends goes idle after the idle timeout.
    fn default() -> Self {
        Self {
            source_ms: AtomicI64::new(now_ms()),
            splits: Mutex::default(),
        }
    }
}

impl Heard {
    /// `chunk` is being sent now. Any chunk counts for the source; for its split, only
    /// rows or an announcement (no rows, no position): a chunk of dead letters alone
    /// does not keep a split active. A split gone is forgotten.
    fn note(&self, chunk: &Chunk) {
        match chunk {
            Chunk::Rows {
                batch,
                position,
                split,
                ..
            } => {
                let now = now_ms();
                self.source_ms.fetch_max(now, Ordering::Relaxed);
                if batch.num_rows() > 0 || position.0.is_empty() {
                    self.splits.lock().insert(*split, now);
                }
            }
            Chunk::SplitGone(split) => {
                self.splits.lock().remove(split);
            }
            Chunk::End => {}
        }
    }

    /// The pipeline took a chunk now: the source counts as heard from until the idle
    /// timeout from now, too (a chunk that waited longer than that does not make it idle
    /// as it is processed).
    pub fn taken_now(&self) {
        self.source_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    /// Wall-clock ms of the source's last chunk, sent or taken.
    pub fn source_ms(&self) -> i64 {
        self.source_ms.load(Ordering::Relaxed)
    }

    /// Call `f` with each split heard from and the wall-clock ms of its last chunk.
    pub fn each_split(&self, mut f: impl FnMut(u32, i64)) {
        for (&split, &ms) in self.splits.lock().iter() {
            f(split, ms);
        }
    }
}

/// The sending end of a source's channel into its pipeline: each chunk is noted in
/// the source's [`Heard`] as it is sent (or tried).
#[derive(Debug, Clone)]
pub struct ChunkSender {
    tx: SyncSender<Chunk>,
    heard: Arc<Heard>,
}

impl ChunkSender {
    pub fn new(tx: SyncSender<Chunk>, heard: Arc<Heard>) -> Self {
        Self { tx, heard }
    }

    /// Send, waiting while the channel is full.
    pub fn send(&self, chunk: Chunk) -> Result<(), SendError<Chunk>> {
        self.heard.note(&chunk);
        self.tx.send(chunk)
    }

    /// Send if the channel has room. A chunk that finds it full still counts as heard
    /// from: its rows are waiting to go in.
    pub fn try_send(&self, chunk: Chunk) -> Result<(), TrySendError<Chunk>> {
        self.heard.note(&chunk);
        self.tx.try_send(chunk)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::checkpoint::Position;
    use crate::decode::Columns;

    fn rows(n: usize, split: u32, position: Position) -> Chunk {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let ids = Int64Array::from_iter_values(0..n as i64);
        Chunk::Rows {
            batch: RecordBatch::try_new(schema, vec![Arc::new(ids)]).expect("batch"),
            columns: Columns::ALL,
            received: std::time::Instant::now(),
            position,
            split,
        }
    }

    fn splits(heard: &Heard) -> Vec<u32> {
        let mut seen = Vec::new();
        heard.each_split(|split, _| seen.push(split));
        seen
    }

    #[test]
    fn splits_are_heard_from_when_their_rows_are_sent_not_when_taken() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let heard = Arc::new(Heard::default());
        let sender = ChunkSender::new(tx, heard.clone());
        heard.source_ms.store(0, Ordering::Relaxed);
        let position = || Position::at("0", 7);
        // Dead letters alone (no rows, a position): the source, not the split.
        sender.send(rows(0, 3, position())).expect("sent");
        assert!(heard.source_ms() > 0, "the source is heard from");
        assert_eq!(splits(&heard), Vec::<u32>::new());
        // Rows of split 1 wait in the channel (never taken): split 1 is heard from.
        let before = now_ms();
        assert!(
            sender.try_send(rows(2, 1, position())).is_err(),
            "the channel is full"
        );
        let mut at = None;
        heard.each_split(|split, ms| at = Some((split, ms)));
        let (split, ms) = at.expect("split 1 heard from");
        assert_eq!(split, 1);
        assert!(ms >= before, "heard from as sent: {ms} < {before}");
        // An announcement (no rows, no position) counts for its split.
        rx.recv().expect("the first chunk");
        sender.send(rows(0, 2, Position::default())).expect("sent");
        assert_eq!(splits(&heard), vec![1, 2]);
        // A split gone is forgotten.
        rx.recv().expect("the announcement");
        sender.send(Chunk::SplitGone(1)).expect("sent");
        assert_eq!(splits(&heard), vec![2]);
        // Taken by the pipeline later than sent: the source counts from the take.
        heard.source_ms.store(0, Ordering::Relaxed);
        let before = now_ms();
        heard.taken_now();
        assert!(heard.source_ms() >= before, "heard from as taken");
    }
}
