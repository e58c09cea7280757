//! `WITH (connector = 'kinesis', ...)`: the options, and where reading starts.

use std::time::Duration;

use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use serde::Deserialize;

use crate::{Error, Result};

/// Options of a Kinesis source beyond the common ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisOptions {
    /// The stream's name.
    pub stream: Option<String>,
    /// The AWS region; default: the AWS default chain (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// Where the Kinesis API is, overriding the region's (a VPC endpoint, a local one).
    pub endpoint: Option<String>,
    /// `trim_horizon` (default) | `latest` | a time (ms since the epoch, or RFC 3339).
    pub start: Option<String>,
    /// How long a shard that is caught up waits between GetRecords calls (default
    /// 1 s; never under 200 ms, Kinesis's limit of 5 calls a second per shard).
    #[serde(default, with = "humantime_serde::option")]
    pub poll_interval: Option<Duration>,
    /// How often ListShards looks for new shards (default 10 s).
    #[serde(default, with = "humantime_serde::option")]
    pub shard_refresh: Option<Duration>,
    /// Records posted over HTTP are put with this field's value as the partition key
    /// (default: a hash of the record).
    pub partition_key: Option<String>,
    /// Most records one GetRecords call returns (1 to 10,000, the default).
    pub records_per_call: Option<i32>,
    /// A DynamoDB table through which processes reading the stream share its shards.
    pub lease_table: Option<String>,
    /// The DynamoDB API's URL for the lease table (default: the region's).
    pub lease_endpoint: Option<String>,
    /// A lease not renewed for this long may be taken by another process (default 10 s).
    #[serde(default, with = "humantime_serde::option")]
    pub lease_failover: Option<Duration>,
    /// Change the stream's shard count to what its write rate needs.
    pub autoscale: Option<bool>,
    /// The most shards autoscaling makes (default 10).
    pub max_shards: Option<usize>,
    /// The least time between two changes of the shard count (default 10 min).
    #[serde(default, with = "humantime_serde::option")]
    pub autoscale_cooldown: Option<Duration>,
    /// Records with more data go to the dead-letter store (default 1 MiB, Kinesis's
    /// own limit).
    pub max_record_bytes: Option<usize>,
}

/// Where a shard is read from when no checkpoint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    TrimHorizon,
    /// Records written after the source first started; shards already closed then are
    /// not read.
    Latest,
    /// The first record that arrived at or after this time (ms since the epoch).
    Timestamp(i64),
}

impl Start {
    pub fn parse(source: &str, text: Option<&str>) -> Result<Self> {
        let Some(text) = text else {
            return Ok(Start::TrimHorizon);
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "trim_horizon" | "earliest" => return Ok(Start::TrimHorizon),
            "latest" => return Ok(Start::Latest),
            _ => {}
        }
        if let Ok(ms) = text.trim().parse::<i64>() {
            return Ok(Start::Timestamp(ms));
        }
        string_to_timestamp_nanos(text.trim())
            .map(|ns| Start::Timestamp(ns.div_euclid(1_000_000)))
            .map_err(|_| {
                Error::BadRequest(format!(
                    "source {source}: start = '{text}' is not understood; write 'trim_horizon', \
                     'latest', or a time in ms since the epoch or RFC 3339"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_read_as_a_user_writes_them() {
        assert_eq!(
            Start::parse("s", None).expect("default"),
            Start::TrimHorizon
        );
        assert_eq!(
            Start::parse("s", Some("LATEST")).expect("ok"),
            Start::Latest
        );
        assert_eq!(
            Start::parse("s", Some("2015-07-15T00:00:01Z")).expect("rfc 3339"),
            Start::Timestamp(1_436_918_401_000)
        );
        let e = Start::parse("s", Some("soon"))
            .expect_err("soon")
            .to_string();
        assert!(e.contains("source s: start = 'soon'"), "{e}");
    }
}
