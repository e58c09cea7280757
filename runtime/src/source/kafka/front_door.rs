//! The HTTP front door of a Kafka source: records posted to the source are produced to
//! its topic (the role of a Kafka REST proxy), and the source reads them back through
//! its consumer like any other message. A request is answered only once the brokers
//! have acknowledged every record (`acks=all`, an idempotent producer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};

use crate::deadletter::DeadLetterStore;
use crate::source::front_door::{Idempotency, dead_letter_bad, key_of, split};
use crate::source::http::IngestReport;
use crate::{Error, Result};

/// How long a record may wait for the brokers before the request fails (503).
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// librdkafka's default `message.max.bytes`, less room for the headers of a message.
const MAX_RECORD_BYTES: usize = 1_000_000 - 1_024;

/// Produces posted records to one topic.
pub struct FrontDoor {
    source: String,
    topic: String,
    /// The field whose value is each message's key.
    key: Option<String>,
    config: ClientConfig,
    producer: Mutex<Option<Arc<BaseProducer<Acks>>>>,
    answered: Idempotency,
}

/// One request's records in flight.
#[derive(Default)]
struct Request {
    pending: AtomicUsize,
    failed: Mutex<Option<String>>,
}

/// Reports each record's acknowledgement to its request.
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Arc<Request>;

    fn delivery(&self, result: &DeliveryResult<'_>, request: Arc<Request>) {
        if let Err((e, _)) = result {
            request.failed.lock().get_or_insert_with(|| e.to_string());
        }
        request.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FrontDoor {
    /// The front door of source `source` to `topic`, with the consumer's connection
    /// settings (`brokers`, `properties.*`).
    pub fn new(
        source: &str,
        topic: &str,
        key: Option<String>,
        brokers: &str,
        properties: &[(String, String)],
    ) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", format!("weir-{source}-front-door"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", DELIVERY_WAIT.as_millis().to_string());
        // The source's settings (security, ...) apply, but not over what makes the
        // front door's answer mean "every in-sync replica has it, once".
        for (k, v) in properties {
            if k != "acks" && k != "enable.idempotence" {
                config.set(k, v);
            }
        }
        Self {
            source: source.to_string(),
            topic: topic.to_string(),
            key,
            config,
            producer: Mutex::new(None),
            answered: Idempotency::default(),
        }
    }

    fn producer(&self) -> Result<Arc<BaseProducer<Acks>>> {
        let mut producer = self.producer.lock();
        if let Some(p) = producer.as_ref() {
            return Ok(p.clone());
        }
        let made: BaseProducer<Acks> = self.config.create_with_context(Acks).map_err(|e| {
            Error::BadRequest(format!(
                "source {}: the kafka client refuses its settings: {e}",
                self.source
            ))
        })?;
        let made = Arc::new(made);
        *producer = Some(made.clone());
        Ok(made)
    }

    /// Produce the records of `body` (a JSON array or newline-delimited JSON); records
    /// that are not JSON objects go to the dead-letter store. A request whose
    /// `idempotency_key` was answered before is answered as then, and produces nothing.
    pub fn produce(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
        dead_letters: &DeadLetterStore,
    ) -> Result<IngestReport> {
        self.answered.run(&self.source, idempotency_key, || {
            self.produce_now(body, dead_letters)
        })
    }

    fn produce_now(&self, body: &[u8], dead_letters: &DeadLetterStore) -> Result<IngestReport> {
        let (records, bad) = split(body);
        // Checked before anything is produced: a request is produced whole or not at all
        // for a reason the client must fix.
        if let Some((n, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.get().len() > MAX_RECORD_BYTES)
        {
            return Err(Error::TooLarge(format!(
                "source {}: record {n} of the request is {} bytes; a record produced to \
                 topic {} may have at most {MAX_RECORD_BYTES}",
                self.source,
                r.get().len(),
                self.topic
            )));
        }
        let producer = self.producer()?;
        let request = Arc::new(Request::default());
        let mut accepted = 0;
        for record in &records {
            let bytes = record.get().as_bytes();
            let key = self.key.as_deref().and_then(|field| key_of(record, field));
            request.pending.fetch_add(1, Ordering::AcqRel);
            let mut message = BaseRecord::<[u8], [u8], Arc<Request>>::with_opaque_to(
                &self.topic,
                request.clone(),
            )
            .payload(bytes);
            if let Some(k) = key.as_deref() {
                message = message.key(k.as_bytes());
            }
            if let Err(e) =
                crate::kafka::send_waiting(&producer, message, || request.failed.lock().is_some())
            {
                // The rest would fail too, and a retry produces them all again.
                request.pending.fetch_sub(1, Ordering::AcqRel);
                request.failed.lock().get_or_insert_with(|| e.to_string());
                break;
            }
            accepted += 1;
        }
        // Every record is acknowledged or has failed within the message timeout.
        let deadline = Instant::now() + DELIVERY_WAIT + Duration::from_secs(5);
        while request.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            producer.poll(Duration::from_millis(20));
        }
        let failed = request.failed.lock().take();
        if let Some(e) = failed.or_else(|| {
            (request.pending.load(Ordering::Acquire) > 0)
                .then(|| "the brokers did not answer in time".to_string())
        }) {
            // A producer that failed may be fenced for good (a broker that restarted
            // without its producer state): the next request makes a new one. Requests
            // still using this one finish with it; one made meanwhile is kept.
            let mut current = self.producer.lock();
            if current.as_ref().is_some_and(|p| Arc::ptr_eq(p, &producer)) {
                current.take();
            }
            drop(current);
            // The brokers are the operator's to fix: 503 with Retry-After.
            return Err(Error::Unavailable(format!(
                "source {}: the records could not be produced to topic {} ({e}); \
                 retry once the brokers are reachable (with the same Idempotency-Key)",
                self.source, self.topic
            )));
        }
        Ok(IngestReport {
            accepted,
            dead_lettered: dead_letter_bad(&self.source, bad, dead_letters),
            duplicate: false,
        })
    }
}
