//! Kafka messages of one partition into one Arrow batch: the value decoded by the
//! source's format (JSON objects, or the raw value as one column), and the columns
//! declared `METADATA FROM 'partition' | 'offset' | 'timestamp' | 'key' | 'topic' |
//! 'headers'` filled from each message's envelope. Messages are copied into a few
//! growing buffers, not one allocation each.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::message::{Headers, Message};

use crate::decode::Rejected;
use crate::source::value::ValueFormat;
use crate::{Error, Result};
use weir_sql::parser::METADATA_KEY;

/// What a metadata column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    Partition,
    Offset,
    Timestamp,
    Key,
    Topic,
    Headers,
}

impl Meta {
    fn parse(key: &str) -> Option<Self> {
        Some(match key {
            "partition" => Meta::Partition,
            "offset" => Meta::Offset,
            "timestamp" => Meta::Timestamp,
            "key" => Meta::Key,
            "topic" => Meta::Topic,
            "headers" => Meta::Headers,
            _ => return None,
        })
    }

    fn fits(self, t: &DataType) -> bool {
        match self {
            Meta::Partition => matches!(t, DataType::Int32 | DataType::Int64),
            Meta::Offset => *t == DataType::Int64,
            Meta::Timestamp => *t == DataType::Timestamp(TimeUnit::Millisecond, None),
            Meta::Key => matches!(t, DataType::Utf8 | DataType::Binary),
            Meta::Topic | Meta::Headers => *t == DataType::Utf8,
        }
    }
}

/// The shape of a Kafka source's rows.
#[derive(Debug, Clone)]
pub struct Layout {
    schema: SchemaRef,
    /// For each column of `schema`: the index among the value's columns, or the
    /// metadata it holds.
    columns: Vec<Column>,
    value: ValueFormat,
    /// Whether any column needs the headers (rendered as JSON text).
    wants_headers: bool,
    /// A message whose value is larger is dead-lettered, not decoded.
    max_message_bytes: usize,
}

/// The default of the `max_message_bytes` option: Kafka's own default message limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_576;

/// The bytes of an oversized message kept in its dead letter.
const OVERSIZED_PREFIX: usize = 1024;

#[derive(Debug, Clone, Copy)]
enum Column {
    Value(usize),
    Meta(Meta),
}

impl Layout {
    /// The layout of `columns` under `format` (`json` or `raw`).
    pub fn new(source: &str, columns: &[Field], format: &str) -> Result<Self> {
        let mut value_fields = Vec::new();
        let mut layout = Vec::with_capacity(columns.len());
        for f in columns {
            match f.metadata().get(METADATA_KEY) {
                Some(key) => {
                    let meta = Meta::parse(key).ok_or_else(|| {
                        Error::BadRequest(format!(
                            "source {source}: column {} is METADATA FROM '{key}'; a Kafka message has \
                             'partition', 'offset', 'timestamp', 'key', 'topic' and 'headers'",
                            f.name()
                        ))
                    })?;
                    if !meta.fits(f.data_type()) {
                        return Err(Error::BadRequest(format!(
                            "source {source}: column {} (METADATA FROM '{key}') cannot be {}; use {}",
                            f.name(),
                            f.data_type(),
                            match meta {
                                Meta::Partition => "INT or BIGINT",
                                Meta::Offset => "BIGINT",
                                Meta::Timestamp => "TIMESTAMP",
                                Meta::Key => "VARCHAR or BYTEA",
                                Meta::Topic => "VARCHAR",
                                Meta::Headers => "VARCHAR (a JSON object)",
                            }
                        )));
                    }
                    layout.push(Column::Meta(meta));
                }
                None => {
                    layout.push(Column::Value(value_fields.len()));
                    value_fields.push(f.clone());
                }
            }
        }
        let value = ValueFormat::new(source, "kafka", value_fields, format)?;
        // A message may lack a key, headers or (raw) a value: those columns take nulls.
        let raw = value.is_raw();
        let fields: Vec<Field> = columns
            .iter()
            .zip(&layout)
            .map(|(f, c)| match c {
                Column::Meta(Meta::Key | Meta::Headers) => f.clone().with_nullable(true),
                Column::Value(_) if raw => f.clone().with_nullable(true),
                _ => f.clone(),
            })
            .collect();
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            wants_headers: layout
                .iter()
                .any(|c| matches!(c, Column::Meta(Meta::Headers))),
            columns: layout,
            value,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        })
    }

    /// Dead-letter messages whose value is over `bytes`.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Messages of one partition waiting to become a batch.
#[derive(Debug, Default)]
pub struct Messages {
    values: Vec<u8>,
    value_ends: Vec<usize>,
    /// Messages without a value (tombstones).
    null_values: Vec<bool>,
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    null_keys: Vec<bool>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    headers: Vec<Option<String>>,
    topic: String,
    partition: i32,
    /// Messages over the size limit: their offset, first bytes and why.
    oversized: Vec<(i64, Rejected)>,
    /// The offset of the last message taken, held or not.
    last_offset: Option<i64>,
}

/// What one partition's messages made.
pub struct Built {
    pub batch: RecordBatch,
    pub rejected: Vec<(i64, Rejected)>,
}

impl Messages {
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Nothing held, not even a message over the size limit.
    pub fn is_empty(&self) -> bool {
        self.last_offset.is_none()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.values.len() + self.keys.len()
    }

    /// The offset after the last message held.
    pub fn next_offset(&self) -> Option<i64> {
        self.last_offset.map(|o| o + 1)
    }

    pub fn push<M: Message>(&mut self, m: &M, layout: &Layout) {
        if self.offsets.is_empty() {
            self.topic.clear();
            self.topic.push_str(m.topic());
            self.partition = m.partition();
        }
        self.last_offset = Some(m.offset());
        let value = m.payload();
        let size = value.map_or(0, <[u8]>::len);
        if size > layout.max_message_bytes {
            let raw = value.unwrap_or_default();
            self.oversized.push((
                m.offset(),
                Rejected {
                    index: usize::MAX,
                    raw: raw[..OVERSIZED_PREFIX.min(raw.len())].to_vec(),
                    reason: format!(
                        "the message is {size} bytes, over the source's max_message_bytes ({}); \
                         its first {OVERSIZED_PREFIX} bytes are kept here",
                        layout.max_message_bytes
                    ),
                },
            ));
            return;
        }
        self.values.extend_from_slice(value.unwrap_or_default());
        self.value_ends.push(self.values.len());
        self.null_values.push(value.is_none());
        let key = m.key();
        self.keys.extend_from_slice(key.unwrap_or_default());
        self.key_ends.push(self.keys.len());
        self.null_keys.push(key.is_none());
        self.offsets.push(m.offset());
        self.timestamps.push(m.timestamp().to_millis());
        if layout.wants_headers {
            self.headers.push(m.headers().map(|h| {
                let map: serde_json::Map<String, serde_json::Value> = h
                    .iter()
                    .map(|h| {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_string(), v.into())
                    })
                    .collect();
                serde_json::Value::Object(map).to_string()
            }));
        }
    }

    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.value_ends[i - 1] };
        &self.values[start..self.value_ends[i]]
    }

    /// The held messages as one batch (emptying the buffer); messages whose value does
    /// not decode are returned with their offsets.
    pub fn build(&mut self, layout: &Layout) -> Result<Built> {
        let n = self.len();
        let (value_columns, rejected) = layout.value.decode(
            n,
            |i| (!self.null_values[i]).then(|| self.value(i)),
            &self.values,
        );
        // The envelope of the messages that decoded.
        let mut keep = Vec::with_capacity(n);
        let mut next_bad = rejected.iter().map(|r| r.index).peekable();
        for i in 0..n {
            if next_bad.peek() == Some(&i) {
                next_bad.next();
            } else {
                keep.push(i);
            }
        }
        let mut columns = Vec::with_capacity(layout.columns.len());
        for (c, field) in layout.columns.iter().zip(layout.schema.fields()) {
            columns.push(match c {
                Column::Value(v) => value_columns[*v].clone(),
                Column::Meta(meta) => self.meta_column(*meta, field, &keep),
            });
        }
        let batch = RecordBatch::try_new(layout.schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("kafka rows do not fit the schema: {e}")))?;
        let mut rejected: Vec<(i64, Rejected)> = rejected
            .into_iter()
            .map(|r| (self.offsets[r.index], r))
            .collect();
        rejected.append(&mut self.oversized);
        rejected.sort_by_key(|(offset, _)| *offset);
        self.clear();
        Ok(Built { batch, rejected })
    }

    fn meta_column(&self, meta: Meta, field: &Field, keep: &[usize]) -> ArrayRef {
        let (t, nullable) = (field.data_type(), field.is_nullable());
        match meta {
            Meta::Partition if *t == DataType::Int32 => {
                Arc::new(Int32Array::from(vec![self.partition; keep.len()]))
            }
            Meta::Partition => Arc::new(Int64Array::from(vec![
                i64::from(self.partition);
                keep.len()
            ])),
            Meta::Offset => Arc::new(Int64Array::from_iter_values(
                keep.iter().map(|&i| self.offsets[i]),
            )),
            // Messages of the oldest formats have no time: 0 where the column is NOT NULL.
            Meta::Timestamp if !nullable => Arc::new(TimestampMillisecondArray::from_iter_values(
                keep.iter().map(|&i| self.timestamps[i].unwrap_or(0)),
            )),
            Meta::Timestamp => Arc::new(TimestampMillisecondArray::from_iter(
                keep.iter().map(|&i| self.timestamps[i]),
            )),
            Meta::Topic => Arc::new(StringArray::from_iter_values(
                keep.iter().map(|_| self.topic.as_str()),
            )),
            Meta::Headers => Arc::new(StringArray::from_iter(
                keep.iter().map(|&i| self.headers[i].as_deref()),
            )),
            Meta::Key => {
                let key = |i: usize| {
                    let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
                    (!self.null_keys[i]).then(|| &self.keys[start..self.key_ends[i]])
                };
                if *t == DataType::Utf8 {
                    Arc::new(StringArray::from_iter(keep.iter().map(|&i| {
                        key(i).map(|k| String::from_utf8_lossy(k).into_owned())
                    })))
                } else {
                    Arc::new(BinaryArray::from_iter(keep.iter().map(|&i| key(i))))
                }
            }
        }
    }

    /// Every held message's offset and value, with `reason`, emptying the buffer: for
    /// messages that cannot become a batch at all.
    pub fn take_raw(&mut self, reason: &str) -> Vec<(i64, Vec<u8>, String)> {
        let oversized = std::mem::take(&mut self.oversized);
        let taken = (0..self.len())
            .map(|i| {
                (
                    self.offsets[i],
                    self.value(i).to_vec(),
                    format!("the messages could not be made into rows: {reason}"),
                )
            })
            .chain(
                oversized
                    .into_iter()
                    .map(|(offset, r)| (offset, r.raw, r.reason)),
            )
            .collect();
        self.clear();
        taken
    }

    fn clear(&mut self) {
        self.values.clear();
        self.value_ends.clear();
        self.null_values.clear();
        self.keys.clear();
        self.key_ends.clear();
        self.null_keys.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.headers.clear();
        self.oversized.clear();
        self.last_offset = None;
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    use super::*;

    fn meta(name: &str, t: DataType, key: &str) -> Field {
        Field::new(name, t, true)
            .with_metadata([(METADATA_KEY.to_string(), key.to_string())].into())
    }

    fn message(value: Option<&str>, key: Option<&str>, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            value.map(|v| v.as_bytes().to_vec()),
            key.map(|k| k.as_bytes().to_vec()),
            "bids".into(),
            Timestamp::CreateTime(1_000 + offset),
            3,
            offset,
            Some(OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some("x1"),
            })),
        )
    }

    #[test]
    fn values_and_envelopes_become_one_batch_and_bad_values_keep_their_offsets() {
        let columns = [
            Field::new("id", DataType::Int64, true),
            meta("part", DataType::Int32, "partition"),
            meta("off", DataType::Int64, "offset"),
            meta(
                "sent",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                "timestamp",
            ),
            meta("k", DataType::Utf8, "key"),
            meta("t", DataType::Utf8, "topic"),
            meta("h", DataType::Utf8, "headers"),
        ];
        let layout = Layout::new("s", &columns, "json").expect("layout");
        let mut buffer = Messages::default();
        buffer.push(&message(Some(r#"{"id": 1}"#), Some("a"), 40), &layout);
        buffer.push(&message(Some("not json"), None, 41), &layout);
        buffer.push(&message(Some(r#"{"id": 3}"#), None, 42), &layout);
        assert_eq!(buffer.next_offset(), Some(43));
        let built = buffer.build(&layout).expect("built");
        assert!(buffer.is_empty());
        let b = &built.batch;
        assert_eq!(b.num_rows(), 2);
        let ids: Vec<i64> = b.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, [1, 3]);
        assert_eq!(
            b.column(1).as_primitive::<Int32Type>().values().to_vec(),
            [3, 3]
        );
        assert_eq!(
            b.column(2).as_primitive::<Int64Type>().values().to_vec(),
            [40, 42]
        );
        assert_eq!(
            b.column(3)
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec(),
            [1_040, 1_042]
        );
        let keys = b.column(4).as_string::<i32>();
        assert_eq!((keys.value(0), keys.is_null(1)), ("a", true));
        assert_eq!(b.column(5).as_string::<i32>().value(1), "bids");
        assert_eq!(b.column(6).as_string::<i32>().value(0), r#"{"trace":"x1"}"#);
        assert_eq!(built.rejected.len(), 1);
        assert_eq!(built.rejected[0].0, 41);
        assert_eq!(built.rejected[0].1.raw, b"not json");
    }

    #[test]
    fn a_raw_source_takes_the_whole_value_and_columns_are_checked() {
        let columns = [
            Field::new("value", DataType::Utf8, false),
            meta("off", DataType::Int64, "offset"),
        ];
        let layout = Layout::new("s", &columns, "raw").expect("layout");
        let mut buffer = Messages::default();
        buffer.push(&message(Some("plain text"), None, 0), &layout);
        buffer.push(&message(None, Some("k"), 1), &layout);
        let built = buffer.build(&layout).expect("built");
        let values = built.batch.column(0).as_string::<i32>();
        assert_eq!((values.value(0), values.is_null(1)), ("plain text", true));
        let bad = [
            (
                vec![Field::new("a", DataType::Int64, true)],
                "raw",
                "VARCHAR or BYTEA",
            ),
            (
                vec![meta("p", DataType::Utf8, "partition")],
                "json",
                "INT or BIGINT",
            ),
            (
                vec![meta("p", DataType::Int32, "leader")],
                "json",
                "'partition'",
            ),
            (
                vec![Field::new("a", DataType::Int64, true)],
                "avro",
                "'json' or 'raw'",
            ),
        ];
        for (columns, format, expected) in bad {
            let e = Layout::new("s", &columns, format)
                .expect_err(expected)
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
    }
}
