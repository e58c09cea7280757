//! Crash points for tests of recovery: with `WEIR_FAILPOINTS=name[,name]` the process
//! aborts (or sleeps, or panics) when it reaches one of the named points, as a power cut
//! (or a slow machine, or a bug) would there. Without the variable a point costs one load
//! of a flag.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Abort the process here if the point `name` is armed.
pub fn crash_point(name: &str) {
    if armed(name) {
        eprintln!("weir: failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Sleep `for_` here if the point `name` is armed: holds a state open long enough for a
/// checkpoint to record it (a position inside a KPL aggregated record).
pub fn delay_point(name: &str, for_: std::time::Duration) {
    if armed(name) {
        std::thread::sleep(for_);
    }
}

/// Panic here if the point `name` is armed: a bug in a connector's worker, for the test
/// that its source fails saying why.
pub fn panic_point(name: &str) {
    if armed(name) {
        panic!("failpoint {name} reached");
    }
}

fn armed(name: &str) -> bool {
    ARMED
        .get_or_init(|| {
            std::env::var("WEIR_FAILPOINTS")
                .map(|v| v.split(',').map(|n| n.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|n| n == name)
}
