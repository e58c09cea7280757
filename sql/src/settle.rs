//! Outside calls made while a batch runs in slices settle once for the batch. A plugin's
//! function counts its failures in a row per batch (three failing batches mark it
//! failed): run in slices, one batch makes a call per slice, and those calls end in any
//! order. A callee that keeps such counts [`defer`]s each outcome while its thread runs a
//! slice; [`Stateless`](crate::stateless::Stateless) collects the slices' deferred
//! outcomes and settles each callee once: failed with the first failure in slice order,
//! or succeeded.

use std::cell::RefCell;

/// Who is called and in which version: the outcomes of one key settle together.
pub type CalleeKey = (usize, u64);

/// The outcome of a batch's calls to one callee: `Some(reason)` if any call failed.
pub type Settle = Box<dyn FnOnce(Option<String>) + Send>;

struct Deferred {
    key: CalleeKey,
    failure: Option<String>,
    settle: Settle,
}

/// The outcomes deferred by one slice, or by several merged in slice order.
#[derive(Default)]
pub(crate) struct Ledger(Vec<Deferred>);

thread_local! {
    /// The ledger of the slice this thread runs, if it runs one.
    static OPEN: RefCell<Option<Ledger>> = const { RefCell::new(None) };
}

/// Defer `failure` (`None`: the call succeeded) of a call to `key` if this thread runs a
/// slice of a batch, to be settled with the batch's other calls: true. False when the
/// thread runs a whole batch: the caller settles now.
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

/// Run `slice` with a ledger of its own open on this thread: its result and what it
/// deferred. An enclosing ledger (none is expected) is put back after.
pub(crate) fn in_slice<T>(slice: impl FnOnce() -> T) -> (T, Ledger) {
    let outer = OPEN.with(|open| open.borrow_mut().replace(Ledger::default()));
    let result = slice();
    let ledger = OPEN.with(|open| std::mem::replace(&mut *open.borrow_mut(), outer));
    (result, ledger.unwrap_or_default())
}

impl Ledger {
    /// Settle every callee once: with the first failure its calls had, in the order the
    /// ledgers come (the slices' order), or as succeeded.
    pub(crate) fn settle_all(ledgers: impl IntoIterator<Item = Ledger>) {
        let mut callees: Vec<Deferred> = Vec::new();
        for deferred in ledgers.into_iter().flat_map(|l| l.0) {
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

    #[test]
    fn each_callee_settles_once_with_its_first_failure_in_slice_order() {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let call = |key: CalleeKey, failure: Option<&str>| {
            let settled = settled.clone();
            defer(key, failure.map(str::to_string), move |outcome| {
                settled.lock().expect("lock").push((key, outcome))
            })
        };
        assert!(
            !call((1, 1), Some("no slice open")),
            "a whole batch settles now"
        );
        let ((), first) = in_slice(|| {
            assert!(call((1, 1), None));
            assert!(call((2, 1), None));
        });
        let ((), second) = in_slice(|| {
            assert!(call((1, 1), Some("trap in slice 2")));
            assert!(call((1, 1), Some("a later trap")));
            assert!(call((2, 1), None));
        });
        let ((), third) = in_slice(|| assert!(call((1, 1), Some("trap in slice 3"))));
        assert!(!call((1, 1), None), "the ledger is closed after the slice");
        assert!(
            settled.lock().expect("lock").is_empty(),
            "nothing settles early"
        );
        Ledger::settle_all([first, second, third]);
        assert_eq!(
            *settled.lock().expect("lock"),
            [
                ((1, 1), Some("trap in slice 2".to_string())),
                ((2, 1), None)
            ]
        );
    }
}
