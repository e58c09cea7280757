//! The engine: the catalog of sources and views, statement execution, HTTP ingest and
//! ad hoc queries. The web layer holds one [`Engine`] and calls into it.

mod checkpoints;
mod plugins;
mod streams;

pub use checkpoints::CheckpointsStatus;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};

use dashmap::DashMap;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;
use parking_lot::Mutex;

use crate::batch::BatchPolicy;
use crate::catalog_file::CatalogFile;
use crate::checkpoint::store::CheckpointStore;
use crate::config::RuntimeConfig;
use crate::deadletter::DeadLetterStore;
use crate::decode::JsonDecoder;
use crate::metrics::Metrics;
use crate::options::{self, CommonOptions};
use crate::pipeline::Pipeline;
use crate::plugin::{PluginHost, Plugins};
use crate::source::http::{self, HttpInput, IngestReport};
use crate::source::nexmark::{self, NexmarkOptions};
use crate::source::{SourceRuntime, SourceState, SourceStatus};
use crate::view::{ViewRuntime, ViewStatus, ViewTable};
use crate::{Error, Result};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{
    ContinuousQuery, CreateSource, CreateView, Statement, WatermarkSpec, parse_statement,
};

/// What a statement produced.
#[derive(Debug)]
pub enum SqlOutput {
    /// Rows of a query or SHOW.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A statement that changed the catalog, and what it did.
    Done { message: String },
}

/// The running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    sources: DashMap<String, Arc<SourceRuntime>>,
    views: DashMap<String, Arc<ViewRuntime>>,
    dead_letters: Arc<DeadLetterStore>,
    metrics: Metrics,
    adhoc: SessionContext,
    plugins: Plugins,
    streams: DashMap<String, Arc<streams::StreamDef>>,
    /// The DDL in force, on disk.
    catalog_file: CatalogFile,
    /// Catalog changes happen one at a time.
    ddl: tokio::sync::Mutex<()>,
    checkpoints: CheckpointStore,
    restoring: Mutex<checkpoints::Restoring>,
    restored_from: Mutex<Option<u64>>,
    next_epoch: AtomicU64,
    /// Checkpoints are taken one at a time.
    checkpoint_lock: Mutex<()>,
    /// Where the inputs of joins meet to be snapshotted together.
    alignment: Arc<crate::checkpoint::align::JoinAlignment>,
    checkpoint_error: Mutex<Option<String>>,
    checkpoints_started: AtomicBool,
    shut_down: AtomicBool,
}

impl Engine {
    /// Start an engine; the data directory must exist and be writable.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let dead_letters = Arc::new(DeadLetterStore::open(
            Some(&config.data_dir),
            config.dead_letters_in_memory,
        )?);
        let host = PluginHost::new(config.plugins, Some(config.data_dir.join("plugin-cache")))
            .map_err(Error::Internal)?;
        let plugins = Plugins::open(host, Some(&config.data_dir)).map_err(Error::Internal)?;
        let catalog_file = CatalogFile::open(Some(&config.data_dir))?;
        let checkpoints = CheckpointStore::open(Some(&config.data_dir), config.checkpoints.keep);
        let restored = checkpoints.restore()?;
        let engine = Self::with_parts(config, dead_letters, plugins, catalog_file, checkpoints);
        if let Some(r) = restored {
            tracing::info!(epoch = r.epoch, "restoring checkpoint");
            *engine.inner.restored_from.lock() = Some(r.epoch);
            engine.inner.restoring.lock().checkpoint = Some(r);
        }
        Ok(engine)
    }

    /// An engine that keeps dead letters and plugins in memory only (tests).
    pub fn in_memory(config: RuntimeConfig) -> Self {
        let keep = config.dead_letters_in_memory;
        let host = PluginHost::new(config.plugins, None).expect("wasmtime starts");
        let plugins = Plugins::open(host, None).expect("no files to open");
        Self::with_parts(
            config,
            Arc::new(DeadLetterStore::open(None, keep).expect("no file to open")),
            plugins,
            CatalogFile::open(None).expect("no file to open"),
            CheckpointStore::open(None, 1),
        )
    }

    fn with_parts(
        config: RuntimeConfig,
        dead_letters: Arc<DeadLetterStore>,
        plugins: Plugins,
        catalog_file: CatalogFile,
        checkpoints: CheckpointStore,
    ) -> Self {
        // Ad hoc SQL reads views only: no file formats, no URL tables.
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_information_schema(false))
            .with_default_features()
            .with_table_factories(Default::default())
            .build();
        let engine = Self {
            inner: Arc::new(Inner {
                config,
                sources: DashMap::new(),
                views: DashMap::new(),
                dead_letters,
                metrics: Metrics::new(),
                adhoc: SessionContext::new_with_state(state),
                plugins,
                streams: DashMap::new(),
                catalog_file,
                ddl: tokio::sync::Mutex::new(()),
                next_epoch: AtomicU64::new(checkpoints.next_epoch()),
                checkpoints,
                restoring: Mutex::new(Default::default()),
                restored_from: Mutex::new(None),
                checkpoint_lock: Mutex::new(()),
                alignment: Arc::default(),
                checkpoint_error: Mutex::new(None),
                checkpoints_started: AtomicBool::new(false),
                shut_down: AtomicBool::new(false),
            }),
        };
        for udf in engine.plugin_functions() {
            engine.inner.adhoc.register_udf(udf);
        }
        engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn dead_letters(&self) -> &DeadLetterStore {
        &self.inner.dead_letters
    }

    /// Run one SQL statement.
    pub async fn execute(&self, sql: &str) -> Result<SqlOutput> {
        match parse_statement(sql)? {
            Statement::Query(stmt) => self.query(*stmt).await,
            Statement::ShowSources => Ok(self.show_sources()),
            Statement::ShowViews => Ok(self.show_views()),
            Statement::ShowStreams => Ok(self.show_streams()),
            Statement::ExplainView { name } => self.explain_view(&name),
            Statement::ExplainCreateView(v) => {
                let query = ContinuousQuery::plan_with_functions(
                    &v,
                    &self.catalog(),
                    &self.plugin_functions(),
                )
                .await?;
                let n = query.operators.len() + 1;
                Ok(explain_rows(
                    query
                        .operators
                        .into_iter()
                        .chain([("sink".to_string(), format!("view {}", v.name))]),
                    std::iter::repeat_n("not running".to_string(), n),
                ))
            }
            ddl => {
                let _guard = self.inner.ddl.lock().await;
                let change = match &ddl {
                    Statement::CreateSource(c) => Some(("source", c.name.clone())),
                    Statement::CreateView(c) => Some(("view", c.name.clone())),
                    Statement::CreateStream(c) => Some(("stream", c.name.clone())),
                    Statement::DropSource { name, .. }
                    | Statement::DropView { name, .. }
                    | Statement::DropStream { name, .. } => Some(("drop", name.clone())),
                    _ => None,
                };
                // CREATE ... IF NOT EXISTS of an existing object changes nothing to record.
                let existed = change.as_ref().is_some_and(|(_, name)| {
                    self.inner.sources.contains_key(name)
                        || self.inner.views.contains_key(name)
                        || self.inner.streams.contains_key(name)
                });
                let output = match ddl {
                    Statement::CreateSource(s) => self.create_source(s, sql),
                    Statement::DropSource { name, if_exists } => self.drop_source(&name, if_exists),
                    Statement::CreateView(v) => self.create_view(v, sql).await,
                    Statement::DropView { name, if_exists } => self.drop_view(&name, if_exists),
                    Statement::CreateStream(c) => self.create_stream(c),
                    Statement::DropStream { name, if_exists } => self.drop_stream(&name, if_exists),
                    _ => Err(Error::Internal("statement kind handled above".into())),
                }?;
                // What is in force reaches the disk before the answer.
                if let Some((kind, name)) = change.filter(|(kind, _)| *kind == "drop" || !existed) {
                    let file = &self.inner.catalog_file;
                    let saved = if kind == "drop" {
                        file.forget(&name)
                    } else {
                        file.record(kind, &name, sql)
                    };
                    if let Err(e) = saved {
                        if kind != "drop" {
                            self.undo_create(kind, &name);
                        }
                        return Err(Error::Io(std::io::Error::other(format!(
                            "cannot record the catalog in the data dir, so the statement was undone: {e}"
                        ))));
                    }
                    self.checkpoint_after_ddl();
                }
                Ok(output)
            }
        }
    }

    fn undo_create(&self, kind: &str, name: &str) {
        let _ = match kind {
            "source" => self.drop_source(name, true),
            "view" => self.drop_view(name, true),
            _ => self.drop_stream(name, true),
        };
    }

    /// Replay the catalog of the data dir (at start, before serving). A statement that
    /// no longer runs (a plugin that fails to load, say) stays in the catalog, so it
    /// comes back once the cause is fixed; the answer lists them.
    ///
    /// Sources resume at the positions of the newest checkpoint and views take its
    /// state; generators start once every view is back, and checkpoints start after.
    pub async fn restore_catalog(&self) -> Vec<String> {
        self.inner.restoring.lock().replaying = true;
        let mut problems = Vec::new();
        for entry in self.inner.catalog_file.entries() {
            match self.execute(&entry.sql).await {
                Ok(_) => tracing::info!(kind = %entry.kind, name = %entry.name, "restored"),
                Err(e) => {
                    let problem = format!(
                        "{} {} could not be restored: {e}; its statement stays in the catalog: {}",
                        entry.kind, entry.name, entry.sql
                    );
                    tracing::warn!("{problem}");
                    problems.push(problem);
                }
            }
        }
        *self.inner.restoring.lock() = Default::default();
        self.replay_logs().await;
        for source in self.inner.sources.iter() {
            if !source.views.lock().is_empty() {
                source
                    .active
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.start_checkpoints();
        problems
    }

    async fn query(&self, stmt: ast::Statement) -> Result<SqlOutput> {
        if let ast::Statement::Query(q) = &stmt {
            for name in weir_sql::planner::relations(q) {
                if self.inner.sources.contains_key(&name) || self.inner.streams.contains_key(&name)
                {
                    return Err(Error::BadRequest(format!(
                        "{name} is a source or stream (unbounded) and cannot be queried directly: \
                         CREATE MATERIALIZED VIEW over it and query the view"
                    )));
                }
            }
        }
        let state = self.inner.adhoc.state();
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
            .await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        let df = self.inner.adhoc.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(SqlOutput::Rows { schema, batches })
    }

    fn create_source(&self, s: CreateSource, sql: &str) -> Result<SqlOutput> {
        let name = s.name.clone();
        if self.inner.sources.contains_key(&name)
            || self.inner.views.contains_key(&name)
            || self.inner.streams.contains_key(&name)
        {
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
        if let Some(f) = common.format.as_deref()
            && !f.eq_ignore_ascii_case("json")
        {
            return Err(Error::BadRequest(format!(
                "source {name}: format '{f}' is not supported; use 'json'"
            )));
        }
        let known = match common.connector.as_str() {
            "http" => crate::source::http::OPTIONS,
            "file" => crate::source::file::OPTIONS,
            "nexmark" => nexmark::OPTIONS,
            other => {
                return Err(Error::BadRequest(format!(
                    "source {name}: connector '{other}' is not supported; use 'http', 'nexmark' or 'file'"
                )));
            }
        };
        if let Some(unknown) = s.options.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Error::BadRequest(format!(
                "source {name}: unknown option '{unknown}' for connector '{}'; known options: {}",
                common.connector,
                known.join(", ")
            )));
        }
        let file = match common.connector.as_str() {
            "file" => {
                let path = s.options.get("path").ok_or_else(|| {
                    Error::BadRequest(format!(
                        "source {name}: a file source needs path = 'name.jsonl' (inside {})",
                        self.inner.config.files_dir().display()
                    ))
                })?;
                Some(crate::source::file::resolve(
                    &self.inner.config.files_dir(),
                    path,
                )?)
            }
            _ => None,
        };
        let batch = BatchPolicy::new(common.batch(self.inner.config.batch));
        let (schema, watermark) = match common.connector.as_str() {
            "nexmark" => {
                if !s.columns.is_empty() {
                    return Err(Error::BadRequest(format!(
                        "source {name}: nexmark sources take their columns from the generator; leave out the column list"
                    )));
                }
                let opts: NexmarkOptions = options::parse(&name, &s.options)?;
                let default_wm = WatermarkSpec {
                    column: "date_time".into(),
                    delay: std::time::Duration::from_secs(4),
                };
                (
                    opts.table.schema(),
                    Some(s.watermark.clone().unwrap_or(default_wm)),
                )
            }
            _ => {
                if s.columns.is_empty() {
                    return Err(Error::BadRequest(format!(
                        "source {name}: declare its columns, e.g. CREATE SOURCE {name} (id BIGINT, ts TIMESTAMP) WITH (...)"
                    )));
                }
                (
                    Arc::new(Schema::new(s.columns.clone())),
                    s.watermark.clone(),
                )
            }
        };
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
        let buffer = self.inner.config.http.buffer_chunks.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(buffer);
        let buffered = Arc::new(AtomicUsize::new(0));
        let mut resume = self.restored_position(&name, sql);
        let wal = match common.connector.as_str() {
            "http" if self.inner.checkpoints.enabled() => Some(self.open_wal(&name)?),
            _ => None,
        };
        // An HTTP source replays its log after the catalog: from the checkpoint's
        // position if the checkpoint was taken on this log, else from its start.
        let replay_from = wal.as_ref().map(|wal| {
            let from = match &resume {
                Some((p, _)) if p.0.get(http::WAL_ID).map(String::as_str) == Some(wal.id()) => {
                    p.offset(http::WAL_POSITION).unwrap_or(0)
                }
                // A checkpoint of an earlier source of this name: its state does not apply.
                Some(_) => {
                    self.forget_restored(&name);
                    resume = None;
                    0
                }
                None => 0,
            };
            tracing::info!(source = %name, from, end = wal.end(), "write-ahead log opened");
            from
        });
        let http = (common.connector == "http").then(|| HttpInput {
            tx: tx.clone(),
            buffered: buffered.clone(),
            capacity: buffer,
            decoder: JsonDecoder::new(schema.clone()),
            next_position: AtomicU64::new(0),
            wal,
            replay_from: Mutex::new(replay_from),
        });
        let source = Arc::new(SourceRuntime {
            name: name.clone(),
            connector: common.connector.clone(),
            sql: sql.trim().to_string(),
            schema,
            watermark,
            views: Mutex::new(Vec::new()),
            state: Mutex::new(SourceState::Running),
            current_watermark: AtomicI64::new(i64::MIN),
            stop: stop.clone(),
            active: active.clone(),
            http,
            records_in: m.records_in.with_label_values(&[&name]),
            batches: m.batches.with_label_values(&[&name]),
            dead_letters: m.dead_letters.with_label_values(&[&name]),
            watermark_gauge: m.watermark.with_label_values(&[&name]),
            checkpoint: Default::default(),
            // Idle counts from creation: a source that never sends goes idle too.
            last_chunk_ms: AtomicI64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            ),
        });
        let mut pipeline = Pipeline::new(
            source.clone(),
            batch,
            self.inner.dead_letters.clone(),
            m.batch_latency.with_label_values(&[&name]),
            source.http.as_ref().map(|_| buffered),
        )
        .idle_after(self.inner.config.idle_timeout)
        .aligned_by(self.inner.alignment.clone());
        let start_event = resume
            .as_ref()
            .and_then(|(p, _)| p.offset(nexmark::POSITION))
            .unwrap_or(0);
        let file_offset = resume
            .as_ref()
            .and_then(|(p, _)| p.offset(crate::source::file::POSITION))
            .unwrap_or(0);
        if let Some((position, watermark)) = resume {
            pipeline = pipeline.resume_at(position, watermark);
        }
        pipeline.spawn(rx)?;
        if let Some(path) = file {
            crate::source::file::FileReader {
                source: name.clone(),
                path,
                start: file_offset,
                decoder: JsonDecoder::new(source.schema.clone()),
                tx: tx.clone(),
                stop: stop.clone(),
                active: active.clone(),
                records_in: source.records_in.clone(),
                dead_letter_count: source.dead_letters.clone(),
                dead_letters: self.inner.dead_letters.clone(),
            }
            .spawn()?;
        }
        if common.connector == "nexmark" {
            let opts: NexmarkOptions = options::parse(&name, &s.options)?;
            nexmark::spawn(
                &name,
                &opts,
                start_event,
                batch.max_rows().min(4096),
                tx,
                stop,
                active,
                source.records_in.clone(),
            )?;
        }
        self.inner.sources.insert(name.clone(), source);
        tracing::info!(source = %name, connector = %common.connector, "source created");
        Ok(SqlOutput::Done {
            message: format!("source {name} created"),
        })
    }

    fn drop_source(&self, name: &str, if_exists: bool) -> Result<SqlOutput> {
        let Some(source) = self.inner.sources.get(name).map(|s| s.clone()) else {
            return missing(if_exists, format!("no source named {name}"));
        };
        let mut users: Vec<String> = source.views.lock().iter().map(|v| v.name.clone()).collect();
        users.extend(self.streams_where(|s| s.source == name));
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "source {name} is read by {}; drop them first",
                users.join(", ")
            )));
        }
        source.shut_down();
        if let Some(wal) = source.http.as_ref().and_then(|h| h.wal.as_ref())
            && let Err(e) = wal.destroy()
        {
            tracing::warn!(source = %name, error = %e, "cannot remove the write-ahead log of a dropped source");
        }
        self.inner.sources.remove(name);
        let m = &self.inner.metrics;
        for family in [&m.records_in, &m.batches, &m.dead_letters] {
            let _ = family.remove_label_values(&[name]);
        }
        let _ = m.batch_latency.remove_label_values(&[name]);
        let _ = m.watermark.remove_label_values(&[name]);
        Ok(SqlOutput::Done {
            message: format!("source {name} dropped"),
        })
    }

    async fn create_view(&self, v: CreateView, sql: &str) -> Result<SqlOutput> {
        let name = v.name.clone();
        if self.inner.views.contains_key(&name)
            || self.inner.sources.contains_key(&name)
            || self.inner.streams.contains_key(&name)
        {
            if v.if_not_exists && self.inner.views.contains_key(&name) {
                return Ok(SqlOutput::Done {
                    message: format!("view {name} already exists"),
                });
            }
            return Err(Error::Conflict(format!(
                "the name {name} is taken; DROP it first or choose another"
            )));
        }
        // Views it reads are tables a source may be joined with (stream-table joins).
        let mut tables = weir_sql::planner::LookupTables::new();
        for name in weir_sql::planner::view_relations(&v.query) {
            if let Some(view) = self.inner.views.get(&name) {
                tables.insert(name, Arc::new(ViewTable(view.clone())));
            }
        }
        let table_names: Vec<String> = tables.keys().cloned().collect();
        let query =
            ContinuousQuery::plan_with(&v, &self.catalog(), &self.plugin_functions(), &tables)
                .await?;
        let mut plugins = self.plugins_called_by(&v.query);
        let mut operators = query.operators.clone();
        // A view over a stream runs on the stream's source, behind the stream's transform.
        let stream = self.inner.streams.get(&query.source).map(|s| s.clone());
        let (source_name, operator) = match &stream {
            Some(s) => {
                if !plugins.iter().any(|p| Arc::ptr_eq(p, &s.plugin)) {
                    plugins.push(s.plugin.clone());
                }
                operators.insert(
                    1,
                    (
                        "transform".to_string(),
                        format!(
                            "stream {} = plugin {}.{}",
                            s.name, s.plugin.name, s.transform
                        ),
                    ),
                );
                let operator: Box<dyn weir_sql::Operator> =
                    Box::new(crate::plugin::transform::TransformThen {
                        plugin: s.plugin.clone(),
                        transform: s.transform.clone(),
                        then: query.operator,
                    });
                (s.source.clone(), operator)
            }
            None => (query.source.clone(), query.operator),
        };
        let source = self
            .inner
            .sources
            .get(&source_name)
            .map(|s| s.clone())
            .ok_or_else(|| Error::NotFound(format!("no source named {source_name}")))?;
        // A join of several sources: every input feeds the view from its own pipeline.
        let mut inputs = Vec::new();
        if !query.other_sources.is_empty() {
            if stream.is_some()
                || query
                    .other_sources
                    .iter()
                    .any(|s| self.inner.streams.contains_key(s))
            {
                return Err(Error::BadRequest(format!(
                    "view {name} joins a stream: joins of several inputs read sources only, for now"
                )));
            }
            if !plugins.is_empty() {
                return Err(Error::BadRequest(format!(
                    "view {name}: plugin functions in a join of several sources are not supported yet"
                )));
            }
            inputs.push(source.clone());
            for other in &query.other_sources {
                inputs.push(self.source(other)?);
            }
        }
        let m = &self.inner.metrics;
        let view = Arc::new(
            ViewRuntime::new(
                name.clone(),
                source_name.clone(),
                sql.trim().to_string(),
                query.description.clone(),
                operators,
                query.output_schema.clone(),
                operator,
                self.inner.config.view_max_rows,
                m.late_rows.with_label_values(&[&name]),
                m.rows_emitted.with_label_values(&[&name]),
            )
            .with_plugins(plugins)
            .with_stream(stream.map(|s| s.name.clone()))
            .with_checkpoints(self.inner.checkpoints.enabled())
            .with_inputs(&inputs)
            .with_tables(table_names),
        );
        self.inner.adhoc.register_table(
            TableReference::bare(name.as_str()),
            Arc::new(ViewTable(view.clone())),
        )?;
        self.restore_view(&view);
        let fed_by = if inputs.is_empty() {
            vec![source]
        } else {
            inputs
        };
        for s in &fed_by {
            s.views.lock().push(view.clone());
            if !self.replaying() {
                s.active.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.inner.views.insert(name.clone(), view);
        tracing::info!(view = %name, source = %query.source, plan = %query.description, "view created");
        Ok(SqlOutput::Done {
            message: format!("view {name} created"),
        })
    }

    /// What a view may read: every source's schema and watermark.
    fn catalog(&self) -> SourceCatalog {
        let info = |name: &String, schema: &SchemaRef, watermark: &Option<WatermarkSpec>| {
            let (schema, watermark) = (schema.clone(), watermark.clone());
            (name.clone(), SourceInfo { schema, watermark })
        };
        let sources = self
            .inner
            .sources
            .iter()
            .map(|s| info(s.key(), &s.schema, &s.watermark));
        let streams = self
            .inner
            .streams
            .iter()
            .map(|s| info(s.key(), &s.schema, &s.watermark));
        sources.chain(streams).collect()
    }

    /// `EXPLAIN VIEW name`: the running view's operators and their live state.
    fn explain_view(&self, name: &str) -> Result<SqlOutput> {
        let view = self.view(name)?;
        let status = view.status();
        let source = self.source(&view.source)?.status();
        let states = view.operators.iter().map(|(op, detail)| match op.as_str() {
            "source" => {
                // A join lists each of its sources: the detail starts with the name.
                let named = detail
                    .split(',')
                    .next()
                    .and_then(|n| self.source(n).ok())
                    .map(|s| s.status());
                let source = named.as_ref().unwrap_or(&source);
                format!(
                    "{}, {} records in, watermark {}",
                    serde_json::to_value(&source.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    source.records_in,
                    source
                        .watermark_ms
                        .map_or("none yet".to_string(), |w| w.to_string())
                )
            }
            "window" => format!("{} open windows", status.open_windows),
            "aggregate" => format!("{} bytes of state", status.state_bytes),
            "query" => format!("{} bytes of held rows", status.state_bytes),
            _ => "stateless".to_string(),
        });
        let sink = format!(
            "{} rows, {} emitted, {} late",
            status.rows, status.rows_emitted, status.late_rows
        );
        Ok(explain_rows(
            view.operators
                .iter()
                .cloned()
                .chain([("sink".to_string(), format!("view {name}"))]),
            states.chain([sink]),
        ))
    }

    fn drop_view(&self, name: &str, if_exists: bool) -> Result<SqlOutput> {
        let mut readers: Vec<String> = self
            .inner
            .views
            .iter()
            .filter(|v| v.tables.iter().any(|t| t == name))
            .map(|v| v.name.clone())
            .collect();
        if !readers.is_empty() {
            readers.sort();
            return Err(Error::BadRequest(format!(
                "view {name} is joined by {}: drop {} first",
                readers.join(", "),
                if readers.len() == 1 { "it" } else { "them" }
            )));
        }
        let Some((_, view)) = self.inner.views.remove(name) else {
            return missing(if_exists, format!("no view named {name}"));
        };
        let fed_by = if view.is_join() {
            view.input_names.clone()
        } else {
            vec![view.source.clone()]
        };
        for s in fed_by {
            if let Some(source) = self.inner.sources.get(&s) {
                source.views.lock().retain(|v| v.name != name);
            }
        }
        self.inner
            .adhoc
            .deregister_table(TableReference::bare(name))?;
        // A view of the same name later starts its counters from zero.
        let m = &self.inner.metrics;
        let _ = m.late_rows.remove_label_values(&[name]);
        let _ = m.rows_emitted.remove_label_values(&[name]);
        Ok(SqlOutput::Done {
            message: format!("view {name} dropped"),
        })
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
        let input = s.http.as_ref().ok_or_else(|| {
            Error::BadRequest(format!(
                "source {source} is fed by its {} connector, not over HTTP",
                s.connector
            ))
        })?;
        if *s.state.lock() != SourceState::Running {
            return Err(Error::Conflict(format!("source {source} is not running")));
        }
        input.ingest(&s, body, idempotency_key, &self.inner.dead_letters)
    }

    pub fn source(&self, name: &str) -> Result<Arc<SourceRuntime>> {
        self.inner
            .sources
            .get(name)
            .map(|s| s.clone())
            .ok_or_else(|| Error::NotFound(format!("no source named {name}")))
    }

    pub fn view(&self, name: &str) -> Result<Arc<ViewRuntime>> {
        self.inner
            .views
            .get(name)
            .map(|v| v.clone())
            .ok_or_else(|| Error::NotFound(format!("no view named {name}")))
    }

    pub fn sources(&self) -> Vec<SourceStatus> {
        let mut out: Vec<_> = self.inner.sources.iter().map(|s| s.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn views(&self) -> Vec<ViewStatus> {
        let mut out: Vec<_> = self.inner.views.iter().map(|v| v.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn show_sources(&self) -> SqlOutput {
        let s = self.sources();
        rows(vec![
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    s.iter().map(|s| s.name.clone()),
                )),
            ),
            (
                "connector",
                Arc::new(StringArray::from_iter_values(
                    s.iter().map(|s| s.connector.clone()),
                )),
            ),
            (
                "status",
                Arc::new(StringArray::from_iter_values(
                    s.iter().map(|s| format!("{:?}", s.status).to_lowercase()),
                )),
            ),
            (
                "records_in",
                Arc::new(UInt64Array::from_iter_values(
                    s.iter().map(|s| s.records_in),
                )),
            ),
            (
                "dead_letters",
                Arc::new(UInt64Array::from_iter_values(
                    s.iter().map(|s| s.dead_letters),
                )),
            ),
            (
                "watermark_ms",
                Arc::new(Int64Array::from_iter(s.iter().map(|s| s.watermark_ms))),
            ),
        ])
    }

    fn show_views(&self) -> SqlOutput {
        let v = self.views();
        rows(vec![
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    v.iter().map(|v| v.name.clone()),
                )),
            ),
            (
                "source",
                Arc::new(StringArray::from_iter_values(
                    v.iter().map(|v| v.source.clone()),
                )),
            ),
            (
                "rows",
                Arc::new(UInt64Array::from_iter_values(
                    v.iter().map(|v| v.rows as u64),
                )),
            ),
            (
                "late_rows",
                Arc::new(UInt64Array::from_iter_values(v.iter().map(|v| v.late_rows))),
            ),
            (
                "plan",
                Arc::new(StringArray::from_iter_values(
                    v.iter().map(|v| v.plan.clone()),
                )),
            ),
        ])
    }

    /// Stop every source (on shutdown).
    pub fn shut_down(&self) {
        self.inner
            .shut_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for s in self.inner.sources.iter() {
            s.shut_down();
        }
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

/// EXPLAIN's answer: one row per operator, source first.
fn explain_rows(
    operators: impl Iterator<Item = (String, String)>,
    states: impl Iterator<Item = String>,
) -> SqlOutput {
    let (names, details): (Vec<String>, Vec<String>) = operators.unzip();
    let states: Vec<String> = states.collect();
    rows(vec![
        ("operator", Arc::new(StringArray::from(names))),
        ("detail", Arc::new(StringArray::from(details))),
        ("state", Arc::new(StringArray::from(states))),
    ])
}

fn missing(if_exists: bool, message: String) -> Result<SqlOutput> {
    if if_exists {
        Ok(SqlOutput::Done { message })
    } else {
        Err(Error::NotFound(message))
    }
}

fn rows(columns: Vec<(&str, ArrayRef)>) -> SqlOutput {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    );
    match batch {
        Ok(b) => SqlOutput::Rows {
            schema,
            batches: vec![b],
        },
        Err(e) => SqlOutput::Done {
            message: format!("internal error: {e}"),
        },
    }
}
