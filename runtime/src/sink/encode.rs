//! A view's changes as messages: each row a JSON object (`json`), the same keyed by
//! the key columns (`upsert`, with a tombstone for a key that left the view), or in
//! Debezium's envelope (`debezium_json`, with the row before and the operation). A
//! batch is written into one buffer, and messages are ranges of it: no allocation per
//! row.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;

use super::feed::{Change, ChangeKind};

/// How rows become message values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Each row a JSON object: the rows a change adds (a row that leaves the view
    /// writes nothing).
    Json,
    /// The row as the value, its key columns as the key: the last message of a key is
    /// the view's row for it, and a key that left the view ends with a tombstone.
    Upsert,
    /// `{"before": row | null, "after": row | null, "op": "c" | "u" | "d" | "r"}`.
    Debezium,
}

impl Format {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "json" => Self::Json,
            "upsert" => Self::Upsert,
            "debezium_json" => Self::Debezium,
            _ => return None,
        })
    }
}

/// Turns changes into message keys and values.
#[derive(Debug, Clone)]
pub struct Encoder {
    format: Format,
    /// The key columns, by index; empty: messages without a key.
    key: Vec<usize>,
}

/// One batch's messages: `values[i]` (and `keys[i]`, when keyed) are ranges of `buf`;
/// a value of `None` is a tombstone.
#[derive(Debug, Default)]
pub struct Messages {
    pub buf: Vec<u8>,
    pub values: Vec<Option<Range<usize>>>,
    pub keys: Vec<Range<usize>>,
    scratch: Scratch,
}

/// The JSON lines of a change, reused from batch to batch.
#[derive(Debug, Default)]
struct Scratch {
    rows: Vec<u8>,
    row_keys: Vec<u8>,
    replaced: Vec<u8>,
    replaced_keys: Vec<u8>,
}

impl Encoder {
    /// `key` names columns of `schema`, comma-separated.
    pub fn new(format: Format, schema: &SchemaRef, key: Option<&str>) -> Result<Self, String> {
        let key = match key {
            None => Vec::new(),
            Some(names) => names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    schema.index_of(n).map_err(|_| {
                        format!(
                            "key column {n} is not a column of the view (its columns: {})",
                            schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if format == Format::Upsert && key.is_empty() {
            return Err("format = 'upsert' needs key = 'column[, column]'".into());
        }
        Ok(Self { format, key })
    }

    /// The messages of one batch of changes, into `out` (cleared first).
    ///
    /// With key columns, a replaced row is paired with the new row of the same key:
    /// Debezium's `before` and `u`; a replaced key without a new row has left the view
    /// (`upsert`: a tombstone; Debezium: `d`). Without key columns, Debezium writes
    /// each replaced row as `d` and each new row as `c`.
    pub fn encode(&self, change: &Change, out: &mut Messages) -> Result<(), ArrowError> {
        let Messages {
            buf,
            values,
            keys,
            scratch,
        } = out;
        buf.clear();
        values.clear();
        keys.clear();
        let rows = self.lines(&change.rows, &mut scratch.rows, &mut scratch.row_keys)?;
        let replaced = match change
            .replaced
            .as_ref()
            .filter(|_| self.format != Format::Json)
        {
            Some(old) => self.lines(old, &mut scratch.replaced, &mut scratch.replaced_keys)?,
            None => Lines::default(),
        };
        let row_line = |i: usize| &scratch.rows[rows.values[i].clone()];
        let row_key = |i: usize| rows.keys.get(i).map(|k| &scratch.row_keys[k.clone()]);
        let old_line = |j: usize| &scratch.replaced[replaced.values[j].clone()];
        let old_key = |j: usize| {
            replaced
                .keys
                .get(j)
                .map(|k| &scratch.replaced_keys[k.clone()])
        };
        let mut push = |buf: &mut Vec<u8>, value: Option<Range<usize>>, key: Option<&[u8]>| {
            values.push(value);
            if let Some(key) = key {
                let start = buf.len();
                buf.extend_from_slice(key);
                keys.push(start..buf.len());
            }
        };
        let new_keys: HashSet<&[u8]> = (0..rows.len()).filter_map(row_key).collect();
        // Replaced rows whose key has no new row: they left the view.
        let left =
            (0..replaced.len()).filter(|&j| old_key(j).is_none_or(|k| !new_keys.contains(k)));
        match self.format {
            Format::Json | Format::Upsert => {
                for i in 0..rows.len() {
                    let start = buf.len();
                    buf.extend_from_slice(row_line(i));
                    let end = buf.len();
                    push(buf, Some(start..end), row_key(i));
                }
                for j in left {
                    push(buf, None, old_key(j));
                }
            }
            Format::Debezium => {
                let before_of: HashMap<&[u8], usize> = (0..replaced.len())
                    .filter_map(|j| old_key(j).map(|k| (k, j)))
                    .collect();
                for j in left.clone().filter(|_| self.key.is_empty()) {
                    let value = envelope(buf, Some(old_line(j)), None, b"d");
                    push(buf, Some(value), None);
                }
                for i in 0..rows.len() {
                    let before = row_key(i)
                        .and_then(|k| before_of.get(k))
                        .map(|&j| old_line(j));
                    let op: &[u8] = match change.kind {
                        ChangeKind::Append => b"c",
                        ChangeKind::Snapshot => b"r",
                        ChangeKind::Update if before.is_some() => b"u",
                        ChangeKind::Update => b"c",
                    };
                    let value = envelope(buf, before, Some(row_line(i)), op);
                    push(buf, Some(value), row_key(i));
                }
                for j in left.filter(|_| !self.key.is_empty()) {
                    let value = envelope(buf, Some(old_line(j)), None, b"d");
                    push(buf, Some(value), old_key(j));
                }
            }
        }
        Ok(())
    }

    /// The rows of `batch` as JSON lines into `values`, and their key columns into
    /// `keys` when the sink is keyed.
    fn lines(
        &self,
        batch: &RecordBatch,
        values: &mut Vec<u8>,
        keys: &mut Vec<u8>,
    ) -> Result<Lines, ArrowError> {
        json_lines(batch, values)?;
        let lines = Lines {
            values: line_ranges(values, 0),
            keys: if self.key.is_empty() {
                Vec::new()
            } else {
                json_lines(&batch.project(&self.key)?, keys)?;
                line_ranges(keys, 0)
            },
        };
        let rows = batch.num_rows();
        if lines.values.len() != rows || (!self.key.is_empty() && lines.keys.len() != rows) {
            return Err(ArrowError::JsonError(format!(
                "{rows} rows became {} lines",
                lines.values.len()
            )));
        }
        Ok(lines)
    }
}

/// The line ranges of a batch's rows and of their keys.
#[derive(Default)]
struct Lines {
    values: Vec<Range<usize>>,
    keys: Vec<Range<usize>>,
}

impl Lines {
    fn len(&self) -> usize {
        self.values.len()
    }
}

/// A Debezium envelope into `buf`; its range.
fn envelope(
    buf: &mut Vec<u8>,
    before: Option<&[u8]>,
    after: Option<&[u8]>,
    op: &[u8],
) -> Range<usize> {
    let start = buf.len();
    buf.extend_from_slice(b"{\"before\":");
    buf.extend_from_slice(before.unwrap_or(b"null"));
    buf.extend_from_slice(b",\"after\":");
    buf.extend_from_slice(after.unwrap_or(b"null"));
    buf.extend_from_slice(b",\"op\":\"");
    buf.extend_from_slice(op);
    buf.extend_from_slice(b"\"}");
    start..buf.len()
}

/// The rows as JSON lines, nulls written out, into `buf` (cleared first).
fn json_lines(rows: &RecordBatch, buf: &mut Vec<u8>) -> Result<(), ArrowError> {
    buf.clear();
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(std::mem::take(buf));
    writer.write(rows)?;
    writer.finish()?;
    *buf = writer.into_inner();
    Ok(())
}

/// The ranges of the non-empty lines of `buf` from `from`.
fn line_ranges(buf: &[u8], from: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = from;
    for (i, &b) in buf[from..].iter().enumerate() {
        if b == b'\n' {
            if from + i > start {
                ranges.push(start..from + i);
            }
            start = from + i + 1;
        }
    }
    if buf.len() > start {
        ranges.push(start..buf.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(auctions: &[i64], names: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(auctions.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn change(kind: ChangeKind) -> Change {
        Change::new(rows(&[1, 2], &[Some("a"), None]), kind)
    }

    /// Groups 1 and 3 were shown as "x" and "y"; now group 1 is "a" and 2 is new, so
    /// group 3 has left the view.
    fn update() -> Change {
        Change {
            replaced: Some(rows(&[1, 3], &[Some("x"), Some("y")])),
            ..change(ChangeKind::Update)
        }
    }

    fn encode(format: Format, key: Option<&str>, c: &Change) -> (Vec<Option<String>>, Vec<String>) {
        let e = Encoder::new(format, c.rows.schema_ref(), key).expect("encoder");
        let mut m = Messages::default();
        e.encode(c, &mut m).expect("encodes");
        let text = |r: &Range<usize>| String::from_utf8(m.buf[r.clone()].to_vec()).expect("utf-8");
        (
            m.values.iter().map(|v| v.as_ref().map(text)).collect(),
            m.keys.iter().map(text).collect(),
        )
    }

    #[test]
    fn rows_become_json_values_keyed_by_their_key_columns() {
        let (values, keys) = encode(Format::Upsert, Some("auction"), &change(ChangeKind::Update));
        assert_eq!(
            values,
            [
                Some(r#"{"auction":1,"name":"a"}"#.to_string()),
                Some(r#"{"auction":2,"name":null}"#.to_string())
            ]
        );
        assert_eq!(keys, [r#"{"auction":1}"#, r#"{"auction":2}"#]);
    }

    #[test]
    fn upsert_ends_a_key_that_left_the_view_with_a_tombstone() {
        let (values, keys) = encode(Format::Upsert, Some("auction"), &update());
        assert_eq!(
            values.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(
            keys,
            [r#"{"auction":1}"#, r#"{"auction":2}"#, r#"{"auction":3}"#]
        );
        // Plain JSON writes the rows a change adds, nothing for a row that left.
        let (values, keys) = encode(Format::Json, None, &update());
        assert_eq!(values.len(), 2);
        assert!(keys.is_empty());
    }

    #[test]
    fn debezium_pairs_rows_by_key_into_updates_creates_and_deletes() {
        let (values, keys) = encode(Format::Debezium, Some("auction"), &update());
        assert_eq!(
            values.into_iter().map(Option::unwrap).collect::<Vec<_>>(),
            [
                r#"{"before":{"auction":1,"name":"x"},"after":{"auction":1,"name":"a"},"op":"u"}"#,
                r#"{"before":null,"after":{"auction":2,"name":null},"op":"c"}"#,
                r#"{"before":{"auction":3,"name":"y"},"after":null,"op":"d"}"#,
            ]
        );
        assert_eq!(
            keys,
            [r#"{"auction":1}"#, r#"{"auction":2}"#, r#"{"auction":3}"#]
        );
        // Without a key nothing pairs: each replaced row is deleted, each row created.
        let (values, _) = encode(Format::Debezium, None, &update());
        let ops: Vec<&str> = values
            .iter()
            .map(|v| &v.as_deref().expect("a value")[v.as_deref().expect("a value").len() - 4..])
            .collect();
        assert_eq!(ops, [r#""d"}"#, r#""d"}"#, r#""c"}"#, r#""c"}"#]);
    }

    #[test]
    fn debezium_wraps_each_row_with_its_operation() {
        let (values, keys) = encode(Format::Debezium, None, &change(ChangeKind::Append));
        assert_eq!(
            values[0].as_deref(),
            Some(r#"{"before":null,"after":{"auction":1,"name":"a"},"op":"c"}"#)
        );
        assert!(keys.is_empty());
        let (values, _) = encode(Format::Debezium, None, &change(ChangeKind::Snapshot));
        assert!(
            values[1]
                .as_deref()
                .expect("value")
                .ends_with(r#""op":"r"}"#)
        );
    }

    #[test]
    fn upsert_needs_a_key_that_is_a_column() {
        let c = change(ChangeKind::Append);
        let e = Encoder::new(Format::Upsert, c.rows.schema_ref(), None).expect_err("no key");
        assert!(e.contains("needs key"), "{e}");
        let e = Encoder::new(Format::Json, c.rows.schema_ref(), Some("auction, price"))
            .expect_err("no such column");
        assert!(
            e.contains("key column price") && e.contains("auction, name"),
            "{e}"
        );
    }
}
