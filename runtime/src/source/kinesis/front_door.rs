//! The HTTP front door of a Kinesis source, the API Gateway role: records posted to the
//! source are put on its stream (PutRecords), and the source reads them back like any
//! other record. A request is answered 200 only once Kinesis has acknowledged every
//! record; 503 with a retry hint while the endpoint is unreachable or throttles.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use serde_json::value::RawValue;

use super::put::{Entry, MAX_RECORD_BYTES, PutError, digest, partition_key, put_all};
use crate::aws::block_on;
use crate::deadletter::DeadLetterStore;
use crate::source::front_door::{Idempotency, dead_letter_bad, key_of, split};
use crate::source::http::IngestReport;
use crate::{Error, Result};

/// How long a request waits for every record to be put.
const PUT_WAIT: Duration = Duration::from_secs(10);

/// Puts posted records on one stream.
pub struct FrontDoor {
    pub source: String,
    pub stream: String,
    /// The field whose value is each record's partition key.
    pub key: Option<String>,
    pub client: Client,
    pub answered: Idempotency,
}

impl FrontDoor {
    /// Put the records of `body` (a JSON array or newline-delimited JSON); records that
    /// are not JSON objects go to the dead-letter store. A request whose
    /// `idempotency_key` was answered before is answered as then, and puts nothing.
    pub fn put(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
        dead_letters: &DeadLetterStore,
    ) -> Result<IngestReport> {
        self.answered.run(&self.source, idempotency_key, || {
            self.put_now(body, dead_letters)
        })
    }

    fn put_now(&self, body: &[u8], dead_letters: &DeadLetterStore) -> Result<IngestReport> {
        let (records, bad) = split(body);
        let entries: Vec<Entry> = records.iter().map(|r| self.entry(r)).collect();
        // Checked before anything is put: a request is put whole or not at all for a
        // reason the client must fix.
        if let Some((n, e)) = entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.bytes() > MAX_RECORD_BYTES)
        {
            return Err(Error::TooLarge(format!(
                "source {}: record {n} of the request is {} bytes with its partition key; a \
                 Kinesis record may have at most {MAX_RECORD_BYTES}",
                self.source,
                e.bytes()
            )));
        }
        let (client, stream) = (self.client.clone(), self.stream.clone());
        let deadline = Instant::now() + PUT_WAIT;
        let accepted = entries.len();
        // The SDK's own attempts may outlast the deadline: the answer comes by then.
        let put = block_on(async move {
            tokio::time::timeout(PUT_WAIT, put_all(&client, &stream, &entries, deadline))
                .await
                .unwrap_or_else(|_| {
                    Err(PutError::Unavailable(format!(
                        "no answer within {} s",
                        PUT_WAIT.as_secs()
                    )))
                })
        });
        match put {
            Ok(_) => Ok(IngestReport {
                accepted,
                dead_lettered: dead_letter_bad(&self.source, bad, dead_letters),
                duplicate: false,
            }),
            // The endpoint is the operator's to fix: 503 with Retry-After.
            Err(PutError::Unavailable(why) | PutError::Refused(why)) => {
                Err(Error::Unavailable(format!(
                    "source {}: the records could not be put on stream {} ({why}); retry \
                     later (with the same Idempotency-Key)",
                    self.source, self.stream
                )))
            }
        }
    }

    /// A record's entry: keyed by the `partition_key` field's value, or by a digest of
    /// the record (so records spread over the shards).
    fn entry(&self, record: &RawValue) -> Entry {
        let data = record.get().as_bytes();
        let key = self.key.as_deref().and_then(|field| key_of(record, field));
        Entry {
            partition_key: key.map_or_else(|| digest(data), |k| partition_key(k.as_bytes())),
            data: data.to_vec(),
        }
    }
}
