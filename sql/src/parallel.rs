//! Work split over the worker pool (rayon's, shared with the sources' decoding), with
//! the calling thread taking its share.
//!
//! The caller, a view's pipeline thread, would only wait: it runs the first part
//! itself, then every part no worker has started yet. The workers may be busy decoding
//! or generating the source's next chunks, and a part queued behind them held the whole
//! pipeline up. With [`run_parts`] (parts that borrow the caller's data, such as an
//! operator's shards) the caller still waits until a worker has taken each spawned job
//! off the queue; with [`run_owned`] (parts and work that own what they use) it waits
//! only for the parts a worker is running.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// `f` on each part, side by side; the results in the parts' order. A panic in a part
/// is raised here, once every part has run.
pub fn run_parts<P, R>(parts: Vec<P>, f: impl Fn(P) -> R + Sync) -> Vec<R>
where
    P: Send,
    R: Send,
{
    if parts.len() <= 1 {
        return parts.into_iter().map(f).collect();
    }
    let slots: Vec<Slot<P, R>> = parts.into_iter().map(Slot::new).collect();
    rayon::in_place_scope(|scope| {
        for slot in &slots[1..] {
            let f = &f;
            scope.spawn(move |_| slot.run(f));
        }
        slots.iter().for_each(|slot| slot.run(&f));
    });
    // The scope is over: every part is done, none is waited for.
    raise_any_panic(slots.iter().map(|slot| slot.run_or_wait(&f)).collect())
}

/// `f` on each part, side by side; the results in the parts' order. The calling
/// thread runs the first part, then every part no worker has started, and waits only
/// for the parts a worker is running: a job a worker takes off the queue later finds
/// its part done and returns. A panic in a part is raised here, once every part has
/// run (none is left for a worker to run after the call).
pub fn run_owned<P, R, F>(parts: Vec<P>, f: Arc<F>) -> Vec<R>
where
    P: Send + 'static,
    R: Send + 'static,
    F: Fn(P) -> R + Send + Sync + 'static,
{
    if parts.len() <= 1 {
        return parts.into_iter().map(|p| f(p)).collect();
    }
    let slots: Vec<Arc<Slot<P, R>>> = parts
        .into_iter()
        .map(|part| Arc::new(Slot::new(part)))
        .collect();
    for slot in &slots[1..] {
        let (slot, f) = (Arc::clone(slot), Arc::clone(&f));
        rayon::spawn(move || slot.run(&*f));
    }
    // Every part no worker has started, before waiting for any: waiting for part i
    // while a worker runs it would leave a later, unstarted part idle meanwhile.
    slots.iter().for_each(|slot| slot.run(&*f));
    raise_any_panic(slots.iter().map(|slot| slot.run_or_wait(&*f)).collect())
}

/// The parts' results, or the first part's panic raised again.
fn raise_any_panic<R>(outcomes: Vec<std::thread::Result<R>>) -> Vec<R> {
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|panic| resume_unwind(panic)))
        .collect()
}

/// One part, and what became of it: the first thread to come runs it.
struct Slot<P, R> {
    state: Mutex<State<P, R>>,
    done: Condvar,
}

enum State<P, R> {
    Waiting(P),
    Running,
    Done(std::thread::Result<R>),
    Taken,
}

impl<P, R> Slot<P, R> {
    fn new(part: P) -> Self {
        Self {
            state: Mutex::new(State::Waiting(part)),
            done: Condvar::new(),
        }
    }

    /// Run the part unless someone else has: the first to come takes it.
    fn run(&self, f: &impl Fn(P) -> R) {
        let taken = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, State::Running) {
                State::Waiting(part) => Some(part),
                other => {
                    *state = other;
                    None
                }
            }
        };
        if let Some(part) = taken {
            let result = catch_unwind(AssertUnwindSafe(|| f(part)));
            *lock(&self.state) = State::Done(result);
            self.done.notify_all();
        }
    }

    /// Run the part if nobody has started it, else wait for it; its outcome.
    fn run_or_wait(&self, f: &impl Fn(P) -> R) -> std::thread::Result<R> {
        self.run(f);
        let mut state = lock(&self.state);
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => return result,
                other => {
                    *state = other;
                    state = self
                        .done
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

/// A lock that a panic of an earlier holder does not close: here a holder only moves a
/// value; an updating aggregate's shard is held while its work runs, and a panic there
/// is raised again by the caller of [`run_owned`].
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whoever runs a part (a worker, or the calling thread taking the ones not
    /// started), each runs once and the results come in the parts' order.
    #[test]
    fn every_part_runs_once_and_results_keep_the_parts_order() {
        for round in 0..50 {
            let parts: Vec<usize> = (0..7).map(|i| i * 10 + round).collect();
            let runs = Mutex::new(Vec::new());
            let got = run_parts(parts.clone(), |p| {
                lock(&runs).push(p);
                p * 2
            });
            assert_eq!(got, parts.iter().map(|p| p * 2).collect::<Vec<_>>());
            let mut runs = runs.into_inner().unwrap_or_else(PoisonError::into_inner);
            runs.sort_unstable();
            assert_eq!(runs, parts, "each part ran once");
        }
        assert_eq!(run_parts(vec![3], |p| p + 1), vec![4]);
        for round in 0..50 {
            let parts: Vec<usize> = (0..7).map(|i| i * 10 + round).collect();
            let runs = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&runs);
            let got = run_owned(
                parts.clone(),
                Arc::new(move |p: usize| {
                    lock(&seen).push(p);
                    p * 2
                }),
            );
            assert_eq!(got, parts.iter().map(|p| p * 2).collect::<Vec<_>>());
            let mut runs = lock(&runs).clone();
            runs.sort_unstable();
            assert_eq!(runs, parts, "each owned part ran once");
        }
        assert!(run_parts(Vec::<u8>::new(), |p| p).is_empty());
    }

    /// A part that panics, whoever runs it, raises the panic in the caller once every
    /// part has run (none is left to run after the call); nothing hangs.
    #[test]
    fn a_panic_in_an_owned_part_reaches_the_caller_after_every_part_ran() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for round in 0..20 {
            let ran = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&ran);
            let caught = std::panic::catch_unwind(|| {
                run_owned(
                    (0..4).collect::<Vec<usize>>(),
                    Arc::new(move |p: usize| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        if p == round % 4 {
                            panic!("part {p} fails");
                        }
                        p
                    }),
                )
            });
            assert!(caught.is_err(), "round {round}");
            assert_eq!(
                ran.load(Ordering::SeqCst),
                4,
                "round {round}: every part ran"
            );
        }
    }

    /// The caller runs every part no worker has started before it waits for one a
    /// worker runs: here the only free worker runs part 1, which finishes only once
    /// part 2 has run, and part 2 is left for the caller.
    #[test]
    fn the_caller_runs_later_parts_while_a_worker_runs_an_earlier_one() {
        use std::sync::mpsc;
        use std::time::Duration;
        let wait = Duration::from_secs(10);
        // Every worker but one held until the end.
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let (started, busy) = mpsc::channel();
        for _ in 1..rayon::current_num_threads() {
            let (held, started) = (Arc::clone(&held), started.clone());
            rayon::spawn(move || {
                let _ = started.send(());
                let _ = lock(&held).recv_timeout(Duration::from_secs(30));
            });
        }
        for _ in 1..rayon::current_num_threads() {
            busy.recv_timeout(wait).expect("a worker held");
        }
        let (part_1_started, part_1_on_a_worker) = mpsc::channel();
        let (part_2_ran, part_2_done) = mpsc::channel();
        let signals = Mutex::new((part_1_started, part_2_ran));
        let waits = Mutex::new((part_1_on_a_worker, part_2_done));
        let got = run_owned(
            vec![0, 1, 2],
            Arc::new(move |p: usize| match p {
                // The caller's own part lets the free worker take part 1 first, and
                // says whether it did (else the caller would run parts 1 and 2 itself).
                0 => lock(&waits).0.recv_timeout(wait).is_ok(),
                // On a worker, part 1 waits for part 2 (on the caller, it cannot).
                1 if rayon::current_thread_index().is_some() => {
                    let _ = lock(&signals).0.send(());
                    lock(&waits).1.recv_timeout(wait).is_ok()
                }
                2 => lock(&signals).1.send(()).is_ok(),
                _ => true,
            }),
        );
        drop(release);
        // Part 1 ran on a worker; part 2 ran while it waited; part 2 ran.
        assert_eq!(got, vec![true, true, true]);
    }
}
