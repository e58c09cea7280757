//! The engine: the catalog of sources, streams and views, and statement execution.
//! The web layer holds one [`Engine`] and calls into it.
//!
//! This module runs a statement and makes DDL durable; each kind of object has its own
//! file: `sources` (and HTTP ingest), `streams`, `views`, `sinks`, `plugins`, `adhoc` (SELECT
//! over views), `preview` (a query's first rows before it is a view), `introspect` (SHOW, EXPLAIN), `checkpoints` (taking and restoring them).

mod adhoc;
mod checkpoints;
mod introspect;
mod plugins;
mod preview;
mod sinks;
mod sources;
mod streams;
mod views;

pub use checkpoints::CheckpointsStatus;
pub use preview::{LivePreview, Preview};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use dashmap::DashMap;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

use crate::catalog_file::CatalogFile;
use crate::checkpoint::store::CheckpointStore;
use crate::config::RuntimeConfig;
use crate::deadletter::DeadLetterStore;
use crate::metrics::Metrics;
use crate::plugin::{PluginHost, Plugins};
use crate::source::SourceRuntime;
use crate::view::ViewRuntime;
use crate::{Error, Result};
use weir_sql::{Statement, parse_statement};

/// What a statement produced.
#[derive(Debug)]
pub enum SqlOutput {
    /// Rows of a query or SHOW.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        /// Why the answer holds fewer rows than the query gave (a limit), if it does.
        cut: Option<String>,
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
    /// Where ad hoc queries run, and how many at once.
    queries: adhoc::QueryThreads,
    plugins: Plugins,
    streams: DashMap<String, Arc<streams::StreamDef>>,
    sinks: DashMap<String, Arc<crate::sink::SinkRuntime>>,
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
    /// The latest checkpoints taken by this process, written or failed, oldest first.
    checkpoint_history: Mutex<std::collections::VecDeque<checkpoints::CheckpointAttempt>>,
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
        let host = PluginHost::new(config.plugins, Some(config.data_dir.join("plugin-cache")))?;
        let plugins = Plugins::open(host, Some(&config.data_dir))?;
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
        spread_over_cores(config.parallelism);
        let queries = adhoc::QueryThreads::new(&config.queries);
        let engine = Self {
            inner: Arc::new(Inner {
                config,
                sources: DashMap::new(),
                views: DashMap::new(),
                dead_letters,
                metrics: Metrics::new(),
                adhoc: adhoc::adhoc_context(),
                queries,
                plugins,
                streams: DashMap::new(),
                sinks: DashMap::new(),
                catalog_file,
                ddl: tokio::sync::Mutex::new(()),
                next_epoch: AtomicU64::new(checkpoints.next_epoch()),
                checkpoints,
                restoring: Mutex::new(Default::default()),
                restored_from: Mutex::new(None),
                checkpoint_lock: Mutex::new(()),
                alignment: Arc::default(),
                checkpoint_error: Mutex::new(None),
                checkpoint_history: Mutex::new(Default::default()),
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

    /// Whether `sql` only reads (a query, SHOW or EXPLAIN): what a reader may run.
    /// A statement that does not parse counts as reading: running it says why.
    pub fn is_read_only(sql: &str) -> bool {
        match parse_statement(sql) {
            // Ad hoc SQL is checked to read only (no DDL, DML or SET) when it runs.
            Ok(statement) => matches!(
                statement,
                Statement::Query(_)
                    | Statement::ShowSources
                    | Statement::ShowViews
                    | Statement::ShowStreams
                    | Statement::ShowSinks
                    | Statement::ExplainView { .. }
                    | Statement::ExplainCreateView(_)
            ),
            Err(_) => true,
        }
    }

    /// Run one SQL statement.
    pub async fn execute(&self, sql: &str) -> Result<SqlOutput> {
        match parse_statement(sql)? {
            Statement::Query(stmt) => self.query(*stmt).await,
            Statement::ShowSources => self.show_sources(),
            Statement::ShowViews => self.show_views(),
            Statement::ShowStreams => self.show_streams(),
            Statement::ShowSinks => self.show_sinks(),
            Statement::ExplainView { name } => self.explain_view(&name),
            Statement::ExplainCreateView(v) => self.explain_create_view(&v).await,
            ddl => {
                let _guard = self.inner.ddl.lock().await;
                let change = match &ddl {
                    Statement::CreateSource(c) => Some(("source", c.name.clone())),
                    Statement::CreateView(c) => Some(("view", c.name.clone())),
                    Statement::CreateStream(c) => Some(("stream", c.name.clone())),
                    Statement::CreateSink(c) => Some(("sink", c.name.clone())),
                    Statement::DropSource { name, .. }
                    | Statement::DropView { name, .. }
                    | Statement::DropStream { name, .. }
                    | Statement::DropSink { name, .. } => Some(("drop", name.clone())),
                    _ => None,
                };
                // CREATE ... IF NOT EXISTS of an existing object changes nothing to record.
                let existed = change
                    .as_ref()
                    .is_some_and(|(_, name)| self.name_taken(name));
                let output = match ddl {
                    Statement::CreateSource(s) => self.create_source(s, sql),
                    Statement::DropSource { name, if_exists } => self.drop_source(&name, if_exists),
                    Statement::CreateView(v) => self.create_view(v, sql).await,
                    Statement::DropView { name, if_exists } => self.drop_view(&name, if_exists),
                    Statement::CreateStream(c) => self.create_stream(c),
                    Statement::DropStream { name, if_exists } => self.drop_stream(&name, if_exists),
                    Statement::CreateSink(c) => self.create_sink(c, sql),
                    Statement::DropSink { name, if_exists } => self.drop_sink(&name, if_exists),
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
                        return Err(Error::Unavailable(format!(
                            "cannot record the catalog in the data dir, so the statement was undone: {e}"
                        )));
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
            "sink" => self.drop_sink(name, true),
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
        // What the checkpoint held for sinks that were not created again is let go.
        for view in self.inner.views.iter() {
            view.restore_outboxes(0, Vec::new());
        }
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

    /// Stop every source (on shutdown).
    pub fn shut_down(&self) {
        self.inner
            .shut_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for s in self.inner.sources.iter() {
            s.shut_down();
        }
        for s in self.inner.sinks.iter() {
            s.stop(false);
        }
        // Connectors finish their last work (a final commit of offsets) before the
        // process exits, within a bound.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for s in self.inner.sources.iter() {
            s.input.wait_stopped(until);
        }
    }

    /// Whether a source, view, stream or sink has this name (they share one namespace:
    /// the catalog file knows them by name).
    fn name_taken(&self, name: &str) -> bool {
        let i = &self.inner;
        i.sources.contains_key(name)
            || i.views.contains_key(name)
            || i.streams.contains_key(name)
            || i.sinks.contains_key(name)
    }
}

pub(super) fn missing(if_exists: bool, message: String) -> Result<SqlOutput> {
    if if_exists {
        Ok(SqlOutput::Done { message })
    } else {
        Err(Error::NotFound(message))
    }
}

/// Size the pool of worker threads that parallel work (decoding blocks, keyed operator
/// instances) runs on. The pool is process-wide and sized once: a later engine in the
/// same process (tests) shares the first one's.
fn spread_over_cores(parallelism: usize) {
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(parallelism.clamp(1, views::MAX_PARALLELISM))
        .thread_name(|i| format!("weir-worker-{i}"))
        .build_global();
    match built {
        Ok(()) => tracing::info!(parallelism, "worker threads started"),
        // Another engine in this process sized it first (tests): keep that one.
        Err(_) => tracing::debug!(
            threads = rayon::current_num_threads(),
            "worker threads already started"
        ),
    }
}
