//! Pause and replay. A view whose plugin is marked failed is paused: it holds the
//! batches its source sends (with the watermark before each) instead of dead-lettering
//! them, and replays them in order once a fixed version is uploaded. Too many held
//! batches make the source wait, so nothing is lost and the backpressure reaches the
//! producers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;

use super::{MAX_HELD_BATCHES, Pipeline};
use crate::decode::Columns;
use crate::view::{Held, ViewRuntime};
use weir_sql::Collector;

impl Pipeline {
    /// Run one view over a batch. A paused view (a plugin it calls is failed) holds
    /// the batch instead; once it holds too many, the source waits for it, so nothing
    /// is lost and the backpressure reaches the producers.
    pub(super) fn run_view(
        &self,
        view: &Arc<ViewRuntime>,
        batch: &RecordBatch,
        decoded: Columns,
        before: Option<i64>,
    ) {
        let held = || Held {
            batch: batch.clone(),
            watermark_before: before,
            decoded,
        };
        if view.paused().is_some() {
            if view.hold(held()) >= MAX_HELD_BATCHES {
                self.wait_until_resumed(view);
                self.resume(view);
            }
            return;
        }
        if !self.resume(view) {
            // The plugin failed again while replaying: keep this batch too.
            view.hold(held());
            return;
        }
        let input = view.input_index(&self.source.name);
        let mut out = Collector::default();
        let _order = view.in_order();
        let result = view.run_timed(batch.num_rows(), |op| {
            op.process_input(input, batch, before, &mut out)
        });
        self.deliver(view, out, result, batch, decoded);
    }

    /// Replay what a paused view held, then bring it up to the current watermark.
    /// False when the view is (again) paused; what it has not replayed stays held.
    pub(super) fn resume(&self, view: &Arc<ViewRuntime>) -> bool {
        if view.paused().is_some() {
            return false;
        }
        let held = view.take_held();
        if held.is_empty() {
            return true;
        }
        tracing::info!(view = %view.name, batches = held.len(), "view resumed; replaying the batches it held");
        let mut held = held.into_iter();
        while let Some(next) = held.next() {
            if view.paused().is_some() {
                view.hold_front(std::iter::once(next).chain(held).collect());
                return false;
            }
            let Held {
                batch,
                watermark_before,
                decoded,
            } = next;
            let mut out = Collector::default();
            let _order = view.in_order();
            let result = view.run_timed(batch.num_rows(), |op| {
                op.process(&batch, watermark_before, &mut out)
            });
            self.deliver(view, out, result, &batch, decoded);
        }
        if view.paused().is_some() {
            return false;
        }
        if let Some(w) = self.watermark.current() {
            self.close_windows(view, w);
        }
        true
    }

    /// Block the source while `view` is paused (and still exists): a fixed upload or a
    /// DROP VIEW lets it go on.
    pub(super) fn wait_until_resumed(&self, view: &Arc<ViewRuntime>) {
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
}
