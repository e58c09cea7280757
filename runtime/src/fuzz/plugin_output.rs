//! What a plugin returns (Arrow IPC written by untrusted code): any bytes are a batch or
//! a failure of that call, never a panic, an accepted batch is valid Arrow within the
//! row limit, and what the SDK wrote reads back exactly.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
use proptest::prelude::*;
use weir_sdk::ipc::{Decoder, Encoder};

use super::{assert_valid, config, mutate, mutations};
use crate::plugin::host::call::decode_output;

const TOKENS: &[&str] = &[
    "\u{ff}\u{ff}\u{ff}\u{ff}",
    "\0\0\0\0",
    "\u{7f}\u{ff}\u{ff}\u{ff}",
    "\u{1}\0\0\0",
    "ARROW1",
];

fn batch(rows: &[(i64, String, Vec<i32>, bool)]) -> RecordBatch {
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(
        rows.iter().map(|r| Some(r.2.iter().map(|v| Some(*v)))),
    );
    let flags: ArrayRef = Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.3))));
    let nested = StructArray::from(vec![(
        Arc::new(Field::new("flag", DataType::Boolean, true)),
        flags,
    )]);
    RecordBatch::try_from_iter(vec![
        (
            "n",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        (
            "s",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ),
        (
            "b",
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.1.as_bytes()),
            )),
        ),
        ("l", Arc::new(list)),
        ("st", Arc::new(nested)),
    ])
    .expect("batch")
}

fn rows() -> impl Strategy<Value = Vec<(i64, String, Vec<i32>, bool)>> {
    prop::collection::vec(
        (
            any::<i64>(),
            any::<String>(),
            prop::collection::vec(any::<i32>(), 0..4),
            any::<bool>(),
        ),
        0..6,
    )
}

fn encoded(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new()
        .encode_into(batch, &mut out)
        .expect("encodes");
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_plugin_output_reads_back_or_fails_the_call(
        rows in rows(),
        changes in mutations(TOKENS),
        max_rows in 0usize..8,
    ) {
        let batch = batch(&rows);
        let seed = encoded(&batch);
        // Intact: read back exactly (within the row limit).
        let intact = decode_output(&mut Decoder::new(), Buffer::from(seed.clone()), 8);
        prop_assert_eq!(intact.as_ref().ok(), Some(&batch));
        let damaged = mutate(&seed, &changes);
        // A fresh decoder, and one that has cached the schema of an intact stream.
        let mut warmed = Decoder::new();
        let _ = decode_output(&mut warmed, Buffer::from(seed), 8);
        for decoder in [&mut Decoder::new(), &mut warmed] {
            if let Ok(out) = decode_output(decoder, Buffer::from(damaged.clone()), max_rows) {
                prop_assert!(out.num_rows() <= max_rows);
                assert_valid(&out);
            }
        }
    }

    #[test]
    fn fuzz_plugin_output_random_bytes_fail_the_call(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(out) = decode_output(&mut Decoder::new(), Buffer::from(bytes), 100) {
            prop_assert!(out.num_rows() <= 100);
            assert_valid(&out);
        }
    }
}
