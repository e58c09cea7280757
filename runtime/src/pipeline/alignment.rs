//! Watermark alignment of a join's inputs. Each input is its own source with its own
//! pipeline thread; the join's watermark is the minimum of theirs (see
//! [`super::drive::join_watermark`]), and its windows close only as far as that. An
//! input far ahead in event time waits for the others, so the join's open windows do
//! not fill with rows the slow input is far from matching; an input idle for longer
//! than the idle timeout stops holding the others back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::drive::{JoinInput, join_watermark};
use super::{Pipeline, now_ms};
use crate::source::SourceState;
use crate::view::ViewRuntime;

/// How far (event time, ms) an input of a join may run ahead of the join's watermark
/// before its pipeline waits for the other inputs: without it, a fast input fills the
/// join's open windows with rows the slow input is far from matching.
const MAX_JOIN_SKEW_MS: i64 = 10_000;

impl Pipeline {
    /// Wait while this source is more than `MAX_JOIN_SKEW_MS` ahead of a join it feeds
    /// (watermark alignment); idle inputs stop counting as the wait goes on.
    pub(super) fn align(&self, view: &ViewRuntime) {
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
    pub(super) fn advance_join(&self, view: &ViewRuntime) {
        let now = now_ms();
        let inputs = view.inputs.iter().map(|input| {
            let Some(source) = input.upgrade() else {
                return JoinInput::Idle(None);
            };
            let w = source.current_watermark.load(Ordering::Acquire);
            // A failed input sends nothing more: it holds no other input back.
            let idle = match *source.state.lock() {
                SourceState::Running => now - source.heard.source_ms() > self.idle_timeout_ms,
                SourceState::Failed => true,
                _ => false,
            };
            match w {
                _ if idle => JoinInput::Idle((w != i64::MIN).then_some(w)),
                i64::MIN => JoinInput::Pending,
                w => JoinInput::At(w),
            }
        });
        // Several inputs' threads may get here at once: the join closes each watermark
        // once, by whoever moves it first.
        if let Some(w) = join_watermark(inputs)
            && view.combined_watermark.fetch_max(w, Ordering::AcqRel) < w
        {
            self.close_windows(view, w);
        }
    }
}
