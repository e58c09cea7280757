//! A source's pipeline: one thread that closes micro-batches (by [`BatchPolicy`]), runs
//! every view of the source over each batch, advances the source's watermark, lets the
//! views emit what it completes, and sends late rows and failed batches to the
//! dead-letter store. It owns no tokio runtime: operators are CPU work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::{concat_batches, max};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime;
use prometheus::Histogram;

use crate::batch::BatchPolicy;
use crate::checkpoint::align::{Arrival, JoinAlignment};
use crate::checkpoint::{Position, SourceSnapshot};
use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::source::{Chunk, SourceRuntime, SourceState};
use crate::view::ViewRuntime;
use weir_sql::{Collector, Watermark};

/// Batches a paused view holds before its source waits for it.
const MAX_HELD_BATCHES: usize = 256;

/// How far (event time, ms) an input of a join may run ahead of the join's watermark
/// before its pipeline waits for the other inputs: without it, a fast input fills the
/// join's open windows with rows the slow input is far from matching.
const MAX_JOIN_SKEW_MS: i64 = 10_000;

/// How long an input of a join waits at a checkpoint for the join's other inputs.
const JOIN_ARRIVAL_WAIT: Duration = Duration::from_secs(2);

/// Everything a pipeline thread needs besides its source.
pub struct Pipeline {
    pub source: Arc<SourceRuntime>,
    pub policy: BatchPolicy,
    pub dead_letters: Arc<DeadLetterStore>,
    pub latency: Histogram,
    /// Chunks queued by an HTTP source (decremented as they are taken).
    pub buffered: Option<Arc<AtomicUsize>>,
    watermark: Watermark,
    time_column: Option<usize>,
    /// The source's position after the last chunk received.
    position: Position,
    /// Batches processed since the last snapshot.
    unsaved_batches: u64,
    /// See `RuntimeConfig::idle_timeout`.
    idle_timeout_ms: i64,
    /// Where the inputs of joins meet for checkpoints.
    alignment: Arc<JoinAlignment>,
    /// The last checkpoint this source's join group could not be snapshotted for: not
    /// tried again (the source would wait at every batch).
    missed_epoch: u64,
}

impl Pipeline {
    pub fn new(
        source: Arc<SourceRuntime>,
        policy: BatchPolicy,
        dead_letters: Arc<DeadLetterStore>,
        latency: Histogram,
        buffered: Option<Arc<AtomicUsize>>,
    ) -> Self {
        let (watermark, time_column) = match &source.watermark {
            Some(spec) => (
                Watermark::new(i64::try_from(spec.delay.as_millis()).unwrap_or(i64::MAX)),
                source.schema.index_of(&spec.column).ok(),
            ),
            None => (Watermark::new(0), None),
        };
        Self {
            source,
            policy,
            dead_letters,
            latency,
            buffered,
            watermark,
            time_column,
            position: Position::default(),
            unsaved_batches: 0,
            idle_timeout_ms: 10_000,
            alignment: Arc::default(),
            missed_epoch: 0,
        }
    }

    /// Meet the other inputs of joins at `alignment` for checkpoints.
    pub fn aligned_by(mut self, alignment: Arc<JoinAlignment>) -> Self {
        self.alignment = alignment;
        self
    }

    /// When an input of a join counts as idle.
    pub fn idle_after(mut self, timeout: Duration) -> Self {
        self.idle_timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Continue from a checkpoint: the source resumes at `position`, and the watermark
    /// is where it was.
    pub fn resume_at(mut self, position: Position, watermark: Option<i64>) -> Self {
        self.position = position;
        if let Some(w) = watermark {
            self.watermark.advance_to(w);
            self.source.current_watermark.store(w, Ordering::Relaxed);
        }
        self
    }

    /// Start the pipeline thread.
    pub fn spawn(self, rx: Receiver<Chunk>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("pipeline-{}", self.source.name))
            .spawn(move || self.run(rx))?;
        Ok(())
    }

    fn run(mut self, rx: Receiver<Chunk>) {
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut rows = 0usize;
        let mut opened: Option<Instant> = None;
        loop {
            if self.source.stop.load(Ordering::Relaxed) {
                return;
            }
            // Between micro-batches every view has seen exactly the rows up to `position`.
            if pending.is_empty()
                && let Some(epoch) = self.source.checkpoint.wanted()
                && epoch > self.missed_epoch
            {
                self.snapshot(epoch, false);
            }
            let wait = opened.map_or(Duration::from_millis(100), |t| {
                self.policy.remaining(t.elapsed())
            });
            let mut next = rx.recv_timeout(wait);
            let mut took = false;
            // Behind (chunks already waiting): take them into this micro-batch too, so
            // a backlog makes batches larger, not a batch per late chunk.
            while let Ok(Chunk::Rows {
                batch,
                received,
                position,
            }) = next
            {
                took = true;
                self.position.advance(&position);
                self.source.last_chunk_ms.store(now_ms(), Ordering::Relaxed);
                // Even a chunk without rows moves the position: save it.
                self.unsaved_batches += 1;
                if let Some(b) = &self.buffered {
                    b.fetch_sub(1, Ordering::Relaxed);
                }
                opened.get_or_insert(received);
                rows += batch.num_rows();
                pending.push(batch);
                next = if rows >= self.policy.max_rows() {
                    Err(RecvTimeoutError::Timeout)
                } else {
                    match rx.try_recv() {
                        Ok(chunk) => Ok(chunk),
                        Err(TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                    }
                };
            }
            match next {
                Ok(Chunk::End) => {
                    self.flush(&mut pending, opened.take());
                    self.finish();
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&mut pending, opened.take());
                    return;
                }
                Err(RecvTimeoutError::Timeout) if !took => self.resume_idle(),
                // Rows were taken above.
                Ok(Chunk::Rows { .. }) | Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(t) = opened
                && self.policy.should_flush(rows, t.elapsed())
            {
                self.flush(&mut pending, Some(t));
                rows = 0;
                opened = None;
            }
        }
    }

    /// Process the pending rows as micro-batches of at most `max_rows`.
    fn flush(&mut self, pending: &mut Vec<RecordBatch>, opened: Option<Instant>) {
        if pending.is_empty() {
            return;
        }
        let batch = if pending.len() == 1 {
            pending.remove(0)
        } else {
            match concat_batches(&self.source.schema, pending.iter()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(source = %self.source.name, error = %e, "cannot concatenate chunks");
                    pending.clear();
                    return;
                }
            }
        };
        pending.clear();
        let max_rows = self.policy.max_rows();
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = max_rows.min(batch.num_rows() - offset);
            self.process(&batch.slice(offset, len));
            offset += len;
        }
        if let Some(t) = opened {
            self.latency.observe(t.elapsed().as_secs_f64());
        }
    }

    fn process(&mut self, batch: &RecordBatch) {
        let views = self.source.views.lock().clone();
        let before = self.watermark.current();
        for view in views.iter().filter(|v| v.is_join()) {
            self.align(view);
        }
        for view in &views {
            // A join's input is late by the join's watermark, not its own source's.
            let before = if view.is_join() {
                Some(view.combined_watermark.load(Ordering::Acquire)).filter(|&w| w != i64::MIN)
            } else {
                before
            };
            self.run_view(view, batch, before);
        }
        self.source.batches.inc();
        self.unsaved_batches += 1;
        let advanced = self
            .time_column
            .and_then(|c| {
                batch
                    .column(c)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .and_then(max)
            })
            .and_then(|m| self.watermark.observe(m));
        if let Some(w) = advanced {
            self.advance(&views, w);
        }
    }

    /// Run one view over a batch. A paused view (a plugin it calls is failed) holds
    /// the batch instead; once it holds too many, the source waits for it, so nothing
    /// is lost and the backpressure reaches the producers.
    fn run_view(&self, view: &Arc<ViewRuntime>, batch: &RecordBatch, before: Option<i64>) {
        if view.paused().is_some() {
            if view.hold(batch.clone(), before) >= MAX_HELD_BATCHES {
                self.wait_until_resumed(view);
                self.resume(view);
            }
            return;
        }
        if !self.resume(view) {
            // The plugin failed again while replaying: keep this batch too.
            view.hold(batch.clone(), before);
            return;
        }
        let input = view.input_index(&self.source.name);
        let mut out = Collector::default();
        let result = view.run_operator(|op| op.process_input(input, batch, before, &mut out));
        self.deliver(view, out, result, batch);
    }

    /// Replay what a paused view held, then bring it up to the current watermark.
    /// False when the view is (again) paused; what it has not replayed stays held.
    fn resume(&self, view: &Arc<ViewRuntime>) -> bool {
        if view.paused().is_some() {
            return false;
        }
        let held = view.take_held();
        if held.is_empty() {
            return true;
        }
        tracing::info!(view = %view.name, batches = held.len(), "view resumed; replaying the batches it held");
        let mut held = held.into_iter();
        while let Some((batch, before)) = held.next() {
            if view.paused().is_some() {
                view.hold_front(std::iter::once((batch, before)).chain(held).collect());
                return false;
            }
            let mut out = Collector::default();
            let result = view.run_operator(|op| op.process(&batch, before, &mut out));
            self.deliver(view, out, result, &batch);
        }
        if view.paused().is_some() {
            return false;
        }
        if let Some(w) = self.watermark.current() {
            self.close_windows(view, w);
        }
        true
    }

    fn wait_until_resumed(&self, view: &Arc<ViewRuntime>) {
        tracing::warn!(view = %view.name, "paused view holds {MAX_HELD_BATCHES} batches; source {} waits for it", self.source.name);
        while view.paused().is_some()
            && !self.source.stop.load(Ordering::Relaxed)
            && self
                .source
                .views
                .lock()
                .iter()
                .any(|v| Arc::ptr_eq(v, view))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resume views whose plugin was fixed while no batches came, and let joins move
    /// on when one of their inputs has gone idle.
    fn resume_idle(&self) {
        let views = self.source.views.lock().clone();
        for view in &views {
            if view.held_batches() > 0 {
                self.resume(view);
            }
            if view.is_join() {
                self.advance_join(view);
            }
        }
    }

    /// Wait while this source is more than `MAX_JOIN_SKEW_MS` ahead of a join it feeds
    /// (watermark alignment); idle inputs stop counting as the wait goes on.
    fn align(&self, view: &ViewRuntime) {
        loop {
            let own = self.source.current_watermark.load(Ordering::Acquire);
            let joined = view.combined_watermark.load(Ordering::Acquire);
            // A checkpoint waits for every input at a batch boundary: go on to it.
            if own == i64::MIN
                || own.saturating_sub(joined) <= MAX_JOIN_SKEW_MS
                || self.source.stop.load(Ordering::Relaxed)
                || self
                    .source
                    .checkpoint
                    .wanted()
                    .is_some_and(|e| e > self.missed_epoch)
            {
                return;
            }
            self.advance_join(view);
            if view.combined_watermark.load(Ordering::Acquire) == joined {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Close a join's windows up to the minimum watermark of its inputs, leaving out
    /// inputs idle for longer than the idle timeout (a finished input's watermark is
    /// the end of time). Nothing moves while an active input has no watermark yet.
    fn advance_join(&self, view: &ViewRuntime) {
        let now = now_ms();
        let mut min: Option<i64> = None;
        for input in &view.inputs {
            let Some(source) = input.upgrade() else {
                continue;
            };
            let w = source.current_watermark.load(Ordering::Acquire);
            let idle = now - source.last_chunk_ms.load(Ordering::Relaxed) > self.idle_timeout_ms
                && *source.state.lock() == SourceState::Running;
            if idle {
                continue;
            }
            if w == i64::MIN {
                return;
            }
            min = Some(min.map_or(w, |m: i64| m.min(w)));
        }
        if let Some(w) = min
            && view.combined_watermark.fetch_max(w, Ordering::AcqRel) < w
        {
            self.close_windows(view, w);
        }
    }

    fn advance(&mut self, views: &[Arc<ViewRuntime>], watermark: i64) {
        self.source
            .current_watermark
            .store(watermark, Ordering::Relaxed);
        if watermark != i64::MAX {
            self.source.watermark_gauge.set(watermark);
        }
        for view in views {
            if view.is_join() {
                self.advance_join(view);
            // A paused view keeps its windows open until it has caught up.
            } else if view.paused().is_none() && view.held_batches() == 0 {
                self.close_windows(view, watermark);
            }
        }
    }

    fn close_windows(&self, view: &ViewRuntime, watermark: i64) {
        let mut out = Collector::default();
        let result = view.run_operator(|op| op.on_watermark(watermark, &mut out));
        if let Err(e) = &result {
            tracing::error!(view = %view.name, error = %e, "closing windows failed");
            *view.last_error.lock() = Some(e.to_string());
        }
        self.dead_letter_failed(view, &out.failed);
        for (key, rows) in out.upserts {
            view.upsert(key, rows);
        }
        // An aggregate over a join's closed groups updates the view's rows.
        match out.replace {
            Some(all) => view.replace(all, out.rows),
            None => view.publish(out.rows),
        }
    }

    /// The source ended: paused views are waited for, then a final watermark closes
    /// every window.
    fn finish(&mut self) {
        let views = self.source.views.lock().clone();
        for view in &views {
            while view.held_batches() > 0 || view.paused().is_some() {
                self.wait_until_resumed(view);
                if self.resume(view) || self.source.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        if let Some(w) = self.watermark.finish() {
            self.advance(&views, w);
        }
        // The final state (the last watermark closed windows), for every checkpoint from
        // now on.
        self.unsaved_batches += 1;
        self.snapshot(self.source.checkpoint.requested(), true);
        *self.source.state.lock() = SourceState::Finished;
        tracing::info!(source = %self.source.name, "source finished");
    }

    /// Leave a snapshot of the source's position and views for checkpoint `epoch`.
    /// Nothing changed since the last one: that one answers again. A source that feeds
    /// a join is snapshotted with the join's other inputs.
    fn snapshot(&mut self, epoch: u64, finished: bool) {
        let slot = &self.source.checkpoint;
        let views = self.source.views.lock().clone();
        // A paused view has not processed the batches it holds: snapshot later.
        if views.iter().any(|v| v.held_batches() > 0) {
            return;
        }
        if views.iter().any(|v| v.is_join()) {
            let arrival = Arrival {
                epoch,
                position: self.position.clone(),
                watermark: self.watermark.current(),
            };
            if self
                .alignment
                .arrive(&self.source, arrival, finished, JOIN_ARRIVAL_WAIT)
            {
                self.unsaved_batches = 0;
            } else if !finished {
                tracing::warn!(source = %self.source.name, epoch, "the other inputs of a join did not reach checkpoint {epoch} in time; it keeps their previous snapshots");
                self.missed_epoch = epoch;
            }
            return;
        }
        let same_views = slot.latest().is_some_and(|s| {
            s.views.len() == views.len()
                && s.views.iter().zip(&views).all(|(a, b)| a.view_id == b.id)
        });
        if self.unsaved_batches == 0 && same_views {
            slot.put_unchanged(epoch);
            return;
        }
        let mut snapshots = Vec::with_capacity(views.len());
        for view in &views {
            match view.checkpoint(epoch) {
                Ok(s) => snapshots.push(s),
                Err(e) => {
                    tracing::error!(view = %view.name, error = %e, "cannot snapshot the view; the checkpoint keeps its previous state");
                    return;
                }
            }
        }
        slot.put(
            epoch,
            SourceSnapshot {
                epoch,
                name: self.source.name.clone(),
                sql: self.source.sql.clone(),
                position: self.position.clone(),
                watermark: self.watermark.current(),
                views: snapshots,
            },
        );
        self.unsaved_batches = 0;
    }

    fn deliver(
        &self,
        view: &ViewRuntime,
        out: Collector,
        result: weir_sql::Result<()>,
        batch: &RecordBatch,
    ) {
        if let Err(e) = result {
            let reason = format!("view {} could not process this batch: {e}", view.name);
            tracing::warn!(view = %view.name, error = %e, "batch dead-lettered");
            *view.last_error.lock() = Some(reason.clone());
            self.dead_letter_rows(view, batch, |_| reason.clone());
        }
        self.dead_letter_failed(view, &out.failed);
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
            self.dead_letter_rows(view, late, |row| {
                let time = times.as_ref().filter(|t| t.is_valid(row)).map(|t| t.value(row));
                format!(
                    "late row for view {}: event time {} is behind the watermark {}; its window was already emitted",
                    view.name,
                    time.map_or("NULL".to_string(), show_time),
                    show_time(watermark)
                )
            });
        }
        for (key, rows) in out.upserts {
            view.upsert(key, rows);
        }
        match out.replace {
            Some(all) => view.replace(all, out.rows),
            None => view.publish(out.rows),
        }
    }

    fn dead_letter_failed(&self, view: &ViewRuntime, failed: &[(RecordBatch, String)]) {
        for (rows, reason) in failed {
            tracing::warn!(view = %view.name, %reason, "rows dead-lettered");
            *view.last_error.lock() = Some(reason.clone());
            self.dead_letter_rows(view, rows, |_| format!("view {}: {reason}", view.name));
        }
    }

    /// Dead-letter each row of `batch` as a JSON object.
    fn dead_letter_rows(
        &self,
        view: &ViewRuntime,
        batch: &RecordBatch,
        reason: impl Fn(usize) -> String,
    ) {
        let mut writer = LineDelimitedWriter::new(Vec::new());
        let lines = match writer.write(batch).and_then(|_| writer.finish()) {
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
                    position: None,
                    reason: reason(row),
                    raw: raw.to_vec(),
                }),
        );
        self.source.dead_letters.inc_by(n as u64);
    }
}

fn show_time(ms: i64) -> String {
    timestamp_ms_to_datetime(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
