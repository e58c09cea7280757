//! What every front door shares (records posted to a source with a log of its own are
//! written to that log: a Kafka topic, a Kinesis stream): the body split into records,
//! a record's key, and the answers of idempotency keys, so a retry writes nothing twice.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::deadletter::{DeadLetterStore, NewDeadLetter, Reason};
use crate::source::http::IngestReport;
use crate::{Error, Result};

/// Idempotency keys remembered (the newest), with their answers.
const KEYS_KEPT: usize = 10_000;

/// The answers of the newest idempotency keys; `None` while the key's first request is
/// being written.
#[derive(Default)]
pub struct Idempotency {
    answered: Mutex<Answered>,
}

#[derive(Default)]
struct Answered {
    by_key: HashMap<String, Option<IngestReport>>,
    order: VecDeque<String>,
}

impl Idempotency {
    /// Answer a request of source `source`: with `write`'s report, or, for a `key`
    /// answered before, that answer again without writing anything.
    pub fn run(
        &self,
        source: &str,
        key: Option<&str>,
        write: impl FnOnce() -> Result<IngestReport>,
    ) -> Result<IngestReport> {
        let Some(k) = key else {
            return write();
        };
        {
            // The key is reserved before writing: a retry that comes while the first
            // request waits for the log must not write the records again.
            let mut answered = self.answered.lock();
            match answered.by_key.get(k) {
                Some(Some(first)) => {
                    return Ok(IngestReport {
                        duplicate: true,
                        ..*first
                    });
                }
                Some(None) => {
                    return Err(Error::Conflict(format!(
                        "source {source}: a request with Idempotency-Key {k} is being written now; \
                         retry once it is answered"
                    )));
                }
                None => {
                    answered.by_key.insert(k.to_string(), None);
                }
            }
        }
        let result = write();
        let mut answered = self.answered.lock();
        match &result {
            Ok(report) => {
                answered.by_key.insert(k.to_string(), Some(*report));
                answered.order.push_back(k.to_string());
                while answered.order.len() > KEYS_KEPT {
                    if let Some(old) = answered.order.pop_front() {
                        answered.by_key.remove(&old);
                    }
                }
            }
            // Nothing to remember: a retry tries again.
            Err(_) => {
                answered.by_key.remove(k);
            }
        }
        result
    }
}

/// Store a request's records that are not JSON objects as dead letters; how many.
pub fn dead_letter_bad(
    source: &str,
    bad: Vec<(Vec<u8>, String)>,
    dead_letters: &DeadLetterStore,
) -> usize {
    dead_letters.push_all(bad.into_iter().map(|(raw, reason)| NewDeadLetter {
        source: source.to_string(),
        view: None,
        partition: None,
        position: None,
        sequence_number: None,
        reason: Reason::from(reason),
        raw,
    }))
}

/// The records of a body: a JSON array's elements, or one per non-empty line. Each must
/// be a JSON object; others come back as dead letters (raw bytes and the reason).
pub fn split(body: &[u8]) -> (Vec<&RawValue>, Vec<(Vec<u8>, String)>) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        match serde_json::from_slice::<Vec<&RawValue>>(body) {
            Ok(all) => {
                for r in all {
                    if r.get().starts_with('{') {
                        records.push(r);
                    } else {
                        bad.push((
                            r.get().as_bytes().to_vec(),
                            "a record must be a JSON object".into(),
                        ));
                    }
                }
            }
            Err(e) => bad.push((body.to_vec(), format!("the body is not a JSON array: {e}"))),
        }
        return (records, bad);
    }
    for line in body.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<&RawValue>(line) {
            Ok(r) if r.get().starts_with('{') => records.push(r),
            Ok(_) => bad.push((line.to_vec(), "a record must be a JSON object".into())),
            Err(e) => bad.push((line.to_vec(), format!("not JSON: {e}"))),
        }
    }
    (records, bad)
}

/// The value of `field` in a record, as the message key: a string as itself, anything
/// else as its JSON text; none when the record does not have it.
pub fn key_of(record: &RawValue, field: &str) -> Option<String> {
    let object: HashMap<&str, &RawValue> = serde_json::from_str(record.get()).ok()?;
    let value = object.get(field)?.get();
    match serde_json::from_str::<String>(value) {
        Ok(text) => Some(text),
        Err(_) if value == "null" => None,
        Err(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_objects_and_dead_letters() {
        let (records, bad) = split(b"{\"a\": 1}\n\n[1]\nnot json\n{\"a\": 2}\n");
        assert_eq!(records.len(), 2);
        assert_eq!(bad.len(), 2);
        assert!(bad[0].1.contains("JSON object") && bad[1].1.contains("not JSON"));
        let (records, bad) = split(b" [{\"a\": 1}, 7, {\"b\": \"x\"}]");
        assert_eq!((records.len(), bad.len()), (2, 1));
    }

    #[test]
    fn keys_come_from_a_field() {
        let record: &RawValue =
            serde_json::from_str(r#"{"user": "ann", "n": 7, "z": null}"#).expect("json");
        assert_eq!(key_of(record, "user").as_deref(), Some("ann"));
        assert_eq!(key_of(record, "n").as_deref(), Some("7"));
        assert_eq!(key_of(record, "z"), None);
        assert_eq!(key_of(record, "missing"), None);
    }
}
