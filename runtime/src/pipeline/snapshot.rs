//! Answering checkpoint requests. Between micro-batches every view of a source has
//! seen exactly the rows up to the source's position, so that is where the pipeline
//! leaves a snapshot of its position, watermark and views for the checkpoint to
//! collect. A source feeding a join meets the join's other inputs first
//! ([`crate::checkpoint::align`]): a join's state fits only positions of all its
//! inputs taken at one moment.

use std::time::Duration;

use super::Pipeline;
use crate::checkpoint::SourceSnapshot;
use crate::checkpoint::align::Arrival;

/// How long an input of a join waits at a checkpoint for the join's other inputs.
const JOIN_ARRIVAL_WAIT: Duration = Duration::from_secs(2);

impl Pipeline {
    /// Leave a snapshot of the source's position and views for checkpoint `epoch`.
    /// Nothing changed since the last one: that one answers again. A source that feeds
    /// a join is snapshotted with the join's other inputs; a `finished` one stays
    /// arrived for them. Whether a snapshot at this boundary is in place (or, for a
    /// finished join input, its arrival).
    pub(super) fn snapshot(&mut self, epoch: u64, finished: bool) -> bool {
        let slot = &self.source.checkpoint;
        // Previews are not kept.
        let views: Vec<_> = (self.source.views.lock().iter())
            .filter(|v| !v.preview)
            .cloned()
            .collect();
        // A paused view has not processed the batches it holds: snapshot later.
        if views.iter().any(|v| v.held_batches() > 0) {
            return false;
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
                return true;
            } else if !finished {
                tracing::warn!(source = %self.source.name, epoch, "the other inputs of a join did not reach checkpoint {epoch} in time; it keeps their previous snapshots");
                self.missed_epoch = epoch;
            }
            return finished;
        }
        let same_views = slot.latest().is_some_and(|s| {
            s.views.len() == views.len()
                && s.views.iter().zip(&views).all(|(a, b)| a.view_id == b.id)
        });
        // A sink created since has the view's rows to seal.
        let sinks_open = views.iter().any(|v| v.sink_changes_open());
        if self.unsaved_batches == 0 && same_views && !sinks_open {
            slot.put_unchanged(epoch);
            return true;
        }
        let mut snapshots = Vec::with_capacity(views.len());
        for view in &views {
            match view.checkpoint(epoch) {
                Ok(s) => snapshots.push(s),
                Err(e) => {
                    tracing::error!(view = %view.name, error = %e, "cannot snapshot the view; the checkpoint keeps its previous state");
                    return false;
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
        true
    }
}
