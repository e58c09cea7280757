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
use datafusion::arrow::array::RecordBatch;

use super::lease::{Keeper, later};
use super::options::Start;
mod fetch;

use super::position::{ShardInfo, ShardPosition, closed_at_start, readable, shards_of};
use super::records::{Layout, Records};
use super::scale::Scaler;
use super::{ShardState, Shared};
use crate::aws::{block_on, describe};
use crate::checkpoint::Position;
use crate::source::connector::Feed;

/// Kinesis allows 5 GetRecords calls a second per shard.
pub(super) const MIN_POLL: Duration = Duration::from_millis(200);
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
    /// Whether the stream was listed once already.
    listed_once: bool,
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
            listed_once: false,
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
    pub fn run(self) {
        let shared = self.shared.clone();
        self.read();
        // The lease keeper stops with the reader (a pipeline gone is not a stop).
        shared.reader_done.store(true, Ordering::Release);
    }

    fn read(mut self) {
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
                self.feed
                    .fail(format!("cannot start the lease keeper: {e}"));
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
        // `last_list` is reset whenever a listing is due at once (a finished shard, a
        // change of the shard count): only the very first listing is the start's.
        let first = !self.listed_once;
        self.listed_once = true;
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
