//! The `dynamodb` sink: each row of a view as an item of a DynamoDB table, keyed by the
//! table's partition key (and sort key) columns; an item whose row left the view is
//! deleted. An epoch's changes are folded into one action per key (its last: put or
//! delete) and written with BatchWriteItem, 25 items a call and several calls at once;
//! unprocessed items are written again with backoff. DynamoDB has no transaction of
//! that size, so the guarantee is idempotence by key: an epoch written again after a
//! crash puts the same items, and the table ends as the view. A sample of partition
//! keys warns of a hot partition. See docs/CONNECTORS.md.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeyType, PutRequest, ScalarAttributeType, WriteRequest,
};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use futures::StreamExt;
use serde::Deserialize;

use super::feed::ChangeKind;
use super::{EpochChanges, Sink, SinkDef};
use crate::aws::{Endpoint, block_on};
use crate::config::RuntimeConfig;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::DeadLetterStore;
use crate::{Error, Result};

/// BatchWriteItem takes at most 25 writes a call.
const BATCH_ITEMS: usize = 25;
/// Calls in flight at once.
const CALLS_IN_FLIGHT: usize = 8;
/// How long one epoch may take before it is offered again, whole: this, and
/// `PER_ITEM_WAIT` for each of its writes.
const EPOCH_WAIT: Duration = Duration::from_secs(60);
const PER_ITEM_WAIT: Duration = Duration::from_millis(20);
/// Partition keys sampled, and how many make a verdict on a hot one.
const SAMPLE: usize = 10_000;
const SAMPLE_PER_EPOCH: usize = 1_000;
/// DynamoDB's largest item, and its longest partition and sort key values.
const MAX_ITEM_BYTES: usize = 400 * 1024;
const MAX_PARTITION_KEY_BYTES: usize = 2048;
const MAX_SORT_KEY_BYTES: usize = 1024;
const SAMPLE_ENOUGH: usize = 200;
/// A partition key value taking more than this share of writes is hot.
const HOT_SHARE: f64 = 0.5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DynamoDbSinkOptions {
    table: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    partition_key: Option<String>,
    sort_key: Option<String>,
}

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Float,
    Text,
    Bool,
}

fn kind_of(data_type: &DataType) -> Option<Kind> {
    Some(match data_type {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Kind::Float,
        t if t.is_numeric() => Kind::Number,
        DataType::Boolean => Kind::Bool,
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Timestamp(..)
        | DataType::Date32
        | DataType::Date64 => Kind::Text,
        _ => return None,
    })
}

/// A DynamoDB sink.
pub struct DynamoDbSink {
    name: String,
    table: String,
    /// Made when the sink is, or at its first delivery after a restart that could not.
    client: Option<Client>,
    endpoint: Endpoint,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    /// The key columns: partition, then sort.
    key: Vec<usize>,
    checked: bool,
    hot: HotKeys,
    dead_letters: Arc<DeadLetterStore>,
    refused_epoch: u64,
    view: String,
    source: String,
}

pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let name = def.name;
    let bad = |m: String| Error::BadRequest(format!("sink {name}: {m}"));
    let options: DynamoDbSinkOptions = super::own_options(def)?;
    let table = options
        .table
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad("a dynamodb sink needs table = 'name'".into()))?;
    let kinds = def
        .schema
        .fields()
        .iter()
        .map(|f| {
            kind_of(f.data_type()).ok_or_else(|| {
                bad(format!(
                    "column {:?}: the dynamodb sink cannot write {} columns",
                    f.name(),
                    f.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let column = |option: &str, name: &str| {
        def.schema.index_of(name).map_err(|_| {
            bad(format!(
                "{option} {name} is not a column of view {}",
                def.view
            ))
        })
    };
    let partition = options
        .partition_key
        .as_deref()
        .ok_or_else(|| bad("a dynamodb sink needs partition_key = 'column'".into()))?;
    let mut key = vec![column("partition_key", partition.trim())?];
    if let Some(sort) = options.sort_key.as_deref() {
        key.push(column("sort_key", sort.trim())?);
    }
    let endpoint = Endpoint {
        region: options.region,
        endpoint: options.endpoint,
    };
    // A sink restored after a restart starts all the same (its backlog kept) and makes
    // its client at its first delivery.
    let client = match endpoint.config() {
        Ok(config) => Some(Client::new(&config)),
        Err(e) if def.restoring => {
            tracing::warn!(sink = name, "{e}; tried again at the first delivery");
            None
        }
        Err(e) => return Err(bad(e)),
    };
    let mut sink = DynamoDbSink {
        name: name.to_string(),
        table,
        client,
        endpoint,
        schema: def.schema.clone(),
        kinds,
        key,
        checked: false,
        hot: HotKeys::default(),
        dead_letters: def.dead_letters.clone(),
        refused_epoch: 0,
        view: def.view.to_string(),
        source: def.source.to_string(),
    };
    // A new sink checks its table before it answers; one restored after a restart
    // checks at its first delivery, so a service that is down does not hold up views.
    if !def.restoring {
        sink.check().map_err(|e| match e {
            Check::Misfit(m) => bad(m),
            Check::Unreachable(m) => {
                Error::Unavailable(format!("sink {name}: cannot describe the table: {m}"))
            }
        })?;
    }
    Ok(Box::new(sink))
}

enum Check {
    Misfit(String),
    Unreachable(String),
}

impl DynamoDbSink {
    /// Whether the table's key is the sink's key columns, of the types their values are.
    fn check(&mut self) -> std::result::Result<(), Check> {
        if self.checked {
            return Ok(());
        }
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let config = self.endpoint.config().map_err(Check::Misfit)?;
                self.client.insert(Client::new(&config)).clone()
            }
        };
        let table = self.table.clone();
        let described =
            block_on(async move { client.describe_table().table_name(table).send().await });
        let described = match described {
            Ok(d) => d,
            Err(e) => {
                let e = aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string();
                return Err(if e.contains("ResourceNotFoundException") {
                    Check::Misfit(format!("table {} does not exist", self.table))
                } else {
                    Check::Unreachable(e)
                });
            }
        };
        let table = described.table();
        let schema = table.map(|t| t.key_schema()).unwrap_or_default();
        let types: HashMap<&str, &ScalarAttributeType> = table
            .map(|t| t.attribute_definitions())
            .unwrap_or_default()
            .iter()
            .map(|a| (a.attribute_name(), a.attribute_type()))
            .collect();
        let named = |kind: KeyType| {
            schema
                .iter()
                .find(|k| *k.key_type() == kind)
                .map(|k| k.attribute_name().to_string())
        };
        let wanted: Vec<Option<String>> = vec![
            Some(self.schema.field(self.key[0]).name().clone()),
            self.key
                .get(1)
                .map(|i| self.schema.field(*i).name().clone()),
        ];
        let found = vec![named(KeyType::Hash), named(KeyType::Range)];
        if wanted != found {
            let show = |k: &[Option<String>]| {
                format!(
                    "partition key {}, sort key {}",
                    k[0].as_deref().unwrap_or("(none)"),
                    k[1].as_deref().unwrap_or("(none)")
                )
            };
            return Err(Check::Misfit(format!(
                "table {} has {}; the sink was given {}",
                self.table,
                show(&found),
                show(&wanted)
            )));
        }
        for &i in &self.key {
            let name = self.schema.field(i).name();
            let fits = matches!(
                (types.get(name.as_str()), self.kinds[i]),
                (Some(ScalarAttributeType::S), Kind::Text)
                    | (Some(ScalarAttributeType::N), Kind::Number | Kind::Float)
            );
            if !fits {
                return Err(Check::Misfit(format!(
                    "key attribute {name} is {} in table {} but the view's column is {}",
                    types.get(name.as_str()).map_or("?", |t| t.as_str()),
                    self.table,
                    self.schema.field(i).data_type()
                )));
            }
        }
        self.checked = true;
        Ok(())
    }

    /// The epoch folded to one action per key, in the order keys were first seen.
    fn actions(&self, to_write: &EpochChanges<'_>) -> std::result::Result<Actions, ArrowError> {
        let mut order: Vec<String> = Vec::new();
        let mut last: HashMap<String, WriteRequest> = HashMap::new();
        let mut keyless = Vec::new();
        let mut oversized = Vec::new();
        let mut set = |key: String, request: WriteRequest, order: &mut Vec<String>| {
            if last.insert(key.clone(), request).is_none() {
                order.push(key);
            }
        };
        for change in to_write.changes {
            let rows = Texts::of(&change.rows)?;
            let keys: Vec<Option<String>> = (0..change.rows.num_rows())
                .map(|r| self.key_text(&rows, r))
                .collect();
            if keys.iter().any(Option::is_none) {
                let none: BooleanArray = keys.iter().map(|k| Some(k.is_none())).collect();
                keyless.push(filter_record_batch(&change.rows, &none)?);
            }
            if let (Some(replaced), ChangeKind::Update) = (&change.replaced, change.kind) {
                let kept: HashSet<&str> = keys.iter().flatten().map(String::as_str).collect();
                let before = Texts::of(replaced)?;
                for r in 0..replaced.num_rows() {
                    let Some(key) = self.key_text(&before, r) else {
                        continue;
                    };
                    if !kept.contains(key.as_str()) {
                        let request = self.delete(&before, r);
                        set(key, request, &mut order);
                    }
                }
            }
            let mut too_large = Vec::with_capacity(keys.len());
            for (r, key) in keys.into_iter().enumerate() {
                let over = key.is_some() && self.item_bytes(&rows, r) > MAX_ITEM_BYTES;
                too_large.push(Some(over));
                if let Some(key) = key.filter(|_| !over) {
                    let request = self.put(&rows, r);
                    set(key, request, &mut order);
                }
            }
            if too_large.contains(&Some(true)) {
                let mask = BooleanArray::from(too_large);
                oversized.push(filter_record_batch(&change.rows, &mask)?);
            }
        }
        let mut partitions = Vec::new();
        let requests = order
            .into_iter()
            .filter_map(|k| {
                if partitions.len() < SAMPLE_PER_EPOCH {
                    partitions.push(k.split('\u{0}').next().unwrap_or("").to_string());
                }
                last.remove(&k)
            })
            .collect();
        Ok(Actions {
            requests,
            partitions,
            keyless,
            oversized,
        })
    }

    /// Row `r`'s size as DynamoDB counts it: each attribute's name and value (a number
    /// takes about a byte for two digits, and one more).
    fn item_bytes(&self, rows: &Texts, r: usize) -> usize {
        (0..self.kinds.len())
            .filter_map(|i| {
                let text = rows.value(i, r)?;
                let value = match self.kinds[i] {
                    Kind::Number | Kind::Float => text.len().div_ceil(2) + 1,
                    Kind::Bool => 1,
                    Kind::Text => text.len(),
                };
                Some(self.schema.field(i).name().len() + value)
            })
            .sum()
    }

    /// Row `r`'s key as one string (partition, NUL, sort); `None` when a part cannot be
    /// a DynamoDB key: null, an empty string, longer than a key may be, or a float that
    /// is not a finite number.
    fn key_text(&self, rows: &Texts, r: usize) -> Option<String> {
        let mut key = String::new();
        for (n, &i) in self.key.iter().enumerate() {
            if n > 0 {
                key.push('\u{0}');
            }
            let longest = if n == 0 {
                MAX_PARTITION_KEY_BYTES
            } else {
                MAX_SORT_KEY_BYTES
            };
            let part = rows
                .value(i, r)
                .filter(|t| !t.is_empty() && t.len() <= longest)?;
            if self.kinds[i] == Kind::Float && !part.parse::<f64>().is_ok_and(f64::is_finite) {
                return None;
            }
            key.push_str(part);
        }
        Some(key)
    }

    fn value(&self, rows: &Texts, i: usize, r: usize) -> Option<AttributeValue> {
        let text = rows.value(i, r)?;
        Some(match self.kinds[i] {
            Kind::Number => AttributeValue::N(text.to_string()),
            // DynamoDB numbers have no NaN or infinity: such a value is left out.
            Kind::Float if text.parse::<f64>().is_ok_and(f64::is_finite) => {
                AttributeValue::N(text.to_string())
            }
            Kind::Float => return None,
            Kind::Bool => AttributeValue::Bool(text == "true"),
            Kind::Text => AttributeValue::S(text.to_string()),
        })
    }

    fn put(&self, rows: &Texts, r: usize) -> WriteRequest {
        let item: HashMap<String, AttributeValue> = (0..self.kinds.len())
            .filter_map(|i| Some((self.schema.field(i).name().clone(), self.value(rows, i, r)?)))
            .collect();
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .expect("an item is set"),
            )
            .build()
    }

    fn delete(&self, rows: &Texts, r: usize) -> WriteRequest {
        let key: HashMap<String, AttributeValue> = self
            .key
            .iter()
            .filter_map(|&i| Some((self.schema.field(i).name().clone(), self.value(rows, i, r)?)))
            .collect();
        WriteRequest::builder()
            .delete_request(
                DeleteRequest::builder()
                    .set_key(Some(key))
                    .build()
                    .expect("a key is set"),
            )
            .build()
    }
}

/// An epoch's writes.
struct Actions {
    requests: Vec<WriteRequest>,
    /// The partition keys of the first writes, a sample for [`HotKeys`].
    partitions: Vec<String>,
    /// Rows without a key (a key column is null).
    keyless: Vec<RecordBatch>,
    /// Rows over DynamoDB's item size.
    oversized: Vec<RecordBatch>,
}

/// A batch's columns as text, formatted by Arrow.
struct Texts(Vec<ArrayRef>);

impl Texts {
    fn of(rows: &RecordBatch) -> std::result::Result<Self, ArrowError> {
        Ok(Self(
            rows.columns()
                .iter()
                .map(|c| cast(c, &DataType::Utf8))
                .collect::<std::result::Result<_, _>>()?,
        ))
    }

    fn value(&self, column: usize, row: usize) -> Option<&str> {
        let strings = self.0[column].as_any().downcast_ref::<StringArray>()?;
        strings.is_valid(row).then(|| strings.value(row))
    }
}

/// Write `requests` in calls of 25, several at once, each call's unprocessed items
/// again with backoff until `deadline`.
async fn write_all(
    client: &Client,
    table: &str,
    requests: Vec<WriteRequest>,
    deadline: Instant,
) -> std::result::Result<u64, String> {
    let chunks: Vec<Vec<WriteRequest>> = requests
        .chunks(BATCH_ITEMS)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    let results: Vec<std::result::Result<u64, String>> = futures::stream::iter(chunks)
        .map(|chunk| write_batch(client, table, chunk, deadline))
        .buffer_unordered(CALLS_IN_FLIGHT)
        .collect()
        .await;
    let mut retried = 0;
    for r in results {
        retried += r?;
    }
    Ok(retried)
}

/// One BatchWriteItem call and the calls its unprocessed items need; returns how many
/// items were written again.
async fn write_batch(
    client: &Client,
    table: &str,
    mut chunk: Vec<WriteRequest>,
    deadline: Instant,
) -> std::result::Result<u64, String> {
    let mut backoff = Duration::from_millis(50);
    let mut again = 0;
    loop {
        let out = client
            .batch_write_item()
            .request_items(table, chunk)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
        let left = out
            .unprocessed_items()
            .and_then(|u| u.get(table))
            .cloned()
            .unwrap_or_default();
        if left.is_empty() {
            return Ok(again);
        }
        if Instant::now() + backoff > deadline {
            return Err(format!(
                "{} items stayed unprocessed (throttled) until the epoch's time ran out",
                left.len()
            ));
        }
        again += left.len() as u64;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        chunk = left;
    }
}

impl Sink for DynamoDbSink {
    fn deliver(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let epoch = to_write.epoch;
        self.check().map_err(|e| match e {
            Check::Misfit(m) | Check::Unreachable(m) => m,
        })?;
        let Actions {
            requests,
            partitions,
            keyless,
            oversized,
        } = self
            .actions(to_write)
            .map_err(|e| format!("cannot turn the view's rows into items: {e}"))?;
        // Once per epoch, however often it is retried.
        if epoch > self.refused_epoch {
            self.refused_epoch = epoch;
            let letters = (&*self.dead_letters, &*self.source, &*self.view, &*self.name);
            if !keyless.is_empty() {
                super::dead_letter_rows(
                    letters,
                    epoch,
                    &keyless,
                    "a key column is null, empty, longer than a DynamoDB key may be (2048 bytes \
                     for a partition key, 1024 for a sort key) or not a finite number",
                );
            }
            if !oversized.is_empty() {
                super::dead_letter_rows(
                    letters,
                    epoch,
                    &oversized,
                    "the item is larger than DynamoDB's 400 KB",
                );
            }
        }
        let n = requests.len() as u64;
        let client = self.client.clone().ok_or("no client")?;
        let table = self.table.clone();
        // A large epoch on a table of little capacity takes long: the wait grows with it.
        let deadline = Instant::now() + EPOCH_WAIT + PER_ITEM_WAIT * n as u32;
        let retried = block_on(async move { write_all(&client, &table, requests, deadline).await })
            .map_err(|e| format!("epoch {epoch}: {e}"))?;
        if retried > 0 {
            tracing::info!(sink = %self.name, epoch, retried, "unprocessed items were written again");
        }
        self.hot.sample(partitions);
        Ok(n)
    }

    fn warning(&self) -> Option<String> {
        self.hot.warning()
    }
}

/// The partition keys of recent writes, to warn of a hot partition.
#[derive(Debug, Default)]
struct HotKeys {
    recent: VecDeque<String>,
    counts: HashMap<String, usize>,
}

impl HotKeys {
    fn sample(&mut self, keys: Vec<String>) {
        for key in keys {
            *self.counts.entry(key.clone()).or_default() += 1;
            self.recent.push_back(key);
            if self.recent.len() > SAMPLE
                && let Some(old) = self.recent.pop_front()
                && let Some(n) = self.counts.get_mut(&old)
            {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&old);
                }
            }
        }
    }

    fn warning(&self) -> Option<String> {
        if self.recent.len() < SAMPLE_ENOUGH {
            return None;
        }
        let (key, n) = self.counts.iter().max_by_key(|(_, n)| **n)?;
        let share = *n as f64 / self.recent.len() as f64;
        (share > HOT_SHARE).then(|| {
            format!(
                "hot partition: partition key {key:?} took {:.0}% of the last {} writes; one \
                 DynamoDB partition takes at most 1,000 writes/s, so the table will throttle \
                 the sink; choose a partition_key with more distinct values",
                share * 100.0,
                self.recent.len()
            )
        })
    }
}

/// Describe the table the options name.
pub(crate) fn test_dynamodb(
    options: &BTreeMap<String, String>,
    _: &RuntimeConfig,
) -> Result<String> {
    let table = options
        .get("table")
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("name the table first".into()))?
        .clone();
    let config = Endpoint {
        region: options.get("region").cloned(),
        endpoint: options.get("endpoint").cloned(),
    }
    .config()
    .map_err(Error::BadRequest)?;
    let client = Client::new(&config);
    let name = table.clone();
    let described = block_on(async move { client.describe_table().table_name(name).send().await })
        .map_err(|e| {
            Error::BadRequest(format!(
                "cannot describe table {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            ))
        })?;
    let keys: Vec<String> = described
        .table()
        .map(|t| t.key_schema())
        .unwrap_or_default()
        .iter()
        .map(|k| format!("{} ({})", k.attribute_name(), k.key_type().as_str()))
        .collect();
    Ok(format!("table {table}, key {}", keys.join(", ")))
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "dynamodb",
        kind: "sink",
        doc: "Each row of a view as an item of a DynamoDB table, keyed by its partition (and sort) key columns; items whose rows left the view are deleted. Idempotent by key.",
        declares_columns: false,
        passes_through: None,
        options: OPTIONS.to_vec(),
    },
    fields: field_names::<DynamoDbSinkOptions>,
    test: test_dynamodb,
};

const OPTIONS: [OptionDoc; 5] = [
    OptionDoc {
        name: "table",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The DynamoDB table to write; it must exist, keyed by partition_key (and sort_key).",
    },
    crate::source::kinesis::REGION,
    crate::source::kinesis::ENDPOINT,
    OptionDoc {
        name: "partition_key",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The column whose value is each item's partition key: the table's partition key attribute.",
    },
    OptionDoc {
        name: "sort_key",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "The column whose value is each item's sort key, when the table has one.",
    },
];

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A DynamoDB endpoint that leaves every item unprocessed in its first `unprocessed`
    /// answers (as a throttled table does), then takes them: counts the calls.
    async fn throttling_endpoint(unprocessed: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let calls = counted.clone();
                tokio::spawn(async move {
                    loop {
                        // One request: headers, then content-length bytes of body.
                        let mut request = Vec::new();
                        let mut byte = [0u8; 1];
                        while !request.ends_with(b"\r\n\r\n") {
                            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            request.push(byte[0]);
                        }
                        let head = String::from_utf8_lossy(&request).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; length];
                        if socket.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        let answer = if n < unprocessed {
                            // The call's own items back, unprocessed.
                            let sent: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            serde_json::json!({"UnprocessedItems": sent["RequestItems"]})
                                .to_string()
                        } else {
                            r#"{"UnprocessedItems":{}}"#.to_string()
                        };
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                             content-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, calls)
    }

    fn put(k: i64) -> WriteRequest {
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .item("k", AttributeValue::N(k.to_string()))
                    .build()
                    .expect("item"),
            )
            .build()
    }

    fn client_of(url: &str) -> Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "k", "s", None, None, "test",
            ))
            .build();
        Client::from_conf(config)
    }

    #[test]
    fn unprocessed_items_are_written_again_until_taken_or_out_of_time() {
        block_on(async {
            // 60 writes: three calls of 25, 25 and 10; the first three answers leave
            // their items unprocessed, so each chunk's items go again.
            let (url, calls) = throttling_endpoint(3).await;
            let requests: Vec<WriteRequest> = (0..60).map(put).collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            let again = write_all(&client_of(&url), "t", requests, deadline)
                .await
                .expect("written");
            assert_eq!(again, 60, "every item was left once and written again");
            assert_eq!(calls.load(Ordering::SeqCst), 6);

            // A table that never takes them: the epoch fails once its time is out.
            let (url, _) = throttling_endpoint(usize::MAX).await;
            let deadline = Instant::now() + Duration::from_millis(300);
            let failed = write_all(&client_of(&url), "t", vec![put(1)], deadline).await;
            assert!(
                failed.is_err_and(|e| e.contains("stayed unprocessed")),
                "out of time"
            );
        });
    }

    #[test]
    fn one_partition_key_taking_most_writes_is_a_warning() {
        let mut hot = HotKeys::default();
        hot.sample((0..150).map(|i| format!("k{i}")).collect());
        assert_eq!(hot.warning(), None, "too few samples");
        hot.sample((0..100).map(|i| format!("k{}", i % 100)).collect());
        assert_eq!(hot.warning(), None, "spread out");
        hot.sample(vec!["auction-7".to_string(); 600]);
        let warning = hot.warning().expect("hot");
        assert!(
            warning.contains("\"auction-7\"") && warning.contains("71%"),
            "{warning}"
        );
        // Old samples age out: spread writes make the warning go.
        hot.sample((0..SAMPLE).map(|i| format!("x{i}")).collect());
        assert_eq!(hot.warning(), None);
    }
}
