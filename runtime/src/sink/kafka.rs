//! The `kafka` sink: a view's changes as messages of one topic, each durable epoch
//! written whole. `at_least_once` (the default) uses an idempotent producer and
//! returns once every message is acknowledged by all in-sync replicas; `exactly_once`
//! writes each epoch in one transaction, begun only once the checkpoint that holds the
//! epoch is durable and committed before the next epoch starts. Every message carries
//! the headers `weir-epoch` and `weir-seq` (its place in the epoch): when a crash makes
//! weir write an epoch again, its messages carry the same pair, so a consumer can drop
//! the duplicates exactly.
//!
//! An `exactly_once` transaction also commits its epoch as the offset of a consumer
//! group named after the sink and its lineage (`send_offsets_to_transaction`), so the
//! brokers record, atomically with the messages, which epoch is written: a crash after
//! the commit and before weir notes it does not make weir write the epoch again. See
//! docs/CONNECTORS.md.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use serde::Deserialize;

use super::encode::{Encoder, Format, Messages};
use super::{EpochChanges, Sink, SinkDef};
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::{Error, Result};

/// How long librdkafka tries to deliver a message before it reports a failure; an
/// epoch's flush waits a little longer, so that none is still in flight after it.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const FLUSH_WAIT: Duration = Duration::from_secs(15);
const TRANSACTION_WAIT: Duration = Duration::from_secs(30);

/// librdkafka settings weir decides itself, and why.
const OWN_SETTINGS: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the brokers option"),
    ("transactional.id", "use the transactional_id option"),
    (
        "enable.idempotence",
        "weir's producer is idempotent for both deliveries",
    ),
    ("acks", "weir waits for all in-sync replicas"),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaSinkOptions {
    brokers: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    delivery: Option<String>,
    #[serde(default)]
    transactional_id: Option<String>,
}

/// A Kafka sink.
pub struct KafkaSink {
    name: String,
    topic: String,
    encoder: Encoder,
    config: ClientConfig,
    /// For `exactly_once`: the consumer group whose offset on partition 0 of the topic
    /// is the newest committed epoch, and a client of it.
    epochs: Option<EpochRecord>,
    /// Made at the first delivery (and again after a fatal error), so a sink is
    /// created while its brokers are down.
    producer: Option<BaseProducer<Delivery>>,
    messages: Messages,
    /// For messages no retry can write.
    dead_letters: Arc<DeadLetterStore>,
    /// Those messages, by (epoch, seq), until their epoch is delivered.
    refused: HashSet<(u64, u64)>,
    view: String,
    source: String,
}

/// Where the brokers record the newest epoch an `exactly_once` sink committed: the
/// offset of partition 0 of the topic in the consumer group `weir-sink-<sink>-<lineage>`.
/// The lineage is in the group's name (not in the offset's metadata, which some
/// brokers drop), so a sink created afresh never reads another's record.
struct EpochRecord {
    /// The group's client settings, without `group.id`.
    config: ClientConfig,
    sink: String,
    /// The `transactional_id` option, if set.
    transactional_id: Option<String>,
    /// A client of the group, made at the first delivery (when the lineage is known).
    consumer: Option<BaseConsumer>,
    /// The newest committed epoch, read again whenever a producer is made (after
    /// `init_transactions` has ended whatever transaction a crash left).
    committed: Option<u64>,
}

impl EpochRecord {
    /// `weir-sink-<sink>-<lineage>`: the default transactional id, and always the
    /// group's name. A new sink (a new lineage) never reads another's record, and
    /// processes that run the same sink do not fence each other.
    fn name(&self, lineage: &str) -> String {
        format!("weir-sink-{}-{lineage}", self.sink)
    }

    fn transactional_id(&self, lineage: &str) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| self.name(lineage))
    }

    /// The newest epoch the brokers hold for `lineage` (0: none).
    fn committed(&mut self, topic: &str, lineage: &str) -> std::result::Result<u64, String> {
        if let Some(committed) = self.committed {
            return Ok(committed);
        }
        let consumer = match &mut self.consumer {
            Some(c) => c,
            None => {
                let mut config = self.config.clone();
                config.set("group.id", self.name(lineage));
                let made = config
                    .create()
                    .map_err(|e| format!("cannot make the epochs' group client: {e}"))?;
                self.consumer.insert(made)
            }
        };
        let committed = committed_epoch(consumer, topic)?;
        self.committed = Some(committed);
        Ok(committed)
    }
}

pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let name = def.name;
    let bad = |m: String| Error::BadRequest(format!("sink {name}: {m}"));
    let own: std::collections::BTreeMap<String, String> = def
        .options
        .iter()
        .filter(|(k, _)| k.as_str() != "connector" && !k.starts_with("properties."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let options: KafkaSinkOptions = crate::options::parse_as(&format!("sink {name}"), &own)?;
    let brokers = options
        .brokers
        .ok_or_else(|| bad("a kafka sink needs brokers = 'host:port[,host:port]'".into()))?;
    let topic = options
        .topic
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad("a kafka sink needs topic = 'name'".into()))?;
    let format_text = options.format.as_deref().unwrap_or("json");
    let format = Format::parse(format_text).ok_or_else(|| {
        bad(format!(
            "format {format_text} is not one of json, upsert, debezium_json"
        ))
    })?;
    let encoder = Encoder::new(format, def.schema, options.key.as_deref()).map_err(bad)?;
    let transactional = match options.delivery.as_deref().unwrap_or("at_least_once") {
        "at_least_once" => false,
        "exactly_once" => true,
        other => {
            return Err(bad(format!(
                "delivery {other} is not one of at_least_once, exactly_once"
            )));
        }
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &brokers)
        .set("client.id", format!("weir-sink-{name}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        .set("reconnect.backoff.max.ms", "5000");
    // The transactional id is set when the producer is made: by default it names the
    // sink's lineage, known at the first delivery.
    if !transactional && options.transactional_id.is_some() {
        return Err(bad(
            "transactional_id is for delivery = 'exactly_once'".into()
        ));
    }
    for (k, v) in crate::options::properties(def.options) {
        if let Some((_, why)) = OWN_SETTINGS.iter().find(|(own, _)| *own == k) {
            return Err(bad(format!("properties.{k} cannot be set: {why}")));
        }
        config.set(k, v);
    }
    // The settings are checked now; the producer connects at the first delivery.
    let _: BaseProducer<Delivery> = config
        .create_with_context(Delivery::default())
        .map_err(|e| bad(format!("the kafka client refuses its settings: {e}")))?;
    let epochs = if transactional {
        let mut group = ClientConfig::new();
        group
            .set("bootstrap.servers", &brokers)
            .set("enable.auto.commit", "false")
            .set("log_level", "3");
        for (k, v) in crate::options::properties(def.options) {
            group.set(k, v);
        }
        Some(EpochRecord {
            config: group,
            sink: name.to_string(),
            transactional_id: options.transactional_id.clone(),
            consumer: None,
            committed: None,
        })
    } else {
        None
    };
    Ok(Box::new(KafkaSink {
        name: name.to_string(),
        topic,
        encoder,
        config,
        epochs,
        producer: None,
        messages: Messages::default(),
        dead_letters: def.dead_letters.clone(),
        refused: HashSet::new(),
        view: def.view.to_string(),
        source: def.source.to_string(),
    }))
}

/// Collects an epoch's delivery errors: the first that a retry may cure, and the
/// messages the brokers refuse for good (by their seq, the delivery's opaque).
#[derive(Default, Clone)]
struct Delivery {
    failed: Arc<Mutex<Option<String>>>,
    refused: Arc<Mutex<Vec<Refused>>>,
}

/// A message no retry can write (too large for the topic, a record the brokers call
/// invalid): a dead letter, skipped when its epoch is written again.
struct Refused {
    seq: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    why: String,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let Err((e, m)) = result else {
            return;
        };
        if matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::MessageBatchTooLarge
                    | RDKafkaErrorCode::InvalidRecord
            )
        ) {
            self.refused.lock().push(Refused {
                seq: seq as u64,
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                why: e.to_string(),
            });
            return;
        }
        let mut failed = self.failed.lock();
        if failed.is_none() {
            *failed = Some(e.to_string());
        }
    }
}

impl KafkaSink {
    fn producer(&mut self, lineage: &str) -> std::result::Result<&BaseProducer<Delivery>, String> {
        if self.producer.is_none() {
            let mut config = self.config.clone();
            if let Some(epochs) = &self.epochs {
                config.set("transactional.id", epochs.transactional_id(lineage));
            }
            let producer: BaseProducer<Delivery> = config
                .create_with_context(Delivery::default())
                .map_err(|e| format!("cannot make the producer: {e}"))?;
            if let Some(epochs) = &mut self.epochs {
                // Fences an earlier producer of this transactional id and aborts the
                // transaction it left open (an epoch a crash interrupted); then the
                // recorded epoch is settled.
                producer
                    .init_transactions(TRANSACTION_WAIT)
                    .map_err(|e| format!("cannot start transactions: {e}"))?;
                epochs.committed = None;
            }
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("made above"))
    }

    /// Queue every message of the epoch.
    fn send_all(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let EpochChanges {
            epoch,
            lineage,
            changes,
            ..
        } = *to_write;
        let epoch_text = epoch.to_string();
        let mut seq: u64 = 0;
        let mut messages = std::mem::take(&mut self.messages);
        let mut refused_now = Vec::new();
        let result = (|| {
            for change in changes {
                self.encoder
                    .encode(change, &mut messages)
                    .map_err(|e| format!("cannot encode the view's rows: {e}"))?;
                let producer = self.producer.as_ref().expect("made before sending");
                for (i, value) in messages.values.iter().enumerate() {
                    let seq_text = seq.to_string();
                    let headers = OwnedHeaders::new_with_capacity(3)
                        .insert(Header {
                            key: "weir-lineage",
                            value: Some(lineage.as_bytes()),
                        })
                        .insert(Header {
                            key: "weir-epoch",
                            value: Some(epoch_text.as_bytes()),
                        })
                        .insert(Header {
                            key: "weir-seq",
                            value: Some(seq_text.as_bytes()),
                        });
                    if self.refused.contains(&(epoch, seq)) {
                        // Refused for good before: a dead letter already.
                        seq += 1;
                        continue;
                    }
                    let mut record =
                        BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.topic, seq as usize)
                            .headers(headers);
                    // No payload: a tombstone.
                    if let Some(value) = value {
                        record = record.payload(&messages.buf[value.clone()]);
                    }
                    if let Some(key) = messages.keys.get(i) {
                        record = record.key(&messages.buf[key.clone()]);
                    }
                    // A failed delivery fails the epoch: stop queueing the rest.
                    let failed = || producer.context().failed.lock().is_some();
                    match crate::kafka::send_waiting(producer, record, failed) {
                        Ok(()) => {}
                        // No retry can send it: a dead letter, and the epoch goes on
                        // (the message keeps its seq, so the others keep theirs).
                        Err(KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageSizeTooLarge,
                        )) => {
                            let part = |r: Option<&Range<usize>>| {
                                r.map_or(&[][..], |r| &messages.buf[r.clone()])
                            };
                            let refused = Refused {
                                seq,
                                key: part(messages.keys.get(i)).to_vec(),
                                value: part(value.as_ref()).to_vec(),
                                why: "over the producer's message.max.bytes".into(),
                            };
                            refused_now.push(refused);
                        }
                        Err(e) => return Err(format!("cannot send to {}: {e}", self.topic)),
                    }
                    seq += 1;
                }
                producer.poll(Duration::ZERO);
            }
            Ok(seq)
        })();
        self.messages = messages;
        for refused in refused_now {
            self.refuse(epoch, refused);
        }
        result
    }
}

/// The partition whose committed offset in the sink's group is the newest epoch.
fn epoch_partition(topic: &str, epoch: Option<u64>) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    let offset = epoch.map_or(Offset::Invalid, |e| Offset::Offset(e as i64));
    tpl.add_partition_offset(topic, 0, offset)?;
    Ok(tpl)
}

/// The newest epoch the brokers hold as committed (0: none).
fn committed_epoch(consumer: &BaseConsumer, topic: &str) -> std::result::Result<u64, String> {
    let asked = epoch_partition(topic, None).map_err(|e| e.to_string())?;
    let answer = consumer
        .committed_offsets(asked, TRANSACTION_WAIT)
        .map_err(|e| format!("cannot read the committed epoch: {e}"))?;
    Ok(answer
        .elements()
        .first()
        .and_then(|p| match p.offset() {
            Offset::Offset(n) if n > 0 => Some(n as u64),
            _ => None,
        })
        .unwrap_or(0))
}

impl KafkaSink {
    /// A message of `epoch` no retry can write: a dead letter (once), and skipped
    /// when the epoch is written again.
    fn refuse(&mut self, epoch: u64, refused: Refused) {
        if !self.refused.insert((epoch, refused.seq)) {
            return;
        }
        let Refused {
            seq,
            key,
            value,
            why,
        } = refused;
        self.dead_letters.push_all([NewDeadLetter {
            source: self.source.clone(),
            view: Some(self.view.clone()),
            partition: Some(format!("sink {} epoch {epoch}", self.name)),
            position: Some(seq),
            sequence_number: None,
            reason: format!(
                "sink {}: the message for topic {} ({} bytes of key and value) cannot be \
                 written: {why}; raise properties.message.max.bytes and the topic's \
                 max.message.bytes if it is too large",
                self.name,
                self.topic,
                key.len() + value.len()
            )
            .into(),
            raw: value,
        }]);
        tracing::warn!(sink = %self.name, epoch, seq, "a message the brokers cannot take is a dead letter");
    }
}

/// Commit the open transaction, with `epoch` as the group's offset in it. A commit
/// that timed out may still complete on the brokers: one that librdkafka says can be
/// retried is retried (a few times), not aborted, so that the epoch is not written
/// twice.
fn commit(
    producer: &BaseProducer<Delivery>,
    epochs: &EpochRecord,
    topic: &str,
    epoch: u64,
) -> std::result::Result<(), String> {
    let group = epochs
        .consumer
        .as_ref()
        .and_then(|c| c.group_metadata())
        .ok_or("the epochs' consumer group has no metadata")?;
    let offsets = epoch_partition(topic, Some(epoch)).map_err(|e| e.to_string())?;
    producer
        .send_offsets_to_transaction(&offsets, &group, TRANSACTION_WAIT)
        .map_err(|e| format!("cannot record the epoch in the transaction: {e}"))?;
    let mut tries = 0;
    loop {
        match producer.commit_transaction(TRANSACTION_WAIT) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => tries += 1,
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

impl Sink for KafkaSink {
    fn deliver(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let (epoch, lineage) = (to_write.epoch, to_write.lineage);
        let transactional = self.epochs.is_some();
        self.producer(lineage)?;
        // Committed before a crash kept weir from noting it: not written again.
        if let Some(epochs) = &mut self.epochs {
            let committed = epochs.committed(&self.topic, lineage)?;
            if epoch <= committed {
                tracing::info!(sink = %self.name, epoch, committed, "the brokers hold this epoch already");
                return Ok(0);
            }
        }
        let producer = self.producer.as_ref().expect("made above");
        producer.context().failed.lock().take();
        if transactional && let Err(e) = producer.begin_transaction() {
            self.producer = None;
            return Err(format!(
                "cannot begin the transaction of epoch {epoch}: {e}"
            ));
        }
        let sent = self.send_all(to_write);
        let producer = self.producer.as_ref().expect("made above");
        let mut finished = match sent {
            Ok(n) if let Some(epochs) = &self.epochs => {
                // Every message at the brokers, inside the open transaction (the
                // commit flushes too; this is where a test crashes before it).
                let _ = producer.flush(FLUSH_WAIT);
                crate::failpoint::crash_point("sink-before-commit");
                commit(producer, epochs, &self.topic, epoch)
                    .map(|()| n)
                    .map_err(|e| format!("cannot commit the transaction of epoch {epoch}: {e}"))
            }
            Ok(n) => producer
                .flush(FLUSH_WAIT)
                .map_err(|e| format!("the brokers did not acknowledge epoch {epoch}: {e}"))
                .and_then(|()| match producer.context().failed.lock().take() {
                    Some(e) => Err(format!("a message of epoch {epoch} was not delivered: {e}")),
                    None => Ok(n),
                }),
            Err(e) => Err(e),
        };
        // Refused messages are dead letters. Without a transaction the epoch holds the
        // rest; a transaction that held a refused message was aborted and the epoch is
        // written again without it.
        let refused = std::mem::take(&mut *producer.context().refused.lock());
        if transactional && !refused.is_empty() && finished.is_ok() {
            finished = Err(format!("epoch {epoch} held messages the brokers refused"));
        }
        for r in refused {
            self.refuse(epoch, r);
        }
        let producer = self.producer.as_ref().expect("made above");
        if finished.is_ok() {
            self.refused.retain(|(e, _)| *e > epoch);
            if let Some(epochs) = &mut self.epochs {
                epochs.committed = Some(epoch);
            }
        }
        if finished.is_err() {
            // The epoch is written again, whole, by a new producer: nothing of this
            // attempt is left queued beside it, and a new transactional producer aborts
            // whatever this one left open (by fencing it).
            if transactional {
                let _ = producer.abort_transaction(TRANSACTION_WAIT);
            }
            producer.purge(PurgeConfig::default().queue().inflight());
            self.producer = None;
            tracing::debug!(sink = %self.name, epoch, "delivery failed; it is retried");
        }
        finished
    }
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "kafka",
        kind: "sink",
        doc: "Writes a view's rows, then each change once its checkpoint is durable, to a Kafka topic.",
        declares_columns: false,
        passes_through: Some("properties.<name>: passed to librdkafka"),
        options: [crate::connectors::COMMON_SINK_OPTIONS, &OWN_OPTIONS[..]].concat(),
    },
    fields: field_names::<KafkaSinkOptions>,
    test: crate::connectors::test_kafka,
};

const OWN_OPTIONS: [OptionDoc; 6] = [
    crate::connectors::KAFKA_BROKERS,
    OptionDoc {
        name: "topic",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The topic to write.",
    },
    OptionDoc {
        name: "format",
        kind: "choice",
        choices: &["json", "upsert", "debezium_json"],
        required: false,
        default: Some("json"),
        doc: "json: a row per message; upsert: the key columns as the message key; debezium_json: before and after.",
    },
    OptionDoc {
        name: "key",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "'col[, col]': the message key, a JSON object of these columns; required for upsert.",
    },
    OptionDoc {
        name: "delivery",
        kind: "choice",
        choices: &["at_least_once", "exactly_once"],
        required: false,
        default: Some("at_least_once"),
        doc: "at_least_once: an idempotent producer; exactly_once: each checkpoint epoch in one Kafka transaction.",
    },
    OptionDoc {
        name: "transactional_id",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("weir-sink-<name>-<lineage>"),
        doc: "For exactly_once: the producer's transactional id.",
    },
];
