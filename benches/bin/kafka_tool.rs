//! The Kafka side of `scripts/bench-kafka.sh`: fill a topic with small JSON bids, and a
//! plain librdkafka consumer that reads the whole topic and does nothing with the
//! messages: the ceiling weir's Kafka source is measured against.
//!
//!   weir-kafka-tool produce BROKERS TOPIC MESSAGES [FILE]   (FILE: the same records as JSON lines)
//!   weir-kafka-tool consume BROKERS TOPIC MESSAGES          (prints messages/s)

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: weir-kafka-tool produce|consume BROKERS TOPIC MESSAGES [FILE]";
    let (command, brokers, topic, messages) = match args.as_slice() {
        [_, c, b, t, n, ..] => (c.as_str(), b.as_str(), t.as_str(), n.parse::<u64>()?),
        _ => return Err(usage.into()),
    };
    match command {
        "produce" => produce(brokers, topic, messages, args.get(5).map(String::as_str)),
        "consume" => consume(brokers, topic, messages),
        _ => Err(usage.into()),
    }
}

/// The i-th bid: small, like a real event.
fn bid(i: u64, buf: &mut Vec<u8>) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"id":{i},"user_id":{},"price":{},"ts":{}}}"#,
        i % 10_000,
        i % 997,
        1_700_000_000_000 + i
    );
}

fn produce(
    brokers: &str,
    topic: &str,
    messages: u64,
    file: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Four partitions: four splits for weir, four fetch queues for the plain consumer.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let created = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in created {
        r.map_err(|(t, e)| format!("cannot create topic {t}: {e}"))?;
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()?;
    let mut lines = match file {
        Some(f) => Some(std::io::BufWriter::new(std::fs::File::create(f)?)),
        None => None,
    };
    let started = Instant::now();
    let mut buf = Vec::with_capacity(128);
    for i in 0..messages {
        bid(i, &mut buf);
        if let Some(l) = lines.as_mut() {
            l.write_all(&buf)?;
            l.write_all(b"\n")?;
        }
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(&buf);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    if let Some(mut l) = lines {
        l.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("produced {messages} messages in {secs:.1} s");
    Ok(())
}

fn consume(brokers: &str, topic: &str, messages: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ClientConfig::new();
    // SETTINGS='k=v,k=v': further librdkafka settings, to compare with weir's.
    for kv in std::env::var("SETTINGS").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            config.set(k, v);
        }
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("plain-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    // GROUP=1: join a consumer group (as weir does) instead of assigning partitions.
    if std::env::var_os("GROUP").is_some() {
        consumer.subscribe(&[topic])?;
    } else {
        consumer.assign(&tpl)?;
    }
    let started = Instant::now();
    let (mut read, mut bytes) = (0u64, 0usize);
    let deadline = started + Duration::from_secs(600);
    while read < messages && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = match m {
                Err(KafkaError::PartitionEOF(_)) => continue,
                m => m?,
            };
            bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len);
            read += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "plain librdkafka consumer: {read} messages ({bytes} bytes) in {secs:.2} s = {:.0} messages/s",
        read as f64 / secs
    );
    Ok(())
}
