//! Outside calls made while a batch is processed settle once for the batch. A plugin's
//! function counts its failures in a row per batch (three failing batches mark it
//! failed), but one batch may call it several times: once per slice when a view runs the
//! batch in slices ([`Stateless`](crate::stateless::Stateless)), once per expression
//! that calls it, and the calls end in any order. A callee that keeps such counts
//! [`defer`]s each outcome while a ledger is open on its thread; the runtime opens one
//! around each batch an operator processes ([`per_batch`]), each slice opens its own
//! ([`in_slice`]) whose outcomes go back into the batch's, and when the batch is done
//! each callee settles once: failed with the first failure in order, or succeeded.

use std::cell::RefCell;

/// Who is called and in which version: the outcomes of one key settle together.
pub type CalleeKey = (usize, u64);

/// How a callee takes the outcome of a batch's calls: `Some(reason)` if any failed.
type Settle = Box<dyn FnOnce(Option<String>) + Send>;

struct Deferred {
    key: CalleeKey,
    failure: Option<String>,
    settle: Settle,
}

/// The outcomes deferred while a ledger was open, in order. One dropped unsettled (its
/// slice panicked) settles what it holds.
#[derive(Default)]
pub struct Ledger(Vec<Deferred>);

impl Drop for Ledger {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            Ledger(std::mem::take(&mut self.0)).settle();
        }
    }
}

thread_local! {
    /// The ledger open on this thread, if any.
    static OPEN: RefCell<Option<Ledger>> = const { RefCell::new(None) };
}

/// Defer `failure` (`None`: the call succeeded) of a call to `key` while a ledger is
/// open on this thread: true. False when none is: the caller settles now.
pub fn defer(
    key: CalleeKey,
    failure: Option<String>,
    settle: impl FnOnce(Option<String>) + Send + 'static,
) -> bool {
    OPEN.with(|open| match open.borrow_mut().as_mut() {
        Some(ledger) => {
            ledger.0.push(Deferred {
                key,
                failure,
                settle: Box::new(settle),
            });
            true
        }
        None => false,
    })
}

/// Run `work` (one slice of a batch) with a ledger of its own open on this thread: its
/// result and what it deferred, to go with the batch's other slices
/// ([`Ledger::settle_all`]). The ledger open before is put back after, even if `work`
/// panics (then what it deferred joins that ledger, or settles if there is none).
pub fn in_slice<T>(work: impl FnOnce() -> T) -> (T, Ledger) {
    let opened = Opened(OPEN.with(|open| open.borrow_mut().replace(Ledger::default())));
    let result = work();
    (result, opened.close())
}

/// Run `work` (a whole batch) with a ledger open; its outcomes settle once it is done.
/// A batch is a boundary: no ledger is open around it.
pub fn per_batch<T>(work: impl FnOnce() -> T) -> T {
    debug_assert!(
        OPEN.with(|open| open.borrow().is_none()),
        "a batch within another"
    );
    let (result, ledger) = in_slice(work);
    ledger.settle();
    result
}

/// The ledger open before a slice's: put back when the slice closes, or, if its work
/// panics, when it is dropped (what the slice deferred then joins it, or settles).
struct Opened(Option<Ledger>);

impl Opened {
    /// Put the ledger open before back: the slice's ledger.
    fn close(mut self) -> Ledger {
        let before = self.0.take();
        let slice = OPEN.with(|o| std::mem::replace(&mut *o.borrow_mut(), before));
        // Closed: nothing left for `drop` to put back.
        std::mem::forget(self);
        slice.unwrap_or_default()
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let before = self.0.take();
        if let Some(slice) = OPEN.with(|o| std::mem::replace(&mut *o.borrow_mut(), before)) {
            Ledger::settle_all([slice]);
        }
    }
}

impl Ledger {
    /// The slices' ledgers (given in order) join the ledger open on this thread (the
    /// batch's, which the runtime opens); with none open, they settle now.
    pub fn settle_all(ledgers: impl IntoIterator<Item = Ledger>) {
        let mut all = Ledger::default();
        for mut ledger in ledgers {
            all.0.append(&mut ledger.0);
        }
        let all = OPEN.with(|open| match open.borrow_mut().as_mut() {
            Some(outer) => {
                outer.0.append(&mut all.0);
                None
            }
            None => Some(all),
        });
        if let Some(all) = all {
            all.settle();
        }
    }

    /// Settle every callee once: with the first failure its calls had, in order, or as
    /// succeeded. (A settling closure only counts; one that panicked while a slice
    /// unwinds would abort.)
    fn settle(mut self) {
        let mut callees: Vec<Deferred> = Vec::new();
        for deferred in std::mem::take(&mut self.0) {
            match callees.iter_mut().find(|c| c.key == deferred.key) {
                Some(callee) => {
                    if callee.failure.is_none() {
                        callee.failure = deferred.failure;
                    }
                }
                None => callees.push(deferred),
            }
        }
        for callee in callees {
            (callee.settle)(callee.failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Settled = Arc<Mutex<Vec<(CalleeKey, Option<String>)>>>;

    /// A call deferred if a ledger is open (true); else the caller would settle it.
    fn call(settled: &Settled, key: CalleeKey, failure: Option<&str>) -> bool {
        let settled = settled.clone();
        defer(key, failure.map(str::to_string), move |outcome| {
            settled.lock().expect("lock").push((key, outcome))
        })
    }

    #[test]
    fn each_callee_settles_once_per_batch_with_its_first_failure_in_order() {
        let settled = Settled::default();
        assert!(
            !call(&settled, (1, 1), Some("no ledger open")),
            "settles now"
        );
        per_batch(|| {
            // A call of the batch itself, then its slices.
            assert!(call(&settled, (2, 1), None));
            let ((), first) = in_slice(|| {
                assert!(call(&settled, (1, 1), None));
                assert!(call(&settled, (2, 1), None));
            });
            let ((), second) = in_slice(|| {
                assert!(call(&settled, (1, 1), Some("trap in slice 2")));
                assert!(call(&settled, (1, 1), Some("a later trap")));
            });
            let ((), third) = in_slice(|| assert!(call(&settled, (1, 1), Some("trap in slice 3"))));
            Ledger::settle_all([first, second, third]);
            assert!(
                call(&settled, (1, 1), None),
                "the batch's ledger is still open"
            );
            assert!(
                settled.lock().expect("lock").is_empty(),
                "nothing settles early"
            );
        });
        assert!(!call(&settled, (3, 1), None), "closed after the batch");
        assert_eq!(
            *settled.lock().expect("lock"),
            [
                ((2, 1), None),
                ((1, 1), Some("trap in slice 2".to_string()))
            ]
        );
    }

    #[test]
    fn a_panicking_slice_puts_the_ledger_before_it_back() {
        let settled = Settled::default();
        per_batch(|| {
            assert!(
                call(&settled, (2, 1), None),
                "a call of the batch before the slice"
            );
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                in_slice(|| {
                    call(&settled, (1, 1), Some("trap before the panic"));
                    panic!("in the slice")
                })
            }));
            assert!(panicked.is_err());
            assert!(
                settled.lock().expect("lock").is_empty(),
                "nothing settles before the batch ends"
            );
            assert!(call(&settled, (1, 1), None), "the batch's ledger is back");
        });
        assert!(!call(&settled, (1, 1), None), "and closed after the batch");
        assert_eq!(
            *settled.lock().expect("lock"),
            [
                ((2, 1), None),
                ((1, 1), Some("trap before the panic".to_string()))
            ],
            "the batch's ledger came back: its call and the panicked slice's failure settled with it, once each"
        );
    }
}
