//! Shard leases, the Kinesis Client Library's model: several processes reading one
//! stream share its shards through a DynamoDB table, one item per shard:
//!
//! | attribute | meaning |
//! | --- | --- |
//! | `shard_id` (key) | the shard |
//! | `lease_owner` | the process reading it (`""`: nobody) |
//! | `lease_counter` | bumped on every renewal and take; the condition of every write |
//! | `checkpoint` | where the shard's records are read up to, once a weir checkpoint that covers them is durable (`trim_horizon`, `at:<ms>`, `seq`, `seq/sub`, `finished`) |
//! | `parent_shard_ids` | its parents, comma-separated |
//!
//! A process renews its leases every third of the failover time; a lease whose counter
//! has not moved for the failover time is expired and may be taken. Each process aims
//! at its share (the eligible leases over the processes seen), takes expired or free
//! leases first, and takes one lease from the busiest process when none is free. A
//! child shard's lease is eligible only once its parents' checkpoints say `finished`.
//! A lost conditional write means another process has the lease: the reader stops
//! reading that shard at the next chunk boundary.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Shared;
use super::options::Start;
use super::position::{ShardInfo, ShardPosition};
use super::reader::initial;
use crate::aws::{block_on, describe};

const SHARD: &str = "shard_id";
const OWNER: &str = "lease_owner";
const COUNTER: &str = "lease_counter";
const CHECKPOINT: &str = "checkpoint";
const PARENTS: &str = "parent_shard_ids";

/// One item of the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: String,
    pub owner: String,
    pub counter: i64,
    pub checkpoint: ShardPosition,
    pub parents: Vec<String>,
}

/// What one round of lease keeping found.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// The leases this process holds now, with their checkpoints.
    pub shards: BTreeMap<String, ShardPosition>,
    /// Shards the table records as read to their end.
    pub finished: BTreeSet<String>,
    /// Processes holding leases that are not expired, this one included.
    pub processes: usize,
}

/// This process's side of a lease table.
pub struct Leases {
    client: Client,
    table: String,
    /// This process's name in the table.
    me: String,
    failover: Duration,
    /// Others' leases: the owner and counter last seen, and since when.
    seen: HashMap<String, (String, i64, Instant)>,
    /// Ours: the counter our last write left.
    held: BTreeMap<String, i64>,
    /// Ours: the checkpoint the table holds, so a write never moves it back (a position
    /// from before the lease was lost and taken again) nor writes it again unchanged.
    written: BTreeMap<String, ShardPosition>,
    /// Leases taken this round, with the checkpoint the take's answer held.
    taken: BTreeMap<String, ShardPosition>,
}

impl Leases {
    pub fn new(client: Client, table: &str, me: String, failover: Duration) -> Self {
        Self {
            client,
            table: table.to_string(),
            me,
            failover,
            seen: HashMap::new(),
            held: BTreeMap::new(),
            written: BTreeMap::new(),
            taken: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Create the table if it is missing (keyed by `shard_id`, paid per request), and
    /// wait until it is active.
    pub async fn ensure_table(&self) -> Result<(), String> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        match described {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(SHARD)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(|e| e.to_string())?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(SHARD)
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(|e| e.to_string())?,
                    )
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await;
                // Another process may have created it meanwhile.
                if let Err(e) = created
                    && !e
                        .as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception())
                {
                    return Err(format!(
                        "cannot create lease table {}: {}",
                        self.table,
                        describe(&e)
                    ));
                }
            }
            Err(e) => {
                return Err(format!(
                    "cannot read lease table {}: {}",
                    self.table,
                    describe(&e)
                ));
            }
        }
        for _ in 0..600 {
            let d = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("lease table {} did not become active", self.table))
    }

    /// Every lease in the table (a strongly consistent scan).
    async fn scan(&self) -> Result<BTreeMap<String, Lease>, String> {
        let mut leases = BTreeMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| format!("cannot scan lease table {}: {}", self.table, describe(&e)))?;
            for item in page.items() {
                if let Some(lease) = lease_of(item) {
                    leases.insert(lease.shard.clone(), lease);
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(leases),
            }
        }
    }

    /// One round: add leases for shards the table lacks (at `initial`), renew ours
    /// (those lost are dropped), and take our share of the eligible ones.
    pub async fn keep(
        &mut self,
        listed: &[ShardInfo],
        initial: impl Fn(&ShardInfo) -> ShardPosition,
    ) -> Result<Held, String> {
        let mut leases = self.scan().await?;
        let missing: Vec<&ShardInfo> = listed
            .iter()
            .filter(|s| !leases.contains_key(&s.id))
            .collect();
        for shard in &missing {
            let lease = Lease {
                shard: shard.id.clone(),
                owner: String::new(),
                counter: 0,
                checkpoint: initial(shard),
                parents: shard.parents.clone(),
            };
            // Another process may add it first: then its item stands.
            self.create(&lease).await?;
        }
        if !missing.is_empty() {
            leases = self.scan().await?;
        }
        // A lease the table says is ours that we do not know of (a take whose answer
        // was lost): ours to renew, not left to expire.
        for lease in leases.values() {
            if lease.owner == self.me && !self.held.contains_key(&lease.shard) {
                self.held.insert(lease.shard.clone(), lease.counter);
            }
        }
        self.renew(&leases).await?;
        let now = Instant::now();
        // Others' leases: expired when their counter has not moved for the failover time.
        let mut expired = BTreeSet::new();
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for lease in leases.values() {
            if lease.owner == self.me {
                continue;
            }
            let seen = self
                .seen
                .entry(lease.shard.clone())
                .or_insert_with(|| (lease.owner.clone(), lease.counter, now));
            if seen.0 != lease.owner || seen.1 != lease.counter {
                *seen = (lease.owner.clone(), lease.counter, now);
            }
            if lease.owner.is_empty() || now.duration_since(seen.2) >= self.failover {
                expired.insert(lease.shard.clone());
            } else if lease.checkpoint != ShardPosition::Finished {
                owners
                    .entry(lease.owner.clone())
                    .or_default()
                    .push(lease.shard.clone());
            }
        }
        let finished: BTreeSet<String> = leases
            .values()
            .filter(|l| l.checkpoint == ShardPosition::Finished)
            .map(|l| l.shard.clone())
            .collect();
        // Finished shards are read: their leases need no keeping.
        self.held.retain(|shard, _| !finished.contains(shard));
        // A shard no longer listed was trimmed past the retention period: it cannot be
        // read, and does not hold its children back (as without a lease table).
        let listed_ids: BTreeSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
        let eligible: Vec<&Lease> = leases
            .values()
            .filter(|l| !finished.contains(&l.shard) && listed_ids.contains(l.shard.as_str()))
            .filter(|l| {
                l.parents
                    .iter()
                    .all(|p| finished.contains(p) || !listed_ids.contains(p.as_str()))
            })
            .collect();
        let processes = owners.len() + 1;
        let share = eligible.len().div_ceil(processes);
        let mut free: Vec<&Lease> = eligible
            .iter()
            .copied()
            .filter(|l| expired.contains(&l.shard))
            .collect();
        while self.held.len() < share {
            let Some(lease) = free.pop() else { break };
            self.take(lease).await?;
        }
        if self.held.len() < share {
            // None free: one lease from the busiest process, if it holds two more than
            // this one (one a round, so the processes settle without flapping).
            let mine = self.held.len();
            if let Some((_, shards)) = owners
                .iter()
                .filter(|(_, s)| s.len() > mine + 1)
                .max_by_key(|(_, s)| s.len())
                && let Some(lease) = shards
                    .iter()
                    .filter_map(|s| eligible.iter().find(|l| &l.shard == s))
                    .next()
            {
                tracing::info!(table = %self.table, shard = %lease.shard, from = %lease.owner, "taking a lease from a busier process");
                self.take(lease).await?;
            }
        }
        let mut taken = std::mem::take(&mut self.taken);
        let shards: BTreeMap<String, ShardPosition> = self
            .held
            .keys()
            .filter_map(|s| {
                let checkpoint = match taken.remove(s) {
                    Some(now) => now,
                    None => leases.get(s)?.checkpoint.clone(),
                };
                Some((s.clone(), checkpoint))
            })
            .collect();
        self.written = shards.clone();
        Ok(Held {
            shards,
            finished,
            processes,
        })
    }

    /// Add a lease; false if one was there.
    async fn create(&self, lease: &Lease) -> Result<bool, String> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(SHARD, AttributeValue::S(lease.shard.clone()))
            .item(OWNER, AttributeValue::S(String::new()))
            .item(COUNTER, AttributeValue::N("0".into()))
            .item(CHECKPOINT, AttributeValue::S(lease.checkpoint.encode()))
            .item(PARENTS, AttributeValue::S(lease.parents.join(",")))
            .condition_expression("attribute_not_exists(#s)")
            .expression_attribute_names("#s", SHARD)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("cannot add a lease: {}", describe(&e))),
        }
    }

    /// Renew every lease we hold; a lease another process changed is dropped.
    async fn renew(&mut self, leases: &BTreeMap<String, Lease>) -> Result<(), String> {
        let held: Vec<(String, i64)> = self.held.iter().map(|(s, c)| (s.clone(), *c)).collect();
        for (shard, counter) in held {
            let still_ours = leases
                .get(&shard)
                .is_some_and(|l| l.owner == self.me && l.counter == counter);
            if !still_ours || !self.bump(&shard, &self.me.clone(), counter).await? {
                tracing::warn!(table = %self.table, shard, "lease lost to another process");
                self.held.remove(&shard);
            }
        }
        Ok(())
    }

    /// Take `lease` as last seen (its owner and counter are the condition).
    async fn take(&mut self, lease: &Lease) -> Result<(), String> {
        if self.bump(&lease.shard, &lease.owner, lease.counter).await? {
            tracing::info!(table = %self.table, shard = %lease.shard, "lease taken");
        }
        Ok(())
    }

    /// Set the owner to us and the counter one up, if the lease still has `owner` and
    /// `counter`; whether it did.
    async fn bump(&mut self, shard: &str, owner: &str, counter: i64) -> Result<bool, String> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(SHARD, AttributeValue::S(shard.to_string()))
            .update_expression("SET #o = :me, #c = :next")
            .condition_expression("#o = :owner AND #c = :counter")
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_names("#c", COUNTER)
            .expression_attribute_values(":me", AttributeValue::S(self.me.clone()))
            .expression_attribute_values(":next", AttributeValue::N((counter + 1).to_string()))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_string()))
            .expression_attribute_values(":counter", AttributeValue::N(counter.to_string()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => {
                self.held.insert(shard.to_string(), counter + 1);
                // The checkpoint as the table holds it now: the last owner may have
                // written one after our scan.
                if let Some(lease) = out.attributes().and_then(lease_of) {
                    self.taken.insert(shard.to_string(), lease.checkpoint);
                }
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("cannot write lease {shard}: {}", describe(&e))),
        }
    }

    /// Record `position` as `shard`'s checkpoint, if we hold its lease and it is ahead of
    /// the one recorded; false when the lease is not ours (any more).
    pub async fn checkpoint(
        &mut self,
        shard: &str,
        position: &ShardPosition,
    ) -> Result<bool, String> {
        let Some(&counter) = self.held.get(shard) else {
            return Ok(false);
        };
        if let Some(known) = self.written.get(shard)
            && later(position.clone(), known.clone()) == *known
        {
            return Ok(true);
        }
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(SHARD, AttributeValue::S(shard.to_string()))
            .update_expression("SET #p = :p")
            .condition_expression("#o = :me AND #c = :counter")
            .expression_attribute_names("#p", CHECKPOINT)
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_names("#c", COUNTER)
            .expression_attribute_values(":p", AttributeValue::S(position.encode()))
            .expression_attribute_values(":me", AttributeValue::S(self.me.clone()))
            .expression_attribute_values(":counter", AttributeValue::N(counter.to_string()))
            .send()
            .await;
        match updated {
            Ok(_) => {
                self.written.insert(shard.to_string(), position.clone());
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                // Taken by another process (renewals and checkpoints take turns on one
                // lock, so the counter is the one our last write left).
                self.held.remove(shard);
                Ok(false)
            }
            Err(e) => Err(format!("cannot checkpoint lease {shard}: {}", describe(&e))),
        }
    }
}

/// Keeps a process's leases on a thread of its own, so that a reader blocked on a busy
/// pipeline never lets them expire: every renewal interval it publishes what the
/// process holds (`Shared::held`), for the reader to act on.
pub struct Keeper {
    pub leases: Arc<tokio::sync::Mutex<Leases>>,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    pub every: Duration,
    pub start: Start,
    pub started_ms: i64,
    pub source: String,
}

impl Keeper {
    pub fn run(self) {
        let mut first = true;
        let mut table_ready = false;
        let mut last_kept = Instant::now();
        while !self.stop.load(Ordering::Relaxed) && !self.shared.reader_done.load(Ordering::Acquire)
        {
            let listed = self.shared.listed.lock().clone();
            if let Some(listed) = listed {
                let leases = self.leases.clone();
                let (start, started_ms) = (self.start, self.started_ms);
                let ready = table_ready;
                let kept = block_on(async move {
                    let mut leases = leases.lock().await;
                    if !ready {
                        leases.ensure_table().await?;
                    }
                    leases
                        .keep(&listed, |s| initial(start, started_ms, s, first))
                        .await
                });
                match kept {
                    Ok(held) => {
                        table_ready = true;
                        first = false;
                        last_kept = Instant::now();
                        self.shared
                            .processes
                            .store(held.processes as u64, Ordering::Relaxed);
                        *self.shared.held.lock() = Some(held);
                        self.shared.held_version.fetch_add(1, Ordering::AcqRel);
                        self.shared.lease_error.lock().take();
                    }
                    Err(why) => {
                        tracing::warn!(source = %self.source, error = %why, "cannot keep the shard leases");
                        *self.shared.lease_error.lock() = Some(why);
                        // Not renewed for two rounds (two thirds of the failover time):
                        // others may take them soon, so stop reading them now, as the
                        // KCL does. A later round renews those still ours.
                        if last_kept.elapsed() >= self.every * 2 {
                            let mut held = self.shared.held.lock();
                            if held.as_ref().is_some_and(|h| !h.shards.is_empty()) {
                                *held = Some(Held::default());
                                self.shared.held_version.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                    }
                }
            }
            let until = Instant::now() + self.every;
            while !self.stop.load(Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn lease_of(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    Some(Lease {
        shard: text(SHARD)?,
        owner: text(OWNER).unwrap_or_default(),
        counter: item.get(COUNTER)?.as_n().ok()?.parse().ok()?,
        checkpoint: ShardPosition::parse(&text(CHECKPOINT)?)?,
        parents: text(PARENTS)
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// The later of two positions of one shard: a lease's checkpoint and what this process
/// read, whichever has gone further.
pub fn later(a: ShardPosition, b: ShardPosition) -> ShardPosition {
    fn rank(p: &ShardPosition) -> u8 {
        match p {
            ShardPosition::TrimHorizon => 0,
            ShardPosition::AtTimestamp(_) => 1,
            ShardPosition::After { .. } => 2,
            ShardPosition::Finished => 3,
        }
    }
    match (&a, &b) {
        (
            ShardPosition::After {
                sequence: sa,
                sub: ua,
            },
            ShardPosition::After {
                sequence: sb,
                sub: ub,
            },
        ) => {
            // Sequence numbers are decimal: longer is larger, then by digits. Inside an
            // aggregate (`Some`) is before its end (`None`).
            let by_sequence = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb));
            let by_sub = match (ua, ub) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => x.cmp(y),
            };
            if by_sequence.then(by_sub).is_ge() {
                a
            } else {
                b
            }
        }
        _ if rank(&a) >= rank(&b) => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_position_wins_whichever_side_it_is_on() {
        let after = ShardPosition::after;
        let cases = [
            (after("99", None), after("100", None), after("100", None)),
            (
                after("100", Some(3)),
                after("100", None),
                after("100", None),
            ),
            (
                after("100", Some(3)),
                after("100", Some(5)),
                after("100", Some(5)),
            ),
            (
                ShardPosition::TrimHorizon,
                after("5", None),
                after("5", None),
            ),
            (
                ShardPosition::Finished,
                after("5", None),
                ShardPosition::Finished,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(later(a.clone(), b.clone()), want, "{a:?} {b:?}");
            assert_eq!(later(b.clone(), a.clone()), want, "{b:?} {a:?}");
        }
    }
}
