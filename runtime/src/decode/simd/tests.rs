//! Tests of the JSON fast path (`super`).

use super::*;
use datafusion::arrow::array::Int64Array;
use std::sync::Arc;

/// The common shape of a record is taken by the flat scanner, not simd-json's tape;
/// what it gives back still decodes (by the tape) or is refused as before.
#[test]
fn the_flat_scanner_takes_the_common_shape() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Float64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let plan = SimdPlan::new(&schema).expect("a plan");
    let mut values = vec![None; 4];
    let taken = [
        r#"{"auction":1007,"price":25.5,"channel":"Apple","date_time":1436918400000}"#,
        r#"{"date_time":"2015-07-15T00:00:00.123","extra":"x\n","auction":-3,"price":null}"#,
    ];
    let given_back = [
        // Nested, escaped where read, a `\u` escape, an exponent, a repeated key, a
        // missing NOT NULL column: the tape path or arrow-json decides these.
        r#"{"auction":1,"date_time":1,"extra":{"a":1}}"#,
        r#"{"auction":1,"date_time":1,"channel":"a\"b"}"#,
        r#"{"auction":1,"date_time":1,"channel":"\u00e9"}"#,
        r#"{"auction":1,"date_time":1,"price":1e3}"#,
        r#"{"auction":1,"date_time":1,"auction":2}"#,
        r#"{"auction":1}"#,
        r#"{"auction":1,"date_time":1,"price":0}"#,
        r#"{"auction":1,"date_time":"yesterday"}"#,
    ];
    for record in taken {
        assert!(plan.scan_flat(record.as_bytes(), &mut values), "{record}");
    }
    assert!(matches!(values[0], Some(Value::Int(-3))));
    assert!(matches!(values[1], Some(Value::Null)));
    assert!(values[2].is_none());
    assert!(matches!(values[3], Some(Value::Int(1_436_918_400_123))));
    for record in given_back {
        assert!(!plan.scan_flat(record.as_bytes(), &mut values), "{record}");
    }
    // Given back, the nested, escaped and exponent ones still take the tape path.
    let records: Vec<(usize, &[u8])> = (taken.iter().chain(&given_back[..2]))
        .chain(&given_back[3..4])
        .map(|r| r.as_bytes())
        .enumerate()
        .collect();
    let batch = plan
        .decode(&records, Checked::No, Columns::ALL)
        .expect("decodes");
    assert_eq!(batch.num_rows(), records.len());
}

/// Lines of flat records decode in one pass to what record by record gives; a body
/// with any other line is given back, and the next bodies go record by record at
/// once for a while.
#[test]
fn lines_of_flat_records_decode_in_one_pass() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
    ]));
    let plan = SimdPlan::new(&schema).expect("a plan");
    let lines = [
        r#"{"auction":1,"channel":"Apple","price":2.5}"#,
        r#"  {"price":3,"auction":2}   "#,
        "",
        r#"{"auction":123456789012,"channel":"日本","x":"y\"z"}"#,
    ];
    let body = lines.join("\n");
    let records: Vec<(usize, &[u8])> = (lines.iter())
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().as_bytes())
        .enumerate()
        .collect();
    let by_record = plan.decode(&records, Checked::No, Columns::ALL);
    assert_eq!(plan.decode_lines(body.as_bytes(), Columns::ALL), by_record);
    assert_eq!(by_record.map(|b| b.num_rows()), Some(3));
    let wanted = Columns::of([0]);
    let narrow = plan
        .decode_lines(body.as_bytes(), wanted)
        .expect("flat lines");
    assert_eq!(
        narrow.column(0),
        plan.decode(&records, Checked::No, wanted)
            .expect("rows")
            .column(0)
    );
    // A line of another shape, or two records on one line, or a tab: given back.
    for odd in [
        r#"{"auction":1,"channel":{"a":1}}"#,
        r#"{"auction":1} {"auction":2}"#,
        "{\"auction\":1,\t\"price\":1.5}",
        r#"[{"auction":1}]"#,
        r#"{"auction":1,"channel":"a"#,
    ] {
        let plan = SimdPlan::new(&schema).expect("a plan");
        let body = format!("{}\n{odd}\n{}", lines[0], lines[1]);
        assert_eq!(
            plan.decode_lines(body.as_bytes(), Columns::ALL),
            None,
            "{odd}"
        );
        // Then the next bodies go record by record, even good ones, for a while.
        for _ in 0..LINES_BACKOFF {
            assert_eq!(plan.decode_lines(lines[0].as_bytes(), Columns::ALL), None);
        }
        assert!(
            plan.decode_lines(lines[0].as_bytes(), Columns::ALL)
                .is_some()
        );
    }
}

#[test]
fn lines_refuse_a_repeated_key_in_a_column_not_built() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, true),
    ]));
    let plan = SimdPlan::new(&schema).expect("a plan");
    let only_a = Columns::of([0]);
    let good = plan.decode_lines(b"{\"a\":1,\"b\":2}\n{\"a\":3}", only_a);
    assert_eq!(good.map(|b| b.num_rows()), Some(2));
    let plan = SimdPlan::new(&schema).expect("a plan");
    assert_eq!(
        plan.decode_lines(b"{\"a\":1,\"b\":2,\"b\":3}", only_a),
        None
    );
}

#[test]
fn lines_take_up_to_64_columns() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let record = |n: usize| {
        let fields: Vec<String> = (0..n).map(|c| format!("\"c{c}\":{c}")).collect();
        format!("{{{}}}", fields.join(","))
    };
    for (n, taken) in [(63, true), (64, true), (65, false)] {
        let schema = Arc::new(Schema::new(
            (0..n)
                .map(|c| Field::new(format!("c{c}"), DataType::Int64, false))
                .collect::<Vec<_>>(),
        ));
        let plan = SimdPlan::new(&schema).expect("a plan");
        let body = [record(n), record(n)].join("\n");
        let batch = plan.decode_lines(body.as_bytes(), Columns::ALL);
        assert_eq!(batch.is_some(), taken, "{n} columns");
        if let Some(batch) = batch {
            let last = batch.column(n - 1).as_any().downcast_ref::<Int64Array>();
            assert_eq!(last.expect("ints").values().to_vec(), vec![n as i64 - 1; 2]);
        }
        // Record by record, every width decodes.
        let records = [(0, record(n).into_bytes())];
        let records: Vec<(usize, &[u8])> = records.iter().map(|(i, r)| (*i, &r[..])).collect();
        assert!(plan.decode(&records, Checked::No, Columns::ALL).is_some());
    }
}

#[test]
fn a_body_of_tiny_records_does_not_size_the_next_ones_columns() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
    let plan = SimdPlan::new(&schema).expect("a plan");
    // Blank: no rows, no size kept. Then 2 bytes per record.
    assert_eq!(
        plan.decode_lines(b"\n\n", Columns::ALL)
            .map(|b| b.num_rows()),
        Some(0)
    );
    assert_eq!(
        plan.decode_lines(b"{}", Columns::ALL).map(|b| b.num_rows()),
        Some(1)
    );
    // 8 MiB of one record: sized for at most `ROWS_SIZED` rows, not 4 million.
    let big = format!("{{\"a\":1,\"pad\":\"{}\"}}", "x".repeat(8 << 20));
    let batch = plan
        .decode_lines(big.as_bytes(), Columns::ALL)
        .expect("a row");
    assert_eq!(batch.num_rows(), 1);
    assert!(
        batch.get_array_memory_size() <= ROWS_SIZED * 16 + 4096,
        "{} bytes",
        batch.get_array_memory_size()
    );
}

/// With a name that holds a quote, keys are not compared as they stand: each is
/// read, and a key with an escape goes to the tape path.
#[test]
fn names_that_are_not_plain_are_matched_by_the_key_read() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("a\"b", DataType::Int64, true),
        Field::new("c", DataType::Int64, true),
    ]));
    let plan = SimdPlan::new(&schema).expect("a plan");
    assert!(!plan.plain_names);
    let mut values = vec![None; 2];
    assert!(plan.scan_flat(br#"{"c":1,"a":2}"#, &mut values));
    assert!(matches!(values[..], [None, Some(Value::Int(1))]));
    assert!(!plan.scan_flat(br#"{"a\"b":1,"c":2}"#, &mut values));
    let records: Vec<(usize, &[u8])> = vec![(0, br#"{"a\"b":7,"c":2}"#), (1, br#"{"c":3}"#)];
    let batch = plan
        .decode(&records, Checked::No, Columns::ALL)
        .expect("decodes");
    let first = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("ints");
    assert_eq!(
        (
            first.value(0),
            datafusion::arrow::array::Array::is_null(first, 1)
        ),
        (7, true)
    );
}

/// `same_key` says what slice equality says, for keys of every length up to 20.
#[test]
fn same_key_is_equality() {
    let base: Vec<u8> = (b'a'..=b'z').collect();
    for n in 0..=20 {
        let a = &base[..n];
        assert!(same_key(a, a), "{n}");
        assert!(!same_key(a, &base[..n + 1]), "{n}");
        for at in 0..n {
            let mut b = a.to_vec();
            b[at] ^= 0x20;
            assert!(!same_key(a, &b), "{n} differing at {at}");
        }
    }
}

/// `plain` in one pass says what the two searches it replaced said.
#[test]
fn plain_refuses_nul_bytes_and_u_escapes_anywhere() {
    let two_passes =
        |r: &[u8]| memchr::memchr(0, r).is_none() && memchr::memmem::find(r, b"\\u").is_none();
    let parts: [&[u8]; 8] = [
        b"{\"a\":1}",
        b"\\",
        b"u",
        b"\\\\",
        b"\0",
        b"x",
        b"\"",
        b"\\n",
    ];
    // Every sequence of up to four parts.
    let mut records: Vec<Vec<u8>> = vec![Vec::new()];
    for _ in 0..4 {
        let longer: Vec<Vec<u8>> = (records.iter())
            .flat_map(|r| parts.iter().map(move |p| [r.as_slice(), p].concat()))
            .collect();
        records.extend(longer);
    }
    let refused = records.iter().filter(|r| !plain(r)).count();
    assert!(
        refused > records.len() / 4 && refused < records.len(),
        "{refused}"
    );
    for r in &records {
        assert_eq!(plain(r), two_passes(r), "{}", String::from_utf8_lossy(r));
    }
}
