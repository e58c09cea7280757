//! Delivery of an operator's output: its rows to the view (appended, upserted by
//! window, or replacing an updating view's rows), and rows it refused to the
//! dead-letter store, each with a reason a user can act on: a batch the view could not
//! process, a late row (with its event time and the watermark it missed), or rows the
//! operator could not finish.

use datafusion::arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::json::LineDelimitedWriter;

use std::time::Instant;

use super::Pipeline;
use crate::deadletter::{NewDeadLetter, Reason};
use crate::decode::Columns;
use crate::view::ViewRuntime;
use weir_sql::Collector;

impl Pipeline {
    /// Deliver what the view made of `batch` (of which the columns `decoded` were
    /// decoded); if it failed, the whole batch is dead-lettered with the error.
    pub(super) fn deliver(
        &self,
        view: &ViewRuntime,
        out: Collector,
        result: weir_sql::Result<()>,
        batch: &RecordBatch,
        decoded: Columns,
    ) {
        if let Err(e) = result {
            let reason = format!("view {} could not process this batch: {e}", view.name);
            tracing::warn!(view = %view.name, error = %e, "batch dead-lettered");
            *view.last_error.lock() = Some(reason.clone());
            let reason = Reason::from(reason);
            self.dead_letter_rows(view, batch, decoded, |_| reason.clone());
        }
        self.dead_letter_failed(view, &out.failed, decoded);
        let watermark = self.watermark.current().unwrap_or(i64::MIN);
        for late in &out.late {
            view.late_rows.inc_by(late.num_rows() as u64);
            // By name: a view over a stream has the stream's columns, not the source's.
            let times = self
                .source
                .watermark
                .as_ref()
                .and_then(|w| late.schema().index_of(&w.column).ok())
                .and_then(|c| {
                    late.column(c)
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .cloned()
                });
            self.dead_letter_rows(view, late, decoded, |row| Reason::Late {
                event_time_ms: times
                    .as_ref()
                    .filter(|t| t.is_valid(row))
                    .map(|t| t.value(row)),
                watermark_ms: watermark,
            });
        }
        publish(view, out, self.received);
    }

    pub(super) fn dead_letter_failed(
        &self,
        view: &ViewRuntime,
        failed: &[(RecordBatch, String)],
        decoded: Columns,
    ) {
        for (rows, reason) in failed {
            tracing::warn!(view = %view.name, %reason, "rows dead-lettered");
            *view.last_error.lock() = Some(reason.clone());
            let reason = Reason::from(format!("view {}: {reason}", view.name));
            self.dead_letter_rows(view, rows, decoded, |_| reason.clone());
        }
    }

    /// Dead-letter each row of `batch` as a JSON object, but for the source's columns
    /// that were not `decoded`.
    fn dead_letter_rows(
        &self,
        view: &ViewRuntime,
        batch: &RecordBatch,
        decoded: Columns,
        reason: impl Fn(usize) -> Reason,
    ) {
        // A preview's rows are nobody's to keep: it shows its first rows, nothing more.
        if view.preview {
            return;
        }
        let batch = self.without_placeholders(batch, decoded);
        let mut writer = LineDelimitedWriter::new(Vec::new());
        let lines = match writer.write(&batch).and_then(|_| writer.finish()) {
            Ok(()) => writer.into_inner(),
            Err(e) => format!("(rows could not be rendered: {e})").into_bytes(),
        };
        let n = self.dead_letters.push_all(
            lines
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
                .map(|(row, raw)| NewDeadLetter {
                    source: self.source.name.clone(),
                    view: Some(view.name.clone()),
                    partition: None,
                    position: None,
                    sequence_number: None,
                    reason: reason(row),
                    raw: raw.to_vec(),
                }),
        );
        self.source.dead_letters.inc_by(n as u64);
    }

    /// `batch` without the source's columns that were not `decoded`: they hold
    /// placeholders (see [`crate::decode::columns`]). Only rows of the source (its
    /// columns first, as a view's input and late rows are) have such columns.
    fn without_placeholders(&self, batch: &RecordBatch, decoded: Columns) -> RecordBatch {
        let (source, schema) = (self.source.schema.fields(), batch.schema());
        let of_the_source = schema.fields().len() >= source.len()
            && schema
                .fields()
                .iter()
                .zip(source.iter())
                .all(|(a, b)| a == b);
        if decoded == Columns::ALL || !of_the_source {
            return batch.clone();
        }
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|&c| c >= source.len() || decoded.contains(c))
            .collect();
        batch.project(&kept).unwrap_or_else(|_| batch.clone())
    }
}

/// Put an operator's result rows into the view: upserts by key, changes by group, rows
/// to append. `received` is when the first record of the batch that made them arrived,
/// for the end-to-end latency.
pub(super) fn publish(view: &ViewRuntime, out: Collector, received: Option<Instant>) {
    let changed = !out.rows.is_empty()
        || !out.upserts.is_empty()
        || out
            .keyed
            .iter()
            .any(|c| c.rows.num_rows() > 0 || !c.touched.is_empty());
    for (key, rows) in out.upserts {
        view.upsert(key, rows);
    }
    if !out.keyed.is_empty() {
        view.apply_by_group(out.keyed);
    }
    view.publish(out.rows);
    if let Some(received) = received.filter(|_| changed) {
        let seconds = received.elapsed().as_secs_f64();
        view.end_to_end_latency.observe(seconds);
        if let Some(samples) = &view.latency_samples {
            samples.lock().push(seconds);
        }
    }
}
