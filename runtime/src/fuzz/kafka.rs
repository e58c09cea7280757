//! Kafka messages into rows (any value, key, headers and timestamp a broker hands
//! over): every message is a row or a dead letter with its offset, the envelope columns
//! belong to the rows they sit beside, and the batch is valid Arrow.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Field, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType,
};
use proptest::prelude::*;
use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use weir_sql::parser::METADATA_KEY;

use super::{assert_valid, config, mutate, mutations};
use crate::source::kafka::envelope::{Layout, Messages};

const TOKENS: &[&str] = &[
    "{", "}", "\"", ":", ",", "null", "\"id\"", "1e999", "\u{ff}",
];

fn meta(name: &str, t: DataType, key: &str) -> Field {
    Field::new(name, t, true).with_metadata([(METADATA_KEY.to_string(), key.to_string())].into())
}

fn envelope() -> Vec<Field> {
    vec![
        meta("part", DataType::Int32, "partition"),
        meta("off", DataType::Int64, "offset"),
        meta(
            "sent",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            "timestamp",
        ),
        meta("t", DataType::Utf8, "topic"),
        meta("h", DataType::Utf8, "headers"),
    ]
}

/// `json`, `raw` into VARCHAR, or `raw` into BYTEA; the key as text or bytes.
fn layout(kind: u8, max_bytes: usize) -> Layout {
    let mut columns = match kind {
        0 => vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ],
        1 => vec![Field::new("value", DataType::Utf8, true)],
        _ => vec![Field::new("value", DataType::Binary, true)],
    };
    let key_type = if kind == 1 {
        DataType::Binary
    } else {
        DataType::Utf8
    };
    columns.push(meta("k", key_type, "key"));
    columns.extend(envelope());
    let format = if kind == 0 { "json" } else { "raw" };
    Layout::new("fuzz", &columns, format)
        .expect("layout")
        .with_max_message_bytes(max_bytes)
}

type Msg = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<Vec<(String, Option<Vec<u8>>)>>,
);

fn message() -> impl Strategy<Value = Msg> {
    let value = prop_oneof![
        (any::<i64>(), any::<String>(), mutations(TOKENS)).prop_map(|(id, name, changes)| {
            let json = serde_json::json!({"id": id, "name": name}).to_string();
            Some(mutate(json.as_bytes(), &changes))
        }),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..60)),
    ];
    (
        value,
        prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
        prop::option::of(any::<i64>()),
        prop::option::of(prop::collection::vec(
            (
                any::<String>(),
                prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
            ),
            0..3,
        )),
    )
}

fn owned(m: &Msg, offset: i64) -> OwnedMessage {
    let headers = m.3.as_ref().map(|hs| {
        hs.iter().fold(OwnedHeaders::new(), |acc, (key, value)| {
            acc.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            })
        })
    });
    OwnedMessage::new(
        m.0.clone(),
        m.1.clone(),
        "topic-\u{e9}".into(),
        m.2.map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        4,
        offset,
        headers,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_kafka_messages_are_rows_or_dead_letters_with_their_offsets(
        messages in prop::collection::vec(message(), 1..12),
        kind in 0u8..3,
        max_bytes in prop_oneof![Just(1_048_576usize), 0usize..80],
        first in 0i64..1_000_000,
    ) {
        let layout = layout(kind, max_bytes);
        let mut held = Messages::default();
        let offsets: Vec<i64> = (0..messages.len() as i64).map(|i| first + 2 * i).collect();
        for (m, &offset) in messages.iter().zip(&offsets) {
            held.push(&owned(m, offset), &layout);
        }
        prop_assert_eq!(held.next_offset(), offsets.last().map(|o| o + 1));
        let built = held.build(&layout).expect("builds");
        prop_assert!(held.is_empty());
        let batch = &built.batch;
        assert_valid(batch);
        prop_assert_eq!(batch.num_rows() + built.rejected.len(), messages.len());
        let rejected: Vec<i64> = built.rejected.iter().map(|(o, _)| *o).collect();
        prop_assert!(rejected.windows(2).all(|w| w[0] < w[1]), "one dead letter per message");
        prop_assert!(built.rejected.iter().all(|(_, r)| !r.reason.is_empty()));
        let kept: Vec<i64> = offsets.iter().copied().filter(|o| !rejected.contains(o)).collect();
        let off = batch.column_by_name("off").expect("off");
        prop_assert_eq!(off.as_primitive::<Int64Type>().values().to_vec(), kept.clone());
        for (row, offset) in kept.iter().enumerate() {
            let m = &messages[((offset - first) / 2) as usize];
            let value = m.0.as_deref().unwrap_or_default();
            prop_assert!(value.len() <= max_bytes, "an oversized message became a row");
            let part = batch.column_by_name("part").expect("part").as_primitive::<Int32Type>();
            prop_assert_eq!(part.value(row), 4);
            let sent = batch.column_by_name("sent").expect("sent").as_primitive::<TimestampMillisecondType>();
            prop_assert_eq!(sent.is_null(row), m.2.is_none());
            if let Some(t) = m.2 {
                prop_assert_eq!(sent.value(row), t);
            }
            prop_assert_eq!(batch.column_by_name("t").expect("t").as_string::<i32>().value(row), "topic-\u{e9}");
            let key = batch.column_by_name("k").expect("k");
            prop_assert_eq!(key.is_null(row), m.1.is_none());
            if let Some(k) = &m.1 {
                if kind == 1 {
                    prop_assert_eq!(key.as_binary::<i32>().value(row), k.as_slice());
                } else {
                    prop_assert_eq!(key.as_string::<i32>().value(row), String::from_utf8_lossy(k));
                }
            }
            let h = batch.column_by_name("h").expect("h").as_string::<i32>();
            prop_assert_eq!(h.is_null(row), m.3.is_none());
            if !h.is_null(row) {
                let parsed: serde_json::Value = serde_json::from_str(h.value(row)).expect("headers are JSON");
                prop_assert!(parsed.is_object());
            }
            match kind {
                1 => {
                    let v = batch.column(0).as_string::<i32>();
                    prop_assert_eq!(v.is_null(row), m.0.is_none());
                    prop_assert_eq!(v.value(row).as_bytes(), value);
                }
                2 => {
                    let v = batch.column(0).as_binary::<i32>();
                    prop_assert_eq!(v.is_null(row), m.0.is_none());
                    prop_assert_eq!(v.value(row), value);
                }
                _ => {}
            }
        }
        // Raw bytes are never refused (but for size); raw text only when not UTF-8.
        for (m, offset) in messages.iter().zip(&offsets) {
            let value = m.0.as_deref().unwrap_or_default();
            let fits = value.len() <= max_bytes;
            match kind {
                2 => prop_assert_eq!(rejected.contains(offset), !fits),
                1 => prop_assert_eq!(rejected.contains(offset), !fits || std::str::from_utf8(value).is_err()),
                _ => {}
            }
        }
    }
}
