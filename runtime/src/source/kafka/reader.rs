//! The consumer thread of a Kafka source: polls librdkafka, gathers each partition's
//! messages, and sends them as one chunk per partition (a split) with the next offset
//! to read. Partitions are assigned by the consumer group; where each starts is decided
//! here, in the rebalance callback: a checkpoint's offset, else where this process
//! stopped reading it (a partition that comes back), else the configured start on the
//! first assignment, else the group's committed offset (partitions that move here from
//! another process, or that were added to the topic: read from the start).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::envelope::{Built, Layout, Messages};
use super::options::{End, Start};
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

type Partition = (String, i32);

/// `topic/partition`: a partition's name in positions, status and metrics.
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// In a position, the end of a bounded read's partition is this prefix and the
/// partition's key: checkpoints hold where the read ends, so a restart ends there too.
const END_PREFIX: &str = "end:";

/// The offsets a position names, per partition (the next to read).
pub fn offsets_of(position: &Position) -> BTreeMap<Partition, i64> {
    partition_offsets(position, |k| (!k.starts_with(END_PREFIX)).then_some(k))
}

/// The end offsets of a bounded read a position names, per partition.
fn ends_of(position: &Position) -> BTreeMap<Partition, i64> {
    partition_offsets(position, |k| k.strip_prefix(END_PREFIX))
}

fn partition_offsets(
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

/// librdkafka's callbacks: errors, and where assigned partitions start.
pub struct Context {
    source: String,
    brokers: String,
    start: Start,
    shared: Arc<Shared>,
    first: Mutex<FirstOffsets>,
    /// Assignments and revocations, for the reader to act on after the poll.
    changes: Mutex<Vec<(Partition, bool)>>,
}

struct FirstOffsets {
    /// From the checkpoint: used once per partition.
    resume: BTreeMap<Partition, i64>,
    /// Whether the group has assigned anything yet.
    assigned_before: bool,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let unreachable = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Resolve
            )
        );
        if unreachable {
            *self.shared.waiting.lock() = Some(format!(
                "cannot reach the brokers {}: {reason}",
                self.brokers
            ));
        }
        // A partition's end is an event of the fetch, not an error.
        if !matches!(error, KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::warn!(source = %self.source, error = %error, %reason, "kafka client error");
        }
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): each partition's end
    /// offset as the last fetch saw it, for lag, without asking the brokers again.
    fn stats(&self, statistics: Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.shared.waiting.lock().take();
        }
        let mut partitions = self.shared.partitions.lock();
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                if *id >= 0
                    && p.hi_offset >= 0
                    && let Some(state) = partitions.get_mut(&partition_key(topic, *id))
                {
                    state.high_watermark = Some(p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<Partition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let assigned = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                for (topic, partition) in &partitions {
                    let offset = self.first_offset(consumer, topic, *partition);
                    let _ = tpl.set_partition_offset(topic, *partition, offset);
                }
                self.first.lock().assigned_before = true;
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(source = %self.source, error = %e, "cannot take the assigned partitions");
                }
                true
            }
            _ => {
                self.remember_positions(consumer, &partitions);
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(source = %self.source, ?err, "rebalance error; giving up the partitions");
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(source = %self.source, error = %e, "cannot give up the revoked partitions");
                }
                false
            }
        };
        tracing::info!(source = %self.source, ?partitions, assigned, "partitions rebalanced");
        self.changes
            .lock()
            .extend(partitions.into_iter().map(|p| (p, assigned)));
    }
}

impl Context {
    /// Where this process is in partitions it gives up, so that one that comes back
    /// reads on from there, even if none of its rows reached a chunk yet (a `start` of
    /// latest, a time or offsets is not applied twice, nor replaced by the beginning).
    fn remember_positions(&self, consumer: &BaseConsumer<Self>, given_up: &[Partition]) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        let mut partitions = self.shared.partitions.lock();
        for (topic, partition) in given_up {
            if let Some(Offset::Offset(o)) = positions
                .find_partition(topic, *partition)
                .map(|e| e.offset())
                && let Some(state) = partitions.get_mut(&partition_key(topic, *partition))
                && state.position.is_none()
            {
                state.position = Some(o);
            }
        }
    }

    fn first_offset(&self, consumer: &BaseConsumer<Self>, topic: &str, partition: i32) -> Offset {
        let mut first = self.first.lock();
        if let Some(offset) = first.resume.remove(&(topic.to_string(), partition)) {
            return Offset::Offset(offset);
        }
        // Back to a partition this process read before: its views hold the rows up to
        // where it stopped, so it reads on from there.
        if let Some(offset) = self
            .shared
            .partitions
            .lock()
            .get(&partition_key(topic, partition))
            .and_then(|p| p.position)
        {
            return Offset::Offset(offset);
        }
        if first.assigned_before {
            // Moved here from another member, or new: the group's offsets, else the start.
            return Offset::Stored;
        }
        match &self.start {
            Start::Earliest => Offset::Beginning,
            Start::Latest => Offset::End,
            Start::Group => Offset::Stored,
            Start::Offsets(offsets) => offsets
                .get(&partition)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o)),
            Start::Timestamp(ms) => offset_at(consumer, topic, partition, *ms).unwrap_or_else(|e| {
                tracing::warn!(source = %self.source, topic, partition, error = %e, "cannot look up the start time's offset; reading from the group's offset");
                Offset::Stored
            }),
        }
    }
}

/// The first offset of a partition at or after `ms` (the end if none is).
fn offset_at<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    ms: i64,
) -> std::result::Result<Offset, KafkaError> {
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(topic, partition, Offset::Offset(ms))?;
    let found = consumer.offsets_for_times(query, Duration::from_secs(5))?;
    Ok(
        match found.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Offset::Offset(o),
            _ => Offset::End,
        },
    )
}

/// The consumer thread's state.
pub struct Reader {
    name: String,
    subscription: Vec<String>,
    end: Option<End>,
    layout: Layout,
    consumer: Arc<BaseConsumer<Context>>,
    shared: Arc<Shared>,
    feed: Feed,
    /// Topics seen, so that a message finds its buffer without allocating a name.
    topics: Vec<String>,
    /// Per (topic index, partition).
    buffers: HashMap<(usize, i32), Messages>,
    splits: HashMap<Partition, u32>,
    /// Messages polled while a chunk waited for room in the pipeline, in order.
    stash: VecDeque<OwnedMessage>,
    /// A bounded read's end offset per partition (exclusive), and those reached.
    ends: BTreeMap<Partition, i64>,
    /// The ends a checkpoint holds: a restarted bounded read ends where it was to.
    resumed_ends: BTreeMap<Partition, i64>,
    done: HashSet<Partition>,
    last_flush: Instant,
    last_lag: Instant,
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
                tracing::error!(source = %self.name, error = %e, "cannot subscribe");
                *self.shared.waiting.lock() = Some(format!("cannot subscribe to {topics:?}: {e}"));
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
        !full || self.flush(&key)
    }

    /// Act on the partitions the last poll's rebalance assigned or revoked.
    fn apply_rebalance(&mut self) {
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
        let keys: Vec<(usize, i32)> = self
            .buffers
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(k, _)| *k)
            .collect();
        keys.iter().all(|k| self.flush(k))
    }

    /// Send one partition's messages as a chunk; malformed ones are dead-lettered with
    /// their topic, partition and offset.
    fn flush(&mut self, buffer_key: &(usize, i32)) -> bool {
        let partition = (self.topics[buffer_key.0].clone(), buffer_key.1);
        let split = self.split_of(&partition);
        let Some(buffer) = self.buffers.get_mut(buffer_key) else {
            return true;
        };
        let Some(next) = buffer.next_offset() else {
            return true;
        };
        let key = partition_key(&partition.0, partition.1);
        let built = match buffer.build(&self.layout) {
            Ok(built) => built,
            Err(e) => {
                // Never stuck on them: the messages go to the dead-letter store whole.
                tracing::error!(source = %self.name, error = %e, "cannot build a batch of messages");
                let letters = buffer.take_raw(&e.to_string());
                self.feed
                    .dead_letter(
                        letters
                            .into_iter()
                            .map(|(offset, raw, reason)| NewDeadLetter {
                                source: self.name.clone(),
                                view: None,
                                partition: Some(key.clone()),
                                position: u64::try_from(offset).ok(),
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

    /// Whether a message at `offset` is past a bounded read's end (then it is not
    /// read, and the partition is done).
    fn reached_end(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
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
    fn at_partition_end(&mut self, partition: i32) {
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
    fn assign_all(&mut self) -> bool {
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
                tracing::error!(source = %self.name, error = %e, "cannot assign a partition");
                return false;
            }
        }
        context.first.lock().assigned_before = true;
        if let Err(e) = self.consumer.assign(&tpl) {
            tracing::error!(source = %self.name, error = %e, "cannot assign the partitions");
            *self.shared.waiting.lock() = Some(format!("cannot assign the partitions: {e}"));
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
    fn find_ends(&mut self) -> bool {
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
