//! The operator contract: one required method processes a micro-batch; the watermark
//! and close hooks default to no-ops, so a stateless operator implements one method.
//! Operators of several inputs or parts mark each part's batches in their snapshots
//! with schema metadata (`tag_input`, `tagged`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::aggregate::KeyedChange;
use crate::{Error, Result};

/// Where an operator puts what it produces: result rows, and input rows it refused as late.
#[derive(Debug, Default)]
pub struct Collector {
    /// Result rows, in the operator's output schema: appended to the view.
    pub rows: Vec<RecordBatch>,
    /// Input rows (in the source schema) that arrived after their window closed.
    pub late: Vec<RecordBatch>,
    /// Rows the operator could not finish (for the dead-letter store), with the reason.
    pub failed: Vec<(RecordBatch, String)>,
    /// Rows that replace what the view holds under the same key: a window emitted under
    /// allowed lateness, and emitted again when late rows change it.
    pub upserts: Vec<(i64, RecordBatch)>,
    /// For updating views kept by group: the groups each change touched and their
    /// rows now, in order (see [`KeyedChange`]).
    pub keyed: Vec<KeyedChange>,
}

impl Collector {
    /// Keep a result batch unless it is empty.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.rows.push(batch);
        }
    }

    /// Rows for `key` that replace the view's earlier rows for it.
    pub fn upsert(&mut self, key: i64, batch: RecordBatch) {
        self.upserts.push((key, batch));
    }

    /// The groups a batch touched show these rows now (updating aggregates kept by group).
    pub fn keyed(&mut self, change: KeyedChange) {
        self.keyed.push(change);
    }

    /// Hand back rows that could not be finished, so they are not lost.
    pub fn failed(&mut self, batch: RecordBatch, reason: String) {
        self.failed.push((batch, reason));
    }

    /// Keep input rows that were too late unless there are none.
    pub fn late(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.late.push(batch);
        }
    }
}

/// A continuous query operator driven by the runtime, one micro-batch at a time.
pub trait Operator: Send {
    /// Process one micro-batch of the input source. `watermark` is the source's watermark
    /// before this batch: rows whose window it has already closed are late.
    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()>;

    /// Process a micro-batch of input `input` of a query over several sources (input 0
    /// is the first source). Single-source operators have only input 0.
    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        match input {
            0 => self.process(batch, watermark, out),
            n => Err(crate::Error::Execution(format!(
                "this query reads one source, not input {n}"
            ))),
        }
    }

    /// The watermark advanced to `watermark`: emit whatever it completes.
    fn on_watermark(&mut self, _watermark: i64, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// The operator's state as Arrow batches, for a checkpoint, leaving it as it was.
    /// Stateless operators have none.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Take the state of a [`Operator::snapshot`] of the same query.
    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        if state.iter().any(|b| b.num_rows() > 0) {
            return Err(crate::Error::Execution(
                "the checkpoint holds state for an operator that keeps none".into(),
            ));
        }
        Ok(())
    }

    /// For an operator whose view is kept by group (see [`Collector::keyed`]): every
    /// group's row now, as one change. A restored view takes its rows from here.
    fn keyed_rows(&mut self) -> Result<Option<KeyedChange>> {
        Ok(None)
    }

    /// Run the keyed work in `n` parallel instances, rows routed by a hash of their key;
    /// returns the parallelism in effect (1 for an operator that runs serially). State
    /// already held is routed anew, but group ids change: a view kept by group takes
    /// its rows again ([`Operator::keyed_rows`]).
    fn set_parallelism(&mut self, _n: usize) -> Result<usize> {
        Ok(1)
    }

    /// Bytes of state held, for status pages.
    fn state_size(&self) -> usize {
        0
    }

    /// Number of windows still open, for status pages.
    fn open_windows(&self) -> usize {
        0
    }

    /// The operator's parts in order, for the operator graph: its timed stateless steps
    /// and, where it keeps state, `Stage::Core` (its time is the operator's less its
    /// steps'). By default the operator is one core.
    fn stages(&self) -> Vec<Stage> {
        vec![Stage::Core]
    }
}

/// A part of an operator, as [`Operator::stages`] lists them.
#[derive(Debug, Clone)]
pub enum Stage {
    /// A stateless step (`filter`, `project`, `top-n`, `select`) and its clock.
    Step(
        &'static str,
        std::sync::Arc<crate::planner::steps::StepClock>,
    ),
    /// The stateful part: aggregate, join, session, a per-window query.
    Core,
}

/// The schema metadata key that numbers a further input's rows in a snapshot.
const INPUT_KEY: &str = "weir.input";

/// `schema` marked as input `input`'s, for a snapshot of an operator of several inputs.
pub(crate) fn tag_input(schema: &SchemaRef, input: usize) -> SchemaRef {
    tagged(schema, INPUT_KEY, &input.to_string())
}

/// `schema` with the metadata `key = value` only: snapshots of operators with several
/// parts mark each part's batches so (the checkpoint keeps schemas with their metadata).
pub(crate) fn tagged(schema: &SchemaRef, key: &str, value: &str) -> SchemaRef {
    Arc::new(
        schema
            .as_ref()
            .clone()
            .with_metadata(HashMap::from([(key.to_string(), value.to_string())])),
    )
}

/// Which input a snapshot batch holds rows of (untagged: input 0).
pub(crate) fn tagged_input(batch: &RecordBatch) -> Result<usize> {
    match batch.schema().metadata().get(INPUT_KEY) {
        None => Ok(0),
        Some(n) => n
            .parse()
            .map_err(|_| Error::Execution(format!("a checkpointed batch names input {n:?}"))),
    }
}
