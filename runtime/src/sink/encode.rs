//! A view's changes as messages: each row a JSON object (`json`), the same keyed by
//! the key columns (`upsert`), or in Debezium's envelope (`debezium_json`). A batch is
//! written into one buffer, and messages are ranges of it: no allocation per row.

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
    /// Each row a JSON object.
    Json,
    /// The row as the value, its key columns as the key: the last message of a key is
    /// the view's row for it.
    Upsert,
    /// `{"before": null, "after": row, "op": "c" | "u" | "r"}`.
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

/// One batch's messages: `values[i]` (and `keys[i]`, when keyed) are ranges of `buf`.
#[derive(Debug, Default)]
pub struct Messages {
    pub buf: Vec<u8>,
    pub values: Vec<Range<usize>>,
    pub keys: Vec<Range<usize>>,
    lines: Vec<u8>,
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
    pub fn encode(&self, change: &Change, out: &mut Messages) -> Result<(), ArrowError> {
        out.buf.clear();
        out.values.clear();
        out.keys.clear();
        let rows = &change.rows;
        if self.format == Format::Debezium {
            json_lines(rows, &mut out.lines)?;
            let op: &[u8] = match change.kind {
                ChangeKind::Append => b"c",
                ChangeKind::Update => b"u",
                ChangeKind::Snapshot => b"r",
            };
            for line in out.lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let start = out.buf.len();
                out.buf.extend_from_slice(b"{\"before\":null,\"after\":");
                out.buf.extend_from_slice(line);
                out.buf.extend_from_slice(b",\"op\":\"");
                out.buf.extend_from_slice(op);
                out.buf.extend_from_slice(b"\"}");
                out.values.push(start..out.buf.len());
            }
        } else {
            json_lines(rows, &mut out.buf)?;
            out.values = line_ranges(&out.buf, 0);
        }
        if !self.key.is_empty() {
            let start = out.buf.len();
            let mut keys = std::mem::take(&mut out.lines);
            json_lines(&rows.project(&self.key)?, &mut keys)?;
            out.buf.extend_from_slice(&keys);
            out.keys = line_ranges(&out.buf, start);
            out.lines = keys;
        }
        if out.values.len() != rows.num_rows()
            || (!self.key.is_empty() && out.keys.len() != rows.num_rows())
        {
            return Err(ArrowError::JsonError(format!(
                "{} rows became {} messages",
                rows.num_rows(),
                out.values.len()
            )));
        }
        Ok(())
    }
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

    fn change(kind: ChangeKind) -> Change {
        let schema = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        Change {
            rows: RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(vec![1, 2])),
                    Arc::new(StringArray::from(vec![Some("a"), None])),
                ],
            )
            .expect("batch"),
            kind,
        }
    }

    fn texts(m: &Messages, ranges: &[Range<usize>]) -> Vec<String> {
        ranges
            .iter()
            .map(|r| String::from_utf8(m.buf[r.clone()].to_vec()).expect("utf-8"))
            .collect()
    }

    #[test]
    fn rows_become_json_values_keyed_by_their_key_columns() {
        let c = change(ChangeKind::Update);
        let e = Encoder::new(Format::Upsert, c.rows.schema_ref(), Some("auction")).expect("key");
        let mut m = Messages::default();
        e.encode(&c, &mut m).expect("encodes");
        assert_eq!(
            texts(&m, &m.values),
            [
                r#"{"auction":1,"name":"a"}"#,
                r#"{"auction":2,"name":null}"#
            ]
        );
        assert_eq!(texts(&m, &m.keys), [r#"{"auction":1}"#, r#"{"auction":2}"#]);
    }

    #[test]
    fn debezium_wraps_each_row_with_its_operation() {
        let c = change(ChangeKind::Append);
        let e = Encoder::new(Format::Debezium, c.rows.schema_ref(), None).expect("no key");
        let mut m = Messages::default();
        e.encode(&c, &mut m).expect("encodes");
        assert_eq!(
            texts(&m, &m.values)[0],
            r#"{"before":null,"after":{"auction":1,"name":"a"},"op":"c"}"#
        );
        assert!(m.keys.is_empty());
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
