//! Each source's events per second over the last minutes, sampled every few seconds,
//! so the console's sparklines show the recent past as soon as the page opens.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use weir_runtime::Engine;

/// Seconds between samples.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
const KEPT: usize = 150;

/// Per source: (milliseconds since the epoch, events per second) pairs, oldest first.
#[derive(Default)]
pub struct RateHistory {
    rates: Mutex<HashMap<String, VecDeque<(i64, f64)>>>,
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl RateHistory {
    /// Take one sample of every source; forget the ones that are gone.
    pub fn sample(&self, engine: &Engine, now_ms: i64) {
        let sources = engine.sources();
        let mut rates = self.rates.lock();
        let mut last = self.last.lock();
        rates.retain(|name, _| sources.iter().any(|s| &s.name == name));
        last.retain(|name, _| sources.iter().any(|s| &s.name == name));
        for s in &sources {
            if let Some((then, records)) = last.get(&s.name)
                && now_ms > *then
            {
                let rate =
                    s.records_in.saturating_sub(*records) as f64 * 1000.0 / (now_ms - then) as f64;
                let history = rates.entry(s.name.clone()).or_default();
                if history.len() == KEPT {
                    history.pop_front();
                }
                history.push_back((now_ms, rate));
            }
            last.insert(s.name.clone(), (now_ms, s.records_in));
        }
    }

    /// The samples of `source`, oldest first.
    pub fn of(&self, source: &str) -> Vec<(i64, f64)> {
        self.rates
            .lock()
            .get(source)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Sample every [`EVERY`] until the engine is dropped.
    pub fn start(self: &Arc<Self>, engine: Engine) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let Some(history) = weak.upgrade() else {
                    return;
                };
                history.sample(&engine, now_ms());
            }
        });
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
