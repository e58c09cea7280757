//! A sink's feed: the changes of its view, sealed under the epoch of the checkpoint
//! that takes them (the prepare step) and handed to the sink only once that checkpoint
//! is durable (the commit step). Until the sink has delivered an epoch, its changes
//! stay here and in every checkpoint, so a crash at any moment loses none: a restart
//! hands the sink the same epochs with the same changes again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use parking_lot::{Condvar, Mutex};

/// What a batch of changes does to the view's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// New rows.
    Append,
    /// Rows that replace the view's rows of the same key (an updating aggregate's
    /// groups, a window emitted again under allowed lateness).
    Update,
    /// The view's rows when the sink was created.
    Snapshot,
}

impl ChangeKind {
    /// As written in checkpoints.
    pub fn code(self) -> u8 {
        match self {
            Self::Append => 0,
            Self::Update => 1,
            Self::Snapshot => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Append,
            1 => Self::Update,
            2 => Self::Snapshot,
            _ => return None,
        })
    }
}

/// One batch of a view's changes.
#[derive(Debug, Clone)]
pub struct Change {
    pub rows: RecordBatch,
    pub kind: ChangeKind,
    /// For an update: the rows the view showed before for the same groups or window.
    /// A row here without a row of the same key in `rows` has left the view.
    pub replaced: Option<RecordBatch>,
}

impl Change {
    pub fn new(rows: RecordBatch, kind: ChangeKind) -> Self {
        Self {
            rows,
            kind,
            replaced: None,
        }
    }

    /// Rows in the change, new and replaced.
    pub fn len(&self) -> usize {
        self.rows.num_rows() + self.replaced.as_ref().map_or(0, RecordBatch::num_rows)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The changes of one epoch.
pub type Epoch = (u64, Vec<Change>);

/// What a checkpoint holds for one sink: the changes it has not delivered.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub sink: String,
    /// The sink's statement: a sink dropped and created again under its name is
    /// another sink, which does not take these.
    pub sql: String,
    /// The sink's lineage (see [`SinkFeed::lineage`]).
    pub lineage: String,
    pub epochs: Vec<Epoch>,
    /// Why the sink gave up, if it did: it stays failed after a restart.
    pub failed: Option<String>,
}

/// Where a view leaves its changes for one sink.
#[derive(Debug)]
pub struct SinkFeed {
    pub sink: String,
    pub sql: String,
    /// A random id fixed when the sink is created and kept by its checkpoints: epochs
    /// restart from 1 in another data dir, so (lineage, epoch, seq) is what names a
    /// message for good, and what a destination's record of delivered epochs is
    /// checked against.
    pub lineage: String,
    /// Without checkpoints every change is its own epoch, durable at once.
    checkpointed: bool,
    state: Mutex<FeedState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct FeedState {
    /// Changes since the last checkpoint's snapshot.
    open: Vec<Change>,
    /// Changes sealed under their epoch and not delivered yet, oldest first.
    sealed: VecDeque<Epoch>,
    /// When the first change of each sealed epoch came (for epochs a checkpoint gave
    /// back: when it was restored), and of the open changes: what the sink's lag in
    /// time is measured from.
    sealed_since: VecDeque<(u64, Instant)>,
    open_since: Option<Instant>,
    /// The newest epoch a written checkpoint holds.
    durable: u64,
    /// The last epoch numbered without checkpoints.
    counter: u64,
    rows_pending: usize,
    /// Past this many pending rows the feed fails rather than grow without end.
    limit: Option<usize>,
    /// Why the feed has failed; it holds and takes nothing more.
    failed: Option<String>,
    closed: bool,
}

impl SinkFeed {
    pub fn new(sink: &str, sql: &str, checkpointed: bool) -> Self {
        Self {
            sink: sink.to_string(),
            sql: sql.trim().to_string(),
            lineage: new_lineage(),
            checkpointed,
            state: Mutex::new(FeedState::default()),
            ready: Condvar::new(),
        }
    }

    /// A feed that continues from a checkpoint: `outbox` is what it held, `durable` the
    /// checkpoint's epoch.
    pub fn restored(outbox: Outbox, durable: u64) -> Self {
        let Outbox {
            sink,
            sql,
            lineage,
            epochs,
            failed,
        } = outbox;
        let mut feed = Self::new(&sink, &sql, true);
        if !lineage.is_empty() {
            feed.lineage = lineage;
        }
        {
            let mut s = feed.state.lock();
            s.rows_pending = epochs.iter().map(|(_, c)| rows(c)).sum();
            let now = Instant::now();
            s.sealed_since = epochs.iter().map(|(e, _)| (*e, now)).collect();
            s.sealed = epochs.into();
            s.durable = durable;
        }
        if let Some(reason) = failed {
            feed.fail(reason);
        }
        feed
    }

    /// Fail once more than `limit` rows wait for the sink (`None`: never).
    pub(crate) fn limit_pending(&self, limit: Option<usize>) {
        self.state.lock().limit = limit;
    }

    /// Give up: drop every change held, take no more, and say why from now on.
    pub fn fail(&self, reason: String) {
        let mut s = self.state.lock();
        s.open.clear();
        s.sealed.clear();
        s.sealed_since.clear();
        s.open_since = None;
        s.rows_pending = 0;
        s.failed.get_or_insert(reason);
        self.ready.notify_all();
    }

    /// Why the feed has failed, if it has.
    pub fn failed(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    /// A change of the view.
    pub(crate) fn push(&self, change: Change) {
        if change.is_empty() {
            return;
        }
        let mut s = self.state.lock();
        if s.failed.is_some() {
            return;
        }
        s.rows_pending += change.len();
        if let Some(limit) = s.limit.filter(|l| s.rows_pending > *l) {
            drop(s);
            self.fail(format!(
                "more than {limit} changed rows waited for the sink (max_pending_rows): it \
                 failed and let them go rather than hold more; fix the destination, then DROP \
                 SINK and CREATE it again (a new sink starts with the view's rows)"
            ));
            return;
        }
        if self.checkpointed {
            s.open_since.get_or_insert_with(Instant::now);
            s.open.push(change);
        } else {
            s.counter += 1;
            let epoch = s.counter;
            s.sealed_since.push_back((epoch, Instant::now()));
            s.sealed.push_back((epoch, vec![change]));
            s.durable = epoch;
            self.ready.notify_all();
        }
    }

    /// Whether changes wait for the next checkpoint.
    pub(crate) fn has_open(&self) -> bool {
        !self.state.lock().open.is_empty()
    }

    /// Prepare: seal the open changes under `epoch`; returns every epoch not delivered
    /// yet, for the checkpoint to hold.
    pub(crate) fn seal(&self, epoch: u64) -> Outbox {
        let mut s = self.state.lock();
        // An epoch once sealed or durable is never added to (it may be written already):
        // a snapshot under such an epoch (a finishing source's last one, the second
        // input of a join) leaves the changes open for the next checkpoint's epoch.
        let fresh = epoch > s.durable && s.sealed.back().is_none_or(|(last, _)| *last < epoch);
        if fresh && !s.open.is_empty() {
            let open = std::mem::take(&mut s.open);
            let since = s.open_since.take().unwrap_or_else(Instant::now);
            s.sealed_since.push_back((epoch, since));
            s.sealed.push_back((epoch, open));
        }
        Outbox {
            sink: self.sink.clone(),
            sql: self.sql.clone(),
            lineage: self.lineage.clone(),
            epochs: s.sealed.iter().cloned().collect(),
            failed: s.failed.clone(),
        }
    }

    /// Commit: checkpoint `epoch` is on disk, so the epochs up to it may be delivered.
    pub(crate) fn durable(&self, epoch: u64) {
        let mut s = self.state.lock();
        if epoch > s.durable {
            s.durable = epoch;
            self.ready.notify_all();
        }
    }

    /// The oldest durable epoch after `delivered`, waiting up to `wait` for one.
    pub fn next_ready(&self, delivered: u64, wait: Duration) -> Option<Epoch> {
        let mut s = self.state.lock();
        loop {
            let durable = s.durable;
            if let Some(e) = s
                .sealed
                .iter()
                .find(|(e, _)| *e > delivered && *e <= durable)
            {
                return Some(e.clone());
            }
            if s.closed || s.failed.is_some() || self.ready.wait_for(&mut s, wait).timed_out() {
                return None;
            }
        }
    }

    /// The durable epoch, when no change up to it waits for the sink: a sink with
    /// nothing to write is caught up with it.
    pub fn settled(&self) -> Option<u64> {
        let s = self.state.lock();
        let durable = s.durable;
        // A failed feed let its changes go: they were not written.
        (s.failed.is_none() && !s.sealed.iter().any(|(e, _)| *e <= durable)).then_some(durable)
    }

    /// The sink holds `epoch` and every one before it: forget them.
    pub fn delivered(&self, epoch: u64) {
        let mut s = self.state.lock();
        while s.sealed.front().is_some_and(|(e, _)| *e <= epoch) {
            if let Some((_, changes)) = s.sealed.pop_front() {
                s.rows_pending -= rows(&changes);
            }
        }
        while s.sealed_since.front().is_some_and(|(e, _)| *e <= epoch) {
            s.sealed_since.pop_front();
        }
    }

    /// How long the oldest change the sink has not delivered has waited (zero when
    /// none waits): the sink's lag in time.
    pub fn lag(&self) -> Duration {
        let s = self.state.lock();
        let oldest = s.sealed_since.front().map(|(_, at)| *at).or(s.open_since);
        oldest.map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Rows the sink has not delivered yet (sealed or not).
    pub fn rows_pending(&self) -> usize {
        self.state.lock().rows_pending
    }

    /// The newest epoch a written checkpoint holds.
    pub fn durable_epoch(&self) -> u64 {
        self.state.lock().durable
    }

    /// Wake the sink's thread to stop.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

/// 16 hex digits, from the clock, the process and a counter through std's randomly
/// keyed hasher: distinct for every sink ever created, with no extra dependency.
fn new_lineage() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

fn rows(changes: &[Change]) -> usize {
    changes.iter().map(Change::len).sum()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn change(values: &[i64]) -> Change {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        Change::new(
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
                .expect("batch"),
            ChangeKind::Append,
        )
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn changes_reach_the_sink_only_once_their_checkpoint_is_durable() {
        let feed = SinkFeed::new("k", "CREATE SINK k", true);
        feed.push(change(&[1, 2]));
        assert!(feed.has_open());
        assert!(feed.next_ready(0, NOW).is_none(), "not sealed");
        let held = feed.seal(3);
        assert_eq!(held.epochs.len(), 1);
        assert!(!feed.has_open());
        assert!(feed.next_ready(0, NOW).is_none(), "sealed, not durable");
        feed.push(change(&[3]));
        feed.seal(4);
        feed.durable(3);
        let (epoch, changes) = feed.next_ready(0, NOW).expect("epoch 3 is durable");
        assert_eq!((epoch, changes[0].rows.num_rows()), (3, 2));
        assert!(feed.next_ready(3, NOW).is_none(), "epoch 4 is not durable");
        // Until delivered, every checkpoint holds both epochs.
        assert_eq!(feed.seal(5).epochs.len(), 2);
        feed.delivered(3);
        assert_eq!(feed.rows_pending(), 1);
        assert_eq!(
            feed.seal(6)
                .epochs
                .iter()
                .map(|(e, _)| *e)
                .collect::<Vec<_>>(),
            [4]
        );
        feed.durable(5);
        assert_eq!(feed.settled(), None, "epoch 4 waits");
        assert_eq!(feed.next_ready(3, NOW).expect("epoch 4").0, 4);
        feed.delivered(4);
        assert_eq!(feed.settled(), Some(5));
    }

    #[test]
    fn an_epoch_once_sealed_or_durable_is_never_added_to() {
        let feed = SinkFeed::new("k", "CREATE SINK k", true);
        feed.push(change(&[1]));
        feed.seal(3);
        feed.push(change(&[2]));
        assert_eq!(feed.seal(3).epochs.len(), 1, "epoch 3 is sealed: 2 waits");
        feed.durable(3);
        assert_eq!(
            feed.seal(2).epochs.len(),
            1,
            "an older epoch: 2 still waits"
        );
        assert!(feed.has_open());
        let sealed = feed.seal(4);
        assert_eq!(
            sealed
                .epochs
                .iter()
                .map(|(e, c)| (*e, c.len()))
                .collect::<Vec<_>>(),
            [(3, 1), (4, 1)]
        );
    }

    #[test]
    fn a_restored_feed_hands_out_its_epochs_again() {
        let feed = SinkFeed::restored(
            Outbox {
                sink: "k".into(),
                sql: "CREATE SINK k".into(),
                lineage: "0123".into(),
                epochs: vec![(6, vec![change(&[1])]), (7, vec![change(&[2])])],
                failed: None,
            },
            7,
        );
        assert_eq!(feed.next_ready(6, NOW).expect("epoch 7").0, 7);
        assert_eq!(feed.next_ready(0, NOW).expect("epoch 6").0, 6);
        assert_eq!(feed.rows_pending(), 2);
        assert_eq!(feed.lineage, "0123", "the lineage is the checkpoint's");
        assert_ne!(
            SinkFeed::new("k", "CREATE SINK k", true).lineage,
            SinkFeed::new("k", "CREATE SINK k", true).lineage,
            "a new sink has a lineage of its own"
        );
    }

    #[test]
    fn a_failure_is_held_by_the_checkpoint_and_comes_back_with_it() {
        let feed = SinkFeed::new("k", "CREATE SINK k", true);
        feed.push(change(&[1]));
        feed.seal(1);
        feed.durable(1);
        feed.fail("gave up".into());
        assert_eq!(feed.settled(), None, "dropped changes were not delivered");
        let held = feed.seal(2);
        assert!(held.epochs.is_empty());
        let restored = SinkFeed::restored(held, 2);
        assert_eq!(restored.failed().as_deref(), Some("gave up"));
        assert_eq!(restored.lineage, feed.lineage);
    }

    #[test]
    fn a_feed_over_its_limit_fails_and_lets_its_changes_go() {
        let feed = SinkFeed::new("k", "CREATE SINK k", true);
        feed.limit_pending(Some(3));
        feed.push(change(&[1, 2]));
        feed.seal(1);
        feed.push(change(&[3]));
        assert!(feed.failed().is_none(), "3 rows are within the limit");
        feed.push(change(&[4]));
        let reason = feed.failed().expect("4 rows are over it");
        assert_eq!(feed.seal(2).failed.as_deref(), Some(reason.as_str()));
        assert!(reason.contains("max_pending_rows"), "{reason}");
        assert_eq!(feed.rows_pending(), 0);
        assert!(
            feed.seal(2).epochs.is_empty(),
            "checkpoints hold nothing for it"
        );
        feed.durable(2);
        assert!(feed.next_ready(0, NOW).is_none());
        feed.push(change(&[5]));
        assert_eq!(feed.rows_pending(), 0, "and it takes nothing more");
    }

    #[test]
    fn without_checkpoints_each_change_is_durable_at_once() {
        let feed = SinkFeed::new("k", "CREATE SINK k", false);
        feed.push(change(&[1]));
        feed.push(change(&[]));
        feed.push(change(&[2]));
        assert_eq!(feed.next_ready(0, NOW).expect("first").0, 1);
        assert_eq!(feed.next_ready(1, NOW).expect("second").0, 2);
        assert!(feed.next_ready(2, NOW).is_none());
    }
}
