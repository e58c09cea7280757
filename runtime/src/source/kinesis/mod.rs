//! The `kinesis` connector: an Amazon Kinesis data stream read shard by shard with
//! GetRecords. Each shard is its own split (its own watermark); a child shard is read
//! only after its parents were read to their end, so the order per partition key holds
//! across splits and merges. The position per shard is the last sequence number read
//! (and, inside a KPL aggregated record, the last user record), so a restart resumes
//! after it with nothing lost or read twice. See docs/CONNECTORS.md.

mod front_door;
pub mod kpl;
pub mod lease;
mod options;
pub mod position;
pub mod put;
mod reader;
mod records;
mod scale;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::Mutex;

use super::connector::{
    Connector, ConnectorStatus, Feed, PartitionStatus, SourceDef, StreamStatus,
};
use crate::aws::{Endpoint, block_on, describe};
use crate::checkpoint::Position;
use crate::config::RuntimeConfig;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::{Error, Result};
use options::{KinesisOptions, Start};
use records::Layout;

/// A shard takes 1,000 records or 1 MiB a second of writes.
const SHARD_RECORDS_PER_SECOND: f64 = 1_000.0;
const SHARD_BYTES_PER_SECOND: f64 = 1_048_576.0;
/// A shard further behind than this is catching up: its read rate is not the write rate.
const CAUGHT_UP_MS: i64 = 10_000;

/// A Kinesis source.
pub struct KinesisSource {
    name: String,
    stream: String,
    start: Start,
    layout: Layout,
    client: Client,
    poll_interval: Duration,
    shard_refresh: Duration,
    max_record_bytes: usize,
    records_per_call: i32,
    lease_renewal: Duration,
    /// With `autoscale`: the cool-down and the most shards.
    autoscale: Option<(Duration, usize)>,
    shared: Arc<Shared>,
    /// Records posted over HTTP are put on the stream.
    front_door: front_door::FrontDoor,
}

/// What the reader thread and the API share.
#[derive(Default)]
pub struct Shared {
    /// Why the source cannot read now (the endpoint does not answer), until it reads.
    pub waiting: Mutex<Option<String>>,
    /// The shards being read, by id.
    pub shards: Mutex<BTreeMap<String, ShardState>>,
    /// GetRecords calls throttled (ProvisionedThroughputExceeded), in all.
    pub throttled: AtomicU64,
    /// Shard iterators that expired and were fetched again.
    pub expired_iterators: AtomicU64,
    pub reader: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// With a lease table: this process's leases (the reader keeps them, a durable
    /// checkpoint writes their checkpoints).
    pub leases: Option<Arc<tokio::sync::Mutex<lease::Leases>>>,
    /// Processes holding leases, this one included, when last kept.
    pub processes: AtomicU64,
    /// The shards listed last, for the lease keeper.
    pub listed: Mutex<Option<Vec<position::ShardInfo>>>,
    /// What the lease keeper holds now, and a count of its rounds.
    pub held: Mutex<Option<lease::Held>>,
    pub held_version: AtomicU64,
    /// Why the last round of lease keeping failed.
    pub lease_error: Mutex<Option<String>>,
    /// The reader has returned: the lease keeper stops too.
    pub reader_done: std::sync::atomic::AtomicBool,
    /// This process's name in the lease table.
    pub lease_owner: Option<String>,
    /// With `autoscale`: the last change of the shard count, or why it failed.
    pub last_scale: Mutex<Option<String>>,
}

/// One shard being read, as the API shows it.
#[derive(Debug, Clone, Default)]
pub struct ShardState {
    /// The encoded [`position::ShardPosition`] after the last chunk sent.
    pub position: Option<String>,
    pub millis_behind: Option<i64>,
    /// Records and bytes per second over the last window.
    pub rates: Option<(f64, f64)>,
}

pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    let name = def.name;
    let options: KinesisOptions = crate::options::parse_own(name, def.options)?;
    def.no_properties()?;
    let stream = options.stream.clone().ok_or_else(|| {
        Error::BadRequest(format!(
            "source {name}: a kinesis source needs stream = 'name'"
        ))
    })?;
    let layout = Layout::new(
        name,
        def.declared_columns()?,
        def.common.format.as_deref().unwrap_or("json"),
    )?;
    let start = Start::parse(name, options.start.as_deref())?;
    let records_per_call = options.records_per_call.unwrap_or(10_000);
    if !(1..=10_000).contains(&records_per_call) {
        return Err(Error::BadRequest(format!(
            "source {name}: records_per_call = {records_per_call}: GetRecords returns 1 to 10000 records a call"
        )));
    }
    let endpoint = Endpoint {
        region: options.region.clone(),
        endpoint: options.endpoint.clone(),
    };
    let config = endpoint
        .config()
        .map_err(|why| Error::BadRequest(format!("source {name}: {why}")))?;
    // The reader retries GetRecords itself, per shard, so that one throttled shard does
    // not hold the others up (the SDK would retry inside the call all shards wait on).
    let client = Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build(),
    );
    let front_door = front_door::FrontDoor {
        source: name.to_string(),
        stream: stream.clone(),
        key: options.partition_key.clone(),
        client: Client::new(&config),
        answered: Default::default(),
    };
    let failover = options.lease_failover.unwrap_or(Duration::from_secs(10));
    let mut shared = Shared::default();
    if let Some(table) = &options.lease_table {
        if !def.checkpointed {
            return Err(Error::BadRequest(format!(
                "source {name}: a lease_table needs checkpoints (a data dir): leases record \
                 where each shard is read up to once a checkpoint that covers it is durable"
            )));
        }
        let dynamo = Endpoint {
            region: options.region.clone(),
            endpoint: options.lease_endpoint.clone(),
        }
        .config()
        .map_err(|why| Error::BadRequest(format!("source {name}: {why}")))?;
        let me = process_name();
        shared.lease_owner = Some(me.clone());
        shared.leases = Some(Arc::new(tokio::sync::Mutex::new(lease::Leases::new(
            aws_sdk_dynamodb::Client::new(&dynamo),
            table,
            me,
            failover,
        ))));
    } else if options.lease_endpoint.is_some() || options.lease_failover.is_some() {
        return Err(Error::BadRequest(format!(
            "source {name}: lease_endpoint and lease_failover are for a lease_table"
        )));
    }
    let autoscale = match options.autoscale {
        Some(true) if options.lease_table.is_some() => {
            return Err(Error::BadRequest(format!(
                "source {name}: autoscale with a lease_table is not supported yet (each process sees only its own shards' rates); run one process with autoscale"
            )));
        }
        Some(true) => Some((
            options
                .autoscale_cooldown
                .unwrap_or(Duration::from_secs(600)),
            options.max_shards.unwrap_or(10).max(1),
        )),
        _ if options.max_shards.is_some() || options.autoscale_cooldown.is_some() => {
            return Err(Error::BadRequest(format!(
                "source {name}: max_shards and autoscale_cooldown are for autoscale = true"
            )));
        }
        _ => None,
    };
    let source = KinesisSource {
        name: name.to_string(),
        stream,
        start,
        layout,
        client,
        front_door,
        poll_interval: options
            .poll_interval
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(200)),
        shard_refresh: options.shard_refresh.unwrap_or(Duration::from_secs(10)),
        max_record_bytes: options.max_record_bytes.unwrap_or(1_048_576),
        records_per_call,
        lease_renewal: failover / 3,
        autoscale,
        shared: Arc::new(shared),
    };
    if !def.restoring {
        source.check_stream()?;
    }
    Ok(Box::new(source))
}

impl KinesisSource {
    /// The stream must exist, if the endpoint answers now; if it does not, the source is
    /// created and waits for it (`connecting`).
    fn check_stream(&self) -> Result<()> {
        let (client, stream) = (self.client.clone(), self.stream.clone());
        let answer = block_on(async move {
            client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
        });
        match answer {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Err(Error::BadRequest(format!(
                    "source {}: stream '{}' does not exist; create it first",
                    self.name, self.stream
                )))
            }
            Err(e) => {
                let why = describe(&e);
                tracing::warn!(source = %self.name, error = %why, "the Kinesis endpoint does not answer; the source waits for it");
                *self.shared.waiting.lock() = Some(format!("Kinesis does not answer: {why}"));
                Ok(())
            }
        }
    }
}

impl Connector for KinesisSource {
    fn schema(&self) -> SchemaRef {
        self.layout.schema()
    }

    fn write_records(
        &self,
        _source: &crate::source::SourceRuntime,
        body: &[u8],
        idempotency_key: Option<&str>,
        dead_letters: &crate::deadletter::DeadLetterStore,
    ) -> Option<Result<crate::source::http::IngestReport>> {
        Some(self.front_door.put(body, idempotency_key, dead_letters))
    }

    fn start(&self, feed: Feed, resume: Option<Position>) -> Result<()> {
        let settings = reader::Settings {
            name: self.name.clone(),
            stream: self.stream.clone(),
            start: self.start,
            layout: self.layout.clone(),
            poll_interval: self.poll_interval,
            shard_refresh: self.shard_refresh,
            max_record_bytes: self.max_record_bytes,
            records_per_call: self.records_per_call,
            lease_renewal: self.lease_renewal,
            autoscale: self.autoscale,
        };
        let reader = reader::Reader::new(
            settings,
            self.client.clone(),
            self.shared.clone(),
            feed,
            resume,
        );
        let thread = std::thread::Builder::new()
            .name(format!("kinesis-{}", self.name))
            .spawn(move || reader.run())
            .map_err(|e| Error::Internal(format!("cannot start the kinesis reader: {e}")))?;
        *self.shared.reader.lock() = Some(thread);
        Ok(())
    }

    /// With a lease table: each held shard's position becomes its lease's checkpoint.
    fn checkpoint_durable(&self, position: &Position) {
        let shards = position::shards_of(position);
        if shards
            .values()
            .any(|p| matches!(p, position::ShardPosition::After { sub: Some(_), .. }))
        {
            // Tests: crash with a durable checkpoint inside a KPL aggregated record.
            crate::failpoint::crash_point("kinesis-durable-inside-aggregate");
        }
        let Some(leases) = self.shared.leases.clone() else {
            return;
        };
        // Not waited for: a slow or unreachable DynamoDB must not hold up the views'
        // commit. Writes take turns on the lock and never move a checkpoint back.
        let source = self.name.clone();
        crate::aws::spawn(async move {
            let mut leases = leases.lock().await;
            for (shard, p) in &shards {
                if let Err(why) = leases.checkpoint(shard, p).await {
                    tracing::warn!(source, error = %why, "cannot write a lease's checkpoint");
                }
            }
        });
    }

    fn wait_stopped(&self, until: Instant) {
        super::connector::join_reader(&self.shared.reader, &self.name, until);
    }

    fn status(&self) -> ConnectorStatus {
        let shards = self.shared.shards.lock();
        let partitions = shards
            .iter()
            .map(|(id, s)| PartitionStatus {
                partition: id.clone(),
                sequence_number: s.position.clone(),
                millis_behind_latest: s.millis_behind,
                records_per_second: s.rates.map(|r| r.0),
                bytes_per_second: s.rates.map(|r| r.1),
                ..PartitionStatus::default()
            })
            .collect();
        ConnectorStatus {
            waiting: self
                .shared
                .waiting
                .lock()
                .clone()
                .or_else(|| self.shared.lease_error.lock().clone()),
            partitions,
            end_offsets: BTreeMap::new(),
            stream: Some(StreamStatus {
                lease_owner: self.shared.lease_owner.clone(),
                processes: self
                    .shared
                    .leases
                    .as_ref()
                    .map(|_| self.shared.processes.load(Ordering::Relaxed) as usize),
                last_change: self.shared.last_scale.lock().clone(),
                throttled: self.shared.throttled.load(Ordering::Relaxed),
                expired_iterators: self.shared.expired_iterators.load(Ordering::Relaxed),
                ..advice(shards.values())
            }),
        }
    }
}

/// This process's name in a lease table: host, process id and a random part (a restarted
/// process is a new owner; its old leases expire and it takes them back).
fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "weir".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The shard count the rates of the shards being read call for.
pub(crate) fn advice<'a>(shards: impl Iterator<Item = &'a ShardState>) -> StreamStatus {
    let mut advice = StreamStatus::default();
    let mut caught_up = true;
    for s in shards {
        advice.open += 1;
        let (records, bytes) = s.rates.unwrap_or_default();
        advice.records_per_second += records;
        advice.bytes_per_second += bytes;
        caught_up &= s.rates.is_some() && s.millis_behind.is_some_and(|ms| ms <= CAUGHT_UP_MS);
    }
    if caught_up && advice.open > 0 {
        let by_records = (advice.records_per_second / SHARD_RECORDS_PER_SECOND).ceil();
        let by_bytes = (advice.bytes_per_second / SHARD_BYTES_PER_SECOND).ceil();
        advice.needed = Some(by_records.max(by_bytes).max(1.0) as usize);
    }
    advice
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "kinesis",
        kind: "source",
        doc: "An Amazon Kinesis data stream: shards read in order across splits and merges, KPL aggregates split into their records, positions per shard in checkpoints.",
        declares_columns: true,
        passes_through: None,
        options: [crate::connectors::COMMON_SOURCE_OPTIONS, &OWN_OPTIONS[..]].concat(),
    },
    fields: field_names::<KinesisOptions>,
    test: test_kinesis,
};

/// Try the stream the options name.
pub(crate) fn test_kinesis(
    options: &BTreeMap<String, String>,
    _: &RuntimeConfig,
) -> Result<String> {
    let stream = options
        .get("stream")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("name the stream first".into()))?
        .clone();
    let endpoint = Endpoint {
        region: options.get("region").cloned(),
        endpoint: options.get("endpoint").cloned(),
    };
    let config = endpoint.config().map_err(Error::BadRequest)?;
    let client = Client::new(&config);
    let name = stream.clone();
    let summary = block_on(async move {
        client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
    })
    .map_err(|e| {
        Error::BadRequest(format!(
            "cannot describe stream '{stream}': {}",
            describe(&e)
        ))
    })?;
    let (status, open) = summary
        .stream_description_summary()
        .map(|s| {
            (
                s.stream_status().as_str().to_ascii_lowercase(),
                s.open_shard_count(),
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "stream '{stream}' is {status} with {open} open shard{}",
        if open == 1 { "" } else { "s" }
    ))
}

/// The `region` option of a Kinesis source or sink.
pub(crate) const REGION: OptionDoc = OptionDoc {
    name: "region",
    kind: "text",
    choices: &[],
    required: false,
    default: Some("the AWS default chain's"),
    doc: "The AWS region. Credentials always come from the AWS default chain.",
};

/// The `endpoint` option of a Kinesis source or sink.
pub(crate) const ENDPOINT: OptionDoc = OptionDoc {
    name: "endpoint",
    kind: "text",
    choices: &[],
    required: false,
    default: None,
    doc: "The Kinesis API's URL, for a VPC endpoint or a local one.",
};

const OWN_OPTIONS: [OptionDoc; 15] = [
    OptionDoc {
        name: "stream",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The Kinesis data stream.",
    },
    REGION,
    ENDPOINT,
    OptionDoc {
        name: "start",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("trim_horizon"),
        doc: "Where shards are read from when no checkpoint says: trim_horizon, latest, or a time.",
    },
    OptionDoc {
        name: "poll_interval",
        kind: "duration",
        choices: &[],
        required: false,
        default: Some("1s"),
        doc: "How long a caught-up shard waits between GetRecords calls (at least 200ms).",
    },
    OptionDoc {
        name: "shard_refresh",
        kind: "duration",
        choices: &[],
        required: false,
        default: Some("10s"),
        doc: "How often ListShards looks for new shards (a finished shard looks at once).",
    },
    OptionDoc {
        name: "partition_key",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "For records posted over HTTP: the field whose value is the partition key (default: a hash of the record).",
    },
    OptionDoc {
        name: "lease_table",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "A DynamoDB table (created if missing) through which processes reading the stream share its shards.",
    },
    OptionDoc {
        name: "lease_endpoint",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "The DynamoDB API's URL for the lease table, for a VPC endpoint or a local one.",
    },
    OptionDoc {
        name: "lease_failover",
        kind: "duration",
        choices: &[],
        required: false,
        default: Some("10s"),
        doc: "A lease not renewed for this long is taken by another process; leases are renewed every third of it.",
    },
    OptionDoc {
        name: "autoscale",
        kind: "choice",
        choices: &["true", "false"],
        required: false,
        default: Some("false"),
        doc: "Change the stream's shard count to what its write rate needs (1,000 records or 1 MiB a second a shard).",
    },
    OptionDoc {
        name: "max_shards",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("10"),
        doc: "With autoscale: the most shards it makes.",
    },
    OptionDoc {
        name: "autoscale_cooldown",
        kind: "duration",
        choices: &[],
        required: false,
        default: Some("10m"),
        doc: "With autoscale: the least time between two changes of the shard count.",
    },
    OptionDoc {
        name: "records_per_call",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("10000"),
        doc: "Most records one GetRecords call returns (1 to 10000).",
    },
    OptionDoc {
        name: "max_record_bytes",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("1048576"),
        doc: "A record with more data goes to the dead-letter store.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_count_follows_the_write_rate_once_caught_up() {
        let shard = |records: f64, bytes: f64, behind: i64| ShardState {
            position: None,
            millis_behind: Some(behind),
            rates: Some((records, bytes)),
        };
        let a = advice([shard(900.0, 1_000.0, 0), shard(1_500.0, 2_000.0, 0)].iter());
        assert_eq!((a.open, a.needed), (2, Some(3)), "2,400 records/s");
        let a = advice([shard(10.0, 3.5 * 1_048_576.0, 0)].iter());
        assert_eq!(a.needed, Some(4), "3.5 MiB/s");
        let a = advice([shard(1.0, 1.0, 0), shard(0.0, 0.0, 0)].iter());
        assert_eq!(a.needed, Some(1), "never below 1");
        let a = advice([shard(5_000.0, 0.0, 60_000)].iter());
        assert_eq!(
            a.needed, None,
            "catching up: the read rate is not the write rate"
        );
    }
}
