//! Fuzz targets for every parser of bytes that come from outside weir: JSON records,
//! SQL text, plugin output (Arrow IPC), checkpoint manifests and state files, the
//! write-ahead log, Kafka messages and KPL aggregated Kinesis records. Each is a proptest property over valid inputs
//! mutated (bytes set, cut, removed, repeated, tokens of the format inserted) and over
//! plain random bytes, and says what must hold for any input: no panic, nothing lost
//! without a reason, and a valid input read back exactly.
//!
//! `cargo test -p weir-runtime fuzz::` runs them (256 cases each, part of the test
//! command); `PROPTEST_CASES=n` runs more, and `scripts/fuzz.sh` runs them for longer.
//! A failure prints the smallest input proptest found; fix the bug and keep that input
//! as a regression test beside the code it broke.

mod checkpoint;
mod json;
mod kafka;
mod kpl;
mod plugin_output;
mod sql;
mod wal;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// The cases per target come from `PROPTEST_CASES` (default 256); failures are not
/// written into the source tree, and shrinking one stops after a minute.
pub fn config() -> Config {
    Config {
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

/// One change to a valid input.
#[derive(Debug, Clone)]
pub enum Mutation {
    Set(Index, u8),
    Cut(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, Index),
    Repeat(Index, Index),
}

/// Up to five changes; inserts are random bytes or one of `tokens` (the format's own
/// words and delimiters, which reach deeper than random bytes do).
pub fn mutations(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<Mutation>> {
    let insert = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..6),
        prop::sample::select(tokens).prop_map(|t| t.as_bytes().to_vec()),
    ];
    let one = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<Index>().prop_map(Mutation::Cut),
        (any::<Index>(), insert).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ];
    prop::collection::vec(one, 0..5)
}

/// `seed` with `mutations` applied in order.
pub fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for m in mutations {
        let len = out.len();
        match m {
            Mutation::Set(i, b) if len > 0 => {
                let i = i.index(len);
                out[i] = *b;
            }
            Mutation::Set(..) => {}
            Mutation::Cut(i) => out.truncate(i.index(len + 1)),
            Mutation::Insert(i, bytes) => {
                let i = i.index(len + 1);
                out.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let i = i.index(len);
                let n = n.index((len - i).min(16) + 1);
                out.drain(i..i + n);
            }
            Mutation::Remove(..) => {}
            Mutation::Repeat(i, n) if len > 0 => {
                let i = i.index(len);
                let n = n.index((len - i).min(64) + 1);
                let copy = out[i..i + n].to_vec();
                out.splice(i..i, copy);
            }
            Mutation::Repeat(..) => {}
        }
    }
    out
}

/// Where `mutated` first differs from `seed` (its length if one is a prefix of the other).
pub fn first_difference(seed: &[u8], mutated: &[u8]) -> usize {
    seed.iter()
        .zip(mutated)
        .position(|(a, b)| a != b)
        .unwrap_or(seed.len().min(mutated.len()))
}

/// Every column of `batch` is valid Arrow (offsets, UTF-8, lengths): what downstream
/// kernels assume of any batch they are handed.
pub fn assert_valid(batch: &datafusion::arrow::array::RecordBatch) {
    for c in batch.columns() {
        if let Err(e) = c.to_data().validate_full() {
            panic!("an invalid array was accepted: {e}");
        }
    }
}

#[test]
fn mutations_apply_within_bounds() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..500 {
        let ms = mutations(&["{"])
            .new_tree(&mut runner)
            .expect("tree")
            .current();
        let out = mutate(b"{\"a\": 1}", &ms);
        let unchanged = ms.is_empty();
        assert!(!unchanged || out == b"{\"a\": 1}");
        assert!(out.len() <= 8 + 5 * 64);
    }
    assert_eq!(first_difference(b"abc", b"abd"), 2);
    assert_eq!(first_difference(b"abc", b"ab"), 2);
}
