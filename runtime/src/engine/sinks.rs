//! Sinks: CREATE and DROP SINK (made by the sink connectors of `crate::sink`, fed by
//! the view they name), and the sinks' status.

use std::sync::Arc;

use super::{Engine, SqlOutput, missing};
use crate::sink::spill::SpillLimit;
use crate::sink::{SinkDef, SinkRuntime, SinkStatus};
use crate::{Error, Result};
use weir_sql::CreateSink;

/// Changed rows a sink may hold undelivered in memory (and in every checkpoint) before
/// it spills further epochs to disk (or, without a data dir, fails).
const DEFAULT_MAX_PENDING_ROWS: usize = 10_000_000;
/// Bytes of spilled epochs a sink may hold before it fails instead of growing without
/// end.
const DEFAULT_MAX_SPILLED_BYTES: u64 = 4 << 30;

impl Engine {
    pub(super) fn create_sink(&self, c: CreateSink, sql: &str) -> Result<SqlOutput> {
        let name = c.name.clone();
        if self.name_taken(&name) {
            if c.if_not_exists && self.inner.sinks.contains_key(&name) {
                return Ok(SqlOutput::Done {
                    message: format!("sink {name} already exists"),
                });
            }
            return Err(Error::Conflict(format!(
                "the name {name} is taken; DROP it first or choose another"
            )));
        }
        if !self.inner.views.contains_key(&c.view)
            && (self.inner.sources.contains_key(&c.view)
                || self.inner.streams.contains_key(&c.view))
        {
            return Err(Error::BadRequest(format!(
                "sink {name}: {} is not a view; a sink writes a materialized view's changes \
                 (CREATE MATERIALIZED VIEW v AS SELECT * FROM {}, then CREATE SINK {name} FROM v)",
                c.view, c.view
            )));
        }
        let view = self.view(&c.view)?;
        let mut options = c.options.clone();
        let max_pending_rows = match options.remove("max_pending_rows") {
            None => Some(DEFAULT_MAX_PENDING_ROWS),
            Some(text) => super::views::parse_row_limit(&text)
                .map_err(|e| Error::BadRequest(format!("sink {name}: max_pending_rows {e}")))?,
        };
        let max_spilled_bytes = match options.remove("max_spilled_bytes") {
            None => Some(DEFAULT_MAX_SPILLED_BYTES),
            Some(text) => parse_byte_limit(&text)
                .map_err(|e| Error::BadRequest(format!("sink {name}: max_spilled_bytes {e}")))?,
        };
        let restoring = self.replaying();
        let sink = crate::sink::open(&SinkDef {
            name: &name,
            view: &view.name,
            source: &view.source,
            schema: &view.schema,
            options: &options,
            dead_letters: &self.inner.dead_letters,
            restoring,
        })?;
        let sinks_dir = self.inner.config.data_dir.join("sinks");
        let file_name = crate::durable::file_name(&name);
        let checkpointed = self.inner.checkpoints.enabled();
        let progress_file = checkpointed.then(|| sinks_dir.join(format!("{file_name}.json")));
        // Spilled epochs must outlive a crash as checkpoints do: only with checkpoints.
        let spill = (checkpointed && max_spilled_bytes != Some(0)).then(|| SpillLimit {
            dir: sinks_dir.join(format!("{file_name}.spill")),
            max_bytes: max_spilled_bytes,
        });
        let feed = view.attach_sink(&name, sql, restoring);
        feed.limit_pending(max_pending_rows, spill);
        let m = &self.inner.metrics;
        let runtime = SinkRuntime::new(
            &name,
            &view.name,
            c.options.get("connector").map_or("", String::as_str),
            sql,
            feed,
            progress_file,
            restoring,
            (
                m.sink_messages.with_label_values(&[&name]),
                m.sink_failures.with_label_values(&[&name]),
            ),
        )
        .and_then(|r| {
            let r = Arc::new(r);
            r.spawn(sink)?;
            Ok(r)
        });
        let runtime = match runtime {
            Ok(r) => r,
            Err(e) => {
                view.detach_sink(&name);
                self.forget_sink_metrics(&name);
                return Err(e);
            }
        };
        self.inner.sinks.insert(name.clone(), runtime);
        tracing::info!(sink = %name, view = %view.name, "sink created");
        Ok(SqlOutput::Done {
            message: format!("sink {name} created"),
        })
    }

    pub(super) fn drop_sink(&self, name: &str, if_exists: bool) -> Result<SqlOutput> {
        let Some((_, sink)) = self.inner.sinks.remove(name) else {
            return missing(if_exists, format!("no sink named {name}"));
        };
        // Detached first: no checkpoint seals (and spills) its changes after its spill
        // directory is removed.
        if let Some(view) = self.inner.views.get(&sink.view) {
            view.detach_sink(name);
        }
        sink.stop(true);
        self.forget_sink_metrics(name);
        Ok(SqlOutput::Done {
            message: format!("sink {name} dropped"),
        })
    }

    fn forget_sink_metrics(&self, name: &str) {
        let m = &self.inner.metrics;
        let _ = m.sink_messages.remove_label_values(&[name]);
        let _ = m.sink_failures.remove_label_values(&[name]);
    }

    /// The sinks that write `view`'s changes, by name.
    pub(super) fn sinks_of(&self, view: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .sinks
            .iter()
            .filter(|s| s.view == view)
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn sink(&self, name: &str) -> Result<SinkStatus> {
        self.inner
            .sinks
            .get(name)
            .map(|s| s.status())
            .ok_or_else(|| Error::NotFound(format!("no sink named {name}")))
    }

    pub fn sinks(&self) -> Vec<SinkStatus> {
        let mut out: Vec<_> = self.inner.sinks.iter().map(|s| s.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// A number of bytes (`_` between digits allowed, 0 for none), or `'unbounded'`.
fn parse_byte_limit(text: &str) -> std::result::Result<Option<u64>, String> {
    if text.trim().eq_ignore_ascii_case("unbounded") {
        return Ok(None);
    }
    text.trim()
        .replace('_', "")
        .parse::<u64>()
        .map(Some)
        .map_err(|_| format!("must be a number of bytes or 'unbounded', not '{text}'"))
}
