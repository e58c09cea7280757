//! Sinks: where a view's changes go. Every sink has one shape: a [`Sink`] made by its
//! connector from the `WITH (...)` options (`SINKS` is the registration table), fed
//! by a [`feed::SinkFeed`] that seals the view's changes under each checkpoint's epoch
//! (prepare) and hands them over only once that checkpoint is durable (commit).
//!
//! [`SinkRuntime`] (runtime.rs) runs one sink on a thread of its own, so a slow or
//! unreachable destination never blocks the view.

pub mod dynamodb;
pub mod encode;
pub mod feed;
pub mod files;
pub mod kafka;
pub mod kinesis;
pub mod postgres;
pub mod redis;
mod runtime;
pub mod spill;

pub use runtime::{SinkRuntime, SinkStatus};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::LineDelimitedWriter;

use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::{Error, Result};
use feed::Change;

/// What a connector is given to make a sink.
pub struct SinkDef<'a> {
    pub name: &'a str,
    /// The view it writes, the source that view reads, and the view's columns.
    pub view: &'a str,
    pub source: &'a str,
    pub schema: &'a SchemaRef,
    /// The connector's own options (`max_pending_rows` is the runtime's, not here).
    pub options: &'a BTreeMap<String, String>,
    /// Where a change the destination can never take goes (a message over its size
    /// limit), so the sink goes on with the rest.
    pub dead_letters: &'a Arc<DeadLetterStore>,
    /// Made again after a restart (not by a new CREATE SINK): the destination may be
    /// down now, and the sink must start all the same.
    pub restoring: bool,
}

/// The changes of one durable checkpoint epoch, as a sink is to write them (of several,
/// `first_epoch..=epoch`, for a sink that gathers epochs: [`Sink::gather`]).
pub struct EpochChanges<'a> {
    pub epoch: u64,
    pub first_epoch: u64,
    /// The sink's lineage ([`SinkFeed::lineage`]): with the epoch and a message's
    /// place in it, what names the message for good.
    pub lineage: &'a str,
    pub changes: &'a [Change],
}

/// A destination of a view's changes.
pub trait Sink: Send {
    /// Write the changes of a durable epoch, and return (with the number of messages
    /// written) once the destination holds them as the sink's delivery guarantee
    /// says. On an error the same epoch is offered again, with the same changes.
    fn deliver(&mut self, epoch: &EpochChanges<'_>) -> std::result::Result<u64, String>;

    /// Something the user should know of the sink's writes (a hot partition), asked
    /// after each delivery.
    fn warning(&self) -> Option<String> {
        None
    }

    /// Whether durable epochs gather into one delivery (`None`: each is delivered on
    /// its own). A gathered delivery is noted before it is written, so after a crash the
    /// same epochs are delivered together again.
    fn gather(&self) -> Option<Gather> {
        None
    }
}

/// How long and how far durable epochs gather before they are delivered together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gather {
    /// Deliver once the oldest waiting change has waited this long,
    pub max_wait: Duration,
    /// or once this many rows wait.
    pub max_rows: usize,
}

/// A sink connector: its name in `WITH (connector = ...)` and how it is made.
pub struct SinkConnector {
    pub name: &'static str,
    pub open: fn(&SinkDef) -> Result<Box<dyn Sink>>,
    /// What the API says of it (crate::connectors).
    pub(crate) described: &'static crate::connectors::Described,
}

/// Every sink connector. A new one is a folder beside `kafka` and a line here.
pub const SINKS: &[SinkConnector] = &[
    SinkConnector {
        name: "kafka",
        open: kafka::open,
        described: &kafka::DESCRIBED,
    },
    SinkConnector {
        name: "kinesis",
        open: kinesis::open,
        described: &kinesis::DESCRIBED,
    },
    SinkConnector {
        name: "dynamodb",
        open: dynamodb::open,
        described: &dynamodb::DESCRIBED,
    },
    SinkConnector {
        name: "files",
        open: files::open,
        described: &files::DESCRIBED,
    },
    SinkConnector {
        name: "postgres",
        open: postgres::open,
        described: &postgres::DESCRIBED,
    },
    SinkConnector {
        name: "redis",
        open: redis::open,
        described: &redis::DESCRIBED,
    },
];

/// What the API says of every sink connector.
pub(crate) fn described() -> impl Iterator<Item = &'static crate::connectors::Described> {
    SINKS.iter().map(|s| s.described)
}

/// A sink connector's own options (every one but `connector`), parsed into `T`, which
/// should deny unknown fields.
pub(crate) fn own_options<T: serde::de::DeserializeOwned>(def: &SinkDef) -> Result<T> {
    let own: BTreeMap<String, String> = def
        .options
        .iter()
        .filter(|(k, _)| k.as_str() != "connector")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::options::parse_as(&format!("sink {}", def.name), &own)
}

/// Make the sink `def` asks for.
pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let connector = def.options.get("connector").map(String::as_str);
    let entry = SINKS
        .iter()
        .find(|c| Some(c.name) == connector)
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "sink {}: unknown connector {}; sinks are {}",
                def.name,
                connector.unwrap_or("(none)"),
                SINKS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
            ))
        })?;
    (entry.open)(def)
}

/// Rows of a view a sink can never write (their key has a null, say), to the dead
/// letters: one letter per row, its JSON as the raw bytes.
pub(crate) fn dead_letter_rows(
    def: (&DeadLetterStore, &str, &str, &str),
    epoch: u64,
    rows: &[RecordBatch],
    reason: &str,
) {
    let (store, source, view, sink) = def;
    let mut letters = Vec::new();
    for batch in rows {
        let mut writer = LineDelimitedWriter::new(Vec::new());
        if let Err(e) = writer.write(batch).and_then(|()| writer.finish()) {
            tracing::error!(sink, "cannot write refused rows as JSON: {e}");
            continue;
        }
        for line in writer.into_inner().split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            letters.push(NewDeadLetter {
                source: source.to_string(),
                view: Some(view.to_string()),
                partition: Some(format!("sink {sink} epoch {epoch}")),
                position: None,
                sequence_number: None,
                reason: format!("sink {sink}: {reason}").into(),
                raw: line.to_vec(),
            });
        }
    }
    store.push_all(letters);
}
