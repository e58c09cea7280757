//! A sink's feed: the changes of its view, sealed under the epoch of the checkpoint
//! that takes them (the prepare step) and handed to the sink only once that checkpoint
//! is durable (the commit step). Until the sink has delivered an epoch, its changes
//! stay here and in every checkpoint, so a crash at any moment loses none: a restart
//! hands the sink the same epochs with the same changes again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::spill::{self, SpillLimit, Spilled};

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

    /// Changes as the batches a file holds, each with a code: the change's kind, or
    /// [`REPLACED`] for the replaced rows of the change before it.
    pub(crate) fn code_batches(
        changes: &[Change],
    ) -> impl Iterator<Item = (u8, &RecordBatch)> + Clone {
        changes.iter().flat_map(|c| {
            std::iter::once((c.kind.code(), &c.rows))
                .chain(c.replaced.iter().map(|r| (REPLACED, r)))
        })
    }

    /// The changes of [`Change::code_batches`] again.
    pub(crate) fn from_coded(
        coded: impl IntoIterator<Item = (u8, RecordBatch)>,
    ) -> Result<Vec<Change>, String> {
        let mut changes: Vec<Change> = Vec::new();
        for (code, rows) in coded {
            if code == REPLACED {
                match changes.last_mut() {
                    Some(change) if change.replaced.is_none() => change.replaced = Some(rows),
                    _ => return Err("replaced rows without their change".into()),
                }
                continue;
            }
            let kind =
                ChangeKind::from_code(code).ok_or_else(|| format!("unknown change kind {code}"))?;
            changes.push(Change::new(rows, kind));
        }
        Ok(changes)
    }
}

/// The code of a batch that is the `replaced` rows of the change before it.
pub(crate) const REPLACED: u8 = u8::MAX;

/// The changes of one epoch.
pub type Epoch = (u64, Vec<Change>);

/// Where a sealed epoch's changes are.
#[derive(Debug, Clone)]
enum Held {
    Memory(Vec<Change>),
    Spilled(Spilled),
}

impl Held {
    fn rows(&self) -> usize {
        match self {
            Held::Memory(changes) => rows(changes),
            Held::Spilled(s) => s.rows,
        }
    }
}

/// An epoch sealed and not delivered yet.
#[derive(Debug)]
struct Sealed {
    epoch: u64,
    held: Held,
    /// When its first change came (for epochs a checkpoint gave back: when it was
    /// restored): what the sink's lag in time is measured from.
    since: Instant,
}

/// What a checkpoint holds for one sink: the changes it has not delivered.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub sink: String,
    /// The sink's statement: a sink dropped and created again under its name is
    /// another sink, which does not take these.
    pub sql: String,
    /// The sink's lineage (see [`SinkFeed::lineage`]).
    pub lineage: String,
    /// Epochs held in memory, oldest first.
    pub epochs: Vec<Epoch>,
    /// Epochs spilled to files, oldest first.
    pub spilled: Vec<(u64, Spilled)>,
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
    /// When the first open change came.
    open_since: Option<Instant>,
    /// Changes sealed under their epoch and not delivered yet, oldest first.
    sealed: VecDeque<Sealed>,
    /// The newest epoch a written checkpoint holds.
    durable: u64,
    /// The last epoch numbered without checkpoints.
    counter: u64,
    /// Rows not delivered, and of them the ones held in memory.
    rows_pending: usize,
    rows_in_memory: usize,
    spilled_bytes: u64,
    /// Past this many rows in memory, sealed epochs are spilled (with `spill`), or
    /// the feed fails rather than grow without end.
    limit: Option<usize>,
    spill: Option<SpillLimit>,
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
            spilled,
            failed,
        } = outbox;
        let mut feed = Self::new(&sink, &sql, true);
        if !lineage.is_empty() {
            feed.lineage = lineage;
        }
        {
            let mut s = feed.state.lock();
            let since = Instant::now();
            let mut sealed: Vec<Sealed> = epochs
                .into_iter()
                .map(|(epoch, c)| (epoch, Held::Memory(c)))
                .chain(spilled.into_iter().map(|(e, f)| (e, Held::Spilled(f))))
                .map(|(epoch, held)| Sealed { epoch, held, since })
                .collect();
            sealed.sort_by_key(|e| e.epoch);
            for e in &sealed {
                s.rows_pending += e.held.rows();
                match &e.held {
                    Held::Memory(c) => s.rows_in_memory += rows(c),
                    Held::Spilled(f) => s.spilled_bytes += f.bytes,
                }
            }
            s.sealed = sealed.into();
            s.durable = durable;
        }
        if let Some(reason) = failed {
            feed.fail(reason);
        }
        feed
    }

    /// Hold at most `limit` rows in memory (`None`: no limit): past it, spill sealed
    /// epochs to `spill`'s directory, and fail once that holds more than its bytes;
    /// without `spill`, fail at once. Files in the directory that no epoch held here
    /// names are left from before a crash, and removed.
    pub(crate) fn limit_pending(&self, limit: Option<usize>, spill: Option<SpillLimit>) {
        let mut s = self.state.lock();
        if let Some(spill) = &spill {
            let keep: Vec<&std::path::Path> = s
                .sealed
                .iter()
                .filter_map(|e| match &e.held {
                    Held::Spilled(f) => Some(f.file.as_path()),
                    Held::Memory(_) => None,
                })
                .collect();
            spill::remove_others(&spill.dir, &keep);
        }
        s.limit = limit;
        s.spill = spill;
    }

    /// Give up: drop every change held, take no more, and say why from now on.
    pub fn fail(&self, reason: String) {
        let mut s = self.state.lock();
        self.fail_locked(&mut s, reason);
    }

    fn fail_locked(&self, s: &mut MutexGuard<'_, FeedState>, reason: String) {
        s.open.clear();
        for e in s.sealed.drain(..) {
            if let Held::Spilled(f) = &e.held {
                spill::remove(f);
            }
        }
        s.open_since = None;
        s.rows_pending = 0;
        s.rows_in_memory = 0;
        s.spilled_bytes = 0;
        s.failed.get_or_insert(reason);
        self.ready.notify_all();
    }

    /// Remove the directory of spilled epochs (the sink is dropped).
    pub(crate) fn forget_spilled(&self) {
        if let Some(spill) = &self.state.lock().spill
            && let Err(e) = std::fs::remove_dir_all(&spill.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %spill.dir.display(), error = %e, "cannot remove spilled epochs");
        }
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
        s.rows_in_memory += change.len();
        // With a place to spill, the next seal moves rows out of memory.
        if s.spill.is_none()
            && let Some(limit) = s.limit.filter(|l| s.rows_in_memory > *l)
        {
            self.fail_locked(
                &mut s,
                format!(
                    "more than {limit} changed rows waited for the sink (max_pending_rows): it \
                     failed and let them go rather than hold more; fix the destination, then \
                     DROP SINK and CREATE it again (a new sink starts with the view's rows)"
                ),
            );
            return;
        }
        if self.checkpointed {
            s.open_since.get_or_insert_with(Instant::now);
            s.open.push(change);
        } else {
            s.counter += 1;
            let epoch = s.counter;
            s.sealed.push_back(Sealed {
                epoch,
                held: Held::Memory(vec![change]),
                since: Instant::now(),
            });
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
        let fresh = epoch > s.durable && s.sealed.back().is_none_or(|last| last.epoch < epoch);
        if fresh && !s.open.is_empty() {
            let open = std::mem::take(&mut s.open);
            let since = s.open_since.take().unwrap_or_else(Instant::now);
            if let Some(held) = self.spill_if_over(&mut s, epoch, open) {
                s.sealed.push_back(Sealed { epoch, held, since });
            }
        }
        let mut outbox = Outbox {
            sink: self.sink.clone(),
            sql: self.sql.clone(),
            lineage: self.lineage.clone(),
            epochs: Vec::new(),
            spilled: Vec::new(),
            failed: s.failed.clone(),
        };
        for e in &s.sealed {
            match &e.held {
                Held::Memory(c) => outbox.epochs.push((e.epoch, c.clone())),
                Held::Spilled(f) => outbox.spilled.push((e.epoch, f.clone())),
            }
        }
        outbox
    }

    /// An epoch being sealed, spilled to a file when memory holds more than the limit;
    /// `None` when it could not be and the feed failed.
    fn spill_if_over(
        &self,
        s: &mut MutexGuard<'_, FeedState>,
        epoch: u64,
        changes: Vec<Change>,
    ) -> Option<Held> {
        let over = s.limit.filter(|l| s.rows_in_memory > *l);
        let (Some(limit), Some(spill)) = (over, s.spill.clone()) else {
            return Some(Held::Memory(changes));
        };
        let written = spill::write(&spill.dir, &self.lineage, epoch, &changes);
        let reason = match written {
            Ok(f)
                if spill
                    .max_bytes
                    .is_none_or(|max| s.spilled_bytes + f.bytes <= max) =>
            {
                s.rows_in_memory -= f.rows;
                s.spilled_bytes += f.bytes;
                return Some(Held::Spilled(f));
            }
            Ok(f) => {
                spill::remove(&f);
                format!(
                    "more than {limit} changed rows waited for the sink in memory \
                     (max_pending_rows) and more than {} bytes on disk (max_spilled_bytes)",
                    spill.max_bytes.unwrap_or_default()
                )
            }
            Err(e) => format!(
                "more than {limit} changed rows waited for the sink in memory \
                 (max_pending_rows), and they could not be spilled to {}: {e}",
                spill.dir.display()
            ),
        };
        drop(changes);
        self.fail_locked(
            s,
            format!(
                "{reason}: it failed and let them go rather than hold more; fix the \
                 destination, then DROP SINK and CREATE it again (a new sink starts with \
                 the view's rows)"
            ),
        );
        None
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
        let (epoch, held) = loop {
            let durable = s.durable;
            let next = s
                .sealed
                .iter()
                .find(|e| e.epoch > delivered && e.epoch <= durable);
            if let Some(e) = next {
                break (e.epoch, e.held.clone());
            }
            if s.closed || s.failed.is_some() || self.ready.wait_for(&mut s, wait).timed_out() {
                return None;
            }
        };
        // A spilled epoch is read without the lock: the view goes on pushing meanwhile.
        drop(s);
        Some((epoch, self.read_held(epoch, held)?))
    }

    /// The durable epochs after `delivered`, oldest first: (epoch, rows, when its first
    /// change came).
    pub fn ready_after(&self, delivered: u64) -> Vec<(u64, usize, Instant)> {
        let s = self.state.lock();
        s.sealed
            .iter()
            .filter(|e| e.epoch > delivered && e.epoch <= s.durable)
            .map(|e| (e.epoch, e.held.rows(), e.since))
            .collect()
    }

    /// The changes of the epochs `first..=last`, in order; `None` until `last` is
    /// durable.
    pub fn changes_between(&self, first: u64, last: u64) -> Option<Vec<Change>> {
        let held: Vec<(u64, Held)> = {
            let s = self.state.lock();
            if s.durable < last || s.failed.is_some() {
                return None;
            }
            s.sealed
                .iter()
                .filter(|e| (first..=last).contains(&e.epoch))
                .map(|e| (e.epoch, e.held.clone()))
                .collect()
        };
        let mut changes = Vec::new();
        for (epoch, held) in held {
            changes.extend(self.read_held(epoch, held)?);
        }
        Some(changes)
    }

    /// An epoch's changes, read back from disk when spilled; a file that cannot be read
    /// fails the feed.
    fn read_held(&self, epoch: u64, held: Held) -> Option<Vec<Change>> {
        let spilled = match held {
            Held::Memory(changes) => return Some(changes),
            Held::Spilled(f) => f,
        };
        match spill::read(&spilled) {
            Ok(changes) => Some(changes),
            Err(e) => {
                self.fail(format!(
                    "the spilled changes of epoch {epoch} cannot be read back ({e}): the sink \
                     failed; DROP SINK and CREATE it again (a new sink starts with the view's \
                     rows)"
                ));
                None
            }
        }
    }

    /// The durable epoch, when no change up to it waits for the sink: a sink with
    /// nothing to write is caught up with it.
    pub fn settled(&self) -> Option<u64> {
        let s = self.state.lock();
        let durable = s.durable;
        // A failed feed let its changes go: they were not written.
        (s.failed.is_none() && !s.sealed.iter().any(|e| e.epoch <= durable)).then_some(durable)
    }

    /// The sink holds `epoch` and every one before it: forget them, and remove their
    /// spilled files when `remove_files` (not while a restart may still offer them
    /// again: the delivery could not be recorded).
    pub fn delivered(&self, epoch: u64, remove_files: bool) {
        let mut s = self.state.lock();
        while s.sealed.front().is_some_and(|e| e.epoch <= epoch) {
            let Some(e) = s.sealed.pop_front() else { break };
            s.rows_pending -= e.held.rows();
            match &e.held {
                Held::Memory(changes) => s.rows_in_memory -= rows(changes),
                Held::Spilled(f) => {
                    s.spilled_bytes -= f.bytes;
                    if remove_files {
                        spill::remove(f);
                    }
                }
            }
        }
    }

    /// How long the oldest change the sink has not delivered has waited (zero when
    /// none waits): the sink's lag in time.
    pub fn lag(&self) -> Duration {
        let s = self.state.lock();
        let oldest = s.sealed.front().map(|e| e.since).or(s.open_since);
        oldest.map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Rows the sink has not delivered yet (sealed or not).
    pub fn rows_pending(&self) -> usize {
        self.state.lock().rows_pending
    }

    /// Bytes of pending changes spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.state.lock().spilled_bytes
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
        feed.delivered(3, true);
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
        feed.delivered(4, true);
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
                spilled: Vec::new(),
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
        feed.limit_pending(Some(3), None);
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

    fn spilling(dir: &std::path::Path, max_bytes: Option<u64>) -> SinkFeed {
        let feed = SinkFeed::new("k", "CREATE SINK k", true);
        let spill = SpillLimit {
            dir: dir.to_path_buf(),
            max_bytes,
        };
        feed.limit_pending(Some(3), Some(spill));
        feed
    }

    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    fn values(changes: &[Change]) -> Vec<(ChangeKind, Vec<i64>, Option<Vec<i64>>)> {
        let ints = |b: &RecordBatch| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("ints")
                .values()
                .to_vec()
        };
        changes
            .iter()
            .map(|c| (c.kind, ints(&c.rows), c.replaced.as_ref().map(ints)))
            .collect()
    }

    #[test]
    fn past_its_limit_a_feed_spills_epochs_to_disk_and_hands_them_out_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let spill_dir = dir.path().join("k.spill");
        let feed = spilling(&spill_dir, None);
        feed.push(change(&[1, 2]));
        feed.seal(1);
        assert!(files(&spill_dir).is_empty(), "2 rows fit in memory");
        let update = Change {
            replaced: Some(change(&[2]).rows),
            ..Change::new(change(&[5, 6]).rows, ChangeKind::Update)
        };
        feed.push(update);
        feed.push(change(&[7]));
        assert!(feed.failed().is_none(), "6 rows: over the limit, to spill");
        let held = feed.seal(2);
        assert_eq!(held.epochs.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [1]);
        assert_eq!(
            held.spilled.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(files(&spill_dir), [held.spilled[0].1.file.clone()]);
        assert_eq!(feed.rows_pending(), 6);
        assert_eq!(feed.spilled_bytes(), held.spilled[0].1.bytes);
        assert!(feed.spilled_bytes() > 0);
        feed.durable(2);
        assert_eq!(
            values(&feed.next_ready(0, NOW).expect("epoch 1").1).len(),
            1
        );
        let (epoch, changes) = feed.next_ready(1, NOW).expect("epoch 2, from disk");
        assert_eq!(epoch, 2);
        assert_eq!(
            values(&changes),
            [
                (ChangeKind::Update, vec![5, 6], Some(vec![2])),
                (ChangeKind::Append, vec![7], None)
            ]
        );

        // A restart from the checkpoint that held epoch 2 reads it from its file, and
        // removes files no epoch names.
        let stray = spill_dir.join("stray.arrow");
        std::fs::write(&stray, b"left by a crash").expect("write");
        let restored = SinkFeed::restored(held, 2);
        let spill = SpillLimit {
            dir: spill_dir.clone(),
            max_bytes: None,
        };
        restored.limit_pending(Some(3), Some(spill));
        assert!(!stray.exists(), "an epoch no checkpoint took is removed");
        assert_eq!(
            (restored.rows_pending(), restored.spilled_bytes() > 0),
            (6, true)
        );
        restored.delivered(1, true);
        let (_, again) = restored.next_ready(1, NOW).expect("epoch 2");
        assert_eq!(values(&again), values(&changes));
        // Delivered, but not recorded: a restart offers it again, so its file stays.
        restored.delivered(2, false);
        assert_eq!(files(&spill_dir).len(), 1);
        assert_eq!((restored.rows_pending(), restored.spilled_bytes()), (0, 0));
        let recorded = SinkFeed::restored(feed.seal(3), 3);
        recorded.delivered(2, true);
        assert!(
            files(&spill_dir).is_empty(),
            "a delivered epoch's file is removed"
        );
    }

    #[test]
    fn a_feed_fails_once_its_spilled_epochs_pass_their_bytes_and_keeps_no_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let feed = spilling(dir.path(), Some(100));
        feed.push(change(&[1, 2, 3, 4]));
        let reason = match feed.seal(1).failed {
            Some(reason) => reason,
            None => panic!("an Arrow file of 4 rows is over 100 bytes"),
        };
        assert!(reason.contains("max_spilled_bytes"), "{reason}");
        assert!(files(dir.path()).is_empty());
        assert_eq!((feed.rows_pending(), feed.spilled_bytes()), (0, 0));
        // A damaged spill file fails the feed when it is read, with the reason.
        let feed = spilling(dir.path(), None);
        feed.push(change(&[1, 2, 3, 4]));
        let held = feed.seal(1);
        std::fs::write(&held.spilled[0].1.file, b"damaged").expect("write");
        feed.durable(1);
        assert!(feed.next_ready(0, NOW).is_none());
        let reason = feed.failed().expect("failed");
        assert!(reason.contains("cannot be read back"), "{reason}");
        assert!(files(dir.path()).is_empty());
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
