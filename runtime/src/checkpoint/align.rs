//! Aligned snapshots of sources joined by a view. A join of several sources holds rows
//! of each, so its state fits only positions of all its inputs taken at one moment.
//! Each input's pipeline stops at a batch boundary and *arrives*; once every source of
//! its group (the sources connected through joins) is there, the last to arrive takes
//! the snapshots of the whole group and puts them into their slots at once, under the
//! lock that checkpoints read the slots under; then all go on. A join's state goes into
//! the snapshot of its first input (the source the view is registered under).
//!
//! All or nothing: when a source does not arrive in time (a paused view holds it back),
//! the others leave without a snapshot, and the group's previous snapshots, consistent
//! with each other, stay in place. A finished or failed source stays arrived with its
//! final position.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{Position, SourceSnapshot};
use crate::source::SourceRuntime;

/// Where a source stopped for a checkpoint.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub epoch: u64,
    pub position: Position,
    pub watermark: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Waiting,
    Taking,
    /// The group's snapshots were taken (true) or could not be (false).
    Done(bool),
}

struct Entry {
    // Weak keeps the allocation, so the key (its address) is not reused meanwhile.
    source: Weak<SourceRuntime>,
    arrival: Arrival,
    finished: bool,
    stage: Stage,
}

/// The sources waiting to be snapshotted together; one per engine.
#[derive(Default)]
pub struct JoinAlignment {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    entries: HashMap<usize, Entry>,
    /// Per source, the newest checkpoint its group gave up on: a member arriving for it
    /// later does not wait in vain.
    abandoned: HashMap<usize, u64>,
}

fn key(source: &Arc<SourceRuntime>) -> usize {
    Arc::as_ptr(source) as usize
}

impl JoinAlignment {
    /// Run `read` while no group is putting its snapshots: it sees each group whole.
    pub fn read_slots<R>(&self, read: impl FnOnce() -> R) -> R {
        let _state = self.state.lock();
        read()
    }

    /// `source` is at a batch boundary for checkpoint `arrival.epoch`. Waits up to
    /// `wait` for the rest of its group; true when the group's snapshots were taken. A
    /// `finished` source does not wait: it stays arrived for the checkpoints to come.
    pub fn arrive(
        &self,
        source: &Arc<SourceRuntime>,
        arrival: Arrival,
        finished: bool,
        wait: Duration,
    ) -> bool {
        let me = key(source);
        let epoch = arrival.epoch;
        let deadline = Instant::now() + wait;
        let mut state = self.state.lock();
        if !finished && state.abandoned.get(&me).is_some_and(|&a| a >= epoch) {
            return false;
        }
        state.entries.retain(|_, e| e.source.strong_count() > 0);
        state.entries.insert(
            me,
            Entry {
                source: Arc::downgrade(source),
                arrival,
                finished,
                stage: Stage::Waiting,
            },
        );
        loop {
            match state.entries.get(&me).map(|e| e.stage) {
                Some(Stage::Done(taken)) => {
                    state.entries.remove(&me);
                    return taken;
                }
                Some(Stage::Taking) => {
                    self.changed
                        .wait_for(&mut state, Duration::from_millis(100));
                    continue;
                }
                Some(Stage::Waiting) => {}
                None => return false,
            }
            let group = group_of(source);
            for m in &group {
                arrive_finished(&mut state.entries, m);
            }
            let all_here = group.iter().all(|m| {
                state
                    .entries
                    .get(&key(m))
                    .is_some_and(|e| e.stage == Stage::Waiting)
            });
            if all_here {
                let taken = self.take(&mut state, &group);
                for m in &group {
                    if let Some(e) = state.entries.get_mut(&key(m)) {
                        e.stage = if e.finished {
                            Stage::Waiting
                        } else {
                            Stage::Done(taken)
                        };
                    }
                }
                self.changed.notify_all();
                if finished {
                    return taken;
                }
                continue;
            }
            let now = Instant::now();
            let given_up = state.abandoned.get(&me).is_some_and(|&a| a >= epoch);
            if finished || given_up || now >= deadline || source.stop.load(Ordering::Relaxed) {
                if !finished {
                    state.entries.remove(&me);
                    // The rest of the group need not wait for this checkpoint any more.
                    for m in &group {
                        let a = state.abandoned.entry(key(m)).or_insert(0);
                        *a = (*a).max(epoch);
                    }
                    self.changed.notify_all();
                }
                return false;
            }
            let poll = deadline.min(now + Duration::from_millis(100));
            self.changed.wait_until(&mut state, poll);
        }
    }

    /// Snapshot every source of `group` and its views (outside the lock, while each is
    /// held at its boundary), then put them all (under it).
    fn take(&self, state: &mut MutexGuard<'_, State>, group: &[Arc<SourceRuntime>]) -> bool {
        let mut arrivals = Vec::with_capacity(group.len());
        for m in group {
            if let Some(e) = state.entries.get_mut(&key(m)) {
                e.stage = Stage::Taking;
                arrivals.push((m.clone(), e.arrival.clone()));
            }
        }
        let epoch = arrivals.iter().map(|(_, a)| a.epoch).max().unwrap_or(0);
        let snapshots = MutexGuard::unlocked(state, || {
            arrivals
                .iter()
                .map(|(m, a)| snapshot(m, a, epoch, group))
                .collect::<weir_sql::Result<Vec<_>>>()
        });
        match snapshots {
            Ok(snapshots) => {
                for ((m, _), s) in arrivals.iter().zip(snapshots) {
                    m.checkpoint.put(epoch, s);
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot snapshot the sources of a join; the checkpoint keeps their previous state");
                false
            }
        }
    }
}

/// A source that finished or failed before it could arrive (its pipeline is gone, its
/// final snapshot left) is there with the final position of that snapshot.
fn arrive_finished(entries: &mut HashMap<usize, Entry>, source: &Arc<SourceRuntime>) {
    if entries.contains_key(&key(source)) || !source.ended.load(Ordering::Acquire) {
        return;
    }
    if let Some(last) = source.checkpoint.latest() {
        entries.insert(
            key(source),
            Entry {
                source: Arc::downgrade(source),
                arrival: Arrival {
                    epoch: last.epoch,
                    position: last.position.clone(),
                    watermark: last.watermark,
                },
                finished: true,
                stage: Stage::Waiting,
            },
        );
    }
}

/// `source` and every source joined with it, through any number of joins.
fn group_of(source: &Arc<SourceRuntime>) -> Vec<Arc<SourceRuntime>> {
    let mut group = vec![source.clone()];
    let mut next = 0;
    while next < group.len() {
        let views = group[next].views.lock().clone();
        next += 1;
        for input in views.iter().flat_map(|v| &v.inputs) {
            if let Some(input) = input.upgrade()
                && !group.iter().any(|g| Arc::ptr_eq(g, &input))
            {
                group.push(input);
            }
        }
    }
    group
}

/// `source` and its views at `arrival`; a join goes with its first input only.
fn snapshot(
    source: &SourceRuntime,
    arrival: &Arrival,
    epoch: u64,
    group: &[Arc<SourceRuntime>],
) -> weir_sql::Result<SourceSnapshot> {
    let views = source.views.lock().clone();
    // A join created since the group was found may read a source outside it, whose
    // position was not taken at this moment: not this time.
    let outside = views.iter().flat_map(|v| &v.inputs).any(|input| {
        input
            .upgrade()
            .is_some_and(|i| !group.iter().any(|g| Arc::ptr_eq(g, &i)))
    });
    if outside {
        return Err(weir_sql::Error::Execution(
            "a join was created while its sources were being snapshotted".into(),
        ));
    }
    let mut snapshots = Vec::with_capacity(views.len());
    // Previews are never kept.
    for view in views
        .iter()
        .filter(|v| v.source == source.name && !v.preview)
    {
        snapshots.push(view.checkpoint(epoch)?);
    }
    Ok(SourceSnapshot {
        epoch,
        name: source.name.clone(),
        sql: source.sql.clone(),
        position: arrival.position.clone(),
        watermark: arrival.watermark,
        views: snapshots,
    })
}
