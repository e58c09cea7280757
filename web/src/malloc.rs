//! glibc's malloc with fixed thresholds. By default glibc gives memory freed at the top
//! of an arena back to the kernel once twice its adaptive mmap threshold is free there.
//! A worker allocates a chunk's columns in its own arena and the pipeline thread frees
//! them soon after, many at once, so the next chunk faulted the same pages in again
//! (docs/PERFORMANCE.md, "Memory kept between chunks"). glibc reads its tunables only
//! when a process starts, so weir runs itself again with them, in the same process
//! (same pid), before anything else; a `GLIBC_TUNABLES` the user set (even empty) is
//! left as it is. Elsewhere (musl, macOS) this does nothing.

use std::ffi::OsStr;

/// Blocks up to 4 MiB (a chunk's columns) come from the arena; larger ones (the tables
/// of an aggregate over millions of keys) are mapped on their own, so that growing them
/// moves their pages instead of copying them; an arena keeps up to 32 MiB free at its
/// top.
const TUNABLES: &str = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432";

/// Set in the restarted process, so that it never restarts again, even where glibc
/// drops `GLIBC_TUNABLES` (a setuid or file-capability binary).
const RESTARTED: &str = "WEIR_MALLOC_RESTARTED";

/// The `GLIBC_TUNABLES` to restart with, given the one this process has and whether it
/// is the restarted one: none when the user set their own, after the restart, or when
/// the C library is not glibc.
fn wanted(current: Option<&OsStr>, restarted: bool) -> Option<&'static str> {
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    (glibc && current.is_none() && !restarted).then_some(TUNABLES)
}

/// Run this program again in this process with [`TUNABLES`], unless it has them (or
/// the user's own). Call it first in `main`, before any thread starts. Returns when
/// there is nothing to do; an error when the restart failed, after which the process
/// should exit: a failed `exec` may leave its signal dispositions reset (SIGPIPE would
/// kill it).
pub fn run_with_tunables() -> std::io::Result<()> {
    let restarted = std::env::var_os(RESTARTED).is_some();
    match wanted(std::env::var_os("GLIBC_TUNABLES").as_deref(), restarted) {
        Some(tunables) => run_again(tunables),
        None => Ok(()),
    }
}

#[cfg(target_os = "linux")]
fn run_again(tunables: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    // The running file itself, even if a newer one has taken its path since. Without
    // /proc, or started through the dynamic loader (`ld-linux-x86-64.so.2 ./weir`,
    // `ld64.so.2 ./weir`), there is nothing to run again: glibc's defaults stay.
    let exe = std::path::Path::new("/proc/self/exe");
    let Ok(file) = std::fs::read_link(exe) else {
        return Ok(());
    };
    let loader = file.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("ld") && n.contains(".so")
    });
    if loader {
        return Ok(());
    }
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(RESTARTED, "1")
        .exec();
    Err(std::io::Error::new(
        error.kind(),
        format!(
            "cannot restart with GLIBC_TUNABLES={tunables}: {error}; set GLIBC_TUNABLES \
             (even empty) to start without the restart"
        ),
    ))
}

#[cfg(not(target_os = "linux"))]
fn run_again(_: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunables_are_set_once_and_only_where_the_user_set_none() {
        let expected = cfg!(all(target_os = "linux", target_env = "gnu")).then_some(TUNABLES);
        assert_eq!(wanted(None, false), expected);
        assert_eq!(wanted(Some(OsStr::new("")), false), None);
        assert_eq!(
            wanted(Some(OsStr::new("glibc.malloc.arena_max=2")), false),
            None
        );
        // After the restart: never again, even with the variable gone.
        assert_eq!(wanted(Some(OsStr::new(TUNABLES)), true), None);
        assert_eq!(wanted(None, true), None);
    }
}
