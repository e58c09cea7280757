//! The reader thread of a Kinesis source. It lists the stream's shards at an interval,
//! starts a shard once every parent it has was read to its end, polls the shards it
//! reads with GetRecords (side by side, each within Kinesis's 5 calls a second), and
//! sends each shard's records as chunks of one split with the shard's position after
//! them. KPL aggregated records are split into their user records here; a chunk may end
//! inside one, and its position then says how far (`seq/sub`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;

use super::kpl::{self, Unpacked};
use super::lease::{Keeper, later};
use super::options::Start;
use super::position::{ShardInfo, ShardPosition, closed_at_start, readable, shards_of};
use super::records::{Layout, Records, UserRecord};
use super::scale::Scaler;
use super::{ShardState, Shared};
use crate::aws::{block_on, describe};
use crate::checkpoint::Position;
use crate::deadletter::NewDeadLetter;
use crate::source::connector::Feed;

/// Kinesis allows 5 GetRecords calls a second per shard.
const MIN_POLL: Duration = Duration::from_millis(200);
/// The longest wait after throttling or a failed call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A chunk closes at this many bytes of records, or at `Feed::chunk_rows` records.
const CHUNK_BYTES: usize = 4 << 20;
/// Rates are measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// What the reader thread needs of its source.
pub struct Settings {
    pub name: String,
    pub stream: String,
    pub start: Start,
    pub layout: Layout,
    pub poll_interval: Duration,
    pub shard_refresh: Duration,
    pub max_record_bytes: usize,
    /// GetRecords' `Limit`.
    pub records_per_call: i32,
    /// With a lease table: how often leases are renewed (a third of the failover time).
    pub lease_renewal: Duration,
    /// With `autoscale`: the cool-down and the most shards.
    pub autoscale: Option<(Duration, usize)>,
}

/// A shard being read.
struct Reading {
    split: u32,
    /// Where the next GetRecords reads; fetched again from `position` when missing or
    /// expired.
    iterator: Option<String>,
    position: ShardPosition,
    /// A resumed position inside an aggregated record: its user records up to this one
    /// were read before.
    skip: Option<(String, u64)>,
    next_poll: Instant,
    backoff: Duration,
    records: Records,
    /// Records and bytes read since `window_start`.
    window: (u64, u64),
    window_start: Instant,
}

pub struct Reader {
    settings: Settings,
    client: Client,
    shared: Arc<Shared>,
    feed: Feed,
    /// Shards a checkpoint named, and where.
    resume: BTreeMap<String, ShardPosition>,
    /// Whether reading starts from the configured start (no checkpoint).
    fresh: bool,
    listed: Vec<ShardInfo>,
    last_list: Option<Instant>,
    reading: BTreeMap<String, Reading>,
    finished: BTreeSet<String>,
    splits: BTreeMap<String, u32>,
    /// When the source first started: where a `latest` start reads its shards from.
    started_ms: i64,
    /// The lease keeper's round last acted on.
    held_version: u64,
    /// Splits of finished shards whose children are not all announced yet.
    parked: Vec<(u32, String)>,
    /// With `autoscale` (taken out while it works).
    scaler: Option<Scaler>,
    last_scale_check: Instant,
}

impl Reader {
    pub fn new(
        settings: Settings,
        client: Client,
        shared: Arc<Shared>,
        feed: Feed,
        resume: Option<Position>,
    ) -> Self {
        let resume = resume.map(|p| shards_of(&p)).unwrap_or_default();
        // A checkpoint taken before any shard was announced says nothing either.
        let fresh = resume.is_empty();
        let finished = resume
            .iter()
            .filter(|(_, p)| **p == ShardPosition::Finished)
            .map(|(s, _)| s.clone())
            .collect();
        Self {
            client,
            shared,
            feed,
            resume,
            fresh,
            listed: Vec::new(),
            last_list: None,
            reading: BTreeMap::new(),
            finished,
            splits: BTreeMap::new(),
            started_ms: now_ms(),
            held_version: 0,
            parked: Vec::new(),
            scaler: settings
                .autoscale
                .map(|(cooldown, max)| Scaler::new(cooldown, max)),
            last_scale_check: Instant::now(),
            settings,
        }
    }

    /// Read until the source stops or its pipeline is gone.
    pub fn run(mut self) {
        if !self.feed.wait_for_a_view() {
            return;
        }
        self.started_ms = now_ms();
        if let Some(leases) = self.shared.leases.clone() {
            let keeper = Keeper {
                leases,
                shared: self.shared.clone(),
                stop: self.feed.stop.clone(),
                every: self.settings.lease_renewal,
                start: self.settings.start,
                started_ms: self.started_ms,
                source: self.settings.name.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("kinesis-leases-{}", self.settings.name))
                .spawn(move || keeper.run());
            if let Err(e) = spawned {
                tracing::error!(source = %self.settings.name, error = %e, "cannot start the lease keeper");
                return;
            }
        }
        let mut list_backoff = MIN_POLL;
        while !self.feed.stopped() {
            let due_list = self
                .last_list
                .is_none_or(|at| at.elapsed() >= self.settings.shard_refresh);
            if due_list {
                match self.list_shards() {
                    Ok(()) => list_backoff = MIN_POLL,
                    Err(why) => {
                        tracing::warn!(source = %self.settings.name, error = %why, "cannot list the stream's shards");
                        *self.shared.waiting.lock() = Some(why);
                        self.sleep(list_backoff);
                        list_backoff = (list_backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
                if self.shared.leases.is_none() && !self.start_readable() {
                    return;
                }
                self.release_parked();
            }
            if self.shared.leases.is_some() && !self.apply_leases() {
                return;
            }
            if self.last_scale_check.elapsed() >= Duration::from_secs(1) {
                self.autoscale();
            }
            let now = Instant::now();
            let due: Vec<String> = self
                .reading
                .iter()
                .filter(|(_, r)| r.next_poll <= now)
                .map(|(s, _)| s.clone())
                .collect();
            if due.is_empty() {
                let next = self
                    .reading
                    .values()
                    .map(|r| r.next_poll)
                    .min()
                    .unwrap_or(now + MIN_POLL);
                self.sleep(next.saturating_duration_since(now).min(MIN_POLL));
                continue;
            }
            if !self.poll(due) {
                return;
            }
        }
    }

    /// Sleep `d`, waking early when the source stops.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.feed.stopped() && Instant::now() < until {
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(MIN_POLL),
            );
        }
    }

    /// ListShards, every page.
    fn list_shards(&mut self) -> Result<(), String> {
        let client = self.client.clone();
        let stream = self.settings.stream.clone();
        let shards = block_on(async move {
            let mut shards = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let request = match &token {
                    // A page after the first names the token alone.
                    Some(t) => client.list_shards().next_token(t),
                    None => client.list_shards().stream_name(&stream),
                };
                let page = request.send().await.map_err(|e| describe(&e))?;
                for s in page.shards() {
                    let mut parents = Vec::new();
                    parents.extend(s.parent_shard_id().map(str::to_string));
                    parents.extend(s.adjacent_parent_shard_id().map(str::to_string));
                    shards.push(ShardInfo {
                        id: s.shard_id().to_string(),
                        parents,
                        closed: s
                            .sequence_number_range()
                            .is_some_and(|r| r.ending_sequence_number().is_some()),
                        hash_range: s
                            .hash_key_range()
                            .and_then(|r| {
                                Some((
                                    r.starting_hash_key().parse().ok()?,
                                    r.ending_hash_key().parse().ok()?,
                                ))
                            })
                            .unwrap_or((0, u128::MAX)),
                    });
                }
                match page.next_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => return Ok::<_, String>(shards),
                }
            }
        })?;
        self.shared.waiting.lock().take();
        let first = self.last_list.is_none();
        if self.shared.leases.is_some() {
            *self.shared.listed.lock() = Some(shards.clone());
        }
        self.listed = shards;
        self.last_list = Some(Instant::now());
        if self.fresh
            && first
            && self.settings.start == Start::Latest
            && self.shared.leases.is_none()
        {
            // What was closed before the source first started holds nothing new: finished,
            // and so in its checkpoints, so that a restart does not read it either.
            let mut position = Position::default();
            for id in closed_at_start(&self.listed) {
                position
                    .0
                    .insert(id.clone(), ShardPosition::Finished.encode());
                self.finished.insert(id);
            }
            if !position.0.is_empty() {
                let split = self.splits.len() as u32;
                self.splits.insert(String::new(), split);
                let empty = RecordBatch::new_empty(self.settings.layout.schema());
                self.feed.send(empty, position, split);
                self.feed.split_gone(split);
            }
        }
        Ok(())
    }

    /// Start every shard that may be read now; false once the pipeline is gone.
    fn start_readable(&mut self) -> bool {
        let started: BTreeSet<String> = self.reading.keys().cloned().collect();
        let ready: Vec<ShardInfo> = readable(&self.listed, &self.finished, &started)
            .into_iter()
            .cloned()
            .collect();
        for shard in ready {
            let position = match self.resume.get(&shard.id) {
                Some(p) => p.clone(),
                // Not in the checkpoint: it came after it (a reshard), so all of it is
                // new.
                None if !self.fresh => ShardPosition::TrimHorizon,
                None => self.initial(&shard),
            };
            if !self.start_shard(&shard.id, position) {
                return false;
            }
        }
        true
    }

    /// Where a shard nobody has read starts, by the `start` option.
    fn initial(&self, shard: &ShardInfo) -> ShardPosition {
        // Closed shards of the first listing are finished already (list_shards).
        initial(self.settings.start, self.started_ms, shard, false)
    }

    /// Start reading `shard` from `position`; false once the pipeline is gone.
    fn start_shard(&mut self, shard: &str, position: ShardPosition) -> bool {
        let next = self.splits.len() as u32;
        let split = *self.splits.entry(shard.to_string()).or_insert(next);
        let skip = match &position {
            ShardPosition::After {
                sequence,
                sub: Some(sub),
            } => Some((sequence.clone(), *sub)),
            _ => None,
        };
        tracing::info!(source = %self.settings.name, shard, position = %position.encode(), "reading a shard");
        // Announce the split (no rows, no position), so that it holds the watermark back
        // from now; then its position, so that a checkpoint holds where it starts.
        let empty = || RecordBatch::new_empty(self.settings.layout.schema());
        let mut start = Position::default();
        start.0.insert(shard.to_string(), position.encode());
        if !self.feed.send(empty(), Position::default(), split)
            || !self.feed.send(empty(), start, split)
        {
            return false;
        }
        self.shared
            .shards
            .lock()
            .insert(shard.to_string(), ShardState::default());
        self.reading.insert(
            shard.to_string(),
            Reading {
                split,
                iterator: None,
                position,
                skip,
                next_poll: Instant::now(),
                backoff: MIN_POLL,
                records: Records::default(),
                window: (0, 0),
                window_start: Instant::now(),
            },
        );
        true
    }

    /// With a lease table: act on what the lease keeper holds now. Shards whose lease
    /// went to another process stop being read (here, between GetRecords calls); shards
    /// newly held start from the later of the lease's checkpoint and what this process
    /// read of them. False once the pipeline is gone.
    fn apply_leases(&mut self) -> bool {
        let version = self.shared.held_version.load(Ordering::Acquire);
        if version == self.held_version {
            return true;
        }
        self.held_version = version;
        let Some(held) = self.shared.held.lock().clone() else {
            return true;
        };
        self.finished.extend(held.finished.iter().cloned());
        let lost: Vec<String> = self
            .reading
            .keys()
            .filter(|s| !held.shards.contains_key(*s))
            .cloned()
            .collect();
        for shard in lost {
            self.drop_shard(&shard);
        }
        for (shard, checkpoint) in held.shards {
            if self.reading.contains_key(&shard) || self.finished.contains(&shard) {
                continue;
            }
            let position = match self.resume.get(&shard) {
                Some(ours) => later(checkpoint, ours.clone()),
                None => checkpoint,
            };
            if position == ShardPosition::Finished {
                self.finished.insert(shard);
                continue;
            }
            if !self.start_shard(&shard, position) {
                return false;
            }
        }
        self.release_parked();
        true
    }

    /// Whether this process may read `shard` now (always, without a lease table).
    fn holds(&self, shard: &str) -> bool {
        self.shared.leases.is_none()
            || self
                .shared
                .held
                .lock()
                .as_ref()
                .is_some_and(|h| h.shards.contains_key(shard))
    }

    /// Stop reading `shard` (its lease is another process's); remember where it was.
    fn drop_shard(&mut self, shard: &str) {
        let Some(r) = self.reading.remove(shard) else {
            return;
        };
        tracing::info!(source = %self.settings.name, shard, "stopped reading: its lease is another process's");
        self.resume.insert(shard.to_string(), r.position);
        self.feed.split_gone(r.split);
        self.feed.shard_metrics.forget(&self.settings.name, shard);
        self.shared.shards.lock().remove(shard);
    }

    /// With `autoscale`: change the shard count when the write rate calls for another.
    fn autoscale(&mut self) {
        self.last_scale_check = Instant::now();
        let Some(scaler) = self.scaler.take() else {
            return;
        };
        let needed = super::advice(self.shared.shards.lock().values()).needed;
        let open: Vec<ShardInfo> = self.listed.iter().filter(|s| !s.closed).cloned().collect();
        let Some(target) = needed.and_then(|n| scaler.target(open.len(), n)) else {
            self.scaler = Some(scaler);
            return;
        };
        let (client, stream) = (self.client.clone(), self.settings.stream.clone());
        let (scaler, done) = block_on(async move {
            let mut scaler = scaler;
            let open: Vec<&ShardInfo> = open.iter().collect();
            let done = scaler.scale(&client, &stream, &open, target).await;
            (scaler, done)
        });
        self.scaler = Some(scaler);
        let said = match done {
            Ok(what) => {
                tracing::info!(source = %self.settings.name, change = %what, "shard count changed");
                // The new shards are listed soon.
                self.last_list = None;
                what
            }
            Err(why) => {
                tracing::warn!(source = %self.settings.name, error = %why, "cannot change the shard count");
                format!("failed: {why}")
            }
        };
        *self.shared.last_scale.lock() = Some(said);
    }

    /// One GetRecords for each shard of `due`, side by side, then their records sent in
    /// shard order; false once the pipeline is gone.
    fn poll(&mut self, due: Vec<String>) -> bool {
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
        for (shard, result) in due.into_iter().zip(results) {
            // A lease lost while the call was out: its records are the new owner's.
            if !self.holds(&shard) {
                self.drop_shard(&shard);
                continue;
            }
            if !self.take(&shard, result) {
                return false;
            }
        }
        true
    }

    /// Act on one shard's GetRecords; false once the pipeline is gone.
    fn take(&mut self, shard: &str, result: Result<GetRecordsOutput, Failure>) -> bool {
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
                return true;
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
                        if r.records.full(self.feed.chunk_rows, CHUNK_BYTES)
                            && !send(&self.feed, &name, &self.settings.layout, shard, r)
                        {
                            return false;
                        }
                    }
                }
            }
            if r.records.full(self.feed.chunk_rows, CHUNK_BYTES)
                && !send(&self.feed, &name, &self.settings.layout, shard, r)
            {
                return false;
            }
        }
        if !send(&self.feed, &name, &self.settings.layout, shard, r) {
            return false;
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
                true
            }
            None => self.finish(shard),
        }
    }

    /// `shard` was read to its end (closed by a split or merge): mark it finished, so
    /// its children may start and a restart never reads it again.
    fn finish(&mut self, shard: &str) -> bool {
        let r = self.reading.remove(shard).expect("a shard being read");
        tracing::info!(source = %self.settings.name, shard, "shard read to its end");
        let mut position = Position::default();
        position
            .0
            .insert(shard.to_string(), ShardPosition::Finished.encode());
        if !self.feed.send(
            RecordBatch::new_empty(self.settings.layout.schema()),
            position,
            r.split,
        ) {
            return false;
        }
        // Its split holds the watermark back until its children hold it: their rows
        // go on from its time, and would be late by a watermark the others moved on.
        self.parked.push((r.split, shard.to_string()));
        self.feed.shard_metrics.forget(&self.settings.name, shard);
        self.shared.shards.lock().remove(shard);
        self.finished.insert(shard.to_string());
        // Its children may be listed already, or come with the next listing.
        self.last_list = None;
        true
    }

    /// Let go of finished shards' splits whose children are all announced.
    fn release_parked(&mut self) {
        let (listed, splits) = (&self.listed, &self.splits);
        self.parked.retain(|(split, parent)| {
            let mut children = listed
                .iter()
                .filter(|s| s.parents.contains(parent))
                .peekable();
            let announced =
                children.peek().is_some() && children.all(|c| splits.contains_key(&c.id));
            if announced {
                self.feed.split_gone(*split);
            }
            !announced
        });
    }
}

/// Send the records `r` holds as one chunk of its split, dead-lettering those that do
/// not decode; false once the pipeline is gone.
fn send(feed: &Feed, source: &str, layout: &Layout, shard: &str, r: &mut Reading) -> bool {
    let Some(after) = r.records.position().cloned() else {
        return true;
    };
    let built = match r.records.build(layout, shard) {
        Ok(built) => built,
        Err(e) => {
            tracing::error!(source, shard, error = %e, "cannot build a batch of records");
            return true;
        }
    };
    feed.dead_letter(built.rejected.into_iter().map(|(at, rejected)| {
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
    r.position = after.clone();
    let mut position = Position::default();
    position.0.insert(shard.to_string(), after.encode());
    let sent = feed.send(built.batch, position, r.split);
    if matches!(after, ShardPosition::After { sub: Some(_), .. }) {
        // Tests: hold a chunk that ends inside an aggregate until a checkpoint has it.
        crate::failpoint::delay_point("kinesis-inside-aggregate", Duration::from_secs(1));
    }
    sent
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

/// Where a shard nobody has read starts: by the `start` option; with `latest`, a shard
/// already closed at the first listing (`first`) is not read (it holds nothing new).
pub(super) fn initial(
    start: Start,
    started_ms: i64,
    shard: &ShardInfo,
    first: bool,
) -> ShardPosition {
    match start {
        Start::TrimHorizon => ShardPosition::TrimHorizon,
        Start::Latest if shard.closed && first => ShardPosition::Finished,
        Start::Latest => ShardPosition::AtTimestamp(started_ms),
        Start::Timestamp(ms) => ShardPosition::AtTimestamp(ms),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
