//! Previews: a query's first rows while the user is still writing it. A query over
//! sources or streams runs as a view that nothing else sees (not listed, not in the
//! catalog, not in checkpoints) and is gone when its reader is; a query over views
//! only runs once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast;
use tokio::sync::broadcast;

use super::{Engine, SqlOutput, views::take_parallelism};
use crate::source::SourceRuntime;
use crate::view::ViewRuntime;
use crate::{Error, Result};
use weir_sql::{CreateView, Statement, parse_statement};

/// Rows a live preview keeps (it shows the first rows, not a view's history).
const PREVIEW_MAX_ROWS: usize = 10_000;

/// What a preview gives.
pub enum Preview {
    /// A query over sources: its rows as they are emitted, until this is dropped.
    Live(LivePreview),
    /// A query over views: its rows now.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
}

/// A running preview; dropping it stops it.
pub struct LivePreview {
    pub schema: SchemaRef,
    pub changes: broadcast::Receiver<Arc<crate::view::Published>>,
    /// It counts among the ad hoc queries running (runtime.queries.max-concurrent), and
    /// ends at their time limit.
    pub time_limit: std::time::Duration,
    _slot: tokio::sync::OwnedSemaphorePermit,
    view: Arc<ViewRuntime>,
    fed_by: Vec<Arc<SourceRuntime>>,
}

impl Drop for LivePreview {
    fn drop(&mut self) {
        for s in &self.fed_by {
            s.detach(|v| v.id == self.view.id);
        }
        tracing::debug!(preview = %self.view.name, "preview ended");
    }
}

static NEXT_PREVIEW: AtomicU64 = AtomicU64::new(1);

impl Engine {
    /// Preview a SELECT: live over sources and streams, once over views.
    pub async fn preview(&self, sql: &str) -> Result<Preview> {
        let query = match parse_statement(sql)? {
            Statement::Query(stmt) => match *stmt {
                ast::Statement::Query(q) => q,
                other => return Err(not_a_query(&other.to_string())),
            },
            _ => return Err(not_a_query(sql)),
        };
        // The sources inside TUMBLE(...) and HOP(...) count, not the functions' names.
        let reads_unbounded = weir_sql::planner::view_relations(&query)
            .iter()
            .any(|name| {
                self.inner.sources.contains_key(name) || self.inner.streams.contains_key(name)
            });
        if !self.plugins_called_by(&query).is_empty() {
            return Err(Error::BadRequest(
                "a query that calls a plugin cannot be previewed yet (its failures count \
                 towards pausing the views that use it): create it as a view"
                    .into(),
            ));
        }
        if !reads_unbounded {
            return match self.query(ast::Statement::Query(query)).await? {
                SqlOutput::Rows {
                    schema, batches, ..
                } => Ok(Preview::Rows { schema, batches }),
                SqlOutput::Done { message } => Err(Error::Internal(format!(
                    "a query answered without rows: {message}"
                ))),
            };
        }
        // A name no statement can take (it has a space), so it never clashes.
        let mut v = CreateView {
            name: format!("preview {}", NEXT_PREVIEW.fetch_add(1, Ordering::Relaxed)),
            if_not_exists: false,
            options: Default::default(),
            query,
        };
        let parallelism = take_parallelism(&mut v, self.inner.config.parallelism)?;
        let (view, fed_by) = self
            .plan_view(&v, sql, Some(PREVIEW_MAX_ROWS), parallelism, true)
            .await?;
        if view.is_join() {
            return Err(Error::BadRequest(
                "a join of several sources cannot be previewed yet: create it as a view".into(),
            ));
        }
        // A plugin's failures count towards marking it failed, which would pause the
        // views that use it: a preview must not touch them.
        if !view.plugins.is_empty() {
            return Err(Error::BadRequest(
                "a query that calls a plugin (a function or a stream's transform) cannot be \
                 previewed yet: create it as a view"
                    .into(),
            ));
        }
        // A preview never starts a source: reading a file or a topic for it would move
        // the position its first view starts from.
        if let Some(s) = (fed_by.iter())
            .find(|s| s.input.waits_for_a_view() && !s.active.load(Ordering::Relaxed))
        {
            return Err(Error::BadRequest(format!(
                "source {} is not reading yet: it starts with its first view, and a preview \
                 does not start it; create a view over it first",
                s.name
            )));
        }
        let limits = self.inner.config.queries;
        let slot = self.inner.queries.take_slot(limits.max_concurrent)?;
        let changes = view.subscribe();
        for s in &fed_by {
            s.attach(view.clone());
        }
        tracing::debug!(preview = %view.name, "preview started");
        Ok(Preview::Live(LivePreview {
            schema: view.schema.clone(),
            changes,
            time_limit: limits.timeout,
            _slot: slot,
            view,
            fed_by,
        }))
    }
}

fn not_a_query(sql: &str) -> Error {
    Error::BadRequest(format!(
        "only a SELECT can be previewed (it creates nothing); run other statements instead: {}",
        sql.trim()
    ))
}
