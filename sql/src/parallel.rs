//! Work split over the worker pool (rayon's, shared with the sources' decoding), with
//! the calling thread taking its share.
//!
//! The caller, a view's pipeline thread, would only wait: it runs the first part
//! itself, then every part no worker has started yet. The workers may be busy decoding
//! or generating the source's next chunks, and a part queued behind them held the whole
//! pipeline up. The caller still waits until a worker has taken each spawned job off
//! the queue (the jobs borrow the caller's data), but no longer for the work itself.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `f` on each part, side by side; the results in the parts' order.
pub fn run_parts<P, R>(parts: Vec<P>, f: impl Fn(P) -> R + Sync) -> Vec<R>
where
    P: Send,
    R: Send,
{
    if parts.len() <= 1 {
        return parts.into_iter().map(f).collect();
    }
    // Each part, taken by whoever comes to it first.
    let work: Vec<Mutex<Option<P>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let done: Vec<Mutex<Option<R>>> = work.iter().map(|_| Mutex::new(None)).collect();
    let run = |i: usize| {
        // Taken, then the lock released before the work: `f` runs unlocked.
        let taken = lock(&work[i]).take();
        if let Some(part) = taken {
            let result = f(part);
            *lock(&done[i]) = Some(result);
        }
    };
    rayon::in_place_scope(|scope| {
        for i in 1..work.len() {
            let run = &run;
            scope.spawn(move |_| run(i));
        }
        (0..work.len()).for_each(run);
    });
    // Every part ran once the scope is over (a panic in one is raised there).
    done.into_iter()
        .filter_map(|result| result.into_inner().unwrap_or_else(PoisonError::into_inner))
        .collect()
}

/// A lock whose holder cannot panic while holding it (it only moves a value).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
        assert!(run_parts(Vec::<u8>::new(), |p| p).is_empty());
    }
}
