//! A source's pipeline: one thread that closes micro-batches (by [`BatchPolicy`]), runs
//! every view of the source over each batch, advances the source's watermark, lets the
//! views emit what it completes, and sends late rows and failed batches to the
//! dead-letter store. It owns no tokio runtime: operators are CPU work.
//!
//! This file is the batching loop and the watermark's advance; the rest by concept:
//! [`drive`] the watermark rules shared with the tests, `pause` holding and replaying
//! batches for views whose plugin failed, `alignment` keeping a join's inputs close in
//! event time, `snapshot` answering checkpoint requests, `deliver` putting an
//! operator's output into its view and the dead-letter store.

mod alignment;
mod deliver;
pub mod drive;
mod pause;
mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use prometheus::Histogram;

use crate::batch::BatchPolicy;
use crate::checkpoint::Position;
use crate::checkpoint::align::JoinAlignment;
use crate::deadletter::DeadLetterStore;
use crate::decode::Columns;
use crate::source::{Chunk, SourceRuntime, SourceState};
use crate::view::ViewRuntime;
use drive::{InputWatermark, SplitWatermarks};
use weir_sql::Collector;

/// Batches a paused view holds before its source waits for it.
const MAX_HELD_BATCHES: usize = 256;

/// Rows taken from the channel for the next micro-batch.
struct Pending {
    split: u32,
    batch: RecordBatch,
    /// The columns decoded (see [`Chunk::Rows`]).
    columns: Columns,
}

/// Everything a pipeline thread needs besides its source.
pub struct Pipeline {
    pub source: Arc<SourceRuntime>,
    pub policy: BatchPolicy,
    pub dead_letters: Arc<DeadLetterStore>,
    pub latency: Histogram,
    /// Chunks queued by an HTTP source (decremented as they are taken).
    pub buffered: Option<Arc<AtomicUsize>>,
    /// The source's watermark over the batches processed so far (per split).
    watermark: SplitWatermarks,
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
    /// While a batch is processed: when its first record was received.
    received: Option<Instant>,
}

impl Pipeline {
    pub fn new(
        source: Arc<SourceRuntime>,
        policy: BatchPolicy,
        dead_letters: Arc<DeadLetterStore>,
        latency: Histogram,
        buffered: Option<Arc<AtomicUsize>>,
    ) -> Self {
        let watermark = SplitWatermarks::new(match &source.watermark {
            Some(spec) => InputWatermark::new(
                i64::try_from(spec.delay.as_millis()).unwrap_or(i64::MAX),
                source.schema.index_of(&spec.column).ok(),
            ),
            None => InputWatermark::new(0, None),
        });
        Self {
            source,
            policy,
            dead_letters,
            latency,
            buffered,
            watermark,
            position: Position::default(),
            unsaved_batches: 0,
            idle_timeout_ms: 10_000,
            alignment: Arc::default(),
            missed_epoch: 0,
            received: None,
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
        let mut pending: Vec<Pending> = Vec::new();
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
                let _answered = self.snapshot(epoch, false);
            }
            let wait = opened.map_or(Duration::from_millis(100), |t| {
                self.policy.remaining(t.elapsed())
            });
            let mut next = rx.recv_timeout(wait);
            let mut took = false;
            // Behind (chunks already waiting): take them into this micro-batch too, so
            // a backlog makes batches larger, not a batch per small late chunk (chunks
            // of a quarter of a batch or more still go through one by one, see `flush`).
            while let Ok(Chunk::Rows {
                batch,
                columns,
                received,
                position,
                split,
            }) = next
            {
                took = true;
                // Rows decoded with other columns are a micro-batch apart: a view created
                // in between is fed the later ones (see `process`).
                if batch.num_rows() > 0 && pending.last().is_some_and(|p| p.columns != columns) {
                    self.flush(&mut pending, opened.take());
                    rows = 0;
                }
                self.position.advance(&position);
                // Heard from when taken, too: a chunk that waited in the channel longer
                // than the idle timeout does not make its split idle as it is processed
                // (the later of this and when it was sent counts, see `update_watermark`).
                if batch.num_rows() > 0 || position.0.is_empty() {
                    self.watermark.heard_from(split, now_ms());
                }
                self.source.heard.taken_now();
                // Even a chunk without rows moves the position: save it.
                self.unsaved_batches += 1;
                if let Some(b) = &self.buffered {
                    b.fetch_sub(1, Ordering::Relaxed);
                }
                if batch.num_rows() > 0 {
                    opened.get_or_insert(received);
                    rows += batch.num_rows();
                    pending.push(Pending {
                        split,
                        batch,
                        columns,
                    });
                }
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
                    self.connector_gone();
                    return;
                }
                Ok(Chunk::SplitGone(split)) => {
                    // Its rows received before are processed first, under it.
                    self.flush(&mut pending, opened.take());
                    rows = 0;
                    self.watermark.forget(split);
                    self.update_watermark();
                }
                Err(RecvTimeoutError::Timeout) if !took => {
                    self.resume_idle();
                    // A split gone idle may no longer hold the watermark back.
                    self.update_watermark();
                }
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
    fn flush(&mut self, pending: &mut Vec<Pending>, opened: Option<Instant>) {
        if pending.is_empty() {
            return;
        }
        // Chunks of a quarter of a batch or more go through one by one: joined, they
        // were copied once more on this thread (3% of all the work of q0 over the
        // generator at 2 cores, taken from the workers making the chunks). Each is then
        // a batch of its own: late rows are judged, and the batch latency observed,
        // per chunk.
        let max_rows = self.policy.max_rows();
        if pending.len() > 1 && pending.iter().all(|p| p.batch.num_rows() >= max_rows / 4) {
            for chunk in std::mem::take(pending) {
                self.flush(&mut vec![chunk], opened);
            }
            return;
        }
        // Which rows of the batch came from which split: (split, first row, rows).
        let mut splits = Vec::with_capacity(pending.len());
        let mut first = 0;
        for p in pending.iter() {
            splits.push((p.split, first, p.batch.num_rows()));
            first += p.batch.num_rows();
        }
        let columns = (pending.iter()).fold(Columns::ALL, |c, p| c.intersection(p.columns));
        let batch = if pending.len() == 1 {
            pending.remove(0).batch
        } else {
            match concat_batches(&self.source.schema, pending.iter().map(|p| &p.batch)) {
                Ok(b) => b,
                Err(e) => {
                    // Never dropped: each chunk goes through on its own.
                    tracing::error!(source = %self.source.name, error = %e, "cannot concatenate chunks: processing them one by one");
                    for chunk in std::mem::take(pending) {
                        self.flush(&mut vec![chunk], opened);
                    }
                    return;
                }
            }
        };
        pending.clear();
        self.received = opened;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = max_rows.min(batch.num_rows() - offset);
            let end = offset + len;
            // The splits' rows within this slice, relative to it.
            let parts: Vec<(u32, usize, usize)> = splits
                .iter()
                .filter(|(_, from, n)| *from < end && from + n > offset)
                .map(|&(split, from, n)| {
                    let start = from.max(offset);
                    (split, start - offset, (from + n).min(end) - start)
                })
                .collect();
            self.process(&batch.slice(offset, len), columns, &parts);
            offset = end;
        }
        if let Some(t) = opened {
            self.latency.observe(t.elapsed().as_secs_f64());
        }
        self.received = None;
    }

    /// Run every view over one batch, then move the watermark on (the order of
    /// [`drive::WatermarkedInputs::drive`]). `columns` were decoded: views that read
    /// others were created after these rows were decoded and do not see them. `splits`
    /// says which rows came from which split: (split, first row, rows).
    fn process(&mut self, batch: &RecordBatch, columns: Columns, splits: &[(u32, usize, usize)]) {
        let views = self.source.views.lock().clone();
        let before = self.watermark.current();
        for view in views.iter().filter(|v| v.is_join()) {
            self.align(view);
        }
        let source = &self.source.name;
        for view in views
            .iter()
            .filter(|v| columns.covers(v.columns_read_of(source)))
        {
            // A join's input is late by the join's watermark, not its own source's.
            let before = if view.is_join() {
                Some(view.combined_watermark.load(Ordering::Acquire)).filter(|&w| w != i64::MIN)
            } else {
                before
            };
            self.run_view(view, batch, columns, before);
        }
        self.source.batches.inc();
        self.unsaved_batches += 1;
        // A batch slower than the idle timeout, for the test of that.
        crate::failpoint::delay_point("pipeline-slow-batch", Duration::from_millis(1_500));
        crate::failpoint::delay_point("pipeline-slower-batch", Duration::from_secs(5));
        // Only now that every view has the batch: a join's other inputs may close its
        // windows as soon as this watermark is published.
        let now = now_ms();
        for &(split, first, rows) in splits {
            let part = if first == 0 && rows == batch.num_rows() {
                batch.clone()
            } else {
                batch.slice(first, rows)
            };
            self.watermark.observe(split, &part, now);
        }
        self.update_watermark_with(&views);
    }

    /// Move the source's watermark to where its splits allow now.
    fn update_watermark(&mut self) {
        let views = self.source.views.lock().clone();
        self.update_watermark_with(&views);
    }

    fn update_watermark_with(&mut self, views: &[Arc<ViewRuntime>]) {
        // Splits count as heard from when their chunks were sent, even those still
        // waiting in the channel (see source/heard.rs), or taken, whichever is later.
        let watermark = &mut self.watermark;
        self.source
            .heard
            .each_split(|split, ms| watermark.heard_from(split, ms));
        if let Some(w) = self.watermark.update(now_ms(), self.idle_timeout_ms) {
            self.advance(views, w);
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

    /// Publish the source's new watermark and close what it completes: a view over
    /// this source alone closes its windows now, a join as far as all its inputs allow.
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

    /// The watermark reached `watermark`: the view emits the windows it closes.
    fn close_windows(&self, view: &ViewRuntime, watermark: i64) {
        let mut out = Collector::default();
        let _order = view.in_order();
        let result = view.run_timed(0, |op| op.on_watermark(watermark, &mut out));
        if let Err(e) = &result {
            tracing::error!(view = %view.name, error = %e, "closing windows failed");
            *view.last_error.lock() = Some(e.to_string());
        }
        // Rows a view keeps hold only the columns it reads (a join's may be of any
        // input: all their columns are written, those not read empty).
        let decoded = match view.is_join() {
            true => Columns::ALL,
            false => view.columns_read_of(&self.source.name),
        };
        self.dead_letter_failed(view, &out.failed, decoded);
        // An aggregate over a join's closed groups updates the view's rows.
        deliver::publish(view, out, self.received);
    }

    /// The source ended: paused views are waited for, then a final watermark closes
    /// every window.
    fn finish(&mut self) {
        let views = self.drain_paused_views(true);
        if let Some(w) = self.watermark.finish() {
            self.advance(&views, w);
        }
        // The final state (the last watermark closed windows), for every checkpoint from
        // now on.
        self.unsaved_batches += 1;
        self.leave_final_snapshot();
        *self.source.state.lock() = SourceState::Finished;
        tracing::info!(source = %self.source.name, "source finished");
    }

    /// The connector dropped its end of the channel without ending the source: unless
    /// the source was told to stop, it failed (an error it does not retry, or a panic),
    /// which shows at once (and no join or checkpoint waits for it). What it read stays:
    /// paused views are waited for, and then a final snapshot at its last position
    /// serves every checkpoint from now on, as a finished source's does (so a join it
    /// feeds goes on checkpointing with its other inputs), but no final watermark closes
    /// its windows: a restart resumes the source where it stopped.
    fn connector_gone(&mut self) {
        if self.source.stop.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut failure = self.source.failure.lock();
            if failure.is_none() {
                let why = "the connector stopped without saying why (see the log)";
                tracing::error!(source = %self.source.name, error = why, "the source stopped");
                *failure = Some(why.to_string());
            }
        }
        *self.source.state.lock() = SourceState::Failed;
        self.drain_paused_views(false);
        self.unsaved_batches += 1;
        self.leave_final_snapshot();
    }

    /// The snapshot for every checkpoint from now on, once the source has ended: then
    /// joins and checkpoints count it as arrived (`ended`). Without checkpoints no one
    /// reads it, and copying every group of a large view would only delay `Finished`.
    fn leave_final_snapshot(&mut self) {
        let ended =
            !self.source.checkpointed || self.snapshot(self.source.checkpoint.requested(), true);
        if !ended {
            tracing::error!(source = %self.source.name, "no final snapshot of the ended source; checkpoints keep its last one, and a join it feeds takes none");
        }
        // Release: whoever sees `ended` sees the snapshot put before it.
        self.source.ended.store(ended, Ordering::Release);
    }

    /// Wait for each paused view to resume and process the batches it holds (or for the
    /// source to be stopped, or the view dropped): the source's views, for the rest of
    /// its end. `even_empty`: also wait for a paused view that holds nothing (a final
    /// watermark is to close its windows).
    fn drain_paused_views(&mut self, even_empty: bool) -> Vec<Arc<ViewRuntime>> {
        let views = self.source.views.lock().clone();
        for view in &views {
            while view.held_batches() > 0 || (even_empty && view.paused().is_some()) {
                let dropped = !(self.source.views.lock().iter()).any(|v| Arc::ptr_eq(v, view));
                if dropped {
                    break;
                }
                self.wait_until_resumed(view);
                if self.resume(view) || self.source.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        views
    }
}

/// Wall-clock time in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
