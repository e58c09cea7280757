//! Crash points for tests of recovery: with `WEIR_FAILPOINTS=name[,name]` the process
//! aborts when it reaches one of the named points, as a power cut would there. Without
//! the variable a point costs one load of a flag.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Abort the process here if the point `name` is armed.
pub fn crash_point(name: &str) {
    let armed = ARMED.get_or_init(|| {
        std::env::var("WEIR_FAILPOINTS")
            .map(|v| v.split(',').map(|n| n.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|n| n == name) {
        eprintln!("weir: failpoint {name} reached: aborting");
        std::process::abort();
    }
}
