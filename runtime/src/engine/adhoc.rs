//! Ad hoc queries: a SELECT over views' current rows, planned and run by DataFusion.
//! Sources and streams are unbounded and cannot be queried directly; DDL, DML and
//! file or URL tables are refused. Each query runs within limits (runtime.queries):
//! its own memory pool, a time limit, a cut answer, and a bound on how many run at once,
//! on threads apart from ingest, the pipelines and the API.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;

use super::{Engine, SqlOutput};
use crate::config::QueryLimits;
use crate::{Error, Result};

/// The session ad hoc SQL runs in: it reads views only (no file formats, no URL tables).
/// Literals with a decimal point are exact decimals, as in views (and PostgreSQL).
pub(super) fn adhoc_context() -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(false);
    config.options_mut().sql_parser.parse_float_as_decimal = true;
    config.options_mut().sql_parser.collect_spans = true;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_table_factories(Default::default())
        .with_physical_optimizer_rule(Arc::new(YieldingJoins))
        .build();
    SessionContext::new_with_state(state)
}

impl Engine {
    pub(super) async fn query(&self, stmt: ast::Statement) -> Result<SqlOutput> {
        if let ast::Statement::Query(q) = &stmt {
            // The sources inside TUMBLE(...) and HOP(...) count too.
            for name in weir_sql::planner::view_relations(q) {
                if self.inner.sources.contains_key(&name) || self.inner.streams.contains_key(&name)
                {
                    return Err(Error::BadRequest(format!(
                        "{name} is a source or stream (unbounded) and cannot be queried directly: \
                         CREATE MATERIALIZED VIEW over it and query the view"
                    )));
                }
            }
        }
        let limits = self.inner.config.queries;
        let slot = self.inner.queries.take_slot(limits.max_concurrent)?;
        // Each query has a memory pool of its own over the views' tables.
        // No spilling to disk: over its memory a query stops, it does not fill /tmp.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let state = SessionStateBuilder::new_from_existing(self.inner.adhoc.state())
            .with_runtime_env(runtime)
            .build();
        let work = async move {
            let _slot = slot;
            run(SessionContext::new_with_state(state), stmt, limits).await
        };
        // On threads of its own, so that it cannot starve ingest, pipelines or the API;
        // dropping it at the time limit cancels it.
        // A client that goes away drops this future: the guard cancels the query then.
        let mut task = AbortOnDrop(self.inner.queries.spawn(work));
        match tokio::time::timeout(limits.timeout, &mut task.0).await {
            Ok(Ok(result)) => result.map_err(|e| over_memory(e, limits.memory_bytes)),
            Ok(Err(e)) => Err(Error::Internal(format!("the query's task failed: {e}"))),
            Err(_) => {
                task.0.abort();
                // It stops at its next yield; its slot is free once it has.
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut task.0).await;
                Err(Error::BadRequest(format!(
                    "the query ran past the time limit of ad hoc queries ({:?}, \
                     runtime.queries.timeout) and was cancelled",
                    limits.timeout
                )))
            }
        }
    }
}

/// Cancels a query's task when whoever waits for it goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plan and run one ad hoc query, its answer cut at the row and byte limits.
async fn run(ctx: SessionContext, stmt: ast::Statement, limits: QueryLimits) -> Result<SqlOutput> {
    let plan = ctx
        .state()
        .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
        .await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)?;
    let df = ctx.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await?;
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
    let mut cut = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        if rows == limits.max_rows {
            cut = Some(format!(
                "the answer holds its first {} rows (runtime.queries.max-rows)",
                limits.max_rows
            ));
            break;
        }
        let take = batch.num_rows().min(limits.max_rows - rows);
        if take < batch.num_rows() {
            cut = Some(format!(
                "the answer holds its first {} rows (runtime.queries.max-rows)",
                limits.max_rows
            ));
        }
        let mut batch = batch.slice(0, take);
        let mut size = slice_bytes(&batch);
        if bytes + size > limits.max_bytes {
            // The rows of this batch that still fit, about (rows are of uneven width).
            let fit = (limits.max_bytes - bytes) * batch.num_rows() / size.max(1);
            batch = batch.slice(0, fit);
            size = slice_bytes(&batch);
            if fit > 0 && bytes + size <= limits.max_bytes {
                rows += fit;
                batches.push(batch);
            }
            cut = Some(format!(
                "the answer holds its first {rows} rows: more would pass {} bytes \
                 (runtime.queries.max-bytes)",
                limits.max_bytes
            ));
            break;
        }
        bytes += size;
        rows += take;
        batches.push(batch);
        if cut.is_some() {
            break;
        }
    }
    Ok(SqlOutput::Rows {
        schema,
        batches,
        cut,
    })
}

/// The bytes a batch's rows take (of a slice: its part of the buffers only).
fn slice_bytes(batch: &datafusion::arrow::array::RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// A query over its memory pool is the user's to change: say which limit it met.
fn over_memory(e: Error, limit: usize) -> Error {
    match &e {
        Error::Query(df) if matches!(df.find_root(), DataFusionError::ResourcesExhausted(_)) => {
            Error::BadRequest(format!(
                "the query needs more memory than an ad hoc query may use ({} MiB, \
                 runtime.queries.memory-bytes): {df}",
                limit >> 20
            ))
        }
        _ => e,
    }
}

/// Puts a `CooperativeExec` over every join and unnest: operators whose output can be far
/// larger than their input (a cross join of two ranges) would otherwise compute without
/// ever yielding, so no time limit could cancel them. DataFusion's own rule instruments
/// only the leaves, whose few batches are spent in microseconds.
#[derive(Debug, Default)]
struct YieldingJoins;

impl PhysicalOptimizerRule for YieldingJoins {
    fn name(&self) -> &str {
        "yielding_joins"
    }

    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::physical_plan::joins::{
            CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec,
        };
        use datafusion::physical_plan::unnest::UnnestExec;
        plan.transform_up(|node| {
            let amplifies = node.is::<CrossJoinExec>()
                || node.is::<NestedLoopJoinExec>()
                || node.is::<HashJoinExec>()
                || node.is::<SortMergeJoinExec>()
                || node.is::<UnnestExec>();
            Ok(if amplifies {
                Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>)
            } else {
                Transformed::no(node)
            })
        })
        .map(|t| t.data)
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Where ad hoc queries run: a few threads of their own, and a bound on how many run.
pub(super) struct QueryThreads {
    threads: Option<tokio::runtime::Runtime>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl QueryThreads {
    pub fn new(limits: &QueryLimits) -> Self {
        let threads = tokio::runtime::Builder::new_multi_thread()
            .worker_threads((crate::config::cores() / 2).max(1))
            .thread_name("adhoc-query")
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot start the ad hoc query threads; queries run beside the API"))
            .ok();
        Self {
            threads,
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
        }
    }

    /// A place among the queries running at once (previews count), or 429.
    pub(super) fn take_slot(&self, most: usize) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Backpressure {
                message: format!(
                    "{most} ad hoc queries and previews are running, the most at once \
                     (runtime.queries.max-concurrent = {most}): retry shortly"
                ),
                retry_after_secs: 1,
            })
    }

    fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.threads {
            Some(rt) => rt.spawn(work),
            None => tokio::spawn(work),
        }
    }
}

impl Drop for QueryThreads {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context would panic.
        if let Some(rt) = self.threads.take() {
            rt.shutdown_background();
        }
    }
}
