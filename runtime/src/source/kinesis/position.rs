//! Where a Kinesis source is in each shard, as a checkpoint holds it (one entry per
//! shard, keyed by shard id, in the source's [`Position`]), and which shards may be read
//! now: a child only once every parent it has was read to its end, so that records of
//! one partition key stay in order across a split or a merge.

use std::collections::{BTreeMap, BTreeSet};

use crate::checkpoint::Position;

/// Where reading a shard goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardPosition {
    /// Its oldest record kept.
    TrimHorizon,
    /// The first record that arrived at or after this time (ms since the epoch). A
    /// source started at `latest` records its start this way, so that a restart before
    /// its first record misses nothing written meanwhile.
    AtTimestamp(i64),
    /// After the record `sequence`, or, inside a KPL aggregated record, after its user
    /// record `sub` (those after it are still to read).
    After { sequence: String, sub: Option<u64> },
    /// Read to its end (the shard was closed by a split or merge): never read again.
    Finished,
}

impl ShardPosition {
    pub fn after(sequence: &str, sub: Option<u64>) -> Self {
        ShardPosition::After {
            sequence: sequence.to_string(),
            sub,
        }
    }

    /// As a checkpoint writes it.
    pub fn encode(&self) -> String {
        match self {
            ShardPosition::TrimHorizon => "trim_horizon".into(),
            ShardPosition::AtTimestamp(ms) => format!("at:{ms}"),
            ShardPosition::After {
                sequence,
                sub: None,
            } => sequence.clone(),
            ShardPosition::After {
                sequence,
                sub: Some(sub),
            } => format!("{sequence}/{sub}"),
            ShardPosition::Finished => "finished".into(),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "trim_horizon" => ShardPosition::TrimHorizon,
            "finished" => ShardPosition::Finished,
            _ => match text.strip_prefix("at:") {
                Some(ms) => ShardPosition::AtTimestamp(ms.parse().ok()?),
                None => {
                    let (sequence, sub) = match text.split_once('/') {
                        Some((s, sub)) => (s, Some(sub.parse().ok()?)),
                        None => (text, None),
                    };
                    if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    ShardPosition::after(sequence, sub)
                }
            },
        })
    }
}

/// The shards a checkpoint's position names, by shard id.
pub fn shards_of(position: &Position) -> BTreeMap<String, ShardPosition> {
    position
        .0
        .iter()
        .filter_map(|(shard, p)| Some((shard.clone(), ShardPosition::parse(p)?)))
        .collect()
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    /// The shard it was split from, or one of the two merged into it.
    pub parents: Vec<String>,
    /// Closed by a split or merge: it has an ending sequence number.
    pub closed: bool,
    /// The hash keys it covers, inclusive.
    pub hash_range: (u128, u128),
}

/// The shards to start reading now: those not started nor finished whose parents are
/// all finished or no longer listed (trimmed past the retention period, so read long
/// ago or never to be read). `finished` and `started` are by shard id.
pub fn readable<'a>(
    shards: &'a [ShardInfo],
    finished: &BTreeSet<String>,
    started: &BTreeSet<String>,
) -> Vec<&'a ShardInfo> {
    let listed: BTreeSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    shards
        .iter()
        .filter(|s| !finished.contains(&s.id) && !started.contains(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| finished.contains(p) || !listed.contains(p.as_str()))
        })
        .collect()
}

/// The shards a source started at `latest` treats as finished at its first start: every
/// closed one. Their records were all written before it started.
pub fn closed_at_start(shards: &[ShardInfo]) -> BTreeSet<String> {
    shards
        .iter()
        .filter(|s| s.closed)
        .map(|s| s.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed,
            hash_range: (0, u128::MAX),
        }
    }

    #[test]
    fn positions_read_back_as_written_and_junk_is_not_a_position() {
        for p in [
            ShardPosition::TrimHorizon,
            ShardPosition::AtTimestamp(1_700_000_000_000),
            ShardPosition::after("4963", None),
            ShardPosition::after("4963", Some(12)),
            ShardPosition::Finished,
        ] {
            assert_eq!(ShardPosition::parse(&p.encode()), Some(p));
        }
        for junk in ["", "at:x", "12/x", "abc", "/3"] {
            assert_eq!(ShardPosition::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn children_wait_for_every_parent_to_be_read_to_its_end() {
        // 0 and 1 at the start; 0 split into 2 and 3; then 1 and 2 merged into 4.
        let shards = [
            shard("0", &[], true),
            shard("1", &[], true),
            shard("2", &["0"], true),
            shard("3", &["0"], false),
            shard("4", &["1", "2"], false),
        ];
        let ids = |v: Vec<&ShardInfo>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        let none = BTreeSet::new();
        assert_eq!(ids(readable(&shards, &none, &none)), ["0", "1"]);
        let started: BTreeSet<String> = ["0".into(), "1".into()].into();
        assert!(readable(&shards, &none, &started).is_empty());
        // 0 is finished: its children may go; 4 still waits for 1 and 2.
        let finished: BTreeSet<String> = ["0".into()].into();
        assert_eq!(ids(readable(&shards, &finished, &started)), ["2", "3"]);
        let finished: BTreeSet<String> = ["0".into(), "1".into()].into();
        let started: BTreeSet<String> = ["0".into(), "1".into(), "2".into(), "3".into()].into();
        assert!(
            readable(&shards, &finished, &started).is_empty(),
            "2 is not finished"
        );
        let finished: BTreeSet<String> = ["0".into(), "1".into(), "2".into()].into();
        assert_eq!(ids(readable(&shards, &finished, &started)), ["4"]);
        // A parent trimmed away (no longer listed) does not hold its child back.
        let trimmed = [shard("3", &["0"], false)];
        assert_eq!(ids(readable(&trimmed, &none, &none)), ["3"]);
        assert_eq!(
            closed_at_start(&shards),
            ["0".to_string(), "1".into(), "2".into()].into()
        );
    }
}
