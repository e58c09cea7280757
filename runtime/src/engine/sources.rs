//! Sources: CREATE and DROP SOURCE, HTTP ingest, and the sources' status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};

use crate::source::heard::{ChunkSender, Heard};

use parking_lot::Mutex;

use super::{Engine, SqlOutput, missing};
use crate::batch::BatchPolicy;
use crate::options::{self, CommonOptions};
use crate::pipeline::Pipeline;
use crate::source::connector::{self, Feed, SourceDef};
use crate::source::http::IngestReport;
use crate::source::{SourceRuntime, SourceState, SourceStatus};
use crate::{Error, Result};
use weir_sql::{CreateSource, Statement, parse_statement};

impl Engine {
    pub(super) fn create_source(&self, s: CreateSource, sql: &str) -> Result<SqlOutput> {
        let name = s.name.clone();
        if self.name_taken(&name) {
            if s.if_not_exists && self.inner.sources.contains_key(&name) {
                return Ok(SqlOutput::Done {
                    message: format!("source {name} already exists"),
                });
            }
            return Err(Error::Conflict(format!(
                "the name {name} is taken; DROP it first or choose another"
            )));
        }
        let common: CommonOptions = options::parse(&name, &s.options)?;
        let input = connector::open(&SourceDef {
            name: &name,
            columns: &s.columns,
            options: &s.options,
            common: &common,
            config: &self.inner.config,
            restoring: self.replaying(),
            checkpointed: self.inner.checkpoints.enabled(),
        })?;
        let batch = BatchPolicy::new(common.batch(self.inner.config.batch));
        let schema = input.schema();
        let watermark = s.watermark.clone().or_else(|| input.default_watermark());
        if let Some(wm) = &watermark {
            match schema
                .index_of(&wm.column)
                .map(|i| schema.field(i).data_type())
            {
                Err(_) => {
                    return Err(Error::BadRequest(format!(
                        "source {name}: WATERMARK FOR {}: no such column",
                        wm.column
                    )));
                }
                Ok(t) if *t != weir_sql::schema::TIMESTAMP => {
                    return Err(Error::BadRequest(format!(
                        "source {name}: WATERMARK FOR {}: the column must be a TIMESTAMP, not {t}",
                        wm.column
                    )));
                }
                Ok(_) => {}
            }
        }
        let m = &self.inner.metrics;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicBool::new(false));
        // A bounded channel: a pipeline that is behind holds its connector back.
        let (tx, rx) = std::sync::mpsc::sync_channel(self.inner.config.http.buffer_chunks.max(1));
        let mut resume = self.restored_position(&name, sql);
        if resume.as_ref().is_some_and(|(p, _)| !input.accepts(p)) {
            // A checkpoint of an earlier source of this name: its state does not apply.
            self.forget_restored(&name);
            resume = None;
        }
        let columns_read = Arc::new(crate::decode::ColumnsRead::default());
        let heard = Arc::new(Heard::default());
        let failure: Arc<Mutex<Option<String>>> = Default::default();
        let source = Arc::new(SourceRuntime {
            name: name.clone(),
            connector: common.connector.clone(),
            sql: sql.trim().to_string(),
            schema,
            watermark,
            views: Mutex::new(Vec::new()),
            columns_read: columns_read.clone(),
            state: Mutex::new(SourceState::Running),
            ended: Default::default(),
            current_watermark: AtomicI64::new(i64::MIN),
            stop: stop.clone(),
            active: active.clone(),
            input,
            records_in: m.records_in.with_label_values(&[&name]),
            batches: m.batches.with_label_values(&[&name]),
            dead_letters: m.dead_letters.with_label_values(&[&name]),
            watermark_gauge: m.watermark.with_label_values(&[&name]),
            checkpoint: Default::default(),
            checkpointed: self.inner.checkpoints.enabled(),
            // Idle counts from creation: a source that never sends goes idle too.
            heard: heard.clone(),
            failure: failure.clone(),
        });
        let mut pipeline = Pipeline::new(
            source.clone(),
            batch,
            self.inner.dead_letters.clone(),
            m.batch_latency.with_label_values(&[&name]),
            source.input.queued(),
        )
        .idle_after(self.inner.config.idle_timeout)
        .aligned_by(self.inner.alignment.clone());
        let resume_position = resume.as_ref().map(|(p, _)| p.clone());
        if let Some((position, watermark)) = resume {
            pipeline = pipeline.resume_at(position, watermark);
        }
        pipeline.spawn(rx)?;
        // Held until the connector has started: one that fails to start drops its feed,
        // and the pipeline must find the source stopped (not failed) when the channel
        // closes.
        let tx = ChunkSender::new(tx, heard);
        let held = tx.clone();
        let started = source.input.start(
            Feed {
                source: name.clone(),
                schema: source.schema.clone(),
                tx,
                stop,
                active,
                failure,
                records_in: source.records_in.clone(),
                dead_letter_count: source.dead_letters.clone(),
                dead_letters: self.inner.dead_letters.clone(),
                columns_read,
                chunk_rows: batch.max_rows(),
                lag: m.source_lag.clone(),
                shard_metrics: m.shards.clone(),
            },
            resume_position,
        );
        if let Err(e) = started {
            source.shut_down();
            drop(held);
            self.forget_source_metrics(&source);
            return Err(e);
        }
        drop(held);
        self.inner.sources.insert(name.clone(), source);
        tracing::info!(source = %name, connector = %common.connector, "source created");
        Ok(SqlOutput::Done {
            message: format!("source {name} created"),
        })
    }

    pub(super) fn drop_source(&self, name: &str, if_exists: bool) -> Result<SqlOutput> {
        let Some(source) = self.inner.sources.get(name).map(|s| s.clone()) else {
            return missing(if_exists, format!("no source named {name}"));
        };
        let mut users: Vec<String> = (source.views.lock().iter())
            .filter(|v| !v.preview)
            .map(|v| v.name.clone())
            .collect();
        users.extend(self.streams_where(|s| s.source == name));
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "source {name} is read by {}; drop them first",
                users.join(", ")
            )));
        }
        source.shut_down();
        source.input.dropped(name);
        self.inner.sources.remove(name);
        self.forget_source_metrics(&source);
        Ok(SqlOutput::Done {
            message: format!("source {name} dropped"),
        })
    }

    /// Remove a source's metric series (dropped, or never started).
    fn forget_source_metrics(&self, source: &SourceRuntime) {
        let name = source.name.as_str();
        let m = &self.inner.metrics;
        for family in [&m.records_in, &m.batches, &m.dead_letters] {
            let _ = family.remove_label_values(&[name]);
        }
        let _ = m.batch_latency.remove_label_values(&[name]);
        let _ = m.watermark.remove_label_values(&[name]);
        for p in source.input.status().partitions {
            let _ = m.source_lag.remove_label_values(&[name, &p.partition]);
            m.shards.forget(name, &p.partition);
        }
    }

    /// Push a request body into an HTTP source.
    /// A request with an `idempotency_key` already logged is answered as it was then.
    pub fn ingest(
        &self,
        source: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<IngestReport> {
        let s = self.source(source)?;
        s.input
            .write_records(&s, body, idempotency_key, &self.inner.dead_letters)
            .unwrap_or_else(|| {
                Err(Error::BadRequest(format!(
                    "source {source} is fed by its {} connector, not over HTTP",
                    s.connector
                )))
            })
    }

    pub fn source(&self, name: &str) -> Result<Arc<SourceRuntime>> {
        self.inner
            .sources
            .get(name)
            .map(|s| s.clone())
            .ok_or_else(|| Error::NotFound(format!("no source named {name}")))
    }

    pub fn sources(&self) -> Vec<SourceStatus> {
        let mut out: Vec<_> = self.inner.sources.iter().map(|s| s.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Options of a source as declared, for status pages.
    pub fn source_options(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let s = self.source(name)?;
        Ok(parse_statement(&s.sql)
            .ok()
            .and_then(|st| match st {
                Statement::CreateSource(c) => Some(c.options),
                _ => None,
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::RuntimeConfig;

    /// Run a bounded generator into an updating aggregate until the source finishes;
    /// the view's row count and the source.
    async fn run_to_the_end(engine: &Engine) -> (usize, Arc<SourceRuntime>) {
        for sql in [
            "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 20000)",
            "CREATE MATERIALIZED VIEW per_auction AS SELECT auction, count(*) AS n FROM bids GROUP BY auction",
        ] {
            engine.execute(sql).await.expect("setup");
        }
        let source = engine.source("bids").expect("created");
        let deadline = Instant::now() + Duration::from_secs(60);
        while source.status().status != SourceState::Finished {
            assert!(Instant::now() < deadline, "the source did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Ok(SqlOutput::Rows { batches, .. }) = engine.execute("SELECT * FROM per_auction").await
        else {
            panic!("the view answers");
        };
        (batches.iter().map(|b| b.num_rows()).sum(), source)
    }

    /// Without checkpoints nothing reads a snapshot, so an ended source copies none of
    /// its views' groups; with them, it leaves one for every checkpoint to come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ended_source_leaves_a_final_snapshot_only_for_checkpoints() {
        let in_memory = Engine::in_memory(RuntimeConfig::default());
        let (rows, source) = run_to_the_end(&in_memory).await;
        assert!(rows > 0);
        assert!(source.ended.load(Ordering::Acquire));
        assert!(
            source.checkpoint.latest().is_none(),
            "no snapshot without checkpoints"
        );
        in_memory.shut_down();

        let dir = tempfile::tempdir().expect("tmp");
        let config = RuntimeConfig {
            data_dir: dir.path().to_path_buf(),
            ..RuntimeConfig::default()
        };
        let engine = Engine::new(config).expect("starts");
        let (same_rows, source) = run_to_the_end(&engine).await;
        assert_eq!(same_rows, rows);
        assert!(source.ended.load(Ordering::Acquire));
        let snapshot = source.checkpoint.latest().expect("a final snapshot");
        assert_eq!(snapshot.position.offset("event"), Some(20000));
        assert_eq!(snapshot.views.len(), 1);
        engine.shut_down();
    }
}
