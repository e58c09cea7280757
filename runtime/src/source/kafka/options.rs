//! `WITH (connector = 'kafka', ...)`: the options, and where reading starts and ends.

use std::collections::BTreeMap;

use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use serde::Deserialize;

use crate::{Error, Result};

/// Options of a Kafka source beyond the common ones (`properties.*` pass through to
/// librdkafka).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]`.
    pub brokers: Option<String>,
    /// One topic, or a comma list.
    pub topic: Option<String>,
    /// A regular expression: every matching topic, found again as topics appear.
    pub topic_pattern: Option<String>,
    /// The consumer group; default `weir-<source name>`.
    pub group: Option<String>,
    /// `earliest` | `latest` | `group` | a timestamp | `'0:42,1:17'`. Default `group`.
    pub start: Option<String>,
    /// `latest` | a timestamp | `'0:42,1:17'`: a bounded read that finishes there.
    pub end: Option<String>,
    /// `read_committed` (default) | `read_uncommitted`.
    pub isolation: Option<String>,
    /// Records posted over HTTP are produced with this field's value as the key.
    pub key: Option<String>,
    /// Messages with a larger value go to the dead-letter store (default 1 MiB).
    pub max_message_bytes: Option<usize>,
}

/// Where a partition is read from when no checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    /// The group's committed offsets; earliest where it has none.
    Group,
    /// The first message at or after this time (ms since the epoch).
    Timestamp(i64),
    /// These offsets per partition; earliest for partitions not named.
    Offsets(BTreeMap<i32, i64>),
}

/// Where a bounded read stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The partitions' end offsets when the source starts.
    Latest,
    /// The first offset at or after this time.
    Timestamp(i64),
    /// These offsets (exclusive) per partition; partitions not named are not read.
    Offsets(BTreeMap<i32, i64>),
}

impl Start {
    pub fn parse(source: &str, text: Option<&str>) -> Result<Self> {
        let Some(text) = text else {
            return Ok(Start::Group);
        };
        Ok(match text.to_ascii_lowercase().as_str() {
            "earliest" => Start::Earliest,
            "latest" => Start::Latest,
            "group" => Start::Group,
            _ => match point(source, "start", text)? {
                Point::Time(ms) => Start::Timestamp(ms),
                Point::Offsets(o) => Start::Offsets(o),
            },
        })
    }
}

impl End {
    pub fn parse(source: &str, text: &str) -> Result<Self> {
        if text.eq_ignore_ascii_case("latest") {
            return Ok(End::Latest);
        }
        Ok(match point(source, "end", text)? {
            Point::Time(ms) => End::Timestamp(ms),
            Point::Offsets(o) => End::Offsets(o),
        })
    }
}

enum Point {
    Time(i64),
    Offsets(BTreeMap<i32, i64>),
}

/// A timestamp (ms since the epoch, or RFC 3339) or per-partition offsets.
fn point(source: &str, option: &str, text: &str) -> Result<Point> {
    let bad = || {
        Error::BadRequest(format!(
            "source {source}: {option} = '{text}' is not understood; write 'earliest', 'latest', \
             'group' (start only), a time in ms since the epoch or RFC 3339, or offsets per \
             partition like '0:42,1:17'"
        ))
    };
    if text.contains(':') && !text.contains('-') {
        let mut offsets = BTreeMap::new();
        for pair in text.split(',') {
            let (p, o) = pair.trim().split_once(':').ok_or_else(bad)?;
            let p: i32 = p.trim().parse().map_err(|_| bad())?;
            let o: i64 = o.trim().parse().map_err(|_| bad())?;
            if p < 0 || o < 0 {
                return Err(bad());
            }
            offsets.insert(p, o);
        }
        return Ok(Point::Offsets(offsets));
    }
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(Point::Time(ms));
    }
    string_to_timestamp_nanos(text.trim())
        .map(|ns| Point::Time(ns.div_euclid(1_000_000)))
        .map_err(|_| bad())
}

/// `read_committed` or `read_uncommitted`, as librdkafka names them.
pub fn isolation(source: &str, text: Option<&str>) -> Result<&'static str> {
    match text.map(str::to_ascii_lowercase).as_deref() {
        None | Some("read_committed") => Ok("read_committed"),
        Some("read_uncommitted") => Ok("read_uncommitted"),
        Some(other) => Err(Error::BadRequest(format!(
            "source {source}: isolation = '{other}': use 'read_committed' or 'read_uncommitted'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_ends_are_read_as_a_user_writes_them() {
        assert_eq!(Start::parse("s", None).expect("default"), Start::Group);
        assert_eq!(
            Start::parse("s", Some("EARLIEST")).expect("ok"),
            Start::Earliest
        );
        assert_eq!(
            Start::parse("s", Some("1436918400000")).expect("ms"),
            Start::Timestamp(1_436_918_400_000)
        );
        assert_eq!(
            Start::parse("s", Some("2015-07-15T00:00:01Z")).expect("rfc 3339"),
            Start::Timestamp(1_436_918_401_000)
        );
        assert_eq!(
            Start::parse("s", Some("0:42, 1:17")).expect("offsets"),
            Start::Offsets(BTreeMap::from([(0, 42), (1, 17)]))
        );
        assert_eq!(End::parse("s", "latest").expect("ok"), End::Latest);
        assert_eq!(
            End::parse("s", "3:9").expect("offsets"),
            End::Offsets(BTreeMap::from([(3, 9)]))
        );
        for bad in ["soon", "0:x", "-1:4", "1:2:3"] {
            let e = Start::parse("s", Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("source s: start") && e.contains(bad), "{e}");
        }
        assert!(End::parse("s", "group").is_err());
        assert!(isolation("s", Some("dirty")).is_err());
        assert_eq!(isolation("s", None).expect("default"), "read_committed");
    }
}
