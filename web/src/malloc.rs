//! glibc's malloc with fixed thresholds. By default glibc gives memory freed at the top
//! of a heap back to the kernel once twice its (adaptive) mmap threshold is free there,
//! and the next chunk of rows faults the same pages in again: at 2 cores, q2 over the
//! generator took 130,000 to 160,000 page faults in its 1.5 s, where one core took
//! 40,000 (a worker's arena frees whole chunks at once, handed back by the pipeline
//! thread). With the thresholds fixed, the faults fell to 10,000 and q2 rose 10%.
//! glibc reads its tunables only when a process starts, so weir runs itself again with
//! them, in the same process (same pid), before anything else; a `GLIBC_TUNABLES` the
//! user set (even empty) is left as it is. Elsewhere (musl, macOS) this does nothing.

use std::ffi::OsStr;

/// Blocks up to 4 MiB (a chunk's columns) come from the arena, larger ones (the tables
/// of an aggregate over millions of keys) are mapped on their own, so that growing them
/// moves their pages instead of copying them (at 32 MiB, 9 million keys ran 10% slower
/// with 300 MiB more at the peak); an arena keeps up to 32 MiB free at its top.
pub const TUNABLES: &str =
    "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432";

/// The `GLIBC_TUNABLES` to run with, given the one this process has: none when the user
/// set their own (or when the C library is not glibc).
pub fn wanted(current: Option<&OsStr>) -> Option<&'static str> {
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    (glibc && current.is_none()).then_some(TUNABLES)
}

/// Run this program again in this process with [`TUNABLES`], unless it has them (or
/// the user's own). Call it first in `main`, before any thread starts. Returns only
/// when there is nothing to do, or when it cannot (then glibc's defaults stay).
pub fn run_with_tunables() {
    let Some(tunables) = wanted(std::env::var_os("GLIBC_TUNABLES").as_deref()) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    run_again(&exe, tunables);
}

#[cfg(unix)]
fn run_again(exe: &std::path::Path, tunables: &str) {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
    eprintln!(
        "weir: running with glibc's default malloc thresholds: cannot restart with {tunables}: {error}"
    );
}

#[cfg(not(unix))]
fn run_again(_: &std::path::Path, _: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunables_are_set_only_where_the_user_set_none() {
        let expected = cfg!(all(target_os = "linux", target_env = "gnu")).then_some(TUNABLES);
        assert_eq!(wanted(None), expected);
        assert_eq!(wanted(Some(OsStr::new(""))), None);
        assert_eq!(wanted(Some(OsStr::new("glibc.malloc.arena_max=2"))), None);
        // After the restart the process has them: no second restart.
        assert_eq!(wanted(Some(OsStr::new(TUNABLES))), None);
    }
}
