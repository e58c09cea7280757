//! Work spread over the worker pool and taken back in the order it was given: a
//! source's file blocks or generated chunks are made side by side and sent in order.
//! Each job starts as soon as a worker is free, so no round waits for its slowest job,
//! and no worker waits while a result is sent.

use std::collections::VecDeque;
use std::sync::mpsc;

/// Jobs on the worker pool, oldest first, each with a tag saying what it works on.
pub struct InOrder<K, T> {
    jobs: VecDeque<(K, mpsc::Receiver<Result<T, String>>)>,
    ahead: usize,
}

impl<K, T: Send + 'static> InOrder<K, T> {
    /// At most `ahead` jobs at once.
    pub fn new(ahead: usize) -> Self {
        Self {
            jobs: VecDeque::new(),
            ahead: ahead.max(1),
        }
    }

    /// Whether another job may start.
    pub fn has_room(&self) -> bool {
        self.jobs.len() < self.ahead
    }

    /// Start `job` on a worker. A panic in it is caught (in a spawned job it would
    /// abort the process): its result is then the panic's message.
    pub fn spawn(&mut self, tag: K, job: impl FnOnce() -> T + Send + 'static) {
        let (done, result) = mpsc::sync_channel(1);
        rayon::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .map_err(|panic| crate::error::panic_message(panic.as_ref()));
            let _ = done.send(outcome);
        });
        self.jobs.push_back((tag, result));
    }
}

/// The oldest job's tag and result, once it is done; `None` when no job is left.
impl<K, T> Iterator for InOrder<K, T> {
    type Item = (K, Result<T, String>);

    fn next(&mut self) -> Option<Self::Item> {
        let (tag, result) = self.jobs.pop_front()?;
        let result = result
            .recv()
            .unwrap_or_else(|_| Err("the job gave no result".into()));
        Some((tag, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_the_order_given_and_a_panic_is_its_message() {
        let mut jobs = InOrder::new(3);
        // The first job finishes last.
        jobs.spawn(0, || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            0
        });
        jobs.spawn(1, || 1);
        assert!(jobs.has_room());
        jobs.spawn(2, || panic!("job 2 broke"));
        assert!(!jobs.has_room());
        assert_eq!(jobs.next(), Some((0, Ok(0))));
        assert_eq!(jobs.next(), Some((1, Ok(1))));
        let (tag, result) = jobs.next().expect("a third");
        assert_eq!(tag, 2);
        assert!(result.expect_err("panicked").contains("job 2 broke"));
        assert_eq!(jobs.next(), None);
    }
}
