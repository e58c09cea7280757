//! What a view shows and who hears of it: the rows it holds (as emitted, with the oldest
//! released past `max_rows`; upserted by window; or kept by group for an updating
//! aggregate), and each change passed to subscribers, committed readers and sinks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::RecordBatch;
use tokio::sync::broadcast;

use super::{Published, ViewRuntime};
use crate::sink::feed::{Change, ChangeKind};
use weir_sql::{KeyedChange, KeyedRows};

impl ViewRuntime {
    /// The current rows, oldest first.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.current_rows(&self.rows.read())
    }

    /// The rows held: by group (all in one batch, read again only after a change), or
    /// as emitted.
    pub(super) fn current_rows(
        &self,
        rows: &VecDeque<(Option<i64>, RecordBatch)>,
    ) -> Vec<RecordBatch> {
        let by_group = self.by_group.lock();
        let Some(kept) = by_group.as_ref() else {
            return rows.iter().map(|(_, b)| b.clone()).collect();
        };
        let mut read = self.by_group_read.lock();
        if read.is_none() {
            match kept.all() {
                Ok((_, all)) => *read = Some(all),
                // Chunks of one schema: cannot fail.
                Err(e) => tracing::error!(view = %self.name, "cannot read the rows: {e}"),
            }
        }
        read.iter().cloned().collect()
    }

    /// The rows for a checkpoint: as emitted, each batch with its key (a window that an
    /// upsert replaces), or a view kept by group's rows in one batch.
    pub(super) fn saved_rows(
        &self,
        rows: &VecDeque<(Option<i64>, RecordBatch)>,
    ) -> Vec<(Option<i64>, RecordBatch)> {
        if self.by_group.lock().is_none() {
            return rows.iter().cloned().collect();
        }
        self.current_rows(rows)
            .into_iter()
            .map(|b| (None, b))
            .collect()
    }

    /// Changes to an updating view kept by group, in order: each goes to subscribers,
    /// and to sinks with the rows its groups showed before.
    pub(crate) fn apply_by_group(&self, changes: Vec<KeyedChange>) {
        let mut published = Vec::with_capacity(changes.len());
        {
            let _rows = self.rows.write();
            let mut by_group = self.by_group.lock();
            let Some(schema) = changes.first().map(|c| c.rows.schema()) else {
                return;
            };
            // In the operator's own schema (what an appending view holds too).
            let kept = by_group.get_or_insert_with(|| KeyedRows::new(schema));
            *self.by_group_read.lock() = None;
            for change in changes {
                // Groups the batch touched that have no row now leave the view. `ids` is a
                // subset of `touched`: equal lengths (no HAVING dropped one) leave nobody.
                let gone: Vec<u32> = if change.ids.len() == change.touched.len() {
                    Vec::new()
                } else {
                    let stays: std::collections::HashSet<u32> =
                        change.ids.iter().copied().collect();
                    (change.touched.iter().copied())
                        .filter(|id| !stays.contains(id))
                        .collect()
                };
                let left = match kept.get(&gone) {
                    Ok((_, rows)) => rows,
                    Err(e) => {
                        tracing::error!(view = %self.name, "cannot read the groups that left: {e}");
                        continue;
                    }
                };
                let before = match kept.apply(&change) {
                    Ok(before) => before,
                    // Ids and rows come from one operator call: cannot fail.
                    Err(e) => {
                        tracing::error!(view = %self.name, "cannot apply a change: {e}");
                        continue;
                    }
                };
                self.row_count.store(kept.len(), Ordering::Relaxed);
                if change.rows.num_rows() > 0 || before.num_rows() > 0 {
                    self.to_sinks(Change {
                        rows: change.rows.clone(),
                        kind: ChangeKind::Update,
                        replaced: (before.num_rows() > 0).then_some(before),
                    });
                }
                if left.num_rows() > 0 {
                    published.push(Published::removal(left));
                }
                if change.rows.num_rows() > 0 {
                    published.push(Published::new(change.rows));
                }
            }
        }
        for change in published {
            if !change.removed {
                self.rows_emitted.inc_by(change.rows.num_rows() as u64);
            }
            self.send(change);
        }
    }

    /// New rows as they are emitted.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.updates.subscribe()
    }

    /// Append emitted rows, release the oldest past the bound, notify subscribers.
    pub(crate) fn publish(&self, batches: Vec<RecordBatch>) {
        if batches.is_empty() {
            return;
        }
        {
            let mut rows = self.rows.write();
            for b in &batches {
                self.row_count.fetch_add(b.num_rows(), Ordering::Relaxed);
                self.rows_emitted.inc_by(b.num_rows() as u64);
                self.to_sinks(Change::new(b.clone(), ChangeKind::Append));
                rows.push_back((None, b.clone()));
            }
            self.release_oldest(&mut rows);
        }
        for b in batches {
            // No subscribers is fine.
            self.notify(b);
        }
    }

    /// Release the oldest rows while the view holds more than `max_rows`, counting what
    /// goes; the first release is logged.
    pub(super) fn release_oldest(&self, rows: &mut VecDeque<(Option<i64>, RecordBatch)>) {
        let Some(max_rows) = self.max_rows else {
            return;
        };
        loop {
            let excess = self
                .row_count
                .load(Ordering::Relaxed)
                .saturating_sub(max_rows);
            let Some((_, oldest)) = rows.front_mut().filter(|_| excess > 0) else {
                break;
            };
            let released = excess.min(oldest.num_rows());
            if released == oldest.num_rows() {
                rows.pop_front();
            } else {
                *oldest = oldest.slice(released, oldest.num_rows() - released);
            }
            self.row_count.fetch_sub(released, Ordering::Relaxed);
            let before = self
                .rows_released
                .fetch_add(released as u64, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(view = %self.name, max_rows, "the view holds more rows than its max_rows: releasing the oldest (see its status)");
            }
        }
    }

    /// Why rows are missing from the view, if they are.
    pub fn rows_cut(&self) -> Option<String> {
        let released = self.rows_released.load(Ordering::Relaxed);
        let max_rows = self.max_rows?;
        (released > 0).then(|| {
            format!(
                "the view keeps its newest {max_rows} rows (max_rows): {released} older rows were \
                 released; raise it with CREATE MATERIALIZED VIEW ... WITH (max_rows = ...), or \
                 max_rows = 'unbounded'"
            )
        })
    }

    /// Rows released to stay within `max_rows`.
    pub fn rows_released(&self) -> u64 {
        self.rows_released.load(Ordering::Relaxed)
    }

    /// Rows for `key` (a window's start) replace the rows held for it, or are appended.
    pub(crate) fn upsert(&self, key: i64, batch: RecordBatch) {
        {
            let mut rows = self.rows.write();
            // Re-emitted windows are recent: search from the newest.
            let replaced = match rows.iter_mut().rev().find(|(k, _)| *k == Some(key)) {
                Some((_, old)) => {
                    self.row_count.fetch_sub(old.num_rows(), Ordering::Relaxed);
                    Some(std::mem::replace(old, batch.clone()))
                }
                None => {
                    rows.push_back((Some(key), batch.clone()));
                    None
                }
            };
            self.row_count
                .fetch_add(batch.num_rows(), Ordering::Relaxed);
            self.to_sinks(Change {
                rows: batch.clone(),
                kind: ChangeKind::Update,
                replaced,
            });
            self.release_oldest(&mut rows);
        }
        self.rows_emitted.inc_by(batch.num_rows() as u64);
        // No subscribers is fine.
        self.notify(batch);
    }

    /// A change to subscribers now, and to committed subscribers once a checkpoint
    /// holds it.
    pub(super) fn notify(&self, batch: RecordBatch) {
        self.send(Published::new(batch));
    }

    /// A change (new rows, or groups that left) to subscribers now, and to committed
    /// subscribers once a checkpoint holds it.
    fn send(&self, change: Arc<Published>) {
        // Kept even without committed subscribers: one may subscribe before the
        // checkpoint that holds this change. Shared arrays, not copies (and, until the
        // next checkpoint seals it, the text live readers made of it).
        if self.checkpointed {
            self.uncommitted.lock().push(change.clone());
        }
        // No subscribers is fine.
        let _ = self.updates.send(change);
    }
}
