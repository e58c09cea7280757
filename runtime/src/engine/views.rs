//! Views: CREATE and DROP MATERIALIZED VIEW (planned by weir-sql, fed by the
//! pipelines of the sources they read), and the views' status.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;

use super::{Engine, SqlOutput, missing};
use crate::source::SourceRuntime;
use crate::view::{ViewRuntime, ViewStatus, ViewTable};
use crate::{Error, Result};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{ContinuousQuery, CreateView, WatermarkSpec};

impl Engine {
    pub(super) async fn create_view(&self, mut v: CreateView, sql: &str) -> Result<SqlOutput> {
        let name = v.name.clone();
        let max_rows = take_max_rows(&mut v, self.inner.config.view_max_rows)?;
        let parallelism = take_parallelism(&mut v, self.inner.config.parallelism)?;
        if self.name_taken(&name) {
            if v.if_not_exists && self.inner.views.contains_key(&name) {
                return Ok(SqlOutput::Done {
                    message: format!("view {name} already exists"),
                });
            }
            return Err(Error::Conflict(format!(
                "the name {name} is taken; DROP it first or choose another"
            )));
        }
        let (view, fed_by) = self
            .plan_view(&v, sql, max_rows, parallelism, false)
            .await?;
        self.inner.adhoc.register_table(
            TableReference::bare(name.as_str()),
            Arc::new(ViewTable(view.clone())),
        )?;
        self.restore_view(&view);
        for s in &fed_by {
            s.attach(view.clone());
            if !self.replaying() {
                s.active.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let description = view.description.clone();
        self.inner.views.insert(name.clone(), view);
        tracing::info!(view = %name, plan = %description, "view created");
        Ok(SqlOutput::Done {
            message: format!("view {name} created"),
        })
    }

    /// Plan a view and make its runtime, not yet fed by anything: the sources it reads
    /// come back beside it.
    pub(super) async fn plan_view(
        &self,
        v: &CreateView,
        sql: &str,
        max_rows: Option<usize>,
        parallelism: usize,
        preview: bool,
    ) -> Result<(Arc<ViewRuntime>, Vec<Arc<SourceRuntime>>)> {
        let name = &v.name;
        // Views it reads are tables a source may be joined with (stream-table joins).
        let mut tables = weir_sql::planner::LookupTables::new();
        for name in weir_sql::planner::view_relations(&v.query) {
            if let Some(view) = self.inner.views.get(&name) {
                tables.insert(name, Arc::new(ViewTable(view.clone())));
            }
        }
        let table_names: Vec<String> = tables.keys().cloned().collect();
        let mut query =
            ContinuousQuery::plan_with(v, &self.catalog(), &self.plugin_functions(), &tables)
                .await?;
        parallelize(&mut query, parallelism)?;
        let mut plugins = self.plugins_called_by(&v.query);
        let query_columns_read = query.columns_read.take();
        let other_columns_read = std::mem::take(&mut query.other_columns_read);
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
                        transform: s.shared.clone(),
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
        // What the view reads of each source (a stream's transform takes whole rows).
        let columns_read = match &stream {
            Some(_) => Vec::new(),
            None => std::iter::once((&source_name, query_columns_read))
                .chain(query.other_sources.iter().zip(other_columns_read))
                .filter_map(|(name, read)| {
                    let read = crate::decode::Columns::of(read?.iter().copied());
                    Some((name.clone(), read))
                })
                .collect(),
        };
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
                max_rows,
                if preview {
                    crate::metrics::Metrics::unlisted_view()
                } else {
                    m.view(name)
                },
            )
            .with_plugins(plugins)
            .with_stream(stream.map(|s| s.name.clone()))
            .with_checkpoints(self.inner.checkpoints.enabled())
            .with_inputs(&inputs)
            .with_tables(table_names)
            .with_preview(preview)
            .with_columns_read(columns_read),
        );
        let fed_by = if inputs.is_empty() {
            vec![source]
        } else {
            inputs
        };
        Ok((view, fed_by))
    }

    /// What a view may read: every source's schema and watermark.
    pub(super) fn catalog(&self) -> SourceCatalog {
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

    pub(super) fn drop_view(&self, name: &str, if_exists: bool) -> Result<SqlOutput> {
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
        let sinks = self.sinks_of(name);
        if !sinks.is_empty() {
            return Err(Error::Conflict(format!(
                "view {name} is written by sink {}: drop {} first",
                sinks.join(", "),
                if sinks.len() == 1 { "it" } else { "them" }
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
                source.detach(|v| v.name == name);
            }
        }
        self.inner
            .adhoc
            .deregister_table(TableReference::bare(name))?;
        self.inner.metrics.forget_view(name);
        Ok(SqlOutput::Done {
            message: format!("view {name} dropped"),
        })
    }

    pub fn view(&self, name: &str) -> Result<Arc<ViewRuntime>> {
        self.inner
            .views
            .get(name)
            .map(|v| v.clone())
            .ok_or_else(|| Error::NotFound(format!("no view named {name}")))
    }

    pub fn views(&self) -> Vec<ViewStatus> {
        // Out of the map first: no lock on it is held twice.
        let views: Vec<Arc<ViewRuntime>> = self.inner.views.iter().map(|v| v.clone()).collect();
        let mut out: Vec<_> = (views.iter())
            .map(|v| {
                let mut status = v.status();
                status.read_by = (views.iter())
                    .filter(|r| r.tables.iter().any(|t| *t == v.name))
                    .map(|r| r.name.clone())
                    .collect();
                status.read_by.sort();
                status
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Take the view's `max_rows` option out of its options (how many rows a view keeps is
/// the runtime's business, not the query's): `default` when not given.
pub(super) fn take_max_rows(v: &mut CreateView, default: usize) -> Result<Option<usize>> {
    match v.options.remove("max_rows") {
        None => Ok(Some(default)),
        Some(text) => parse_row_limit(&text)
            .map_err(|e| Error::BadRequest(format!("view {}: max_rows {e}", v.name))),
    }
}

/// Take the view's `parallelism` option out of its options: how many parallel instances
/// its keyed operators run in (`default` when not given).
pub(super) fn take_parallelism(v: &mut CreateView, default: usize) -> Result<usize> {
    let Some(text) = v.options.remove("parallelism") else {
        return Ok(default.clamp(1, MAX_PARALLELISM));
    };
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=MAX_PARALLELISM) => Ok(n),
        _ => Err(Error::BadRequest(format!(
            "view {}: parallelism must be a number of instances from 1 to {MAX_PARALLELISM}, not '{text}'",
            v.name
        ))),
    }
}

/// More instances than any machine has cores for is a mistake, not a setting.
pub(super) const MAX_PARALLELISM: usize = 1024;

/// Run the query's keyed operators in `n` parallel instances, or a stateless query's
/// batches in up to `n` slices side by side; EXPLAIN says how many run (an aggregate
/// without a key to route by runs serially).
pub(super) fn parallelize(query: &mut ContinuousQuery, n: usize) -> Result<()> {
    let used = query.operator.set_parallelism(n)?;
    if n <= 1 {
        return Ok(());
    }
    // A join that can be split by its key says so on its line: how many instances.
    let keyed = weir_sql::join::keyed::KEYED;
    if let Some((_, line)) = query.operators.iter_mut().find(|(_, d)| d.contains(keyed)) {
        *line = line.replacen(keyed, &format!("{keyed}, in {n} parallel instances"), 1);
    }
    // The note goes on the first operator line that runs in parallel, if any does.
    let mut note = |runs: &dyn Fn(&str, &str) -> bool, text: String| match query
        .operators
        .iter_mut()
        .find(|(op, d)| runs(op, d))
    {
        Some((_, detail)) => {
            detail.push_str(&text);
            true
        }
        None => false,
    };
    let noted = note(
        &|op, _| op == "aggregate",
        if used > 1 {
            format!("; in {used} parallel instances, rows routed by a hash of the group key")
        } else {
            "; serially (no group key to route rows by, beside the window's)".to_string()
        },
    ) || note(
        &|op, detail| op == "window" && detail.starts_with("SESSION"),
        if used > 1 {
            format!(
                "; sessions kept in {used} parallel instances, rows routed by a hash of the key"
            )
        } else {
            "; serially (no session key to route rows by)".to_string()
        },
    );
    if !noted && used > 1 {
        note(
            &|op, _| op == "filter" || op == "project",
            format!("; a batch runs in up to {used} slices side by side"),
        );
    }
    Ok(())
}

/// A limit on rows: a positive number (`_` allowed between digits), or `'unbounded'`
/// (`None`). The error completes "<option> ...".
pub(super) fn parse_row_limit(text: &str) -> std::result::Result<Option<usize>, String> {
    if text.trim().eq_ignore_ascii_case("unbounded") {
        return Ok(None);
    }
    match text.trim().replace('_', "").parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "must be a positive number of rows or 'unbounded', not '{text}'"
        )),
    }
}
