//! JSON records (one array, or newline-delimited) into an Arrow batch.
//!
//! Most batches take the fast path of [`super::simd`] (a flat scanner of our own, or
//! simd-json, into Arrow builders; newline-delimited bodies and arrays of flat records
//! in one pass, without splitting them first), which gives back any batch it cannot decode exactly as
//! arrow-json would. Then, one
//! parse per record: the records are decoded together by one arrow-json decoder,
//! which is checked after each record to have taken exactly one complete object from it
//! (so no record can run into the next). arrow-json fails a whole batch on one bad
//! record and is unusable after a syntax error, so only when that fails are the records
//! bisected with fresh decoders to find those that do not decode; serde then says
//! whether a refused record's syntax is at fault, for its reason.
//!
//! Whether a record is accepted depends on that record alone. arrow-json's syntax check
//! is lenient about commas between an object's members (`{"a": 1 "b": 2}` decodes).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::Columns;
use super::simd::{Checked, SimdPlan};

/// Decodes JSON records against one schema. Unknown fields are ignored.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    schema: SchemaRef,
    /// The fast path, for schemas of plain columns.
    simd: Option<SimdPlan>,
}

/// A record that did not decode, with its index in the request and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub index: usize,
    pub raw: Vec<u8>,
    pub reason: String,
}

/// The result of decoding one request body.
#[derive(Debug)]
pub struct Decoded {
    /// The records that decoded, in order.
    pub batch: RecordBatch,
    /// The records that did not.
    pub rejected: Vec<Rejected>,
    /// Records found in the body (accepted plus rejected).
    pub records: usize,
    /// The columns of `batch` said to hold the records' values: those asked for (all
    /// for [`JsonDecoder::decode`]). The others may hold placeholders (see
    /// [`super::columns`]): arrow-json, when it decides, builds every column, but says
    /// so no more than the fast path would (a chunk of other columns than the one
    /// before starts a micro-batch of its own).
    pub columns: Columns,
}

impl JsonDecoder {
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            simd: SimdPlan::new(&schema),
            schema,
        }
    }

    /// A decoder that never takes the fast path (to compare the two).
    pub fn arrow_only(schema: SchemaRef) -> Self {
        Self { simd: None, schema }
    }

    /// Decode a body holding a JSON array of objects or newline-delimited JSON objects.
    pub fn decode(&self, body: &[u8]) -> Decoded {
        self.decode_columns(body, Columns::ALL)
    }

    /// [`JsonDecoder::decode`], building only the columns in `wanted` (at least): every
    /// column is checked all the same, so the same records are accepted.
    pub fn decode_columns(&self, body: &[u8], wanted: Columns) -> Decoded {
        // The common case in one pass: lines of flat records, found as they are scanned.
        if let Some(batch) = (self.simd.as_ref()).and_then(|plan| plan.decode_lines(body, wanted)) {
            return Decoded {
                records: batch.num_rows(),
                batch,
                rejected: Vec::new(),
                columns: wanted,
            };
        }
        let records = match split_records(body) {
            Ok(records) => records,
            Err(reason) => {
                return Decoded {
                    batch: RecordBatch::new_empty(self.schema.clone()),
                    rejected: vec![Rejected {
                        index: 0,
                        raw: body.to_vec(),
                        reason,
                    }],
                    records: 1,
                    columns: wanted,
                };
            }
        };
        // Every record is a slice of the body: checked once, as a whole.
        self.decode_checked(records, self.check(body), wanted)
    }

    /// Decode records that arrive one by one (a message each), one JSON object each.
    pub fn decode_records<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
        self.decode_checked(records, Checked::No, Columns::ALL)
    }

    /// Decode records that are all slices of `buffer` (messages kept end to end): the
    /// buffer is checked once rather than each record.
    pub fn decode_records_in<'a>(
        &self,
        records: impl IntoIterator<Item = &'a [u8]>,
        buffer: &[u8],
    ) -> Decoded {
        self.decode_checked(records, self.check(buffer), Columns::ALL)
    }

    /// What one pass over `buffer`, which holds every record, tells the fast path.
    fn check(&self, buffer: &[u8]) -> Checked {
        (self.simd.as_ref()).map_or(Checked::No, |plan| plan.check_body(buffer))
    }

    fn decode_checked<'a>(
        &self,
        records: impl IntoIterator<Item = &'a [u8]>,
        checked: Checked,
        wanted: Columns,
    ) -> Decoded {
        let records: Vec<(usize, &[u8])> = records.into_iter().enumerate().collect();
        let total = records.len();
        let fast = (self.simd.as_ref()).and_then(|plan| plan.decode(&records, checked, wanted));
        if let Some(batch) = fast {
            return Decoded {
                batch,
                rejected: Vec::new(),
                records: total,
                columns: wanted,
            };
        }
        if let Ok(batch) = self.decode_all(&records) {
            return Decoded {
                batch,
                rejected: Vec::new(),
                records: total,
                columns: wanted,
            };
        }
        // Something does not decode: find what, record by record.
        let mut rejected = Vec::new();
        let (candidates, refused): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(_, record)| record.first() == Some(&b'{'));
        for (index, record) in refused {
            rejected.push(Rejected {
                index,
                raw: record.to_vec(),
                reason: check_syntax(record)
                    .err()
                    .unwrap_or_else(|| "expected a JSON object".to_string()),
            });
        }
        let mut batches = Vec::new();
        self.bisect(&candidates, &mut batches, &mut rejected);
        let batch = self.assemble(batches, &candidates, &mut rejected);
        rejected.sort_by_key(|r| r.index);
        Decoded {
            batch,
            rejected,
            records: total,
            columns: wanted,
        }
    }

    /// One batch of the decoded parts. Should they not fit together, every record that
    /// decoded is rejected with the reason: never lost behind an empty batch.
    fn assemble(
        &self,
        mut batches: Vec<RecordBatch>,
        candidates: &[(usize, &[u8])],
        rejected: &mut Vec<Rejected>,
    ) -> RecordBatch {
        let error = match batches.len() {
            0 => return RecordBatch::new_empty(self.schema.clone()),
            1 => return batches.remove(0),
            _ => match concat_batches(&self.schema, &batches) {
                Ok(batch) => return batch,
                Err(e) => e,
            },
        };
        let failed: std::collections::HashSet<usize> = rejected.iter().map(|r| r.index).collect();
        for (index, record) in candidates.iter().filter(|(i, _)| !failed.contains(i)) {
            rejected.push(Rejected {
                index: *index,
                raw: record.to_vec(),
                reason: format!("the decoded records could not be put into one batch: {error}"),
            });
        }
        RecordBatch::new_empty(self.schema.clone())
    }

    fn bisect(
        &self,
        records: &[(usize, &[u8])],
        good: &mut Vec<RecordBatch>,
        bad: &mut Vec<Rejected>,
    ) {
        if records.is_empty() {
            return;
        }
        match self.decode_all(records) {
            Ok(batch) => good.push(batch),
            Err(e) if records.len() == 1 => {
                let (index, raw) = records[0];
                bad.push(Rejected {
                    index,
                    raw: raw.to_vec(),
                    // A syntax error says so; else the record does not fit the schema.
                    reason: check_syntax(raw).err().unwrap_or_else(|| reason(&e)),
                });
            }
            Err(_) => {
                let (left, right) = records.split_at(records.len() / 2);
                self.bisect(left, good, bad);
                self.bisect(right, good, bad);
            }
        }
    }

    /// Decode `records` with one decoder, which must take exactly one complete object
    /// from each (so a record cut short cannot run into the next, nor hold two).
    fn decode_all(&self, records: &[(usize, &[u8])]) -> Result<RecordBatch, ArrowError> {
        if records.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let mut decoder = ReaderBuilder::new(Arc::clone(&self.schema))
            .with_batch_size(records.len())
            .build_decoder()?;
        for (i, (_, record)) in records.iter().enumerate() {
            let whole = record.first() == Some(&b'{')
                && decoder.decode(record)? == record.len()
                && !decoder.has_partial_record()
                && decoder.len() == i + 1;
            if !whole {
                return Err(ArrowError::JsonError(
                    "not exactly one complete JSON object".into(),
                ));
            }
        }
        let batch = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
        if batch.num_rows() != records.len() {
            return Err(ArrowError::JsonError(format!(
                "expected {} records, decoded {}",
                records.len(),
                batch.num_rows()
            )));
        }
        Ok(batch)
    }
}

fn reason(e: &ArrowError) -> String {
    match e {
        ArrowError::JsonError(m) => format!("does not match the source schema: {m}"),
        other => format!("does not match the source schema: {other}"),
    }
}

/// Split a body into records: a JSON array's elements, or the non-blank lines.
fn split_records(body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let trimmed = body.trim_ascii();
    if trimmed.first() == Some(&b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(trimmed)
            .map_err(|e| format!("the body is not a valid JSON array: {e}"))?;
        return Ok(items.into_iter().map(|r| r.get().as_bytes()).collect());
    }
    // memchr finds the line ends many bytes at a time (a byte-by-byte split was 15%
    // of decoding a block of bids).
    let mut records = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
        let line = body[start..end].trim_ascii();
        if !line.is_empty() {
            records.push(line);
        }
        start = end + 1;
    }
    Ok(records)
}

/// Only for a record that did not decode: whether its syntax is at fault, and where.
fn check_syntax(record: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<IgnoredAny>(record).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        DataType, Field, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
    };

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ])))
    }

    #[test]
    fn ndjson_and_array_bodies_decode_the_same() {
        let nd = decoder().decode(b"{\"id\":1,\"name\":\"a\",\"ts\":1000}\n\n{\"id\":2,\"ts\":\"1970-01-01T00:00:02Z\",\"extra\":true}\n");
        let arr = decoder().decode(b" [{\"id\":1,\"name\":\"a\",\"ts\":1000}, {\"id\":2,\"ts\":\"1970-01-01T00:00:02Z\",\"extra\":true}]");
        for d in [nd, arr] {
            assert!(d.rejected.is_empty(), "{:?}", d.rejected);
            assert_eq!(d.records, 2);
            assert_eq!(
                d.batch.column(0).as_primitive::<Int64Type>().values(),
                &[1, 2]
            );
            assert_eq!(
                d.batch
                    .column(2)
                    .as_primitive::<TimestampMillisecondType>()
                    .values(),
                &[1000, 2000]
            );
            assert!(d.batch.column(1).is_null(1));
        }
    }

    #[test]
    fn malformed_records_are_rejected_one_by_one_with_reasons() {
        let body = b"{\"id\":1,\"ts\":1}\n{\"id\":\n{\"id\":\"x\",\"ts\":3}\n[1,2]\n{\"name\":\"no id\",\"ts\":5}\n{\"id\":6,\"ts\":6}\n";
        let d = decoder().decode(body);
        assert_eq!(d.records, 6);
        assert_eq!(
            d.batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 6]
        );
        let idx: Vec<usize> = d.rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![1, 2, 3, 4]);
        assert!(
            d.rejected[0].reason.starts_with("invalid JSON"),
            "{}",
            d.rejected[0].reason
        );
        assert!(
            d.rejected[1].reason.contains("schema"),
            "{}",
            d.rejected[1].reason
        );
        assert!(
            d.rejected[2].reason.contains("object"),
            "{}",
            d.rejected[2].reason
        );
        assert!(
            d.rejected[3].reason.contains("schema"),
            "missing non-null field: {}",
            d.rejected[3].reason
        );
        assert_eq!(d.rejected[2].raw, b"[1,2]");
    }

    #[test]
    fn a_record_that_would_run_into_the_next_is_not_decoded_with_it() {
        // Cut short, and completed by the next record: together they would be one object.
        let d = decoder().decode_records([
            &b"{\"id\":1,\"ts\":1"[..],
            b"}",
            b"{\"id\":2,\"ts\":2}{\"id\":3,\"ts\":3}",
            b"{\"id\":4,\"ts\":4}",
        ]);
        assert_eq!(d.records, 4);
        assert_eq!(d.batch.column(0).as_primitive::<Int64Type>().values(), &[4]);
        let idx: Vec<usize> = d.rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 1, 2], "{:?}", d.rejected);
        assert!(
            d.rejected
                .iter()
                .all(|r| r.reason.starts_with("invalid JSON"))
        );
    }

    #[test]
    fn a_broken_array_is_one_dead_letter() {
        let d = decoder().decode(b"[{\"id\":1,\"ts\":1}, {\"id\":");
        assert_eq!(d.batch.num_rows(), 0);
        assert_eq!(d.rejected.len(), 1);
        assert!(d.rejected[0].reason.contains("not a valid JSON array"));
    }

    #[test]
    fn parts_that_do_not_fit_together_are_dead_letters_not_an_empty_batch() {
        let d = decoder();
        let good = d.decode(br#"{"id": 1, "name": "a", "ts": 1}"#).batch;
        let other = RecordBatch::try_from_iter([(
            "x",
            Arc::new(datafusion::arrow::array::Int32Array::from(vec![7])) as _,
        )])
        .expect("batch");
        let records: [(usize, &[u8]); 3] = [(0, b"{\"a\"}"), (1, b"{\"b\"}"), (2, b"{\"c\"}")];
        let mut rejected = vec![Rejected {
            index: 1,
            raw: b"{\"b\"}".to_vec(),
            reason: "bad".into(),
        }];
        let batch = d.assemble(vec![good, other], &records, &mut rejected);
        assert_eq!(batch.num_rows(), 0);
        let mut indices: Vec<usize> = rejected.iter().map(|r| r.index).collect();
        indices.sort_unstable();
        assert_eq!(indices, vec![0, 1, 2], "each record once, none lost");
        assert!(
            rejected
                .iter()
                .filter(|r| r.index != 1)
                .all(|r| r.reason.contains("could not be put into one batch")),
            "{rejected:?}"
        );
    }

    /// Text buffers are sized from the last batch's bytes per row, but never beyond the
    /// records' own bytes: one huge value must not make the next batch ask for gigabytes.
    #[test]
    fn text_buffers_never_outgrow_their_records() {
        use datafusion::arrow::array::AsArray;
        let schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
        let decoder = JsonDecoder::new(schema);
        let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(1 << 20));
        assert_eq!(decoder.decode(huge.as_bytes()).batch.num_rows(), 1);
        let body: String = (0..10_000)
            .map(|i| format!("{{\"name\":\"{i}\"}}\n"))
            .collect();
        let batch = decoder.decode(body.as_bytes()).batch;
        assert_eq!(batch.num_rows(), 10_000);
        let capacity = batch.column(0).as_string::<i32>().values().capacity();
        assert!(
            capacity <= body.len(),
            "{capacity} bytes for {} of records",
            body.len()
        );
    }

    /// The fast path decides nothing: on every kind of record, valid or not, the
    /// decoder gives what arrow-json alone gives (rows and dead letters).
    #[test]
    fn the_fast_path_decodes_exactly_what_arrow_json_decodes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let fast = JsonDecoder::new(schema.clone());
        let arrow = JsonDecoder::arrow_only(schema);
        assert!(fast.simd.is_some() && arrow.simd.is_none());
        // Valid records the fast path takes.
        let good = [
            r#"{"id":1,"name":"a","score":1.5,"ok":true,"ts":1000}"#,
            r#"{"id":-2,"name":"café \"q\" \n","score":0.1,"ok":false,"ts":"2015-07-15T00:00:00.123"}"#,
            r#"{"ts":"1969-12-31T23:59:59.9995Z","id":3,"extra":{"a":[1,{"b":2}]},"name":null}"#,
            r#"{"id":922337203685477580,"score":1e300,"ok":null}"#,
            r#"{"id":4,"score":3,"name":"\"q\" \\ \n \t","ts":-5}"#,
            "{\"id\":5,\"name\":\"日本 😀\"}  ",
            r#"{"id":-0,"score":-1}"#,
            r#"{"id":8,"score":-0.0}"#,
        ];
        // Valid records arrow-json decides (see `simd::plain`), and invalid ones.
        let odd = [
            r#"{"id":-2,"name":"caf\u00e9","ts":"2015-07-15T00:00:00.123"}"#,
            r#"{"id":4,"name":"\ud83d\ude00"}"#,
            r#"{"id":9223372036854775807,"score":1e300,"ok":null}"#,
            r#"{"id":6,"score":2.2250738585072014e-308}"#,
            r#"{"id":7,"score":0.30000000000000004}"#,
            r#"{"id":"8"}"#,
            r#"{"id":1.5}"#,
            r#"{"id":18446744073709551615}"#,
            r#"{"name":"no id"}"#,
            r#"{"id":null}"#,
            r#"{"id":9,"id":10}"#,
            r#"{"id":11,"name":12}"#,
            r#"{"id":12,"ok":"true"}"#,
            r#"{"id":13,"ts":"not a time"}"#,
            r#"{"id":14,"ts":1.5}"#,
            r#"{"id":14,"ts":"2262-04-12T00:00:00Z"}"#,
            r#"{"id":14,"score":-0}"#,
            r#"{"id":15,"name":"\ud83d"}"#,
            r#"{"id":15,"name":"\ud800\ue000"}"#,
            r#"{"id":15,"\ud800":1}"#,
            r#"{"id":15,"name":"\\u0041"}"#,
            r#"{"id":1000000000000000000L}"#,
            r#"{"id":15,"ts":1234567890123456789n}"#,
            r#"{"id":15,"score":1.0000000000000000000001x}"#,
            "{\"id\":15\u{0}}",
            "{\"id\":15,\"ok\":true\u{0}}",
            r#"{"id":14,"score":123456789012345678901234567890}"#,
            r#"{"id":15 "name":"no comma"}"#,
            r#"{"id":16} {"id":17}"#,
            r#"{"id":18}x"#,
            r#"[{"id":19}]"#,
            r#"{"id":20"#,
        ];
        let decode = |d: &JsonDecoder, records: &[&str]| {
            let out = d.decode_records(records.iter().map(|r| r.as_bytes()));
            (out.batch, out.rejected, out.records)
        };
        // The valid records together take the fast path.
        for record in good {
            assert_eq!(
                decode(&fast, &[record]),
                decode(&arrow, &[record]),
                "{record}"
            );
        }
        let all_good: Vec<&str> = good.to_vec();
        assert_eq!(decode(&fast, &all_good), decode(&arrow, &all_good));
        for record in &all_good {
            assert!(
                fast.simd
                    .as_ref()
                    .and_then(|p| p.decode(&[(0, record.as_bytes())], Checked::No, Columns::ALL))
                    .is_some(),
                "a valid record takes the fast path: {record}"
            );
        }
        // A body of valid records is checked once, as a whole, and takes the fast path.
        let body = all_good.join("\n");
        let plan = fast.simd.as_ref().expect("a fast path");
        assert_eq!(plan.check_body(body.as_bytes()), Checked::WholeBody);
        let records: Vec<(usize, &[u8])> =
            all_good.iter().map(|r| r.as_bytes()).enumerate().collect();
        assert!(
            (fast.simd.as_ref())
                .and_then(|p| p.decode(&records, Checked::WholeBody, Columns::ALL))
                .is_some()
        );
        // Each odd record alone and among valid ones: the same rows and dead letters.
        for record in odd {
            // A decoder of its own: a body that fails the one-pass lines path sends the
            // next ones record by record (`SimdPlan::decode_lines`).
            let fast = JsonDecoder::new(arrow.schema.clone());
            let mixed = [good[0], record, good[1]];
            assert_eq!(
                decode(&fast, &[record]),
                decode(&arrow, &[record]),
                "{record}"
            );
            assert_eq!(decode(&fast, &mixed), decode(&arrow, &mixed), "{record}");
            // As messages kept end to end in one buffer, checked as a whole.
            let buffer = mixed.concat();
            let (mut at, mut slices) = (0, Vec::new());
            for r in mixed {
                slices.push(&buffer.as_bytes()[at..at + r.len()]);
                at += r.len();
            }
            let in_buffer = fast.decode_records_in(slices, buffer.as_bytes());
            assert_eq!(
                (in_buffer.batch, in_buffer.rejected, in_buffer.records),
                decode(&arrow, &mixed),
                "{record}"
            );
            // As lines of one body, checked as a whole rather than record by record.
            let body = mixed.join("\n");
            let (fast_body, arrow_body) =
                (fast.decode(body.as_bytes()), arrow.decode(body.as_bytes()));
            assert_eq!(
                (fast_body.batch, fast_body.rejected, fast_body.records),
                (arrow_body.batch, arrow_body.rejected, arrow_body.records),
                "{record}"
            );
            // Building two columns only, the same records are accepted and refused.
            same_but_unread(&fast, &arrow, body.as_bytes(), &[0, 4], false);
        }
        // Bodies of flat records take the one-pass lines path, and give what arrow-json
        // gives: numbers at the 18-character limit, `-0`, text (escaped where no column
        // reads it), blank lines and spaces around records, a last line end or none,
        // line ends of `\r\n`.
        let flat_lines = [
            r#"{"id":1,"name":"a","score":1.5,"ok":true,"ts":1000}"#,
            r#"{"id":-0,"score":123456789012345678,"ok":null}"#,
            r#"{"id":2,"score":0.1000000000000001,"name":"日本","extra":"x\"y\n"}"#,
            r#"  {"ts":"2015-07-15T00:00:00.123","id":-99999999999999999}  "#,
            r#"{ "id" : 5 }"#,
        ];
        let lines = flat_lines.join("\n");
        for body in [
            lines.clone(),
            format!("{lines}\n"),
            format!("\n\n{}\n \n", flat_lines[1..].join("\n\n")),
            flat_lines.join("\r\n"),
            format!("\r\n{}\r\n \r\n", flat_lines.join(" \r\n\r\n")),
            // One JSON array of the records, on one line or many, or none.
            format!("[{}]", flat_lines.join(",")),
            format!(" [\r\n{} ]\n\n", flat_lines.join(" ,\n  ")),
            "[ ]".to_string(),
        ] {
            let schema = arrow.schema.clone();
            let plan = SimdPlan::new(&schema).expect("a fast path");
            let taken = plan.decode_lines(body.as_bytes(), Columns::ALL);
            assert!(taken.is_some(), "{body}");
            let (fresh, whole) = (JsonDecoder::new(schema), arrow.decode(body.as_bytes()));
            let lines_path = fresh.decode(body.as_bytes());
            assert_eq!(taken.as_ref(), Some(&whole.batch), "{body}");
            assert_eq!(
                (lines_path.batch, lines_path.rejected, lines_path.records),
                (whole.batch, whole.rejected, whole.records),
                "{body}"
            );
        }
        // One plan for a run of bodies, each sized by the last one's bytes per row: many
        // short lines after one long line outgrow their columns' first size.
        let shared = SimdPlan::new(&arrow.schema).expect("a fast path");
        let long = format!(r#"{{"id":1,"name":"{}"}}"#, "x".repeat(4000));
        let short = [r#"{"id":2,"ok":true}"#; 500].join("\n");
        let array = format!("[{}]", [r#"{"id":3,"ok":false}"#; 700].join(","));
        for body in [&long, &short, &lines, &long, &array, &short, &array] {
            assert_eq!(
                shared.decode_lines(body.as_bytes(), Columns::ALL).as_ref(),
                Some(&arrow.decode(body.as_bytes()).batch),
                "{body}"
            );
        }
        // A `\r` that ends no line (between records, or in a string), and bodies of
        // blanks: record by record, the same rows and refusals.
        for body in [
            "{\"id\":1}\r{\"id\":2}\r\n",
            "{\"id\":1,\"name\":\"a\r\nb\"}\r\n{\"id\":2}",
            "{\"id\":1,\"name\":\"a\rb\"}\n{\"id\":2}",
            "{\"id\":1}\r\r\n{\"id\":2}",
            "{\"id\":1}\r",
            "{\"id\":1,\r\n\"name\":\"a\"}",
            // Arrays that are not one array of flat records.
            "[{\"id\":1},]",
            "[{\"id\":1}] {\"id\":2}",
            "[{\"id\":1}",
            "[{\"id\":1}\t]",
            "[[1],{\"id\":2}]",
            "[{\"id\":1},{\"id\":\"x\"}]",
            "[{\"id\":1,\"name\":{\"n\":1}}]",
            "[",
            "[,]",
            "[,{\"id\":1}]",
            "[{\"id\":1}{\"id\":2}]",
            "[{\"id\":1}]]",
            "[{\"id\":1}]\n[{\"id\":2}]",
            "[{\n\"id\":1}]",
            "",
            " \n  \n",
            "{\"id\":3}\n\t{\"id\":4}",
        ] {
            // No array here is one of flat records on lines the scanner reads.
            if body.trim_start().starts_with('[') {
                let plan = SimdPlan::new(&arrow.schema).expect("a fast path");
                assert_eq!(
                    plan.decode_lines(body.as_bytes(), Columns::ALL),
                    None,
                    "{body:?}"
                );
            }
            let fresh = JsonDecoder::new(arrow.schema.clone());
            let (a, b) = (fresh.decode(body.as_bytes()), arrow.decode(body.as_bytes()));
            assert_eq!(
                (a.batch, a.rejected, a.records),
                (b.batch, b.rejected, b.records),
                "{body:?}"
            );
        }
        // Valid records take the fast path: the other columns are placeholders.
        let body = all_good.join("\n");
        same_but_unread(&fast, &arrow, body.as_bytes(), &[1, 4], true);
        // Nulls and missing values in NOT NULL columns of every kind.
        let strict = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Float64, false),
            Field::new("b", DataType::Boolean, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]));
        let (fast_strict, arrow_strict) = (
            JsonDecoder::new(strict.clone()),
            JsonDecoder::arrow_only(strict),
        );
        for record in [
            r#"{"n":1.5,"b":true,"s":"x","t":1}"#,
            r#"{"n":null,"b":true,"s":"x","t":1}"#,
            r#"{"b":true,"s":"x","t":1}"#,
            r#"{"n":1.5,"b":null,"s":"x","t":1}"#,
            r#"{"n":1.5,"b":true,"s":null,"t":1}"#,
            r#"{"n":1.5,"b":true,"s":"x"}"#,
        ] {
            assert_eq!(
                decode(&fast_strict, &[record]),
                decode(&arrow_strict, &[record]),
                "{record}"
            );
            same_but_unread(&fast_strict, &arrow_strict, record.as_bytes(), &[3], false);
        }
        // Not UTF-8.
        let bad: &[u8] = b"{\"id\":21,\"name\":\"\xff\"}";
        let of = |d: &JsonDecoder| {
            let out = d.decode_records([bad]);
            (out.batch, out.rejected)
        };
        assert_eq!(of(&fast), of(&arrow));
    }

    /// Decode `body` building only the columns `wanted`: the same records are accepted
    /// and refused as by arrow-json, and the wanted columns hold the same values; the
    /// others are `placeholders` (when the fast path took the body), or anything.
    fn same_but_unread(
        fast: &JsonDecoder,
        arrow: &JsonDecoder,
        body: &[u8],
        wanted: &[usize],
        placeholders: bool,
    ) {
        let wanted = Columns::of(wanted.iter().copied());
        let (narrow, whole) = (fast.decode_columns(body, wanted), arrow.decode(body));
        let text = String::from_utf8_lossy(body);
        assert_eq!(narrow.rejected, whole.rejected, "{text}");
        assert_eq!(narrow.records, whole.records, "{text}");
        assert_eq!(narrow.batch.schema(), whole.batch.schema(), "{text}");
        assert_eq!(narrow.batch.num_rows(), whole.batch.num_rows(), "{text}");
        assert_eq!(narrow.columns, wanted);
        for c in 0..whole.batch.num_columns() {
            if wanted.contains(c) {
                assert_eq!(narrow.batch.column(c), whole.batch.column(c), "{text}");
            } else if placeholders {
                assert_ne!(narrow.batch.column(c), whole.batch.column(c), "{text}");
                assert_eq!(narrow.batch.column(c).null_count(), 0, "a placeholder");
            }
        }
    }
}
