//! The consumer thread of a Kafka source: polls librdkafka, gathers each partition's
//! messages, and sends them as one chunk per partition (a split) with the next offset
//! to read. Partitions are assigned by the consumer group, and where each starts is
//! decided in the rebalance callback (`context.rs`); a bounded read assigns every
//! partition itself and stops at its ends (`bounded.rs`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::TopicPartitionList;

use super::bounded::{END_PREFIX, ends_of};
use super::context::{Context, FirstOffsets};
use super::envelope::{Built, Layout, Messages};
use super::options::End;
use super::{KafkaSource, Shared};
use crate::checkpoint::Position;
use crate::deadletter::NewDeadLetter;
use crate::source::connector::Feed;
use crate::{Error, Result};

/// A chunk closes at this many bytes of messages, or at `Feed::chunk_rows` messages.
const CHUNK_BYTES: usize = 4 << 20;
/// How long messages wait in a partition's buffer before they are sent anyway.
const LINGER: Duration = Duration::from_millis(20);
/// How long a chunk waits for room in the pipeline before the reader pauses its
/// partitions and polls while it waits.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// How often lag goes to the metrics (librdkafka's statistics come every second).
const LAG_EVERY: Duration = Duration::from_secs(1);

pub(super) type Partition = (String, i32);

/// `topic/partition`: a partition's name in positions, status and metrics.
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The offsets a position names, per partition (the next to read).
pub fn offsets_of(position: &Position) -> BTreeMap<Partition, i64> {
    partition_offsets(position, |k| (!k.starts_with(END_PREFIX)).then_some(k))
}

/// The offsets of the partitions a position names under `key` (a key mapped to its
/// partition's name, or left out).
pub(super) fn partition_offsets(
    position: &Position,
    key: impl Fn(&str) -> Option<&str>,
) -> BTreeMap<Partition, i64> {
    position
        .0
        .iter()
        .filter_map(|(k, v)| {
            let (topic, partition) = key(k)?.rsplit_once('/')?;
            Some((
                (topic.to_string(), partition.parse().ok()?),
                v.parse().ok()?,
            ))
        })
        .collect()
}

/// The consumer thread's state.
pub struct Reader {
    pub(super) name: String,
    pub(super) subscription: Vec<String>,
    pub(super) end: Option<End>,
    pub(super) layout: Layout,
    pub(super) consumer: Arc<BaseConsumer<Context>>,
    pub(super) shared: Arc<Shared>,
    pub(super) feed: Feed,
    /// Topics seen, so that a message finds its buffer without allocating a name.
    pub(super) topics: Vec<String>,
    /// Per (topic index, partition).
    pub(super) buffers: HashMap<(usize, i32), Messages>,
    pub(super) splits: HashMap<Partition, u32>,
    /// Messages polled while a chunk waited for room in the pipeline, in order.
    pub(super) stash: VecDeque<OwnedMessage>,
    /// A bounded read's end offset per partition (exclusive), and those reached.
    pub(super) ends: BTreeMap<Partition, i64>,
    /// The ends a checkpoint holds: a restarted bounded read ends where it was to.
    pub(super) resumed_ends: BTreeMap<Partition, i64>,
    pub(super) done: HashSet<Partition>,
    pub(super) last_flush: Instant,
    pub(super) last_lag: Instant,
}

impl Reader {
    /// A reader of `source`, from `resume` (a checkpoint's position) if given.
    pub fn new(source: &KafkaSource, resume: Option<Position>, feed: Feed) -> Result<Self> {
        let name = source.name.clone();
        let resumed_ends = resume.as_ref().map(ends_of).unwrap_or_default();
        let context = Context {
            source: name.clone(),
            brokers: source.brokers.clone(),
            start: source.start.clone(),
            shared: source.shared.clone(),
            first: Mutex::new(FirstOffsets {
                resume: resume.map(|p| offsets_of(&p)).unwrap_or_default(),
                assigned_before: false,
            }),
            changes: Mutex::default(),
        };
        let consumer: BaseConsumer<Context> =
            source.config.create_with_context(context).map_err(|e| {
                Error::BadRequest(format!(
                    "source {name}: the kafka client refuses its settings: {e}"
                ))
            })?;
        let consumer = Arc::new(consumer);
        *source.shared.consumer.lock() = Some(consumer.clone());
        Ok(Self {
            name,
            subscription: source.subscription.clone(),
            end: source.end.clone(),
            layout: source.layout.clone(),
            consumer,
            shared: source.shared.clone(),
            feed,
            topics: Vec::new(),
            buffers: HashMap::new(),
            splits: HashMap::new(),
            stash: VecDeque::new(),
            ends: BTreeMap::new(),
            resumed_ends,
            done: HashSet::new(),
            last_flush: Instant::now(),
            last_lag: Instant::now(),
        })
    }

    /// Read until the source stops, its pipeline is gone or a bounded read ends.
    pub fn run(mut self) {
        if self.read() {
            // A finished bounded read keeps its consumer, so that the checkpoints that
            // follow (the one that holds the end first) commit their offsets.
            return;
        }
        // Only partitions still owned: another member may have committed past a
        // partition this process gave up.
        if let Some(offsets) = self.shared.durable_offsets.lock().take() {
            let owned = self.shared.partitions.lock();
            let mut still_owned = TopicPartitionList::new();
            for e in offsets.elements() {
                if owned
                    .get(&partition_key(e.topic(), e.partition()))
                    .is_some_and(|p| p.assigned)
                {
                    let _ = still_owned.add_partition_offset(e.topic(), e.partition(), e.offset());
                }
            }
            drop(owned);
            if still_owned.count() > 0
                && let Err(e) = self.consumer.commit(&still_owned, CommitMode::Sync)
            {
                tracing::warn!(source = %self.name, error = %e, "cannot commit the last checkpoint's offsets");
            }
        }
        self.consumer.unsubscribe();
        // The last handle goes with this thread: the consumer closes and leaves the group.
        self.shared.consumer.lock().take();
    }

    /// True when a bounded read has finished.
    fn read(&mut self) -> bool {
        if !self.feed.wait_for_a_view() {
            return false;
        }
        if self.end.is_some() {
            // A bounded read is a batch job over fixed offsets: it reads every
            // partition itself rather than share them through the group.
            if !self.find_ends() || !self.assign_all() {
                return false;
            }
        } else {
            let topics: Vec<&str> = self.subscription.iter().map(String::as_str).collect();
            if let Err(e) = self.consumer.subscribe(&topics) {
                self.feed
                    .fail(format!("cannot subscribe to {topics:?}: {e}"));
                return false;
            }
        }
        // A local handle: a polled message borrows it while the reader changes.
        let consumer = self.consumer.clone();
        while !self.feed.stopped() {
            // Messages polled while the pipeline was behind come first: they follow
            // everything sent before them.
            while let Some(m) = self.stash.pop_front() {
                if !self.take(&m) {
                    return false;
                }
            }
            let polled = consumer.poll(Duration::from_millis(10));
            self.apply_rebalance();
            match polled {
                None => {}
                Some(Ok(m)) if !self.take(&m) => return false,
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.shared.waiting.lock().take();
                    if !self.flush_all() {
                        return false;
                    }
                    self.at_partition_end(partition);
                }
                Some(Err(e)) => {
                    tracing::warn!(source = %self.name, error = %e, "kafka poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if self.last_flush.elapsed() >= LINGER && !self.flush_all() {
                return false;
            }
            if self.last_lag.elapsed() >= LAG_EVERY {
                self.refresh_lag();
            }
            if self.end.is_some() && !self.ends.is_empty() && self.done.len() == self.ends.len() {
                if self.flush_all() {
                    tracing::info!(source = %self.name, ends = ?self.ends, "bounded read finished");
                    self.feed.end();
                    return true;
                }
                return false;
            }
        }
        false
    }

    /// Buffer message `m`, and send its partition's chunk once full; false once the
    /// pipeline is gone.
    fn take<M: Message>(&mut self, m: &M) -> bool {
        {
            let mut waiting = self.shared.waiting.lock();
            if waiting.is_some() {
                *waiting = None;
            }
        }
        if self.end.is_some() && self.reached_end(m.topic(), m.partition(), m.offset()) {
            return true;
        }
        let key = (self.topic_index(m.topic()), m.partition());
        let buffer = self.buffers.entry(key).or_default();
        buffer.push(m, &self.layout);
        let full = buffer.len() >= self.feed.chunk_rows || buffer.bytes() >= CHUNK_BYTES;
        !full || self.flush_full(key)
    }

    /// Act on the partitions the last poll's rebalance assigned or revoked.
    pub(super) fn apply_rebalance(&mut self) {
        let changes = std::mem::take(&mut *self.consumer.context().changes.lock());
        for (partition, assigned) in changes {
            let key = partition_key(&partition.0, partition.1);
            let split = self.split_of(&partition);
            self.shared
                .partitions
                .lock()
                .entry(key.clone())
                .or_default()
                .assigned = assigned;
            if assigned {
                // Announce the split, so that it holds the watermark back from now.
                let empty = RecordBatch::new_empty(self.layout.schema());
                self.feed.send(empty, Position::default(), split);
            } else {
                // Its rows not yet sent go to the new owner, which reads from the group's
                // offsets: give them up here.
                let buffer_key = (self.topic_index(&partition.0), partition.1);
                self.buffers.remove(&buffer_key);
                self.feed.split_gone(split);
                let _ = self.feed.lag.remove_label_values(&[&self.name, &key]);
            }
        }
    }

    fn topic_index(&mut self, topic: &str) -> usize {
        match self.topics.iter().position(|t| t == topic) {
            Some(i) => i,
            None => {
                self.topics.push(topic.to_string());
                self.topics.len() - 1
            }
        }
    }

    fn split_of(&mut self, partition: &Partition) -> u32 {
        let next = self.splits.len() as u32;
        *self.splits.entry(partition.clone()).or_insert(next)
    }

    /// Send every buffered partition's messages; false once the pipeline is gone.
    fn flush_all(&mut self) -> bool {
        self.last_flush = Instant::now();
        self.flush_where(|_, _| true)
    }

    /// Send the partition whose buffer `full` is full, and with it every other at least
    /// half full, so that they are decoded side by side; false once the pipeline is gone.
    fn flush_full(&mut self, full: (usize, i32)) -> bool {
        let (rows, bytes) = (self.feed.chunk_rows / 2, CHUNK_BYTES / 2);
        self.flush_where(|key, buffer| {
            *key == full || buffer.len() >= rows || buffer.bytes() >= bytes
        })
    }

    /// Send the buffered partitions `pick` picks: decoded side by side on the worker
    /// threads (this one decoding its share), then sent one by one; false once the
    /// pipeline is gone.
    fn flush_where(&mut self, pick: impl Fn(&(usize, i32), &Messages) -> bool + Sync) -> bool {
        let layout = &self.layout;
        let mut picked: Vec<(&(usize, i32), &mut Messages)> = self
            .buffers
            .iter_mut()
            .filter(|(key, buffer)| !buffer.is_empty() && pick(key, buffer))
            .collect();
        picked.sort_unstable_by_key(|(key, _)| **key);
        let built: Vec<((usize, i32), i64, Result<Built>)> =
            weir_sql::parallel::run_parts(picked, |(key, buffer)| {
                let next = buffer.next_offset()?;
                Some((*key, next, buffer.build(layout)))
            })
            .into_iter()
            .flatten()
            .collect();
        // Every chunk built is sent, even of a partition a rebalance run by the polling
        // while an earlier chunk waited has revoked: that rebalance may give it back
        // from the consumer's position, after these messages (see the issue note).
        built
            .into_iter()
            .all(|(key, next, built)| self.send_built(&key, next, built))
    }

    /// Send a partition's decoded messages (`next` is the offset after them) as a
    /// chunk; malformed ones are dead-lettered with their topic, partition and offset.
    fn send_built(&mut self, buffer_key: &(usize, i32), next: i64, built: Result<Built>) -> bool {
        let partition = (self.topics[buffer_key.0].clone(), buffer_key.1);
        let split = self.split_of(&partition);
        let key = partition_key(&partition.0, partition.1);
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                // Never stuck on them: the messages go to the dead-letter store whole.
                tracing::error!(source = %self.name, error = %e, "cannot build a batch of messages");
                let letters = self
                    .buffers
                    .get_mut(buffer_key)
                    .map(|b| b.take_raw(&e.to_string()))
                    .unwrap_or_default();
                self.feed
                    .dead_letter(
                        letters
                            .into_iter()
                            .map(|(offset, raw, reason)| NewDeadLetter {
                                source: self.name.clone(),
                                view: None,
                                partition: Some(key.clone()),
                                position: u64::try_from(offset).ok(),
                                sequence_number: None,
                                reason: reason.into(),
                                raw,
                            }),
                    );
                Built {
                    batch: RecordBatch::new_empty(self.layout.schema()),
                    rejected: Vec::new(),
                }
            }
        };
        self.feed
            .dead_letter(built.rejected.into_iter().map(|(offset, r)| NewDeadLetter {
                source: self.name.clone(),
                view: None,
                partition: Some(key.clone()),
                position: u64::try_from(offset).ok(),
                sequence_number: None,
                reason: r.reason.into(),
                raw: r.raw,
            }));
        if let Some(p) = self.shared.partitions.lock().get_mut(&key) {
            p.position = Some(next);
        }
        let mut position = Position::default();
        position.0.insert(key, next.to_string());
        // While the pipeline is behind for long (a paused view), the partitions are
        // paused and the consumer keeps polling, so the group does not take it for dead
        // and a rebalance does not wait for it; a message polled meanwhile waits in the
        // stash. Not at once: pausing drops librdkafka's prefetched messages, and a
        // pipeline that is only busy takes the chunk within milliseconds.
        let consumer = self.consumer.clone();
        let stash = &mut self.stash;
        let mut paused = false;
        let waiting_since = Instant::now();
        let sent = self.feed.send_polling(built.batch, position, split, || {
            if waiting_since.elapsed() < PAUSE_AFTER {
                std::thread::sleep(Duration::from_millis(1));
                return;
            }
            // Whatever is assigned now: a rebalance meanwhile may have brought more.
            if let Ok(assigned) = consumer.assignment() {
                let _ = consumer.pause(&assigned);
            }
            paused = true;
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                stash.push_back(m.detach());
            }
        });
        if paused && let Ok(assigned) = self.consumer.assignment() {
            // A bounded read's finished partitions stay paused.
            let mut resume = TopicPartitionList::new();
            for e in assigned.elements() {
                if !self.done.contains(&(e.topic().to_string(), e.partition())) {
                    resume.add_partition(e.topic(), e.partition());
                }
            }
            let _ = self.consumer.resume(&resume);
        }
        sent
    }

    /// Lag (the log's end less the position) of the assigned partitions into the
    /// metrics, from the end offsets librdkafka's statistics last reported.
    fn refresh_lag(&mut self) {
        self.last_lag = Instant::now();
        let lags: Vec<(String, i64)> = self
            .shared
            .partitions
            .lock()
            .iter()
            .filter(|(_, p)| p.assigned)
            .filter_map(|(k, p)| Some((k.clone(), (p.high_watermark? - p.position?).max(0))))
            .collect();
        for (key, lag) in lags {
            self.feed
                .lag
                .with_label_values(&[&self.name, &key])
                .set(lag);
        }
    }
}
