//! One round of GetRecords: the calls for the shards due, side by side, and what each
//! brought made into chunks (KPL aggregates split, positions per user record), with
//! throttling, expired iterators and failures handled per shard. The round's chunks are
//! decoded side by side on the worker pool, then sent in order: each shard's in its
//! order, shard after shard.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;

use super::{CHUNK_BYTES, MAX_BACKOFF, MIN_POLL, RATE_WINDOW, Reader, now_ms};
use crate::aws::{block_on, describe};
use crate::checkpoint::Position;
use crate::deadletter::NewDeadLetter;
use crate::source::kinesis::kpl::{self, Unpacked};
use crate::source::kinesis::position::ShardPosition;
use crate::source::kinesis::records::{Built, Records, UserRecord};

impl Reader {
    /// One GetRecords for each shard of `due`, side by side, then their records sent in
    /// shard order; false once the pipeline is gone.
    pub(super) fn poll(&mut self, due: Vec<String>) -> bool {
        let stream = self.settings.stream.clone();
        let limit = self.settings.records_per_call;
        let calls: Vec<_> = due
            .iter()
            .map(|shard| {
                let r = &self.reading[shard];
                let client = self.client.clone();
                let (stream, shard, iterator, position) = (
                    stream.clone(),
                    shard.clone(),
                    r.iterator.clone(),
                    r.position.clone(),
                );
                async move {
                    let iterator = match iterator {
                        Some(it) => it,
                        None => shard_iterator(&client, &stream, &shard, &position).await?,
                    };
                    let got = client
                        .get_records()
                        .shard_iterator(&iterator)
                        .limit(limit)
                        .send()
                        .await;
                    match got {
                        Ok(out) => Ok(out),
                        Err(e) => Err(Failure::of_get_records(e)),
                    }
                }
            })
            .collect();
        let results = block_on(futures::future::join_all(calls));
        let mut pending = Vec::new();
        for (shard, result) in due.into_iter().zip(results) {
            // A lease lost while the call was out: its records are the new owner's.
            if !self.holds(&shard) {
                self.drop_shard(&shard);
                continue;
            }
            self.take(&shard, result, &mut pending);
        }
        self.send_pending(pending)
    }

    /// Decode the round's chunks side by side, then send them (and the ends of the
    /// shards read to their end) in order; false once the pipeline is gone.
    fn send_pending(&mut self, mut pending: Vec<Pending>) -> bool {
        let layout = &self.settings.layout;
        // This thread decodes a chunk too, and every chunk no worker has started.
        let built = weir_sql::parallel::run_parts(pending.iter_mut().collect(), |p| match p {
            Pending::Chunk { shard, records } => {
                let after = records.position().cloned()?;
                Some((after, records.build(layout, shard)))
            }
            Pending::End(_) => None,
        });
        for (p, built) in pending.into_iter().zip(built) {
            let shard = match &p {
                Pending::Chunk { shard, .. } | Pending::End(shard) => shard.clone(),
            };
            // A lease lost while an earlier chunk waited for the pipeline: the rest of
            // the shard's records are the new owner's.
            if !self.reading.contains_key(&shard) {
                continue;
            }
            if !self.holds(&shard) {
                self.drop_shard(&shard);
                continue;
            }
            let sent = match (p, built) {
                (Pending::Chunk { records, .. }, Some((after, built))) => {
                    self.send_built(&shard, after, built, records)
                }
                (Pending::End(_), _) => self.finish(&shard),
                (Pending::Chunk { .. }, None) => true,
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// Send a chunk of `shard`'s records (`after`: the shard's position after them),
    /// dead-lettering those that did not decode (all of `records`, when they could not
    /// become a batch); false once the pipeline is gone.
    fn send_built(
        &mut self,
        shard: &str,
        after: ShardPosition,
        built: crate::Result<Built>,
        mut records: Box<Records>,
    ) -> bool {
        let source = &self.settings.name;
        let built = built.unwrap_or_else(|e| {
            tracing::error!(source, shard, error = %e, "cannot build a batch of records");
            Built {
                batch: RecordBatch::new_empty(self.settings.layout.schema()),
                rejected: records.take_rejected(&format!("cannot build a batch of records: {e}")),
            }
        });
        self.feed
            .dead_letter(built.rejected.into_iter().map(|(at, rejected)| {
                let sequence_number = match &at {
                    ShardPosition::After { sequence, sub: _ } => Some(sequence.clone()),
                    _ => None,
                }
                .map(|s| match rejected_sub(&at) {
                    Some(sub) => format!("{s}/{sub}"),
                    None => s,
                });
                NewDeadLetter {
                    source: source.to_string(),
                    view: None,
                    partition: Some(shard.to_string()),
                    position: None,
                    sequence_number,
                    reason: rejected.reason.into(),
                    raw: rejected.raw,
                }
            }));
        let Some(r) = self.reading.get_mut(shard) else {
            return true;
        };
        r.position = after.clone();
        let mut position = Position::default();
        position.0.insert(shard.to_string(), after.encode());
        let sent = self.feed.send(built.batch, position, r.split);
        if let Some(state) = self.shared.shards.lock().get_mut(shard) {
            state.position = Some(after.encode());
        }
        if matches!(after, ShardPosition::After { sub: Some(_), .. }) {
            // Tests: hold a chunk that ends inside an aggregate until a checkpoint has it.
            crate::failpoint::delay_point("kinesis-inside-aggregate", Duration::from_secs(1));
        }
        sent
    }

    /// Act on one shard's GetRecords: its records into chunks on `pending`, and the
    /// shard's end after them when it was read to its end.
    fn take(
        &mut self,
        shard: &str,
        result: Result<GetRecordsOutput, Failure>,
        pending: &mut Vec<Pending>,
    ) {
        let out = match result {
            Ok(out) => out,
            Err(failure) => {
                let r = self.reading.get_mut(shard).expect("a shard being read");
                match failure {
                    Failure::Expired => {
                        // Fetched again from the last position: nothing is lost.
                        tracing::info!(source = %self.settings.name, shard, "the shard iterator expired; fetching a new one");
                        r.iterator = None;
                        r.next_poll = Instant::now();
                        self.shared
                            .expired_iterators
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Failure::Throttled => {
                        r.next_poll = Instant::now() + r.backoff;
                        r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
                        self.shared.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    Failure::Other(why) => {
                        tracing::warn!(source = %self.settings.name, shard, error = %why, "GetRecords failed");
                        *self.shared.waiting.lock() = Some(why);
                        r.iterator = None;
                        r.next_poll = Instant::now() + r.backoff;
                        r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
                    }
                }
                return;
            }
        };
        self.shared.waiting.lock().take();
        let name = self.settings.name.clone();
        let r = self.reading.get_mut(shard).expect("a shard being read");
        r.backoff = MIN_POLL;
        let mut out = out;
        let records = std::mem::take(&mut out.records);
        let n = records.len();
        let mut bytes = 0u64;
        for record in records {
            let data = Bytes::from(record.data.into_inner());
            bytes += data.len() as u64;
            let sequence = record.sequence_number.as_str();
            let partition_key = record.partition_key.as_deref().unwrap_or_default();
            let arrival_ms = record
                .approximate_arrival_timestamp
                .and_then(|t| t.to_millis().ok())
                .unwrap_or_else(now_ms);
            if data.len() > self.settings.max_record_bytes {
                r.records.refuse(
                    ShardPosition::after(sequence, None),
                    &data[..data.len().min(1024)],
                    format!(
                        "the record is {} bytes, over the source's max_record_bytes ({}); its first 1024 bytes are kept here",
                        data.len(),
                        self.settings.max_record_bytes
                    ),
                );
                continue;
            }
            match kpl::unpack(&data) {
                Unpacked::Plain => {
                    r.records.push(
                        &UserRecord {
                            data: &data,
                            partition_key,
                            sequence_number: sequence,
                            sub_sequence: None,
                            arrival_ms,
                        },
                        ShardPosition::after(sequence, None),
                    );
                }
                Unpacked::Refused(why) => {
                    r.records
                        .refuse(ShardPosition::after(sequence, None), &data, why);
                }
                Unpacked::Aggregated(aggregated) => {
                    let last = aggregated.records.len().saturating_sub(1);
                    let skip_to = match r.skip.take() {
                        Some((s, sub)) if s == sequence => Some(sub),
                        _ => None,
                    };
                    for (i, user) in aggregated.records.iter().enumerate() {
                        if skip_to.is_some_and(|k| i as u64 <= k) {
                            continue;
                        }
                        let sub = (i != last).then_some(i as u64);
                        r.records.push(
                            &UserRecord {
                                data: &user.data,
                                partition_key: aggregated.partition_key(i),
                                sequence_number: sequence,
                                sub_sequence: Some(i as u64),
                                arrival_ms,
                            },
                            ShardPosition::after(sequence, sub),
                        );
                        if r.records.full(self.feed.chunk_rows, CHUNK_BYTES) {
                            pending.push(Pending::chunk(shard, &mut r.records));
                        }
                    }
                }
            }
            if r.records.full(self.feed.chunk_rows, CHUNK_BYTES) {
                pending.push(Pending::chunk(shard, &mut r.records));
            }
        }
        if r.records.position().is_some() {
            pending.push(Pending::chunk(shard, &mut r.records));
        }
        // Kinesis's limits count its own records (a KPL aggregate is one).
        r.window.0 += n as u64;
        r.window.1 += bytes;
        self.feed
            .shard_metrics
            .records
            .with_label_values(&[&name, shard])
            .inc_by(n as u64);
        self.feed
            .shard_metrics
            .bytes
            .with_label_values(&[&name, shard])
            .inc_by(bytes);
        let behind = out.millis_behind_latest();
        if let Some(ms) = behind {
            self.feed
                .shard_metrics
                .lag_ms
                .with_label_values(&[&name, shard])
                .set(ms);
        }
        {
            let mut shared = self.shared.shards.lock();
            // Its position moves on as its chunks are sent (`send_built`).
            let state = shared.entry(shard.to_string()).or_default();
            state.position = Some(r.position.encode());
            state.millis_behind = behind;
            if r.window_start.elapsed() >= RATE_WINDOW {
                let secs = r.window_start.elapsed().as_secs_f64();
                state.rates = Some((r.window.0 as f64 / secs, r.window.1 as f64 / secs));
                r.window = (0, 0);
                r.window_start = Instant::now();
            }
        }
        match out.next_shard_iterator() {
            Some(next) => {
                r.iterator = Some(next.to_string());
                // A full page, or records still behind the tip: read on at once (within
                // the per-shard limit); caught up: wait the poll interval.
                let more =
                    n as i32 >= self.settings.records_per_call || behind.is_some_and(|ms| ms > 0);
                r.next_poll = Instant::now()
                    + if more {
                        MIN_POLL
                    } else {
                        self.settings.poll_interval
                    };
            }
            None => pending.push(Pending::End(shard.to_string())),
        }
    }
}

/// What a round sends, in order.
pub(super) enum Pending {
    /// A chunk of one shard's records.
    Chunk {
        shard: String,
        records: Box<Records>,
    },
    /// The shard was read to its end: after its chunks, the end of its split.
    End(String),
}

impl Pending {
    /// The records `held` as a chunk (leaving it empty).
    fn chunk(shard: &str, held: &mut Records) -> Self {
        Pending::Chunk {
            shard: shard.to_string(),
            records: Box::new(std::mem::take(held)),
        }
    }
}

fn rejected_sub(at: &ShardPosition) -> Option<u64> {
    match at {
        ShardPosition::After { sub, .. } => *sub,
        _ => None,
    }
}

/// Why a GetRecords call did not return records.
enum Failure {
    /// The iterator is older than five minutes: fetch a new one from the position.
    Expired,
    /// ProvisionedThroughputExceeded (or KMS throttling): back off.
    Throttled,
    Other(String),
}

impl Failure {
    fn of_get_records(
        e: aws_sdk_kinesis::error::SdkError<
            aws_sdk_kinesis::operation::get_records::GetRecordsError,
        >,
    ) -> Self {
        match e.as_service_error() {
            Some(s) if s.is_expired_iterator_exception() => Failure::Expired,
            Some(s)
                if s.is_provisioned_throughput_exceeded_exception()
                    || s.is_kms_throttling_exception() =>
            {
                Failure::Throttled
            }
            _ => Failure::Other(format!("GetRecords: {}", describe(&e))),
        }
    }
}

/// A shard iterator that reads `shard` from `position`.
async fn shard_iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    position: &ShardPosition,
) -> Result<String, Failure> {
    let request = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard);
    let request = match position {
        ShardPosition::TrimHorizon | ShardPosition::Finished => {
            request.shard_iterator_type(ShardIteratorType::TrimHorizon)
        }
        ShardPosition::AtTimestamp(ms) => request
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
        // Inside an aggregated record: read it again, and skip what was read.
        ShardPosition::After {
            sequence,
            sub: Some(_),
        } => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(sequence),
        ShardPosition::After {
            sequence,
            sub: None,
        } => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(sequence),
    };
    match request.send().await {
        Ok(out) => out.shard_iterator().map(str::to_string).ok_or_else(|| {
            Failure::Other(format!("GetShardIterator gave no iterator for {shard}"))
        }),
        Err(e) => match e.as_service_error() {
            Some(s) if s.is_provisioned_throughput_exceeded_exception() => Err(Failure::Throttled),
            _ => Err(Failure::Other(format!(
                "GetShardIterator: {}",
                describe(&e)
            ))),
        },
    }
}
