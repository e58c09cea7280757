//! Records written by the Kinesis Producer Library's aggregation: many user records in
//! one Kinesis record. The format is public: four magic bytes, a protobuf
//! `AggregatedRecord` (a table of partition keys, a table of explicit hash keys, and the
//! user records, each naming its key by index), then the MD5 digest of the protobuf
//! bytes. A record without the magic bytes is a plain one; one with them whose digest
//! or protobuf is wrong is refused (a dead letter), never guessed at.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// The first bytes of an aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// The protobuf message between the magic bytes and the digest.
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<UserRecord>,
}

/// One user record of an aggregated record.
#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A user record's tag (the KPL writes none that weir reads).
#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// What a Kinesis record's data holds.
#[derive(Debug)]
pub enum Unpacked {
    /// A plain record: the data is the value.
    Plain,
    /// User records, each with its partition key (checked to be in the table).
    Aggregated(AggregatedRecord),
    /// The magic bytes, but not a valid aggregated record: why.
    Refused(String),
}

/// What `data` (one Kinesis record's data) holds. The user records' data are slices of
/// `data`, not copies.
pub fn unpack(data: &Bytes) -> Unpacked {
    if data.len() < MAGIC.len() + DIGEST_LEN || data[..MAGIC.len()] != MAGIC {
        return Unpacked::Plain;
    }
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(&body).as_slice() != digest {
        return Unpacked::Refused(
            "a KPL aggregated record whose MD5 checksum does not match its contents".into(),
        );
    }
    let aggregated = match AggregatedRecord::decode(body) {
        Ok(a) => a,
        Err(e) => {
            return Unpacked::Refused(format!(
                "a KPL aggregated record whose protobuf does not decode: {e}"
            ));
        }
    };
    let keys = aggregated.partition_key_table.len() as u64;
    if let Some(bad) = aggregated
        .records
        .iter()
        .position(|r| r.partition_key_index >= keys)
    {
        return Unpacked::Refused(format!(
            "a KPL aggregated record whose user record {bad} names partition key {} of {keys}",
            aggregated.records[bad].partition_key_index
        ));
    }
    Unpacked::Aggregated(aggregated)
}

impl AggregatedRecord {
    /// User record `i`'s partition key.
    pub fn partition_key(&self, i: usize) -> &str {
        &self.partition_key_table[self.records[i].partition_key_index as usize]
    }
}

/// Aggregate `records` (partition key, data) as the KPL does: one Kinesis record's data.
/// For tests and benchmarks, and for anyone who wants to write such records.
pub fn aggregate<'a>(records: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut message = AggregatedRecord::default();
    for (key, data) in records {
        let index = match message.partition_key_table.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                message.partition_key_table.push(key.to_string());
                message.partition_key_table.len() - 1
            }
        };
        message.records.push(UserRecord {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: Bytes::copy_from_slice(data),
            tags: Vec::new(),
        });
    }
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_records_unpack_into_their_user_records_with_their_keys() {
        let data = Bytes::from(aggregate([
            ("a", &b"{\"n\":1}"[..]),
            ("b", b"{\"n\":2}"),
            ("a", b"{\"n\":3}"),
        ]));
        let Unpacked::Aggregated(a) = unpack(&data) else {
            panic!("not unpacked");
        };
        assert_eq!(a.partition_key_table, ["a", "b"]);
        let got: Vec<(&str, &[u8])> = (0..a.records.len())
            .map(|i| (a.partition_key(i), &a.records[i].data[..]))
            .collect();
        assert_eq!(
            got,
            [
                ("a", &b"{\"n\":1}"[..]),
                ("b", b"{\"n\":2}"),
                ("a", b"{\"n\":3}")
            ]
        );
    }

    #[test]
    fn plain_records_pass_and_broken_aggregates_are_refused_with_a_reason() {
        assert!(matches!(
            unpack(&Bytes::from_static(b"{\"n\":1}")),
            Unpacked::Plain
        ));
        // The magic bytes alone, too short to hold a digest: a plain record.
        assert!(matches!(
            unpack(&Bytes::from(MAGIC.to_vec())),
            Unpacked::Plain
        ));
        let good = aggregate([("k", &b"x"[..])]);
        let mut flipped = good.clone();
        flipped[6] ^= 0x40;
        match unpack(&Bytes::from(flipped)) {
            Unpacked::Refused(why) => assert!(why.contains("MD5"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A valid digest over bytes that are not the protobuf.
        let junk = [0xFFu8; 9];
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&junk);
        bad.extend_from_slice(&Md5::digest(junk));
        match unpack(&Bytes::from(bad)) {
            Unpacked::Refused(why) => assert!(why.contains("protobuf"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A user record naming a key the table does not have.
        let message = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![UserRecord {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"x"),
                tags: vec![],
            }],
        };
        let body = message.encode_to_vec();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&Md5::digest(&body));
        match unpack(&Bytes::from(out)) {
            Unpacked::Refused(why) => assert!(why.contains("partition key 3 of 1"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
