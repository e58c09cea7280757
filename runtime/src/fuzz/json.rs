//! JSON records (HTTP bodies, file lines, Kafka values): every record is a row or a
//! dead letter, the fast path (the flat scanner, simd-json) and arrow-json agree on every input, and
//! valid records read back exactly.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{assert_valid, config, mutate, mutations};
use crate::decode::{Decoded, JsonDecoder};

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\n",
    "\r",
    "\r\n",
    "null",
    "true",
    "false",
    "-",
    "0",
    "1e400",
    "-0.0",
    "1.5",
    "\"id\"",
    "\"price\"",
    "\"ts\"",
    "\\u0000",
    "\\ud800",
    "\u{e9}",
    " ",
    "\t",
    "\\n",
    "01",
    "1.5e3",
    "123456789012345678",
    "1234567890123456789",
    "\"name\"",
    "\"ok\"",
    "\"2015-07-15T00:00:00.123\"",
];

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("price", DataType::Float64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]))
}

fn record() -> impl Strategy<Value = Value> {
    // Short ids and prices too: numbers of up to 18 characters take the flat scanner.
    (
        prop_oneof![any::<i64>(), -100_000i64..100_000],
        prop::option::of(prop_oneof![
            -1e12f64..1e12,
            (-1_000_000i64..1_000_000).prop_map(|cents| cents as f64 / 100.0),
        ]),
        prop::option::of(any::<String>()),
        prop::option::of(any::<bool>()),
        prop::option::of(0i64..4_000_000_000_000),
    )
        .prop_map(|(id, price, name, ok, ts)| {
            json!({"id": id, "price": price, "name": name, "ok": ok, "ts": ts})
        })
}

/// NDJSON or one JSON array.
fn body(records: &[Value], array: bool) -> Vec<u8> {
    if array {
        // Pretty too: elements on lines of their own, the array's `[` and `]` on theirs.
        match records.len() % 2 {
            0 => serde_json::to_vec(records).expect("serialises"),
            _ => serde_json::to_vec_pretty(records).expect("serialises"),
        }
    } else {
        records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    }
}

/// What holds for any body: each record is a row or a dead letter, the batch is valid,
/// and the fast path decides exactly as arrow-json does.
fn check(body: &[u8]) -> Decoded {
    let fast = JsonDecoder::new(schema()).decode(body);
    let slow = JsonDecoder::arrow_only(schema()).decode(body);
    assert_eq!(
        fast.batch.num_rows() + fast.rejected.len(),
        fast.records,
        "every record is a row or a dead letter"
    );
    assert_valid(&fast.batch);
    assert_eq!(fast.records, slow.records);
    assert_eq!(
        fast.batch, slow.batch,
        "the fast path and arrow-json disagree"
    );
    let indices = |d: &Decoded| d.rejected.iter().map(|r| r.index).collect::<Vec<_>>();
    assert_eq!(indices(&fast), indices(&slow));
    assert!(fast.rejected.iter().all(|r| !r.reason.is_empty()));
    fast
}

/// A record the flat scanner reads: numbers of up to 18 characters, plain names.
fn flat_record() -> impl Strategy<Value = Value> {
    (
        -100_000i64..100_000,
        prop::option::of((-1_000_000i64..1_000_000).prop_map(|cents| cents as f64 / 100.0)),
        prop::option::of("[a-z ]{0,12}"),
        prop::option::of(any::<bool>()),
        prop::option::of(0i64..4_000_000_000_000),
    )
        .prop_map(|(id, price, name, ok, ts)| {
            json!({"id": id, "price": price, "name": name, "ok": ok, "ts": ts})
        })
}

proptest! {
    #![proptest_config(config())]

    /// An array of flat records, on one line or an element a line, with blanks of every
    /// kind the scanner skips: one pass, the rows arrow-json reads.
    #[test]
    fn fuzz_json_arrays_of_flat_records_take_the_one_pass(
        records in prop::collection::vec(flat_record(), 0..20),
        blank in prop::sample::select(vec!["", " ", "\n", "\r\n", " \r\n  "]),
    ) {
        let elements: Vec<String> = records.iter().map(Value::to_string).collect();
        let body = format!("{blank}[{blank}{}{blank}]{blank}", elements.join(&format!("{blank},{blank}")));
        let plan = crate::decode::simd::SimdPlan::new(&schema()).expect("a fast path");
        let one_pass = plan.decode_lines(body.as_bytes(), crate::decode::Columns::ALL);
        prop_assert!(one_pass.is_some(), "{}", body);
        let decoded = check(body.as_bytes());
        prop_assert_eq!(one_pass.as_ref(), Some(&decoded.batch));
        prop_assert_eq!(decoded.batch.num_rows(), records.len());
    }

    #[test]
    fn fuzz_json_valid_records_read_back_exactly(
        records in prop::collection::vec(record(), 1..20),
        array in any::<bool>(),
    ) {
        let decoded = check(&body(&records, array));
        prop_assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
        let ids: Vec<i64> = records.iter().map(|r| r["id"].as_i64().unwrap_or_default()).collect();
        prop_assert_eq!(decoded.batch.column(0).as_primitive::<Int64Type>().values().to_vec(), ids);
        let names = decoded.batch.column(2).as_string::<i32>();
        for (i, r) in records.iter().enumerate() {
            prop_assert_eq!(names.is_null(i), r["name"].is_null());
            if let Some(n) = r["name"].as_str() {
                prop_assert_eq!(names.value(i), n);
            }
        }
    }

    #[test]
    fn fuzz_json_mutated_records_are_rows_or_dead_letters(
        records in prop::collection::vec(record(), 1..10),
        array in any::<bool>(),
        changes in mutations(TOKENS),
    ) {
        check(&mutate(&body(&records, array), &changes));
    }

    #[test]
    fn fuzz_json_random_bytes_are_rows_or_dead_letters(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check(&bytes);
    }
}
