//! KPL aggregated records (any data a Kinesis record holds): a valid aggregate unpacks
//! into exactly its user records; a mutated one, with its MD5 made to match so the
//! protobuf itself is fuzzed, is refused with a reason or unpacks into user records
//! whose partition keys all resolve; any bytes at all never panic.

use bytes::Bytes;
use md5::{Digest, Md5};
use proptest::prelude::*;

use super::{config, mutate, mutations};
use crate::source::kinesis::kpl::{MAGIC, Unpacked, aggregate, unpack};

const TOKENS: &[&str] = &[
    "\u{8}",
    "\u{12}",
    "\u{1a}",
    "\u{ff}\u{ff}\u{ff}\u{ff}\u{f}",
    "\0",
];

fn records() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        ("[a-z]{0,3}", prop::collection::vec(any::<u8>(), 0..20)),
        0..8,
    )
}

/// `body` as an aggregated record whose digest matches.
fn sealed(body: &[u8]) -> Bytes {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    Bytes::from(out)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_kpl_aggregates_unpack_exactly_or_are_refused_with_a_reason(
        records in records(),
        changes in mutations(TOKENS),
        noise in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let data = aggregate(records.iter().map(|(k, d)| (k.as_str(), d.as_slice())));
        match unpack(&Bytes::from(data.clone())) {
            Unpacked::Aggregated(a) => {
                let got: Vec<(String, Vec<u8>)> = (0..a.records.len())
                    .map(|i| (a.partition_key(i).to_string(), a.records[i].data.to_vec()))
                    .collect();
                prop_assert_eq!(got, records.clone());
            }
            other => prop_assert!(false, "a valid aggregate: {other:?}"),
        }
        let body = &data[MAGIC.len()..data.len() - 16];
        match unpack(&sealed(&mutate(body, &changes))) {
            Unpacked::Aggregated(a) => {
                for i in 0..a.records.len() {
                    let _ = a.partition_key(i);
                }
            }
            Unpacked::Refused(why) => prop_assert!(!why.is_empty()),
            Unpacked::Plain => {}
        }
        // Any bytes, with and without the magic in front.
        let _ = unpack(&Bytes::from(noise.clone()));
        let mut magic = MAGIC.to_vec();
        magic.extend_from_slice(&noise);
        let _ = unpack(&Bytes::from(magic));
    }
}
