//! librdkafka's callbacks for a Kafka source's consumer: errors and statistics into the
//! shared state, and the rebalance callback, which decides where an assigned partition
//! starts: a checkpoint's offset, else where this process stopped reading it (a
//! partition that comes back), else the configured start on the first assignment, else
//! the group's committed offset (partitions that move here from another process, or
//! that were added to the topic: read from the start).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::Shared;
use super::options::Start;
use super::reader::{Partition, partition_key};

/// librdkafka's callbacks: errors, and where assigned partitions start.
pub struct Context {
    pub(super) source: String,
    pub(super) brokers: String,
    pub(super) start: Start,
    pub(super) shared: Arc<Shared>,
    pub(super) first: Mutex<FirstOffsets>,
    /// Assignments and revocations, for the reader to act on after the poll.
    pub(super) changes: Mutex<Vec<(Partition, bool)>>,
}

pub(super) struct FirstOffsets {
    /// From the checkpoint: used once per partition.
    pub(super) resume: BTreeMap<Partition, i64>,
    /// Whether the group has assigned anything yet.
    pub(super) assigned_before: bool,
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

    pub(super) fn first_offset(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: i32,
    ) -> Offset {
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
pub(super) fn offset_at<C: ConsumerContext>(
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
