//! From `CREATE MATERIALIZED VIEW ... AS query` to a running [`Operator`].
//!
//! The query's `TUMBLE(src, col, size)`, `HOP(src, col, slide, size)` or
//! `SESSION(src, col, gap)` is rewritten to a plain reference to `src`
//! (`window_call`), which is registered for planning with two extra columns,
//! `window_start` and `window_end`. DataFusion then plans and optimizes the query (type
//! coercion, projection pushdown, simplification). What runs it depends on what it reads:
//!
//! - a source joined with views: a lookup join ([`crate::join::lookup`]);
//! - several sources: a join per window ([`crate::join::window`]), or without windows an
//!   interval join ([`crate::join::interval`]);
//! - one source (here): a chain of stateless nodes (projection, filter) below an optional
//!   aggregate, and projection or filter (HAVING) above it, is lowered to vectorized
//!   physical expressions (`lower`) and runs incrementally; a session view runs per
//!   session ([`crate::window::session`]); any other windowed query runs whole per window.
//!
//! `explain` describes the planned operators; `narrow` keeps only the columns that
//! views holding rows read.

mod build_side;
pub(crate) mod explain;
pub(crate) mod lower;
pub(crate) mod narrow;
pub mod steps;
pub(crate) mod window_call;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, VisitMut};

use crate::aggregate::{UpdatingAggregate, WindowedAggregate, WindowedAggregatePlan};
use crate::batch::{BatchQuery, WindowRows};
use crate::join::interval::plan_interval_join;
use crate::join::lookup::plan_lookup_join;
use crate::join::window::plan_window_join;
use crate::operator::Operator;
use crate::parser::{CreateView, WatermarkSpec};
use crate::schema::{duration_in_unit, duration_text};
use crate::stateless::Stateless;
use crate::window::Windowing;
use crate::window::bounds::window_bounds_as_constants;
use crate::window::local::check_window_local;
use crate::window::per_window::{PerWindowPlan, PerWindowQuery};
use crate::window::session::plan::plan_session;
use crate::{Error, Result, invalid, unsupported};
use explain::{explain, with_held_rows};
use lower::{count_aggregates, describe, linearize, lower_aggregate, lower_chain};
use narrow::{Narrowed, Planned, narrow};
use window_call::{WindowCall, WindowRewriter, same_window, windowed_schema};

pub use window_call::{relations, view_relations};

/// What the planner needs to know of a source.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub schema: SchemaRef,
    pub watermark: Option<WatermarkSpec>,
}

/// The sources a view may read, by name.
pub type SourceCatalog = HashMap<String, SourceInfo>;

/// Tables a view may join its source with (other views' rows), by name.
pub type LookupTables = HashMap<String, Arc<dyn TableProvider>>;

/// A planned continuous query: which source it reads, what rows it produces, and the
/// operator that produces them.
pub struct ContinuousQuery {
    pub source: String,
    /// Further sources of a join of several sources (inputs 1, 2, ... of the operator).
    pub other_sources: Vec<String>,
    /// The columns of `source` (by index) the operator reads, when known: its source
    /// need not decode the others. `None`: every column.
    pub columns_read: Option<Vec<usize>>,
    /// The same for each of `other_sources`, in order (an entry missing: every column).
    pub other_columns_read: Vec<Option<Vec<usize>>>,
    pub output_schema: SchemaRef,
    /// A short description of the operator chain, for status pages.
    pub description: String,
    /// The operators from source to view, each with what it does (for EXPLAIN).
    pub operators: Vec<(String, String)>,
    pub operator: Box<dyn Operator>,
}

impl std::fmt::Debug for ContinuousQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousQuery")
            .field("source", &self.source)
            .field("description", &self.description)
            .finish()
    }
}

impl ContinuousQuery {
    /// Plan a view's query against the declared sources.
    pub async fn plan(view: &CreateView, sources: &SourceCatalog) -> Result<Self> {
        Self::plan_with_functions(view, sources, &[]).await
    }

    /// Plan with extra scalar functions (plugin functions) in scope.
    pub async fn plan_with_functions(
        view: &CreateView,
        sources: &SourceCatalog,
        functions: &[ScalarUDF],
    ) -> Result<Self> {
        Self::plan_with(view, sources, functions, &LookupTables::new()).await
    }

    /// Plan with plugin functions, and with tables (views) the source may be joined with.
    pub async fn plan_with(
        view: &CreateView,
        sources: &SourceCatalog,
        functions: &[ScalarUDF],
        tables: &LookupTables,
    ) -> Result<Self> {
        let mut query = view.query.clone();
        let mut rewriter = WindowRewriter::default();
        let _ = query.visit(&mut rewriter);
        if let Some(e) = rewriter.error {
            return Err(e);
        }
        let windows = rewriter.windows;
        let mut names = relations(&query);
        names.sort();
        names.dedup();
        if names
            .iter()
            .any(|n| tables.contains_key(n) && !sources.contains_key(n))
        {
            return plan_lookup_join(view, sources, functions, &names, tables, &windows, query)
                .await;
        }
        match names.as_slice() {
            [] => Err(invalid!(
                "view {} reads no source: add FROM <source>",
                view.name
            )),
            [source] => {
                let info = source_info(sources, source)?;
                plan_one_source(view, source.clone(), info, functions, &windows, query).await
            }
            _ if windows.is_empty() => {
                plan_interval_join(view, sources, functions, &names, query).await
            }
            _ => plan_window_join(view, sources, functions, &names, &windows, query).await,
        }
    }
}

/// A view over one source.
async fn plan_one_source(
    view: &CreateView,
    source: String,
    info: &SourceInfo,
    functions: &[ScalarUDF],
    windows: &[WindowCall],
    query: Box<ast::Query>,
) -> Result<ContinuousQuery> {
    let call = match windows {
        [] => None,
        [t] => Some(t.clone()),
        // The same window in several subqueries (Nexmark q5) is one windowing.
        [t, rest @ ..] if rest.iter().all(|o| same_window(t, o)) => Some(t.clone()),
        _ => {
            return Err(unsupported!(
                "a view may use one window: every TUMBLE or HOP in it must have the same arguments"
            ));
        }
    };
    let lateness = allowed_lateness(view, call.is_some())?;

    // Plan with DataFusion against the source (plus window columns when windowed).
    let ctx = planning_context(functions);
    let (scan_schema, window) = match &call {
        None => (info.schema.clone(), None),
        Some(t) => {
            let (schema, time_column) = windowed_schema(&source, info, t)?;
            let windowing = Windowing::hop(ms(t.slide), ms(t.size))?.with_lateness(ms(lateness));
            (schema, Some((windowing, time_column)))
        }
    };
    let table = Arc::new(WindowRows::new(scan_schema.clone()));
    register(&ctx, &source, table.clone())?;
    let state = ctx.state();
    let plan = logical_plan(&state, query.clone()).await?;
    let plan = state.optimize(&plan)?;
    let planned = Planned {
        query,
        plan,
        ctx,
        table,
        scan_schema,
    };
    let columns_read = narrow::source_columns_read(
        &planned.plan,
        &source,
        info.schema.fields().len(),
        window.as_ref().map(|(_, time_column)| *time_column),
    );
    let mut query =
        plan_one_source_operator(planned, source, info, functions, call, window).await?;
    query.columns_read = Some(columns_read);
    Ok(query)
}

/// The operator of a view over one source, from its plan.
async fn plan_one_source_operator(
    planned: Planned,
    source: String,
    info: &SourceInfo,
    functions: &[ScalarUDF],
    call: Option<WindowCall>,
    window: Option<(Windowing, usize)>,
) -> Result<ContinuousQuery> {
    let (Some(call), Some((windowing, time_column))) = (call, window) else {
        return plan_unwindowed(source, info, &planned.plan);
    };
    if call.function == "SESSION" {
        return plan_session(
            &call,
            windowing,
            planned,
            source,
            info,
            time_column,
            functions,
        )
        .await;
    }
    // Beyond a chain with one aggregate, a windowed query runs whole per window.
    match linearize(&planned.plan) {
        Ok(chain) if count_aggregates(&planned.plan) <= 1 => plan_windowed_aggregate(
            source,
            info,
            &chain,
            &call,
            windowing,
            time_column,
            planned.scan_schema.clone(),
        ),
        _ => {
            plan_per_window(
                planned,
                source,
                info,
                &call,
                windowing,
                time_column,
                functions,
            )
            .await
        }
    }
}

/// The `allowed_lateness` of a view over one source, its only option (windowed views).
fn allowed_lateness(view: &CreateView, windowed: bool) -> Result<std::time::Duration> {
    let mut lateness = std::time::Duration::ZERO;
    for (key, value) in &view.options {
        match key.as_str() {
            "allowed_lateness" if windowed => lateness = duration_text(value)?,
            "allowed_lateness" => {
                return Err(invalid!(
                    "allowed_lateness applies to windowed views (TUMBLE, HOP)"
                ));
            }
            other => {
                return Err(invalid!(
                    "unknown view option '{other}'; views take max_rows and, when windowed, allowed_lateness"
                ));
            }
        }
    }
    Ok(lateness)
}

/// A view over one source without a window: projections and filters, each batch in
/// and its rows out, or an aggregate whose groups update as rows arrive.
fn plan_unwindowed(
    source: String,
    info: &SourceInfo,
    plan: &LogicalPlan,
) -> Result<ContinuousQuery> {
    let chain = linearize(plan)?;
    let aggregate_at = aggregate_position(&chain, false)?;
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let props = ExecutionProps::new();
    let Some(at) = aggregate_at else {
        let steps = lower_chain(&chain, &props)?;
        return Ok(ContinuousQuery {
            columns_read: None,
            other_columns_read: Vec::new(),
            other_sources: Vec::new(),
            operators: explain(&chain, &source, info, None),
            source,
            output_schema,
            description: format!("source -> {}", describe(&chain)),
            operator: Box::new(Stateless::view(steps)),
        });
    };
    let grouped = lower_aggregate(&chain, at, false, &props)?;
    let operator = UpdatingAggregate::new(grouped)?;
    let mut operators = explain(&chain, &source, info, None);
    // EXPLAIN says which path the updating aggregate takes.
    if let Some((_, detail)) = operators.iter_mut().find(|(op, _)| op == "aggregate") {
        detail.push_str(&format!("; {}", operator.path()));
    }
    Ok(ContinuousQuery {
        columns_read: None,
        other_columns_read: Vec::new(),
        other_sources: Vec::new(),
        operators,
        source,
        output_schema,
        description: format!("source -> {} ({})", describe(&chain), operator.path()),
        operator: Box::new(operator),
    })
}

/// A TUMBLE or HOP view that is a chain with one aggregate: it aggregates each open
/// window incrementally and emits it once the watermark closes it.
fn plan_windowed_aggregate(
    source: String,
    info: &SourceInfo,
    chain: &[&LogicalPlan],
    call: &WindowCall,
    windowing: Windowing,
    time_column: usize,
    windowed_schema: SchemaRef,
) -> Result<ContinuousQuery> {
    let Some(at) = aggregate_position(chain, true)? else {
        return Err(unsupported!(
            "a window without GROUP BY is not supported yet: aggregate with GROUP BY window_start, window_end, ..."
        ));
    };
    let output_schema: SchemaRef = Arc::new(chain[0].schema().as_arrow().clone());
    let grouped = lower_aggregate(chain, at, true, &ExecutionProps::new())?;
    let operators = explain(chain, &source, info, Some(call));
    let description = if windowing.slide() == windowing.size() {
        format!(
            "source -> {} (tumbling window {} ms)",
            describe(chain),
            windowing.size()
        )
    } else {
        format!(
            "source -> {} (hopping window {} ms every {} ms)",
            describe(chain),
            windowing.size(),
            windowing.slide()
        )
    };
    Ok(ContinuousQuery {
        columns_read: None,
        other_columns_read: Vec::new(),
        other_sources: Vec::new(),
        operators,
        source,
        output_schema,
        description,
        operator: Box::new(WindowedAggregate::new(WindowedAggregatePlan {
            windowing,
            time_column,
            windowed_schema,
            grouped,
        })),
    })
}

/// Where `chain` aggregates, if it does. ORDER BY / LIMIT rank the rows of each emitted
/// window: only above a windowed aggregate. Anywhere else a stream has no order and no
/// end.
fn aggregate_position(chain: &[&LogicalPlan], windowed: bool) -> Result<Option<usize>> {
    let aggregate_at = chain
        .iter()
        .position(|p| matches!(p, LogicalPlan::Aggregate(_)));
    let ranked_at = chain
        .iter()
        .rposition(|p| matches!(p, LogicalPlan::Sort(_) | LogicalPlan::Limit(_)));
    if let Some(r) = ranked_at
        && (!windowed || aggregate_at.is_none_or(|a| r > a))
    {
        return Err(unsupported!(
            "ORDER BY / LIMIT over an unbounded stream is not supported: use them above a windowed \
             aggregate (FROM TUMBLE(...) GROUP BY window_start, ... ORDER BY ... LIMIT n keeps the \
             top n rows of each window), or in an ad hoc SELECT over the view"
        ));
    }
    Ok(aggregate_at)
}

/// A windowed view beyond a chain with one aggregate (a join of a window's aggregate
/// with its rows, `rank()` per window): it holds each open window's rows and runs whole
/// over them once the window closes.
async fn plan_per_window(
    planned: Planned,
    source: String,
    info: &SourceInfo,
    call: &WindowCall,
    windowing: Windowing,
    time_column: usize,
    functions: &[ScalarUDF],
) -> Result<ContinuousQuery> {
    if windowing.lateness() > 0 {
        return Err(unsupported!(
            "allowed_lateness is not supported for this query (it runs whole per window): \
             leave it out"
        ));
    }
    check_window_local(&planned.plan)?;
    let Narrowed {
        plan,
        session,
        table,
        schema: windowed_schema,
        time_column,
        source_columns,
    } = narrow(planned, &source, info, time_column, functions).await?;
    let plan = window_bounds_as_constants(plan, &[source.as_str()])?;
    let window_detail = call.describe();
    let operators = with_held_rows(
        explain(&[], &source, info, None),
        &window_detail,
        "per closed window",
        &plan,
    );
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let query = BatchQuery::new(plan, session);
    let once = match query.runs_a_repeated_part_once() {
        true => " (a repeated aggregate runs once)",
        false => "",
    };
    Ok(ContinuousQuery {
        columns_read: None,
        other_columns_read: Vec::new(),
        other_sources: Vec::new(),
        operators,
        source,
        output_schema,
        description: format!("source -> window ({window_detail}) -> query per window{once}"),
        operator: Box::new(PerWindowQuery::new(PerWindowPlan {
            windowing,
            time_column,
            source_columns,
            windowed_schema,
            query,
            table,
            others: Vec::new(),
        })),
    })
}

/// A DataFusion session for planning continuous queries, with the plugin functions
/// `functions` in scope. Numeric literals with a decimal point are exact decimals, as
/// in PostgreSQL, Flink and RisingWave: `0.908 * price` is `1442.812`, not the float
/// `1442.8120000000001`. It leaves out the rule that turns a lone `count(DISTINCT x)`
/// into two nested aggregations: the distinct accumulator does the same job in one
/// incremental aggregate.
pub(crate) fn planning_context(functions: &[ScalarUDF]) -> SessionContext {
    // One partition: per-window queries run on the pipeline's thread, without repartitioning.
    // A physical plan is made once and run again and again (crate::batch): no filters
    // that one run derives and leaves in the plan for the next (the key turns off every
    // kind of dynamic filter). A hash join of rows with an aggregate builds on the
    // aggregate (`build_side`).
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false);
    config.options_mut().sql_parser.parse_float_as_decimal = true;
    // Errors carry where in the statement they are (the console underlines it).
    config.options_mut().sql_parser.collect_spans = true;
    let rules = Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(rules)
        .with_physical_optimizer_rules(build_side::physical_rules())
        .build();
    let ctx = SessionContext::new_with_state(state);
    for f in functions {
        ctx.register_udf(f.clone());
    }
    ctx
}

/// The declared source `name`.
pub(crate) fn source_info<'a>(sources: &'a SourceCatalog, name: &str) -> Result<&'a SourceInfo> {
    sources.get(name).ok_or_else(|| {
        Error::NotFound(format!(
            "no source named {name} (views read sources; SHOW SOURCES lists them)"
        ))
    })
}

/// Make `table` the table the query's `name` reads.
pub(crate) fn register(
    ctx: &SessionContext,
    name: &str,
    table: Arc<dyn TableProvider>,
) -> Result<()> {
    ctx.register_table(TableReference::bare(name), table)?;
    Ok(())
}

/// The logical plan of `query`, not yet optimized.
pub(crate) async fn logical_plan(
    state: &SessionState,
    query: Box<ast::Query>,
) -> Result<LogicalPlan> {
    let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query)));
    Ok(state.statement_to_plan(statement).await?)
}

/// A duration in milliseconds, the unit of event times.
pub(crate) fn ms(d: std::time::Duration) -> i64 {
    duration_in_unit(d, TimeUnit::Millisecond)
}

#[cfg(test)]
mod tests;
