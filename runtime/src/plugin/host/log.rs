//! Guest logging: `weir::log` lines (and WASI stdout/stderr) go to the host's log,
//! tagged with the plugin, at most `plugins.log-lines-per-second` per instance.

use std::time::{Duration, Instant};

use wasmtime::Caller;

use super::{MAX_MESSAGE, StoreState, read_guest};

/// At most `per_second` log lines per instance; the rest are counted and reported.
pub(super) struct LogLimit {
    pub(super) tag: String,
    per_second: u32,
    window: Instant,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    pub(super) fn new(tag: &str, per_second: u32) -> Self {
        Self {
            tag: tag.to_string(),
            per_second,
            window: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    pub(super) fn admit(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                tracing::warn!(plugin = %self.tag, dropped = self.dropped, "plugin log lines dropped (rate limit)");
            }
            self.window = Instant::now();
            self.used = 0;
            self.dropped = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

pub(super) fn host_log(mut caller: Caller<'_, StoreState>, level: i32, ptr: i32, len: i32) {
    if !caller.data_mut().log.admit() {
        return;
    }
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return;
    };
    let text = read_guest(
        &memory,
        &caller,
        ptr as u32,
        (len as u32).min(MAX_MESSAGE as u32),
    )
    .map(|b| String::from_utf8_lossy(b).into_owned())
    .unwrap_or_else(|| "(log line outside the plugin's memory)".into());
    let tag = &caller.data().log.tag;
    match level {
        0 => tracing::error!(plugin = %tag, "{text}"),
        1 => tracing::warn!(plugin = %tag, "{text}"),
        _ => tracing::info!(plugin = %tag, "{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_rate_limited_per_second() {
        let mut limit = LogLimit::new("p@v1", 2);
        assert!(limit.admit());
        assert!(limit.admit());
        assert!(
            !limit.admit(),
            "the third line in the same second is dropped"
        );
        assert_eq!(limit.dropped, 1);
        limit.window -= Duration::from_secs(2);
        assert!(limit.admit(), "a new second admits again");
        assert_eq!(limit.dropped, 0);
    }
}
