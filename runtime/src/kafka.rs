//! What the Kafka source (and its HTTP front door) and the Kafka sink share of
//! librdkafka.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};

/// Queue `record`; while the producer's local queue is full, let deliveries drain it
/// and try again, unless `give_up` says the batch has failed already (a delivery
/// failed: the caller sends it all again). Any other error is returned.
pub(crate) fn send_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
    give_up: impl Fn() -> bool,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                if give_up() =>
            {
                return Err(e);
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
