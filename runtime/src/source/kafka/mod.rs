//! The `kafka` connector: a consumer-group member reading one or more topics with
//! librdkafka. Each partition is its own split (its own watermark), each chunk holds
//! one partition's messages, and the position after a chunk is the next offset to read
//! per partition (`topic/partition`). A restart from a checkpoint seeks to the
//! checkpoint's offsets; once a checkpoint is durable the same offsets are committed to
//! the group, so the group's lag is the truth. See docs/CONNECTORS.md.

mod bounded;
mod context;
pub(crate) mod envelope;
mod front_door;
pub mod options;
mod reader;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::connector::{Connector, ConnectorStatus, Feed, PartitionStatus, SourceDef};
use crate::checkpoint::Position;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::{Error, Result};
use context::Context;
use envelope::Layout;
use options::{End, KafkaOptions, Start};

/// How long CREATE SOURCE waits for the brokers to say whether the topic exists.
const METADATA_WAIT: Duration = Duration::from_secs(3);

/// librdkafka settings weir decides itself, and why.
const OWN_SETTINGS: &[(&str, &str)] = &[
    ("group.id", "use the group option"),
    ("bootstrap.servers", "use the brokers option"),
    ("isolation.level", "use the isolation option"),
    (
        "enable.auto.commit",
        "weir commits offsets itself, once a checkpoint that covers them is durable",
    ),
    (
        "enable.auto.offset.store",
        "weir commits offsets itself, once a checkpoint that covers them is durable",
    ),
    ("enable.partition.eof", "bounded reads depend on it"),
];

/// A Kafka source.
pub struct KafkaSource {
    name: String,
    brokers: String,
    /// Topics by name, or one pattern (`^...`).
    subscription: Vec<String>,
    start: Start,
    end: Option<End>,
    layout: Layout,
    config: ClientConfig,
    shared: Arc<Shared>,
    /// Records posted over HTTP are produced to the topic (one named topic only).
    front_door: Option<front_door::FrontDoor>,
}

/// What the consumer thread and the API share.
#[derive(Default)]
pub struct Shared {
    /// Why the source cannot read yet (brokers unreachable), until it reads.
    pub waiting: Mutex<Option<String>>,
    /// Per `topic/partition`.
    pub partitions: Mutex<BTreeMap<String, PartitionState>>,
    /// Where a bounded read ends, per `topic/partition`.
    pub end_offsets: Mutex<BTreeMap<String, i64>>,
    /// The consumer, once it runs (commits go through it).
    pub consumer: Mutex<Option<Arc<BaseConsumer<Context>>>>,
    /// The reader thread, so that a stopping engine can wait for its last commit.
    pub reader: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The offsets of the newest durable checkpoint, committed once more, and
    /// synchronously, when the reader stops: an asynchronous commit may not have
    /// reached the brokers when the consumer closes.
    pub durable_offsets: Mutex<Option<TopicPartitionList>>,
}

/// One partition as the API shows it.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    pub assigned: bool,
    pub position: Option<i64>,
    pub high_watermark: Option<i64>,
}

pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    let name = def.name;
    let options: KafkaOptions = crate::options::parse_own(name, def.options)?;
    let brokers = options.brokers.clone().ok_or_else(|| {
        Error::BadRequest(format!(
            "source {name}: a kafka source needs brokers = 'host:port[,host:port]'"
        ))
    })?;
    let subscription = match (&options.topic, &options.topic_pattern) {
        (Some(topics), None) => {
            let topics: Vec<String> = topics
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            if topics.is_empty() {
                return Err(Error::BadRequest(format!(
                    "source {name}: topic = '' names no topic"
                )));
            }
            topics
        }
        (None, Some(pattern)) => vec![format!("^{}", pattern.trim_start_matches('^'))],
        _ => {
            return Err(Error::BadRequest(format!(
                "source {name}: a kafka source reads topic = 'name[,name]' or topic_pattern = 'regex' (one of the two)"
            )));
        }
    };
    let start = Start::parse(name, options.start.as_deref())?;
    let end = options
        .end
        .as_deref()
        .map(|e| End::parse(name, e))
        .transpose()?;
    if end.is_some() && options.topic_pattern.is_some() {
        return Err(Error::BadRequest(format!(
            "source {name}: a bounded read (end = ...) needs named topics, not a topic_pattern"
        )));
    }
    let layout = Layout::new(
        name,
        def.declared_columns()?,
        def.common.format.as_deref().unwrap_or("json"),
    )?;
    let layout = layout.with_max_message_bytes(
        options
            .max_message_bytes
            .unwrap_or(envelope::DEFAULT_MAX_MESSAGE_BYTES),
    );
    let group = options
        .group
        .clone()
        .unwrap_or_else(|| format!("weir-{name}"));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("client.id", format!("weir-{name}"))
        // Offsets are committed by weir, after checkpoints, and never stored by reads.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            options::isolation(name, options.isolation.as_deref())?,
        )
        .set("enable.partition.eof", "true")
        // A short session so a group forms (and a dead member's partitions move) in
        // seconds; new partitions are looked for every 10 s.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("reconnect.backoff.max.ms", "5000")
        // Each partition's end offset, for lag, comes with the statistics.
        .set("statistics.interval.ms", "1000")
        // weir takes messages in chunks: with librdkafka's default (100,000 messages
        // per partition) the prefetch queue often passes the threshold and the partition
        // is not fetched for `fetch.queue.backoff.ms` (1 s), which cut reads to a third
        // (docs/PERFORMANCE.md). `queued.max.messages.kbytes` still bounds the memory.
        .set("queued.min.messages", "1000000");
    let properties: Vec<(String, String)> = crate::options::properties(def.options)
        .into_iter()
        .collect();
    // A bounded read would never see records produced past its end.
    let front_door =
        match subscription.as_slice() {
            [topic] if !topic.starts_with('^') && end.is_none() => Some(
                front_door::FrontDoor::new(name, topic, options.key.clone(), &brokers, &properties),
            ),
            _ => None,
        };
    for (k, v) in properties {
        if let Some(why) = OWN_SETTINGS
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, why)| why)
        {
            return Err(Error::BadRequest(format!(
                "source {name}: properties.{k} cannot be set: {why}"
            )));
        }
        config.set(k, v);
    }
    let source = KafkaSource {
        name: name.to_string(),
        brokers,
        subscription,
        start,
        end,
        layout,
        config,
        shared: Arc::default(),
        front_door,
    };
    if !def.restoring {
        source.check_topics()?;
    }
    Ok(Box::new(source))
}

impl KafkaSource {
    /// Named topics must exist, if the brokers answer now; if they do not, the source
    /// is created and waits for them (`connecting`).
    fn check_topics(&self) -> Result<()> {
        if self.subscription.iter().any(|t| t.starts_with('^')) {
            return Ok(());
        }
        let consumer: BaseConsumer = self.config.create().map_err(|e| {
            Error::BadRequest(format!(
                "source {}: the kafka client refuses its settings: {e}",
                self.name
            ))
        })?;
        for topic in &self.subscription {
            match consumer.fetch_metadata(Some(topic), METADATA_WAIT) {
                Ok(m) => {
                    let missing = m
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
                    if missing {
                        return Err(Error::BadRequest(format!(
                            "source {}: topic '{topic}' does not exist on {}; create it first",
                            self.name, self.brokers
                        )));
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "the brokers do not answer; the source waits for them");
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl Connector for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.layout.schema()
    }

    fn write_records(
        &self,
        _source: &crate::source::SourceRuntime,
        body: &[u8],
        idempotency_key: Option<&str>,
        dead_letters: &crate::deadletter::DeadLetterStore,
    ) -> Option<Result<crate::source::http::IngestReport>> {
        Some(match &self.front_door {
            Some(door) => door.produce(body, idempotency_key, dead_letters),
            None => Err(Error::BadRequest(format!(
                "source {} reads several topics, a pattern, or up to an end: records \
                 posted over HTTP are produced to an unbounded source of one named topic",
                self.name
            ))),
        })
    }

    fn start(&self, feed: Feed, resume: Option<Position>) -> Result<()> {
        let reader = reader::Reader::new(self, resume, feed)?;
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{}", self.name))
            .spawn(move || reader.run())
            .map_err(|e| Error::Internal(format!("cannot start the kafka reader: {e}")))?;
        *self.shared.reader.lock() = Some(thread);
        Ok(())
    }

    /// The reader commits the last durable offsets as it stops: wait for that.
    fn wait_stopped(&self, until: std::time::Instant) {
        super::connector::join_reader(&self.shared.reader, &self.name, until);
    }

    /// Commit the checkpoint's offsets of the partitions this process still owns: as
    /// the next offsets to read, which is what the group's lag tools expect.
    fn checkpoint_durable(&self, position: &Position) {
        let Some(consumer) = self.shared.consumer.lock().clone() else {
            return;
        };
        let owned: Vec<String> = self
            .shared
            .partitions
            .lock()
            .iter()
            .filter(|(_, p)| p.assigned)
            .map(|(k, _)| k.clone())
            .collect();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in reader::offsets_of(position) {
            if owned.contains(&reader::partition_key(&topic, partition)) {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(source = %self.name, error = %e, "cannot commit the checkpoint's offsets to the group");
        }
        *self.shared.durable_offsets.lock() = Some(tpl);
    }

    fn status(&self) -> ConnectorStatus {
        let partitions = self
            .shared
            .partitions
            .lock()
            .iter()
            .filter(|(_, p)| p.assigned)
            .map(|(k, p)| PartitionStatus {
                partition: k.clone(),
                position: p.position,
                high_watermark: p.high_watermark,
                lag: p
                    .high_watermark
                    .zip(p.position)
                    .map(|(h, pos)| (h - pos).max(0)),
                ..PartitionStatus::default()
            })
            .collect();
        ConnectorStatus {
            waiting: self.shared.waiting.lock().clone(),
            partitions,
            end_offsets: self.shared.end_offsets.lock().clone(),
            stream: None,
        }
    }
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "kafka",
        kind: "source",
        doc: "A topic read through a consumer group: per-partition watermarks, offsets in checkpoints, committed once a checkpoint is durable.",
        declares_columns: true,
        passes_through: Some("properties.<name>: passed to librdkafka"),
        options: [crate::connectors::COMMON_SOURCE_OPTIONS, &OWN_OPTIONS[..]].concat(),
    },
    fields: field_names::<options::KafkaOptions>,
    test: crate::connectors::test_kafka,
};

const OWN_OPTIONS: [OptionDoc; 9] = [
    crate::connectors::KAFKA_BROKERS,
    OptionDoc {
        name: "topic",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "One topic, or a comma list. One of topic and topic_pattern.",
    },
    OptionDoc {
        name: "topic_pattern",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "A regular expression: every matching topic, found again as topics appear.",
    },
    OptionDoc {
        name: "group",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("weir-<source name>"),
        doc: "The consumer group; processes that share it share the partitions.",
    },
    OptionDoc {
        name: "start",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("group"),
        doc: "Where a partition is read from when no checkpoint says: earliest, latest, group, a time, or offsets '0:42,1:17'.",
    },
    OptionDoc {
        name: "end",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("unbounded"),
        doc: "A bounded read that finishes there: latest, a time, or offsets '0:100,1:80'.",
    },
    OptionDoc {
        name: "isolation",
        kind: "choice",
        choices: &["read_committed", "read_uncommitted"],
        required: false,
        default: Some("read_committed"),
        doc: "Whether records of aborted transactions are skipped.",
    },
    OptionDoc {
        name: "key",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "For records posted over HTTP: the field whose value becomes the message key.",
    },
    OptionDoc {
        name: "max_message_bytes",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("1048576"),
        doc: "A message with a larger value goes to the dead-letter store.",
    },
];
