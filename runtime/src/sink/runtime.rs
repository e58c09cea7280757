//! A running sink: one thread per sink, so a slow or unreachable destination never
//! blocks the view. An epoch that fails is retried with backoff, whole and with the same
//! messages; the epoch last delivered (and a gathered delivery begun) is written to the
//! data dir so a restart goes on after it; and what the API shows of the sink.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use super::feed::{Change, SinkFeed};
use super::{EpochChanges, Gather, Sink};
use crate::Result;
use crate::durable::write_atomically;

/// What the API shows of a sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub view: String,
    pub connector: String,
    pub sql: String,
    /// `running`, `retrying` (the last delivery failed; see `error`), `failed` (it
    /// gave up; see `error`) or `stopped`.
    pub status: &'static str,
    pub error: Option<String>,
    /// The newest checkpoint epoch whose changes the destination holds.
    pub delivered_epoch: u64,
    /// The newest epoch a durable checkpoint holds (what could be delivered).
    pub durable_epoch: u64,
    /// Changed rows not delivered yet: the sink's lag in rows.
    pub rows_pending: usize,
    /// Bytes of them spilled to disk (past `max_pending_rows` in memory).
    pub spilled_bytes: u64,
    /// How long the oldest of them has waited: the sink's lag in time (at least the
    /// checkpoint interval's wait for durability).
    pub lag_seconds: f64,
    /// Messages (rows, for a table) written.
    pub messages: u64,
    /// Epochs delivered by this process.
    pub epochs_delivered: u64,
    pub failed_deliveries: u64,
    /// The newest delivery error, kept after the sink recovers from it.
    pub last_error: Option<String>,
    /// What the sink's connector warns of (a DynamoDB hot partition).
    pub warning: Option<String>,
}

/// The epoch a sink last delivered, as written in the data dir, and why it failed if
/// it did (a failed sink stays failed across restarts).
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    sql: String,
    /// The feed's lineage: progress of another lineage (a sink created afresh) does
    /// not apply.
    #[serde(default)]
    lineage: String,
    delivered_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    /// Epochs gathered into a delivery that has not ended yet (first, last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivering: Option<(u64, u64)>,
}

/// A running sink.
pub struct SinkRuntime {
    pub name: String,
    pub view: String,
    pub connector: String,
    pub sql: String,
    pub feed: Arc<SinkFeed>,
    stop: AtomicBool,
    progress: Mutex<(u64, Option<String>)>,
    /// The epochs of a gathered delivery begun and not ended (first, last).
    delivering: Mutex<Option<(u64, u64)>>,
    /// The newest delivery error, and epochs delivered by this process.
    last_error: Mutex<Option<String>>,
    warning: Mutex<Option<String>>,
    epochs_delivered: std::sync::atomic::AtomicU64,
    /// Why the sink gave up, once that is recorded in the data dir.
    failed: Mutex<Option<String>>,
    /// Where the delivered epoch is kept (none without a data dir, or once dropped: a
    /// delivery that ends after DROP SINK must not write it back).
    progress_file: Mutex<Option<PathBuf>>,
    messages: IntCounter,
    failures: IntCounter,
}

/// Retries of a failed delivery wait this long at first, doubling up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl SinkRuntime {
    /// A sink fed by `feed`. `progress_file` holds the epoch delivered before a restart
    /// (read when `resume`, else removed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        view: &str,
        connector: &str,
        sql: &str,
        feed: Arc<SinkFeed>,
        progress_file: Option<PathBuf>,
        resume: bool,
        (messages, failures): (IntCounter, IntCounter),
    ) -> Result<Self> {
        let mut delivered = 0;
        let mut failed = None;
        let mut delivering = None;
        if let Some(file) = &progress_file {
            let saved = std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Progress>(&b).ok());
            match saved {
                Some(p) if resume && p.sql == sql.trim() && p.lineage == feed.lineage => {
                    delivered = p.delivered_epoch;
                    delivering = p.delivering.filter(|(first, _)| *first > delivered);
                    if let Some(reason) = p.failed {
                        feed.fail(reason.clone());
                        failed = Some(reason);
                    }
                }
                _ if file.exists() => std::fs::remove_file(file)?,
                _ => {}
            }
        }
        // Epochs delivered before the restart are not written again.
        feed.delivered(delivered, true);
        // A failure the checkpoint held.
        failed = failed.or_else(|| feed.failed());
        Ok(Self {
            name: name.to_string(),
            view: view.to_string(),
            connector: connector.to_string(),
            sql: sql.trim().to_string(),
            feed,
            stop: AtomicBool::new(false),
            progress: Mutex::new((delivered, None)),
            delivering: Mutex::new(delivering),
            last_error: Mutex::new(None),
            warning: Mutex::new(None),
            epochs_delivered: std::sync::atomic::AtomicU64::new(0),
            failed: Mutex::new(failed),
            progress_file: Mutex::new(progress_file),
            messages,
            failures,
        })
    }

    /// Deliver on a thread of its own until stopped.
    pub(crate) fn spawn(self: &Arc<Self>, mut sink: Box<dyn Sink>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("sink-{}", self.name))
            .spawn(move || me.run(sink.as_mut()))?;
        Ok(())
    }

    fn run(&self, sink: &mut dyn Sink) {
        let mut backoff = FIRST_BACKOFF;
        while !self.stop.load(Ordering::Relaxed) {
            let delivered = self.progress.lock().0;
            if let Some(reason) = self.feed.failed() {
                tracing::error!(sink = %self.name, "the sink failed: {reason}");
                if let Err(e) = self.save(delivered, Some(reason.clone())) {
                    tracing::warn!(sink = %self.name, error = %e, "cannot record that the sink failed");
                }
                *self.failed.lock() = Some(reason);
                return;
            }
            let next = match sink.gather() {
                None => self
                    .feed
                    .next_ready(delivered, Duration::from_millis(200))
                    .map(|(epoch, changes)| (epoch, epoch, changes)),
                Some(gather) => self.gathered(delivered, gather),
            };
            let Some((first_epoch, epoch, changes)) = next else {
                // Nothing to write: the sink is as far as the checkpoints.
                if let Some(durable) = self.feed.settled() {
                    let mut progress = self.progress.lock();
                    progress.0 = progress.0.max(durable);
                }
                continue;
            };
            let to_write = EpochChanges {
                epoch,
                first_epoch,
                lineage: &self.feed.lineage,
                changes: &changes,
            };
            match sink.deliver(&to_write) {
                Ok(messages) => {
                    crate::failpoint::crash_point("sink-delivered");
                    self.messages.inc_by(messages);
                    *self.delivering.lock() = None;
                    let saved = self.save(epoch, None);
                    if let Err(e) = &saved {
                        // Delivered all the same: a restart writes this epoch again, with
                        // the same weir-epoch and weir-seq headers (so its spilled file,
                        // if any, stays for it).
                        tracing::warn!(sink = %self.name, error = %e, "cannot record the delivered epoch");
                    }
                    self.feed.delivered(epoch, saved.is_ok());
                    self.epochs_delivered.fetch_add(1, Ordering::Relaxed);
                    let warning = sink.warning();
                    let mut shown = self.warning.lock();
                    if let Some(w) = warning.as_ref().filter(|_| shown.is_none()) {
                        tracing::warn!(sink = %self.name, "{w}");
                    }
                    *shown = warning;
                    *self.progress.lock() = (epoch, None);
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.failures.inc();
                    tracing::warn!(sink = %self.name, epoch, error = %e, retry_in = ?backoff, "delivery failed");
                    *self.last_error.lock() = Some(e.clone());
                    self.progress.lock().1 = Some(e);
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The next gathered delivery after `delivered`: (first epoch, last epoch, their
    /// changes). The one a crash cut off, if any; else the durable epochs that wait,
    /// once the oldest has waited `max_wait` or they hold `max_rows` (noted in the data
    /// dir before they are handed out).
    fn gathered(&self, delivered: u64, gather: Gather) -> Option<(u64, u64, Vec<Change>)> {
        let planned = *self.delivering.lock();
        let (first, last) = match planned {
            Some(planned) => planned,
            None => {
                let ready = self.feed.ready_after(delivered);
                let Some(&(first, _, since)) = ready.first() else {
                    self.sleep(Duration::from_millis(200));
                    return None;
                };
                let (mut last, mut rows) = (first, 0);
                for &(epoch, n, _) in &ready {
                    (last, rows) = (epoch, rows + n);
                    if rows >= gather.max_rows {
                        break;
                    }
                }
                if rows < gather.max_rows && since.elapsed() < gather.max_wait {
                    self.sleep(Duration::from_millis(200));
                    return None;
                }
                if let Err(e) = self.save_delivering(delivered, (first, last)) {
                    tracing::warn!(sink = %self.name, error = %e, "cannot note the epochs to deliver");
                    self.sleep(Duration::from_millis(200));
                    return None;
                }
                *self.delivering.lock() = Some((first, last));
                (first, last)
            }
        };
        let Some(changes) = self.feed.changes_between(first, last) else {
            // Not durable yet (after a restart, before the restored checkpoint is).
            self.sleep(Duration::from_millis(200));
            return None;
        };
        Some((first, last, changes))
    }

    /// Sleep, but wake at once when stopped.
    fn sleep(&self, total: Duration) {
        let step = Duration::from_millis(50);
        let mut slept = Duration::ZERO;
        while slept < total && !self.stop.load(Ordering::Relaxed) && self.feed.failed().is_none() {
            std::thread::sleep(step);
            slept += step;
        }
    }

    fn save(&self, epoch: u64, failed: Option<String>) -> std::io::Result<()> {
        self.write_progress(Progress {
            sql: self.sql.clone(),
            lineage: self.feed.lineage.clone(),
            delivered_epoch: epoch,
            failed,
            delivering: None,
        })
    }

    fn save_delivering(&self, delivered: u64, epochs: (u64, u64)) -> std::io::Result<()> {
        self.write_progress(Progress {
            sql: self.sql.clone(),
            lineage: self.feed.lineage.clone(),
            delivered_epoch: delivered,
            failed: None,
            delivering: Some(epochs),
        })
    }

    fn write_progress(&self, progress: Progress) -> std::io::Result<()> {
        let file = self.progress_file.lock();
        let Some(file) = file.as_ref() else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec(&progress).map_err(std::io::Error::other)?;
        write_atomically(file, &bytes)
    }

    /// Stop the thread; with `forget`, the delivered epoch is removed too (DROP SINK).
    pub(crate) fn stop(&self, forget: bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.feed.close();
        if forget {
            if let Some(file) = self.progress_file.lock().take() {
                let _ = std::fs::remove_file(file);
            }
            self.feed.forget_spilled();
        }
    }

    pub fn status(&self) -> SinkStatus {
        let (delivered_epoch, error) = self.progress.lock().clone();
        // The feed's failure shows at once; the thread records it when it is free.
        let failed = self.failed.lock().clone().or_else(|| self.feed.failed());
        SinkStatus {
            name: self.name.clone(),
            view: self.view.clone(),
            connector: self.connector.clone(),
            sql: crate::options::redact_secrets(&self.sql),
            status: if self.stop.load(Ordering::Relaxed) {
                "stopped"
            } else if failed.is_some() {
                "failed"
            } else if error.is_some() {
                "retrying"
            } else {
                "running"
            },
            error: failed.or(error),
            delivered_epoch,
            durable_epoch: self.feed.durable_epoch(),
            rows_pending: self.feed.rows_pending(),
            spilled_bytes: self.feed.spilled_bytes(),
            lag_seconds: self.feed.lag().as_secs_f64(),
            messages: self.messages.get(),
            epochs_delivered: self.epochs_delivered.load(Ordering::Relaxed),
            failed_deliveries: self.failures.get(),
            last_error: self.last_error.lock().clone(),
            warning: self.warning.lock().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::sink::feed::{self, ChangeKind};

    /// Fails its first `failures` deliveries, noting when each attempt came.
    struct Flaky {
        failures: usize,
        attempts: Arc<Mutex<Vec<(Instant, u64)>>>,
    }

    impl Sink for Flaky {
        fn deliver(&mut self, e: &EpochChanges<'_>) -> std::result::Result<u64, String> {
            self.attempts.lock().push((Instant::now(), e.epoch));
            if self.failures > 0 {
                self.failures -= 1;
                return Err("the destination is down".into());
            }
            Ok(e.changes.iter().map(|c| c.rows.num_rows() as u64).sum())
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("c", "c").expect("counter")
    }

    #[test]
    fn a_failing_delivery_is_retried_with_growing_waits_and_then_recorded() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("sinks").join("k.json");
        let feed = Arc::new(SinkFeed::new("k", "CREATE SINK k", false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let flaky = Flaky {
            failures: 3,
            attempts: attempts.clone(),
        };
        let runtime = running(&feed, &file, false, Box::new(flaky));
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))])
            .expect("batch");
        feed.push(Change::new(rows, ChangeKind::Append));
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime.status().delivered_epoch < 1 && Instant::now() < deadline {
            if attempts.lock().len() == 2 {
                let s = runtime.status();
                assert_eq!((s.status, s.rows_pending), ("retrying", 2), "{s:?}");
                assert!(s.lag_seconds > 0.0, "the change waits: {s:?}");
                assert!(s.error.is_some_and(|e| e.contains("down")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        runtime.stop(false);
        let attempts = attempts.lock().clone();
        assert_eq!(attempts.len(), 4, "three failures, then the delivery");
        assert!(
            attempts.iter().all(|(_, epoch)| *epoch == 1),
            "the same epoch each time"
        );
        // Waits of at least 0.2 s, 0.4 s and 0.8 s: doubling (a busy machine may add
        // to each, so only the least is checked).
        let waits: Vec<Duration> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for (wait, least) in waits.iter().zip([200, 400, 800]) {
            assert!(*wait >= Duration::from_millis(least), "waited {waits:?}");
        }
        let s = runtime.status();
        assert_eq!(
            (s.delivered_epoch, s.failed_deliveries, s.messages),
            (1, 3, 2)
        );
        assert_eq!((s.epochs_delivered, s.lag_seconds), (1, 0.0), "{s:?}");
        assert!(
            s.error.is_none() && s.last_error.is_some_and(|e| e.contains("down")),
            "the error is gone, the last one kept"
        );
        let saved: Progress =
            serde_json::from_slice(&std::fs::read(&file).expect("progress")).expect("json");
        assert_eq!(saved.delivered_epoch, 1);
    }

    /// Each delivery: (first epoch, last epoch, rows).
    type Deliveries = Arc<Mutex<Vec<(u64, u64, usize)>>>;

    struct Gathering {
        gather: Gather,
        deliveries: Deliveries,
    }

    impl Sink for Gathering {
        fn deliver(&mut self, e: &EpochChanges<'_>) -> std::result::Result<u64, String> {
            let rows = e.changes.iter().map(|c| c.rows.num_rows()).sum::<usize>();
            self.deliveries.lock().push((e.first_epoch, e.epoch, rows));
            Ok(rows as u64)
        }

        fn gather(&self) -> Option<Gather> {
            Some(self.gather)
        }
    }

    fn ints(values: &[i64]) -> Change {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .expect("batch");
        Change::new(rows, ChangeKind::Append)
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "waited 10 s for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn gathering(
        feed: &Arc<SinkFeed>,
        file: &std::path::Path,
        resume: bool,
        gather: Gather,
    ) -> (Arc<SinkRuntime>, Deliveries) {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let sink = Gathering {
            gather,
            deliveries: deliveries.clone(),
        };
        (running(feed, file, resume, Box::new(sink)), deliveries)
    }

    /// `sink` running as sink `k` of view `v`, fed by `feed`, its progress in `file`.
    fn running(
        feed: &Arc<SinkFeed>,
        file: &std::path::Path,
        resume: bool,
        sink: Box<dyn Sink>,
    ) -> Arc<SinkRuntime> {
        let runtime = SinkRuntime::new(
            "k",
            "v",
            "fake",
            "CREATE SINK k",
            feed.clone(),
            Some(file.to_path_buf()),
            resume,
            (counter(), counter()),
        )
        .expect("runtime");
        let runtime = Arc::new(runtime);
        runtime.spawn(sink).expect("spawns");
        runtime
    }

    #[test]
    fn epochs_gather_until_their_rows_are_enough_and_are_delivered_together() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("k.json");
        let feed = Arc::new(SinkFeed::new("k", "CREATE SINK k", true));
        let gather = Gather {
            max_wait: Duration::from_secs(3600),
            max_rows: 4,
        };
        let (runtime, deliveries) = gathering(&feed, &file, false, gather);
        feed.push(ints(&[1]));
        feed.seal(1);
        feed.push(ints(&[2]));
        feed.seal(2);
        feed.durable(2);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            deliveries.lock().is_empty(),
            "2 rows of 4, waited less than an hour"
        );
        feed.push(ints(&[3, 4, 5]));
        feed.seal(3);
        feed.durable(3);
        wait_until("the delivery", || !deliveries.lock().is_empty());
        assert_eq!(*deliveries.lock(), [(1, 3, 5)]);
        wait_until("the progress", || runtime.status().delivered_epoch == 3);
        runtime.stop(false);
        let saved: Progress =
            serde_json::from_slice(&std::fs::read(&file).expect("progress")).expect("json");
        assert_eq!((saved.delivered_epoch, saved.delivering), (3, None));

        // Waited long enough, what waits goes, however few its rows.
        let feed = Arc::new(SinkFeed::new("k", "CREATE SINK k", true));
        let gather = Gather {
            max_wait: Duration::from_millis(300),
            max_rows: 1000,
        };
        let (runtime, deliveries) = gathering(&feed, &file, false, gather);
        feed.push(ints(&[1]));
        feed.seal(1);
        feed.durable(1);
        wait_until("the delivery", || !deliveries.lock().is_empty());
        assert_eq!(*deliveries.lock(), [(1, 1, 1)]);
        runtime.stop(false);
    }

    #[test]
    fn a_gathered_delivery_a_crash_cut_off_gathers_the_same_epochs_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("k.json");
        let outbox = feed::Outbox {
            sink: "k".into(),
            sql: "CREATE SINK k".into(),
            lineage: "0123".into(),
            epochs: (4..=6).map(|e| (e, vec![ints(&[e as i64])])).collect(),
            spilled: Vec::new(),
            failed: None,
        };
        let feed = Arc::new(SinkFeed::restored(outbox, 6));
        // Before the crash: epoch 3 delivered, and 4 and 5 were being written together.
        let progress = Progress {
            sql: "CREATE SINK k".into(),
            lineage: "0123".into(),
            delivered_epoch: 3,
            failed: None,
            delivering: Some((4, 5)),
        };
        std::fs::write(&file, serde_json::to_vec(&progress).expect("json")).expect("write");
        // One row is enough now: unplanned, each epoch would go alone.
        let gather = Gather {
            max_wait: Duration::from_secs(3600),
            max_rows: 1,
        };
        let (runtime, deliveries) = gathering(&feed, &file, true, gather);
        wait_until("two deliveries", || deliveries.lock().len() == 2);
        assert_eq!(*deliveries.lock(), [(4, 5, 2), (6, 6, 1)]);
        runtime.stop(false);
    }
}
