//! Checkpoints: every source's position and every view's operator state and rows,
//! taken at batch boundaries and written to the data dir so that a restart continues
//! exactly where the checkpoint left off.
//!
//! Each source's pipeline thread takes a [`SourceSnapshot`] of itself when asked (see
//! [`CheckpointSlot`]): its position, its watermark, and the state and rows of every
//! view it feeds. A view of one source is consistent with its source's snapshot alone;
//! sources joined by a view are snapshotted together ([`align`]). A checkpoint is the
//! latest snapshot of every source, written by [`store::CheckpointStore`] as Arrow IPC
//! files and a manifest with their checksums.

pub mod align;
pub(crate) mod state_file;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Where a source is: one offset per partition, as text. The nexmark generator has one
/// partition (`event`: the next event number), an HTTP source its write-ahead log
/// (`wal`: the byte offset after the last record); Kafka's offsets per partition and
/// Kinesis's sequence numbers per shard are further entries of the same map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub BTreeMap<String, String>);

impl Position {
    /// A position of one partition.
    pub fn at(partition: &str, offset: u64) -> Self {
        Self(BTreeMap::from([(
            partition.to_string(),
            offset.to_string(),
        )]))
    }

    /// The offset of `partition` as a number, if it has one.
    pub fn offset(&self, partition: &str) -> Option<u64> {
        self.0.get(partition).and_then(|o| o.parse().ok())
    }

    /// Move to `later`: the partitions it names take its offsets.
    pub fn advance(&mut self, later: &Position) {
        for (partition, offset) in &later.0 {
            self.0.insert(partition.clone(), offset.clone());
        }
    }
}

/// One view as a checkpoint holds it.
#[derive(Debug, Clone)]
pub struct ViewSnapshot {
    /// Which running view it was taken of (not written to disk).
    pub view_id: u64,
    pub name: String,
    pub sql: String,
    /// The view's row schema.
    pub schema: SchemaRef,
    /// The operator's state ([`weir_sql::Operator::snapshot`]).
    pub state: Vec<RecordBatch>,
    /// The view's rows, oldest first, with the key an upsert replaces them by.
    pub rows: Vec<(Option<i64>, RecordBatch)>,
    /// Per sink of the view: the changes it has not delivered, by epoch.
    pub outboxes: Vec<crate::sink::feed::Outbox>,
}

/// One source and its views at one batch boundary.
#[derive(Debug, Clone)]
pub struct SourceSnapshot {
    /// The checkpoint it was taken for.
    pub epoch: u64,
    pub name: String,
    pub sql: String,
    pub position: Position,
    pub watermark: Option<i64>,
    pub views: Vec<ViewSnapshot>,
}

/// Where a pipeline puts its snapshots: the checkpoint thread raises `requested`, the
/// pipeline answers at its next batch boundary.
#[derive(Debug, Default)]
pub struct CheckpointSlot {
    requested: AtomicU64,
    taken: AtomicU64,
    latest: Mutex<Option<Arc<SourceSnapshot>>>,
}

impl CheckpointSlot {
    /// Ask for a snapshot numbered `epoch`.
    pub fn request(&self, epoch: u64) {
        self.requested.fetch_max(epoch, Ordering::AcqRel);
    }

    /// The newest epoch asked for.
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// The epoch asked for, when the pipeline has not answered it yet.
    pub fn wanted(&self) -> Option<u64> {
        let requested = self.requested.load(Ordering::Acquire);
        (requested > self.taken.load(Ordering::Acquire)).then_some(requested)
    }

    /// Whether the snapshot for `epoch` (or a later one) was taken.
    pub fn answered(&self, epoch: u64) -> bool {
        self.taken.load(Ordering::Acquire) >= epoch
    }

    pub fn put(&self, epoch: u64, snapshot: SourceSnapshot) {
        *self.latest.lock() = Some(Arc::new(snapshot));
        self.taken.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Nothing changed since the latest snapshot: it answers `epoch` too.
    pub fn put_unchanged(&self, epoch: u64) {
        self.taken.fetch_max(epoch, Ordering::AcqRel);
    }

    pub fn latest(&self) -> Option<Arc<SourceSnapshot>> {
        self.latest.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_advance_per_partition() {
        let mut p = Position::at("p0", 5);
        p.advance(&Position::at("p1", 9));
        p.advance(&Position::at("p0", 7));
        assert_eq!(p.offset("p0"), Some(7));
        assert_eq!(p.offset("p1"), Some(9));
        assert_eq!(
            serde_json::to_string(&p).expect("json"),
            r#"{"p0":"7","p1":"9"}"#
        );
    }

    #[test]
    fn a_slot_answers_each_request_once() {
        let slot = CheckpointSlot::default();
        assert_eq!(slot.wanted(), None);
        slot.request(3);
        assert_eq!(slot.wanted(), Some(3));
        assert!(!slot.answered(3));
        slot.put(
            3,
            SourceSnapshot {
                epoch: 3,
                name: "s".into(),
                sql: String::new(),
                position: Position::default(),
                watermark: None,
                views: Vec::new(),
            },
        );
        assert!(slot.answered(3));
        assert_eq!(slot.wanted(), None);
        assert_eq!(slot.latest().expect("kept").name, "s");
    }
}
