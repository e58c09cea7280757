//! PutRecords as weir writes to a stream (a sink, the HTTP front door): records in calls
//! within the service's limits (500 records, 5 MiB), and the records a call could not
//! put (a partial failure: throttled or an internal failure) put again alone, with
//! backoff, until every one is acknowledged or the deadline passes.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use md5::{Digest, Md5};

use crate::aws::describe;

/// PutRecords' limits: records a call, bytes a call (data and keys), bytes a record.
pub const MAX_RECORDS: usize = 500;
pub const MAX_CALL_BYTES: usize = 5 << 20;
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// A partition key has at most 256 characters.
const MAX_KEY_CHARS: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One record to put.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition_key: String,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn bytes(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// A partition key from a key value: as is when it fits Kinesis's 256 characters, else
/// its MD5 in hex (the same for the same key, so a key's records stay on one shard).
pub fn partition_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.is_empty() && text.chars().count() <= MAX_KEY_CHARS => text.to_string(),
        _ => digest(key),
    }
}

/// The partition key of a record without a key: the MD5 of its data in hex, so that
/// records spread over the shards.
pub fn digest(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why records were not all put.
#[derive(Debug)]
pub enum PutError {
    /// The endpoint did not answer, or kept throttling, until the deadline: try later.
    Unavailable(String),
    /// The endpoint refuses the request itself (no such stream, no permission).
    Refused(String),
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Unavailable(why) | PutError::Refused(why) => f.write_str(why),
        }
    }
}

/// Put every entry on `stream`; what was retried after a partial failure, once all are
/// acknowledged. Entries are put in order, call by call; one retried is put after those
/// that followed it (Kinesis keeps no order across calls anyway).
pub async fn put_all(
    client: &Client,
    stream: &str,
    entries: &[Entry],
    deadline: Instant,
) -> Result<usize, PutError> {
    let mut retried = 0;
    let mut start = 0;
    while start < entries.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < entries.len()
            && end - start < MAX_RECORDS
            && (end == start || bytes + entries[end].bytes() <= MAX_CALL_BYTES)
        {
            bytes += entries[end].bytes();
            end += 1;
        }
        let mut pending: Vec<&Entry> = entries[start..end].iter().collect();
        let mut backoff = Duration::from_millis(50);
        loop {
            let failed = match put_once(client, stream, &pending).await {
                Ok(failed) => failed,
                // Throttled as a whole, or no answer: again, until the deadline.
                Err(PutError::Unavailable(_)) if Instant::now() + backoff <= deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if failed.is_empty() {
                break;
            }
            retried += failed.len();
            pending = failed.into_iter().map(|i| pending[i]).collect();
            if Instant::now() + backoff > deadline {
                return Err(PutError::Unavailable(format!(
                    "{} records could not be put on stream {stream} before the deadline (throttled)",
                    pending.len()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        start = end;
    }
    Ok(retried)
}

/// One PutRecords call; the indexes of the entries it did not put.
async fn put_once(
    client: &Client,
    stream: &str,
    entries: &[&Entry],
) -> Result<Vec<usize>, PutError> {
    let records: Vec<PutRecordsRequestEntry> = entries
        .iter()
        .map(|e| {
            PutRecordsRequestEntry::builder()
                .partition_key(&e.partition_key)
                .data(Blob::new(e.data.clone()))
                .build()
                .expect("data and partition key are set")
        })
        .collect();
    let answer = client
        .put_records()
        .stream_name(stream)
        .set_records(Some(records))
        .send()
        .await;
    match answer {
        Ok(out) => Ok(out
            .records()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.error_code().is_some())
            .map(|(i, _)| i)
            .collect()),
        Err(e) => {
            let why = format!("PutRecords on stream {stream}: {}", describe(&e));
            match e.as_service_error() {
                Some(s)
                    if s.is_resource_not_found_exception()
                        || s.is_access_denied_exception()
                        || s.is_invalid_argument_exception() =>
                {
                    Err(PutError::Refused(why))
                }
                // Throttled as a whole, a KMS hiccup, or no answer at all.
                _ => Err(PutError::Unavailable(why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_are_the_key_when_it_fits_and_its_digest_when_not() {
        assert_eq!(partition_key(b"auction-7"), "auction-7");
        let long = vec![b'x'; 300];
        let hashed = partition_key(&long);
        assert_eq!(hashed.len(), 32);
        assert_eq!(hashed, partition_key(&long), "the same key, the same shard");
        assert_eq!(partition_key(b"").len(), 32, "never empty");
        assert_eq!(digest(b"auction-7").len(), 32);
    }
}
