//! Taking checkpoints on a timer, and restoring the newest one at start.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Engine;
use crate::checkpoint::Position;
use crate::checkpoint::store::{CheckpointInfo, Restored};
use crate::pipeline::now_ms;
use crate::source::SourceState;
use crate::view::ViewRuntime;
use crate::{Error, Result};

/// How long a checkpoint waits for busy pipelines to reach a batch boundary; one that
/// does not answer in time contributes its previous snapshot.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// What `GET /api/v1/checkpoints` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointsStatus {
    pub interval_ms: u64,
    pub keep: usize,
    /// The checkpoint this process started from, if any.
    pub restored_from: Option<u64>,
    /// Damaged checkpoints skipped at start.
    pub warnings: Vec<String>,
    /// Why the last checkpoint failed, until one succeeds again.
    pub last_error: Option<String>,
    /// On disk, newest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// The last checkpoints this process took or tried, oldest first (at most
    /// [`HISTORY`]): for charts of size and duration.
    pub history: Vec<CheckpointAttempt>,
}

/// How many checkpoint attempts the history keeps.
pub const HISTORY: usize = 360;

/// One checkpoint this process took, or tried to.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointAttempt {
    pub epoch: u64,
    /// Milliseconds since the epoch, when it started.
    pub started_ms: i64,
    pub duration_ms: u64,
    /// Bytes written; 0 when it failed.
    pub bytes: u64,
    /// Why it was not written.
    pub error: Option<String>,
}

/// Restore state between Engine::new and the end of the catalog replay.
#[derive(Default)]
pub(super) struct Restoring {
    pub checkpoint: Option<Restored>,
    /// Set while the catalog replays: generators wait until every view is back.
    pub replaying: bool,
}

impl Engine {
    /// Take a checkpoint now: ask every pipeline for a snapshot at its next batch
    /// boundary, then write the latest snapshot of every source.
    pub fn checkpoint_now(&self) -> Result<CheckpointInfo> {
        let inner = &self.inner;
        if !inner.checkpoints.enabled() {
            return Err(Error::BadRequest("checkpoints need a data dir".into()));
        }
        let _one_at_a_time = inner.checkpoint_lock.lock();
        let started = Instant::now();
        let epoch = inner.next_epoch.fetch_add(1, Ordering::Relaxed);
        let sources: Vec<_> = inner.sources.iter().map(|s| s.clone()).collect();
        for s in &sources {
            s.checkpoint.request(epoch);
            seal_finished(s, epoch);
        }
        let deadline = started + ANSWER_WAIT;
        while Instant::now() < deadline
            && sources
                .iter()
                .any(|s| *s.state.lock() == SourceState::Running && !s.checkpoint.answered(epoch))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The inputs of a join put their snapshots together: read them whole.
        let snapshots: Vec<_> = inner.alignment.read_slots(|| {
            sources
                .iter()
                .filter_map(|s| s.checkpoint.latest())
                .collect()
        });
        // What a checkpoint names must be durable first (an http source's log).
        for s in &sources {
            if let Err(e) = s.input.before_checkpoint() {
                let reason = format!(
                    "checkpoint {epoch} not written: the log of {} cannot be synced: {e}",
                    s.name
                );
                inner.metrics.checkpoint_failures.inc();
                *inner.checkpoint_error.lock() = Some(reason.clone());
                return Err(Error::Unavailable(reason));
            }
        }
        let plugins = inner
            .plugins
            .all()
            .iter()
            .map(|p| (p.name.clone(), p.current().version))
            .collect();
        let written = inner.checkpoints.write(
            epoch,
            started,
            &snapshots,
            inner.catalog_file.entries(),
            plugins,
        );
        // A full or read-only data dir is the operator's to fix: say so, and retry later.
        let written = written.map_err(|e| match e {
            Error::Io(io) => Error::Unavailable(format!(
                "checkpoint {epoch} could not be written to the data dir ({io}); the previous checkpoints are intact"
            )),
            other => other,
        });
        let m = &inner.metrics;
        let attempt = CheckpointAttempt {
            epoch,
            started_ms: now_ms() - started.elapsed().as_millis() as i64,
            duration_ms: started.elapsed().as_millis() as u64,
            bytes: written.as_ref().map_or(0, |info| info.bytes),
            error: written.as_ref().err().map(|e| e.to_string()),
        };
        {
            let mut history = inner.checkpoint_history.lock();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(attempt);
        }
        match &written {
            Ok(info) => {
                m.checkpoints.inc();
                m.checkpoint_bytes.set(info.bytes as i64);
                m.checkpoint_duration
                    .observe(started.elapsed().as_secs_f64());
                *inner.checkpoint_error.lock() = None;
                tracing::debug!(epoch, bytes = info.bytes, "checkpoint written");
                // Logs for every checkpoint a restore could use, not only the kept ones.
                self.prune_logs(&inner.checkpoints.on_disk());
                // Durable now: connectors may acknowledge these positions upstream.
                for (source, snapshot) in sources.iter().filter_map(|s| {
                    let snapshot = snapshots.iter().find(|n| n.name == s.name)?;
                    Some((s, snapshot))
                }) {
                    if snapshot.sql == source.sql {
                        source.input.checkpoint_durable(&snapshot.position);
                    }
                }
                for snapshot in &snapshots {
                    for v in &snapshot.views {
                        if let Some(view) = inner.views.get(&v.name).map(|v| v.clone())
                            && view.id == v.view_id
                        {
                            view.commit(
                                snapshot.epoch,
                                v.rows.iter().map(|(_, b)| b.clone()).collect(),
                            );
                        }
                    }
                }
            }
            Err(e) => {
                m.checkpoint_failures.inc();
                let reason = e.to_string();
                tracing::error!("{reason}");
                *inner.checkpoint_error.lock() = Some(reason);
            }
        }
        written
    }

    /// Checkpoints on disk and how the last ones went.
    pub fn checkpoints(&self) -> CheckpointsStatus {
        let inner = &self.inner;
        let config = inner.config.checkpoints;
        CheckpointsStatus {
            interval_ms: config.interval.as_millis() as u64,
            keep: config.keep,
            restored_from: *inner.restored_from.lock(),
            warnings: inner.checkpoints.warnings(),
            last_error: inner.checkpoint_error.lock().clone(),
            checkpoints: inner.checkpoints.list(),
            history: inner.checkpoint_history.lock().iter().cloned().collect(),
        }
    }

    /// Take a checkpoint every interval, on a thread of its own, until the engine is
    /// dropped or shut down.
    pub(super) fn start_checkpoints(&self) {
        if !self.inner.checkpoints.enabled()
            || self.inner.checkpoints_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let interval = self
            .inner
            .config
            .checkpoints
            .interval
            .max(Duration::from_millis(100));
        let spawned = std::thread::Builder::new()
            .name("checkpoints".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.shut_down.load(Ordering::Relaxed) {
                        return;
                    }
                    let _ = Engine { inner }.checkpoint_now();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the checkpoint thread; no checkpoints will be taken");
        }
    }

    /// Where a source created during the catalog replay resumes: its checkpointed
    /// position and watermark, if the checkpoint has it under the same statement.
    pub(super) fn restored_position(
        &self,
        name: &str,
        sql: &str,
    ) -> Option<(Position, Option<i64>)> {
        let mut restoring = self.inner.restoring.lock();
        let checkpoint = restoring.checkpoint.as_mut()?;
        let source = checkpoint.sources.get(name)?;
        if source.sql != sql.trim() {
            tracing::warn!(source = %name, "the source's statement changed since the checkpoint; it starts from the beginning");
            checkpoint.sources.remove(name);
            return None;
        }
        Some((source.position.clone(), source.watermark))
    }

    /// The checkpoint's entry for `source` does not apply (nor its views').
    pub(super) fn forget_restored(&self, source: &str) {
        if let Some(c) = self.inner.restoring.lock().checkpoint.as_mut() {
            c.sources.remove(source);
        }
    }

    /// After the catalog is restored: queue again what sources accepted after the
    /// checkpoint (http sources' logs), before any new request is served.
    pub(super) async fn replay_logs(&self) {
        let sources: Vec<_> = self.inner.sources.iter().map(|s| s.clone()).collect();
        for source in sources {
            let s = source.clone();
            match tokio::task::spawn_blocking(move || s.input.replay(&s)).await {
                Ok(Ok(None)) => {}
                Ok(Ok(Some((from, records)))) => {
                    tracing::info!(source = %source.name, from, records, "write-ahead log replayed")
                }
                Ok(Err(e)) => {
                    tracing::error!(source = %source.name, error = %e, "cannot replay the write-ahead log")
                }
                Err(e) => {
                    tracing::error!(source = %source.name, error = %e, "write-ahead log replay failed")
                }
            }
        }
    }

    /// Let sources drop what no kept checkpoint needs (old log segments).
    fn prune_logs(&self, kept: &[CheckpointInfo]) {
        for source in self.inner.sources.iter() {
            let positions: Vec<Option<&Position>> = kept
                .iter()
                .map(|c| {
                    c.sources
                        .iter()
                        .find(|s| s.name == source.name)
                        .map(|s| &s.position)
                })
                .collect();
            source.input.checkpoints_kept(&source.name, &positions);
        }
    }

    /// Give a view created during the catalog replay its checkpointed state and rows.
    pub(super) fn restore_view(&self, view: &ViewRuntime) {
        let mut restoring = self.inner.restoring.lock();
        // A join's state holds rows of every input: it applies only if every input
        // resumes where the checkpoint left it.
        let inputs_restored = restoring.checkpoint.as_ref().is_some_and(|c| {
            view.input_names
                .iter()
                .all(|input| c.sources.contains_key(input))
        });
        let epoch = restoring.checkpoint.as_ref().map_or(0, |c| c.epoch);
        let Some(saved) = restoring
            .checkpoint
            .as_mut()
            .and_then(|c| c.sources.get_mut(&view.source))
            .and_then(|s| s.views.remove(&view.name))
        else {
            return;
        };
        if !inputs_restored {
            tracing::warn!(view = %view.name, "an input of the join starts over (its statement changed since the checkpoint); the join starts empty");
            return;
        }
        if saved.sql != view.sql {
            tracing::warn!(view = %view.name, "the view's statement changed since the checkpoint; it starts empty");
            return;
        }
        // The sinks of the view take these when they are created again.
        view.restore_outboxes(epoch, saved.outboxes);
        match view.restore(&saved.state, saved.rows) {
            Ok(()) => tracing::info!(view = %view.name, "view state restored from the checkpoint"),
            Err(e) => {
                tracing::error!(view = %view.name, error = %e, "the checkpointed state does not fit the view; it starts empty");
                *view.last_error.lock() =
                    Some(format!("state not restored from the checkpoint: {e}"));
            }
        }
    }

    /// A checkpoint soon after a catalog change, so that a restart matches objects to
    /// the checkpoint as they are now: a view created since the last checkpoint would
    /// otherwise resume from an older position of its source and see rows it never saw,
    /// and a dropped and re-created object could take its predecessor's state. In the
    /// background, so DDL answers at once (views created one after another should all
    /// see a source's first rows); skipped while the catalog replays. A failure shows
    /// in the checkpoint status.
    pub(super) fn checkpoint_after_ddl(&self) {
        if !self.inner.checkpoints.enabled() || self.replaying() {
            return;
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.checkpoint_now());
    }

    /// Whether the catalog is being replayed (generators wait for every view).
    pub(super) fn replaying(&self) -> bool {
        self.inner.restoring.lock().replaying
    }
}

/// A finished (or failed) source has no pipeline left to answer: a sink created on one
/// of its views since has the view's rows sealed here, so that a checkpoint holds them.
fn seal_finished(source: &crate::source::SourceRuntime, epoch: u64) {
    // A join's views are snapshotted with its other inputs, not here.
    let views: Vec<_> = (source.views.lock().iter())
        .filter(|v| !v.preview)
        .cloned()
        .collect();
    if !source.ended.load(Ordering::Acquire)
        || views.iter().any(|v| v.is_join())
        || !views.iter().any(|v| v.sink_changes_open())
    {
        return;
    }
    let Some(latest) = source.checkpoint.latest() else {
        return;
    };
    match views.iter().map(|v| v.checkpoint(epoch)).collect() {
        Ok(views) => source.checkpoint.put(
            epoch,
            crate::checkpoint::SourceSnapshot {
                epoch,
                views,
                ..(*latest).clone()
            },
        ),
        Err(e) => {
            tracing::error!(source = %source.name, error = %e, "cannot snapshot the views of a finished source")
        }
    }
}
