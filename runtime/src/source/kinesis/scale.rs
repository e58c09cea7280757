//! `autoscale = true`: the stream's shard count follows its write rate. When the shards
//! the observed rate needs (see [`super::advice`]) differ from the open ones, the
//! count changes, at most once per cool-down and within 1 and `max_shards`: with
//! UpdateShardCount (uniform scaling), or, where the endpoint lacks it, one SplitShard
//! of the widest open shard or one MergeShards of the two adjacent open shards that
//! cover the least.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ScalingType;

use super::position::ShardInfo;
use crate::aws::describe;

/// What autoscaling needs and remembers.
pub struct Scaler {
    pub cooldown: Duration,
    pub max_shards: usize,
    last_change: Option<Instant>,
    /// The endpoint refused UpdateShardCount: split and merge instead.
    no_update_shard_count: bool,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Split { shard: String, at: u128 },
    Merge { shard: String, adjacent: String },
}

impl Scaler {
    pub fn new(cooldown: Duration, max_shards: usize) -> Self {
        Self {
            cooldown,
            max_shards,
            last_change: None,
            no_update_shard_count: false,
        }
    }

    /// The shard count to move to, if any: `needed` within 1 and `max_shards`, and
    /// within half and double the `open` count (UpdateShardCount's own bounds), when it
    /// differs from the open count and the cool-down has passed.
    pub fn target(&self, open: usize, needed: usize) -> Option<usize> {
        let target = needed
            .clamp(open.div_ceil(2), open * 2)
            .clamp(1, self.max_shards.max(1));
        let cooled = self
            .last_change
            .is_none_or(|at| at.elapsed() >= self.cooldown);
        (target != open && open > 0 && cooled).then_some(target)
    }

    /// Move the stream's open shards toward `target`; what was done, in words.
    pub async fn scale(
        &mut self,
        client: &Client,
        stream: &str,
        open: &[&ShardInfo],
        target: usize,
    ) -> Result<String, String> {
        self.last_change = Some(Instant::now());
        if !self.no_update_shard_count {
            let updated = client
                .update_shard_count()
                .stream_name(stream)
                .target_shard_count(target as i32)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await;
            match updated {
                Ok(_) => {
                    return Ok(format!(
                        "UpdateShardCount from {} to {target} shards",
                        open.len()
                    ));
                }
                Err(e) if e.code().is_some_and(|c| c.starts_with("UnknownOperation")) => {
                    tracing::info!(
                        stream,
                        "the endpoint has no UpdateShardCount: splitting and merging instead"
                    );
                    self.no_update_shard_count = true;
                }
                Err(e) => return Err(format!("UpdateShardCount: {}", describe(&e))),
            }
        }
        match step(open, target) {
            Some(Change::Split { shard, at }) => {
                client
                    .split_shard()
                    .stream_name(stream)
                    .shard_to_split(&shard)
                    .new_starting_hash_key(at.to_string())
                    .send()
                    .await
                    .map_err(|e| format!("SplitShard {shard}: {}", describe(&e)))?;
                Ok(format!(
                    "split {shard}: {} open shards, toward {target}",
                    open.len() + 1
                ))
            }
            Some(Change::Merge { shard, adjacent }) => {
                client
                    .merge_shards()
                    .stream_name(stream)
                    .shard_to_merge(&shard)
                    .adjacent_shard_to_merge(&adjacent)
                    .send()
                    .await
                    .map_err(|e| format!("MergeShards {shard} and {adjacent}: {}", describe(&e)))?;
                Ok(format!(
                    "merged {shard} and {adjacent}: {} open shards, toward {target}",
                    open.len() - 1
                ))
            }
            None => Err(format!(
                "no split or merge brings {} open shards toward {target}",
                open.len()
            )),
        }
    }
}

/// One split or merge from the `open` shards toward `target`.
pub fn step(open: &[&ShardInfo], target: usize) -> Option<Change> {
    let width = |s: &ShardInfo| s.hash_range.1 - s.hash_range.0;
    if target > open.len() {
        let widest = open.iter().max_by_key(|s| width(s))?;
        let (start, end) = widest.hash_range;
        (end > start).then(|| Change::Split {
            shard: widest.id.clone(),
            at: start + (end - start) / 2 + 1,
        })
    } else if target < open.len() {
        let mut sorted: Vec<&&ShardInfo> = open.iter().collect();
        sorted.sort_by_key(|s| s.hash_range.0);
        sorted
            .windows(2)
            .filter(|w| w[0].hash_range.1.checked_add(1) == Some(w[1].hash_range.0))
            .min_by_key(|w| width(w[0]).saturating_add(width(w[1])))
            .map(|w| Change::Merge {
                shard: w[0].id.clone(),
                adjacent: w[1].id.clone(),
            })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: vec![],
            closed: false,
            hash_range: (start, end),
        }
    }

    #[test]
    fn the_target_stays_within_bounds_and_waits_for_the_cooldown() {
        let mut s = Scaler::new(Duration::from_secs(60), 4);
        assert_eq!(s.target(2, 9), Some(4), "never above max_shards");
        assert_eq!(s.target(2, 0), Some(1), "never below 1");
        assert_eq!(s.target(1, 3), Some(2), "at most double");
        assert_eq!(s.target(4, 1), Some(2), "at least half");
        assert_eq!(s.target(3, 3), None, "already there");
        s.last_change = Some(Instant::now());
        assert_eq!(s.target(2, 4), None, "within the cool-down");
    }

    #[test]
    fn splits_take_the_widest_shard_and_merges_two_adjacent_narrow_ones() {
        let (a, b, c) = (
            shard("a", 0, 99),
            shard("b", 100, 149),
            shard("c", 150, 199),
        );
        let open = [&a, &b, &c];
        assert_eq!(
            step(&open, 4),
            Some(Change::Split {
                shard: "a".into(),
                at: 50
            })
        );
        assert_eq!(
            step(&open, 2),
            Some(Change::Merge {
                shard: "b".into(),
                adjacent: "c".into()
            })
        );
        let gap = shard("d", 300, 400);
        assert_eq!(step(&[&a, &gap], 1), None, "not adjacent: no merge");
    }
}
