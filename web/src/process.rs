//! This process's CPU time and memory, from Linux's /proc (zero elsewhere): for
//! `weir bench` and the console's health page.

/// CPU time of this process so far (every thread, user and system).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // After the command name in parentheses: fields 14 and 15 are utime and stime.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // In USER_HZ, which Linux fixes at 100 for what it shows user space.
    ticks / 100.0
}

/// Start the peak resident memory afresh (Linux: 5 to clear_refs), so that one run's
/// peak is not an earlier run's.
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A memory figure of /proc/self/status in KiB: `VmRSS:` now, `VmHWM:` the peak.
pub fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
