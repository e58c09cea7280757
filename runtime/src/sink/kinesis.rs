//! The `kinesis` sink: a view's changes as records of one Kinesis stream, each durable
//! epoch put whole with PutRecords (500 records or 5 MiB a call; records a partial
//! failure left out are put again alone, with backoff). Kinesis has no transactions:
//! the guarantee is at least once. Every record's JSON starts with `"weir-lineage"`,
//! `"weir-epoch"` and `"weir-seq"` (its place in the epoch): an epoch written again after
//! a crash carries the same triples, so a consumer drops the duplicates exactly. See
//! docs/CONNECTORS.md.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use serde::Deserialize;

use super::encode::{Encoder, Format, Messages};
use super::{EpochChanges, Sink, SinkDef};
use crate::aws::{Endpoint, block_on};
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::source::kinesis::put::{Entry, MAX_RECORD_BYTES, digest, partition_key, put_all};
use crate::{Error, Result};

/// How long one epoch's records may take to be put before the epoch is retried.
const PUT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KinesisSinkOptions {
    stream: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    /// Columns whose values are the partition key (default: a digest of the record).
    partition_key: Option<String>,
    format: Option<String>,
}

/// A Kinesis sink.
pub struct KinesisSink {
    name: String,
    stream: String,
    client: Client,
    encoder: Encoder,
    keyed: bool,
    messages: Messages,
    dead_letters: Arc<DeadLetterStore>,
    /// Records over Kinesis's size limit, by (epoch, seq), until their epoch is put:
    /// dead letters once, skipped when the epoch is put again.
    refused: HashSet<(u64, u64)>,
    view: String,
    source: String,
}

pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let name = def.name;
    let bad = |m: String| Error::BadRequest(format!("sink {name}: {m}"));
    let options: KinesisSinkOptions = super::own_options(def)?;
    let stream = options
        .stream
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| bad("a kinesis sink needs stream = 'name'".into()))?;
    let format = match options.format.as_deref().unwrap_or("json") {
        "json" => Format::Json,
        "debezium_json" => Format::Debezium,
        "upsert" => {
            return Err(bad(
                "format upsert needs tombstones, which Kinesis has not; use json or debezium_json"
                    .into(),
            ));
        }
        other => {
            return Err(bad(format!(
                "format {other} is not one of json, debezium_json"
            )));
        }
    };
    let encoder =
        Encoder::new(format, def.schema, options.partition_key.as_deref()).map_err(bad)?;
    let config = Endpoint {
        region: options.region,
        endpoint: options.endpoint,
    }
    .config()
    .map_err(bad)?;
    Ok(Box::new(KinesisSink {
        name: name.to_string(),
        stream,
        client: Client::new(&config),
        encoder,
        keyed: options.partition_key.is_some(),
        messages: Messages::default(),
        dead_letters: def.dead_letters.clone(),
        refused: HashSet::new(),
        view: def.view.to_string(),
        source: def.source.to_string(),
    }))
}

impl KinesisSink {
    /// The epoch's records, each with its ids in front.
    fn entries(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<Vec<Entry>, String> {
        let (epoch, lineage) = (to_write.epoch, to_write.lineage);
        let mut entries = Vec::new();
        let mut seq: u64 = 0;
        let mut messages = std::mem::take(&mut self.messages);
        let mut too_large = Vec::new();
        for change in to_write.changes {
            self.encoder
                .encode(change, &mut messages)
                .map_err(|e| format!("cannot encode the view's rows: {e}"))?;
            for (i, value) in messages.values.iter().enumerate() {
                let this = seq;
                seq += 1;
                // json and debezium_json always have a value.
                let Some(value) = value else { continue };
                let mut data = Vec::with_capacity(value.len() + 64);
                let _ = write!(
                    data,
                    "{{\"weir-lineage\":\"{lineage}\",\"weir-epoch\":{epoch},\"weir-seq\":{this}"
                );
                let row = &messages.buf[value.clone()];
                // The row's own fields follow, if it has any.
                match row.get(1..) {
                    Some(rest) if rest.first() != Some(&b'}') => {
                        data.push(b',');
                        data.extend_from_slice(rest);
                    }
                    _ => data.push(b'}'),
                }
                let key = match (self.keyed, messages.keys.get(i)) {
                    (true, Some(k)) => partition_key(&messages.buf[k.clone()]),
                    _ => digest(row),
                };
                let entry = Entry {
                    partition_key: key,
                    data,
                };
                if entry.bytes() > MAX_RECORD_BYTES {
                    too_large.push((this, entry));
                    continue;
                }
                entries.push(entry);
            }
        }
        self.messages = messages;
        for (seq, entry) in too_large {
            self.refuse(epoch, seq, entry);
        }
        Ok(entries)
    }

    /// A record no retry can put: a dead letter (once per epoch and seq).
    fn refuse(&mut self, epoch: u64, seq: u64, entry: Entry) {
        if !self.refused.insert((epoch, seq)) {
            return;
        }
        self.dead_letters.push_all([NewDeadLetter {
            source: self.source.clone(),
            view: Some(self.view.clone()),
            partition: Some(format!("sink {} epoch {epoch}", self.name)),
            position: Some(seq),
            sequence_number: None,
            reason: format!(
                "sink {}: the record for stream {} is {} bytes with its partition key; a \
                 Kinesis record may have at most {MAX_RECORD_BYTES}",
                self.name,
                self.stream,
                entry.bytes()
            )
            .into(),
            raw: entry.data,
        }]);
    }
}

impl Sink for KinesisSink {
    fn deliver(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let entries = self.entries(to_write)?;
        let n = entries.len() as u64;
        let (client, stream) = (self.client.clone(), self.stream.clone());
        let deadline = Instant::now() + PUT_WAIT;
        let put = block_on(async move { put_all(&client, &stream, &entries, deadline).await });
        match put {
            Ok(retried) => {
                if retried > 0 {
                    tracing::info!(sink = %self.name, epoch = to_write.epoch, retried, "records of a partial failure were put again");
                }
                self.refused.retain(|(e, _)| *e > to_write.epoch);
                Ok(n)
            }
            Err(e) => Err(format!("epoch {}: {e}", to_write.epoch)),
        }
    }
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "kinesis",
        kind: "sink",
        doc: "A view's changes as records of a Kinesis stream, at least once; each record carries weir-lineage, weir-epoch and weir-seq so consumers drop duplicates.",
        declares_columns: false,
        passes_through: None,
        options: OPTIONS.to_vec(),
    },
    fields: field_names::<KinesisSinkOptions>,
    test: crate::source::kinesis::test_kinesis,
};

const OPTIONS: [OptionDoc; 5] = [
    OptionDoc {
        name: "stream",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The Kinesis data stream to put records on.",
    },
    crate::source::kinesis::REGION,
    crate::source::kinesis::ENDPOINT,
    OptionDoc {
        name: "partition_key",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "Columns (comma-separated) whose values are each record's partition key; default: a digest of the record.",
    },
    OptionDoc {
        name: "format",
        kind: "choice",
        choices: &["json", "debezium_json"],
        required: false,
        default: Some("json"),
        doc: "json: the rows a change adds; debezium_json: before, after and op.",
    },
];
