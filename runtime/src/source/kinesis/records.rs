//! Kinesis records of one shard into one Arrow batch: each (user) record's data decoded
//! by the source's format, and the columns declared `METADATA FROM 'partition_key' |
//! 'sequence_number' | 'sub_sequence_number' | 'shard_id' | 'arrival_time'` filled from
//! the record. Records are copied into a few growing buffers, not one allocation each.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::position::ShardPosition;
use crate::decode::Rejected;
use crate::source::value::ValueFormat;
use crate::{Error, Result};
use weir_sql::parser::METADATA_KEY;

/// What a metadata column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    PartitionKey,
    SequenceNumber,
    /// The user record's index in a KPL aggregated record; null for a plain record.
    SubSequenceNumber,
    ShardId,
    /// ApproximateArrivalTimestamp.
    ArrivalTime,
}

const META_NAMES: &str =
    "'partition_key', 'sequence_number', 'sub_sequence_number', 'shard_id' and 'arrival_time'";

impl Meta {
    fn parse(key: &str) -> Option<Self> {
        Some(match key {
            "partition_key" => Meta::PartitionKey,
            "sequence_number" => Meta::SequenceNumber,
            "sub_sequence_number" => Meta::SubSequenceNumber,
            "shard_id" => Meta::ShardId,
            "arrival_time" => Meta::ArrivalTime,
            _ => return None,
        })
    }

    /// The type the column must have.
    fn wants(self) -> (DataType, &'static str) {
        match self {
            Meta::PartitionKey | Meta::SequenceNumber | Meta::ShardId => {
                (DataType::Utf8, "VARCHAR")
            }
            Meta::SubSequenceNumber => (DataType::Int64, "BIGINT"),
            Meta::ArrivalTime => (
                DataType::Timestamp(TimeUnit::Millisecond, None),
                "TIMESTAMP",
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Column {
    Value(usize),
    Meta(Meta),
}

/// The shape of a Kinesis source's rows.
#[derive(Debug, Clone)]
pub struct Layout {
    schema: SchemaRef,
    columns: Vec<Column>,
    value: ValueFormat,
}

impl Layout {
    /// The layout of `columns` under `format` (`json` or `raw`).
    pub fn new(source: &str, columns: &[Field], format: &str) -> Result<Self> {
        let mut value_fields = Vec::new();
        let mut layout = Vec::with_capacity(columns.len());
        for f in columns {
            let Some(key) = f.metadata().get(METADATA_KEY) else {
                layout.push(Column::Value(value_fields.len()));
                value_fields.push(f.clone());
                continue;
            };
            let meta = Meta::parse(key).ok_or_else(|| {
                Error::BadRequest(format!(
                    "source {source}: column {} is METADATA FROM '{key}'; a Kinesis record has {META_NAMES}",
                    f.name()
                ))
            })?;
            let (wanted, named) = meta.wants();
            if *f.data_type() != wanted {
                return Err(Error::BadRequest(format!(
                    "source {source}: column {} (METADATA FROM '{key}') cannot be {}; use {named}",
                    f.name(),
                    f.data_type()
                )));
            }
            layout.push(Column::Meta(meta));
        }
        let value = ValueFormat::new(source, "kinesis", value_fields, format)?;
        let fields: Vec<Field> = columns
            .iter()
            .zip(&layout)
            .map(|(f, c)| match c {
                Column::Meta(Meta::SubSequenceNumber) => f.clone().with_nullable(true),
                _ => f.clone(),
            })
            .collect();
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            columns: layout,
            value,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Byte strings end to end in one buffer.
#[derive(Debug, Default)]
struct Strings {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Strings {
    fn push(&mut self, s: &[u8]) {
        self.bytes.extend_from_slice(s);
        self.ends.push(self.bytes.len());
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    fn text(&self, i: usize) -> &str {
        // Only text is pushed where text is read (keys, sequence numbers).
        std::str::from_utf8(self.get(i)).unwrap_or_default()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// One user record (or plain record) as the reader hands it over.
pub struct UserRecord<'a> {
    pub data: &'a [u8],
    pub partition_key: &'a str,
    pub sequence_number: &'a str,
    /// Its index within a KPL aggregated record.
    pub sub_sequence: Option<u64>,
    /// ApproximateArrivalTimestamp, ms since the epoch.
    pub arrival_ms: i64,
}

/// Records of one shard waiting to become a batch.
#[derive(Debug, Default)]
pub struct Records {
    values: Strings,
    keys: Strings,
    sequence_numbers: Strings,
    sub_sequences: Vec<Option<u64>>,
    arrivals: Vec<i64>,
    /// Records refused before decoding (a KPL record that fails its checksum), with the
    /// position they stand at.
    refused: Vec<(ShardPosition, Rejected)>,
    /// Where the shard is after the last record taken.
    last: Option<ShardPosition>,
}

/// What one shard's records made.
pub struct Built {
    pub batch: RecordBatch,
    /// Records that did not decode, with their position.
    pub rejected: Vec<(ShardPosition, Rejected)>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.arrivals.len()
    }

    /// Whether the records held fill a chunk.
    pub fn full(&self, rows: usize, bytes: usize) -> bool {
        self.len() >= rows || self.values.bytes.len() >= bytes
    }

    /// Where the shard is after the records held; `None` when nothing is held.
    pub fn position(&self) -> Option<&ShardPosition> {
        self.last.as_ref()
    }

    /// Take one record, and the shard's position after it.
    pub fn push(&mut self, r: &UserRecord, after: ShardPosition) {
        self.values.push(r.data);
        self.keys.push(r.partition_key.as_bytes());
        self.sequence_numbers.push(r.sequence_number.as_bytes());
        self.sub_sequences.push(r.sub_sequence);
        self.arrivals.push(r.arrival_ms);
        self.last = Some(after);
    }

    /// A record refused before decoding, counted as read.
    pub fn refuse(&mut self, at: ShardPosition, raw: &[u8], reason: String) {
        self.refused.push((
            at.clone(),
            Rejected {
                index: usize::MAX,
                raw: raw.to_vec(),
                reason,
            },
        ));
        self.last = Some(at);
    }

    /// The held records as one batch (emptying the buffer), with `shard` in its shard
    /// column; records whose data does not decode are returned with their positions.
    pub fn build(&mut self, layout: &Layout, shard: &str) -> Result<Built> {
        let n = self.len();
        let (value_columns, rejected) =
            (layout.value).decode(n, |i| Some(self.values.get(i)), &self.values.bytes);
        let mut keep = Vec::with_capacity(n);
        let mut next_bad = rejected.iter().map(|r| r.index).peekable();
        for i in 0..n {
            if next_bad.peek() == Some(&i) {
                next_bad.next();
            } else {
                keep.push(i);
            }
        }
        let columns: Vec<ArrayRef> = layout
            .columns
            .iter()
            .map(|c| match c {
                Column::Value(v) => value_columns[*v].clone(),
                Column::Meta(meta) => self.meta_column(*meta, shard, &keep),
            })
            .collect();
        let batch = RecordBatch::try_new(layout.schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("kinesis rows do not fit the schema: {e}")))?;
        let mut rejected: Vec<(ShardPosition, Rejected)> = rejected
            .into_iter()
            .map(|r| {
                let at = ShardPosition::after(
                    self.sequence_numbers.text(r.index),
                    self.sub_sequences[r.index],
                );
                (at, r)
            })
            .collect();
        rejected.append(&mut self.refused);
        self.clear();
        Ok(Built { batch, rejected })
    }

    /// The held records as dead letters for `reason`, with their positions, and those
    /// refused before (emptying the buffer): a chunk that could not become a batch.
    pub fn take_rejected(&mut self, reason: &str) -> Vec<(ShardPosition, Rejected)> {
        let mut rejected: Vec<(ShardPosition, Rejected)> = (0..self.len())
            .map(|i| {
                let at = ShardPosition::after(self.sequence_numbers.text(i), self.sub_sequences[i]);
                let raw = self.values.get(i).to_vec();
                let reason = reason.to_string();
                (
                    at,
                    Rejected {
                        index: i,
                        raw,
                        reason,
                    },
                )
            })
            .collect();
        rejected.append(&mut self.refused);
        self.clear();
        rejected
    }

    fn meta_column(&self, meta: Meta, shard: &str, keep: &[usize]) -> ArrayRef {
        match meta {
            Meta::PartitionKey => Arc::new(StringArray::from_iter_values(
                keep.iter().map(|&i| self.keys.text(i)),
            )),
            Meta::SequenceNumber => Arc::new(StringArray::from_iter_values(
                keep.iter().map(|&i| self.sequence_numbers.text(i)),
            )),
            Meta::SubSequenceNumber => Arc::new(Int64Array::from_iter(
                keep.iter()
                    .map(|&i| self.sub_sequences[i].map(|s| s as i64)),
            )),
            Meta::ShardId => Arc::new(StringArray::from_iter_values(keep.iter().map(|_| shard))),
            Meta::ArrivalTime => Arc::new(TimestampMillisecondArray::from_iter_values(
                keep.iter().map(|&i| self.arrivals[i]),
            )),
        }
    }

    fn clear(&mut self) {
        self.values.clear();
        self.keys.clear();
        self.sequence_numbers.clear();
        self.sub_sequences.clear();
        self.arrivals.clear();
        self.refused.clear();
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};

    use super::*;

    fn meta(name: &str, t: DataType, key: &str) -> Field {
        Field::new(name, t, false)
            .with_metadata([(METADATA_KEY.to_string(), key.to_string())].into())
    }

    #[test]
    fn a_chunk_that_cannot_be_a_batch_is_dead_lettered_whole_with_positions() {
        let mut records = Records::default();
        let record = |data, seq, sub| UserRecord {
            data,
            partition_key: "k",
            sequence_number: seq,
            sub_sequence: sub,
            arrival_ms: 7,
        };
        records.push(
            &record(b"{\"n\":1}", "100", None),
            ShardPosition::after("100", None),
        );
        records.push(
            &record(b"{\"n\":2}", "101", Some(0)),
            ShardPosition::after("101", Some(0)),
        );
        records.refuse(ShardPosition::after("102", None), b"big", "too big".into());
        let rejected = records.take_rejected("cannot build");
        let got: Vec<(ShardPosition, &[u8], &str)> = rejected
            .iter()
            .map(|(at, r)| (at.clone(), r.raw.as_slice(), r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    ShardPosition::after("100", None),
                    &b"{\"n\":1}"[..],
                    "cannot build"
                ),
                (
                    ShardPosition::after("101", Some(0)),
                    &b"{\"n\":2}"[..],
                    "cannot build"
                ),
                (ShardPosition::after("102", None), &b"big"[..], "too big"),
            ]
        );
        assert!(
            records.position().is_none() && records.len() == 0,
            "emptied"
        );
    }

    #[test]
    fn records_and_their_envelopes_become_one_batch_and_bad_ones_keep_their_position() {
        let columns = [
            Field::new("n", DataType::Int64, true),
            meta("pk", DataType::Utf8, "partition_key"),
            meta("seq", DataType::Utf8, "sequence_number"),
            meta("sub", DataType::Int64, "sub_sequence_number"),
            meta("shard", DataType::Utf8, "shard_id"),
            meta(
                "at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                "arrival_time",
            ),
        ];
        let layout = Layout::new("s", &columns, "json").expect("layout");
        let mut records = Records::default();
        let record = |data, key, seq, sub| UserRecord {
            data,
            partition_key: key,
            sequence_number: seq,
            sub_sequence: sub,
            arrival_ms: 7,
        };
        records.push(
            &record(b"{\"n\":1}", "a", "100", None),
            ShardPosition::after("100", None),
        );
        records.push(
            &record(b"nope", "b", "101", Some(0)),
            ShardPosition::after("101", Some(0)),
        );
        records.push(
            &record(b"{\"n\":3}", "c", "101", Some(1)),
            ShardPosition::after("101", Some(1)),
        );
        records.refuse(
            ShardPosition::after("102", None),
            b"\xF3bad",
            "checksum".into(),
        );
        assert_eq!(records.position(), Some(&ShardPosition::after("102", None)));
        let built = records.build(&layout, "shardId-1").expect("built");
        let b = &built.batch;
        assert_eq!(b.num_rows(), 2);
        assert_eq!(
            b.column(0).as_primitive::<Int64Type>().values().to_vec(),
            [1, 3]
        );
        assert_eq!(b.column(1).as_string::<i32>().value(1), "c");
        assert_eq!(b.column(2).as_string::<i32>().value(1), "101");
        let sub = b.column(3).as_primitive::<Int64Type>();
        assert!(sub.is_null(0) && sub.value(1) == 1);
        assert_eq!(b.column(4).as_string::<i32>().value(0), "shardId-1");
        assert_eq!(
            b.column(5)
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            7
        );
        let at: Vec<&ShardPosition> = built.rejected.iter().map(|(p, _)| p).collect();
        assert_eq!(
            at,
            [
                &ShardPosition::after("101", Some(0)),
                &ShardPosition::after("102", None)
            ]
        );
        assert!(records.position().is_none(), "emptied");
        for (columns, expected) in [
            (
                vec![meta("p", DataType::Int64, "partition_key")],
                "use VARCHAR",
            ),
            (vec![meta("p", DataType::Utf8, "offset")], "'partition_key'"),
        ] {
            let e = Layout::new("s", &columns, "json")
                .expect_err(expected)
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn a_raw_source_takes_the_whole_data() {
        let columns = [
            Field::new("line", DataType::Utf8, true),
            meta("shard", DataType::Utf8, "shard_id"),
        ];
        let layout = Layout::new("s", &columns, "raw").expect("layout");
        let mut records = Records::default();
        for (data, seq) in [
            (&b"plain text"[..], "1"),
            (b"\xff\xfe", "2"),
            (b"{\"a\": 1}", "3"),
        ] {
            let r = UserRecord {
                data,
                partition_key: "k",
                sequence_number: seq,
                sub_sequence: None,
                arrival_ms: 0,
            };
            records.push(&r, ShardPosition::after(seq, None));
        }
        let built = records.build(&layout, "shardId-0").expect("built");
        let lines = built.batch.column(0).as_string::<i32>();
        assert_eq!(
            (lines.value(0), lines.value(1)),
            ("plain text", "{\"a\": 1}")
        );
        assert_eq!(built.rejected.len(), 1, "not UTF-8 for a VARCHAR column");
        assert_eq!(built.rejected[0].0, ShardPosition::after("2", None));
    }
}
