//! A bounded read (`end = ...`): the end offset of every partition (from a checkpoint,
//! else asked of the brokers), every partition assigned by the reader itself, and each
//! one done once its position reaches its end.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::context::offset_at;
use super::options::End;
use super::reader::{Partition, Reader, partition_key, partition_offsets};
use crate::checkpoint::Position;

/// In a position, the end of a bounded read's partition is this prefix and the
/// partition's key: checkpoints hold where the read ends, so a restart ends there too.
pub(super) const END_PREFIX: &str = "end:";

/// The end offsets of a bounded read a position names, per partition.
pub(super) fn ends_of(position: &Position) -> BTreeMap<Partition, i64> {
    partition_offsets(position, |k| k.strip_prefix(END_PREFIX))
}

impl Reader {
    /// Whether a message at `offset` is past a bounded read's end (then it is not
    /// read, and the partition is done).
    pub(super) fn reached_end(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some((key, &end)) = self
            .ends
            .iter()
            .find(|((t, p), _)| t == topic && *p == partition)
        else {
            // Bounded reads read only the partitions they found at start.
            return true;
        };
        let key = key.clone();
        if offset + 1 >= end {
            self.done.insert(key.clone());
            self.pause(&key);
        }
        offset >= end
    }

    /// A partition number reached the end of its log for now (the event does not say
    /// of which topic): a bounded read is done with each such partition whose own
    /// position has reached its end.
    pub(super) fn at_partition_end(&mut self, partition: i32) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let reached: Vec<Partition> = self
            .ends
            .iter()
            .filter(|((topic, p), end)| {
                *p == partition
                    && matches!(
                        positions.find_partition(topic, *p).map(|e| e.offset()),
                        Some(Offset::Offset(o)) if o >= **end
                    )
            })
            .map(|(k, _)| k.clone())
            .collect();
        for p in reached {
            self.pause(&p);
            self.done.insert(p);
        }
    }

    fn pause(&self, (topic, partition): &Partition) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        let _ = self.consumer.pause(&tpl);
    }

    /// A bounded read takes every partition it ends in, each from where it starts
    /// (the checkpoint's offset, else the configured start); a partition already at its
    /// end is done at once. The ends go into the position, so checkpoints hold them.
    pub(super) fn assign_all(&mut self) -> bool {
        let context = self.consumer.context();
        let mut tpl = TopicPartitionList::new();
        let mut ends = Position::default();
        for ((topic, partition), &end) in &self.ends {
            let first = context.first_offset(&self.consumer, topic, *partition);
            if self.starts_at_or_past(topic, *partition, first, end) {
                self.done.insert((topic.clone(), *partition));
                continue;
            }
            ends.0.insert(
                format!("{END_PREFIX}{}", partition_key(topic, *partition)),
                end.to_string(),
            );
            if let Err(e) = tpl.add_partition_offset(topic, *partition, first) {
                self.feed
                    .fail(format!("cannot assign partition {topic}/{partition}: {e}"));
                return false;
            }
        }
        context.first.lock().assigned_before = true;
        if let Err(e) = self.consumer.assign(&tpl) {
            self.feed.fail(format!("cannot assign the partitions: {e}"));
            return false;
        }
        context.changes.lock().extend(
            tpl.elements()
                .iter()
                .map(|e| ((e.topic().to_string(), e.partition()), true)),
        );
        self.apply_rebalance();
        // No rows, so no split is touched: the position alone moves.
        let empty = RecordBatch::new_empty(self.layout.schema());
        self.feed.send(empty, ends, 0)
    }

    /// Whether a bounded read of a partition that starts at `first` has nothing to
    /// read before `end`: no message would come to say so (an empty range, a start
    /// already at the end). The log's start offset is not asked (some brokers answer
    /// it wrongly): from the beginning, only an end of 0 is empty.
    fn starts_at_or_past(&self, topic: &str, partition: i32, first: Offset, end: i64) -> bool {
        let wait = Duration::from_secs(5);
        let start = match first {
            Offset::Offset(o) => Some(o),
            Offset::End => self
                .consumer
                .fetch_watermarks(topic, partition, wait)
                .ok()
                .map(|(_, high)| high),
            Offset::Stored => {
                let mut asked = TopicPartitionList::new();
                asked.add_partition(topic, partition);
                self.consumer
                    .committed_offsets(asked, wait)
                    .ok()
                    .and_then(|c| match c.find_partition(topic, partition)?.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            }
            _ => Some(0),
        };
        start.is_some_and(|s| s >= end)
    }

    /// The end offsets of a bounded read (a checkpoint's, else asked for until the
    /// brokers answer); false if the source stopped first.
    pub(super) fn find_ends(&mut self) -> bool {
        if !self.resumed_ends.is_empty() {
            let ends = std::mem::take(&mut self.resumed_ends);
            *self.shared.end_offsets.lock() = ends
                .iter()
                .map(|((t, p), o)| (partition_key(t, *p), *o))
                .collect();
            self.ends = ends;
            return true;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.ends_now() {
                Ok(ends) => {
                    *self.shared.end_offsets.lock() = ends
                        .iter()
                        .map(|((t, p), o)| (partition_key(t, *p), *o))
                        .collect();
                    self.ends = ends;
                    return true;
                }
                Err(e) => {
                    *self.shared.waiting.lock() =
                        Some(format!("cannot find where the bounded read ends: {e}"));
                    if self.feed.stopped() {
                        return false;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn ends_now(&self) -> std::result::Result<BTreeMap<Partition, i64>, KafkaError> {
        let mut ends = BTreeMap::new();
        let wait = Duration::from_secs(5);
        for topic in &self.subscription {
            let metadata = self.consumer.fetch_metadata(Some(topic), wait)?;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    let partition = (topic.clone(), p.id());
                    let end = match &self.end {
                        Some(End::Latest) | None => {
                            self.consumer.fetch_watermarks(topic, p.id(), wait)?.1
                        }
                        Some(End::Offsets(offsets)) => offsets.get(&p.id()).copied().unwrap_or(0),
                        Some(End::Timestamp(ms)) => {
                            match offset_at(&self.consumer, topic, p.id(), *ms)? {
                                Offset::Offset(o) => o,
                                _ => self.consumer.fetch_watermarks(topic, p.id(), wait)?.1,
                            }
                        }
                    };
                    ends.insert(partition, end);
                }
            }
        }
        Ok(ends)
    }
}
