//! From `CREATE MATERIALIZED VIEW ... AS query` to a running [`Operator`].
//!
//! The query's `TUMBLE(src, col, size)` or `HOP(src, col, slide, size)` is rewritten to a plain reference to `src`, which
//! is registered for planning with two extra columns, `window_start` and `window_end`.
//! DataFusion then plans and optimizes the query (type coercion, projection pushdown,
//! simplification). The optimized plan must be a chain over one source: stateless nodes
//! (projection, filter) below an optional aggregate, and projection or filter (HAVING)
//! above it. Each node is lowered to vectorized physical expressions.

pub mod steps;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, FetchType, LogicalPlan, SkipType};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{create_physical_expr, create_physical_sort_exprs};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, ObjectNamePart, TableFactor, VisitMut, VisitorMut,
};

use crate::aggregate::{
    AggregateCall, GroupedPlan, UpdatingAggregate, WindowedAggregate, WindowedAggregatePlan,
};
use crate::interval_join;
use crate::operator::{Collector, Operator};
use crate::parser::{CreateView, WatermarkSpec};
use crate::per_window::{
    OtherInput, PerWindowPlan, PerWindowQuery, WindowRows, check_window_local,
};
use crate::schema::{TIMESTAMP, duration_in_unit, duration_text, interval};
use crate::session::{SessionPlan, SessionQuery};
use crate::window::Windowing;
use crate::{Error, Result, invalid, unsupported};
use steps::{Step, Steps};

/// What the planner needs to know of a source.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub schema: SchemaRef,
    pub watermark: Option<WatermarkSpec>,
}

/// The sources a view may read, by name.
pub type SourceCatalog = HashMap<String, SourceInfo>;

/// Tables a view may join its source with (other views' rows), by name.
pub type LookupTables = HashMap<String, Arc<dyn datafusion::catalog::TableProvider>>;

/// A planned continuous query: which source it reads, what rows it produces, and the
/// operator that produces them.
pub struct ContinuousQuery {
    pub source: String,
    /// Further sources of a join of several sources (inputs 1, 2, ... of the operator).
    pub other_sources: Vec<String>,
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

/// A `TUMBLE(src, col, size)` or `HOP(src, col, slide, size)` found in the query.
#[derive(Debug, Clone)]
struct WindowCall {
    function: &'static str,
    source: String,
    time_column: String,
    slide: std::time::Duration,
    size: std::time::Duration,
}

/// Rewrites window table functions to plain table references and remembers them.
#[derive(Default)]
struct WindowRewriter {
    windows: Vec<WindowCall>,
    error: Option<Error>,
}

impl VisitorMut for WindowRewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table { name, args, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let Some(fargs) = args.as_ref() else {
            return ControlFlow::Continue(());
        };
        let function = name.to_string().to_ascii_lowercase();
        let result = match function.as_str() {
            "tumble" => window_call("TUMBLE", &fargs.args),
            "hop" => window_call("HOP", &fargs.args),
            "session" => window_call("SESSION", &fargs.args),
            other => Err(unsupported!(
                "table function {other}(...) is not supported; use TUMBLE(source, time_column, size)"
            )),
        };
        match result {
            Ok(call) => {
                *name = ast::ObjectName(vec![ObjectNamePart::Identifier(ast::Ident::new(
                    call.source.clone(),
                ))]);
                *args = None;
                self.windows.push(call);
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn window_call(function: &'static str, args: &[FunctionArg]) -> Result<WindowCall> {
    let exprs: Vec<&ast::Expr> = args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let ident = |e: &ast::Expr, what: &str| match e {
        ast::Expr::Identifier(i) => Ok(if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_ascii_lowercase()
        }),
        other => Err(invalid!(
            "{function}'s {what} must be a name, found {other}"
        )),
    };
    let (source, time, slide, size) = match (function, exprs.as_slice()) {
        ("TUMBLE", [source, time, size]) => (source, time, size, size),
        ("HOP", [source, time, slide, size]) => (source, time, slide, size),
        ("SESSION", [source, time, gap]) => (source, time, gap, gap),
        ("SESSION", _) => {
            return Err(invalid!(
                "SESSION takes three arguments: SESSION(source, time_column, gap), e.g. \
                 SESSION(bids, date_time, INTERVAL '10' SECOND)"
            ));
        }
        ("TUMBLE", _) => {
            return Err(invalid!(
                "TUMBLE takes three arguments: TUMBLE(source, time_column, INTERVAL '10' SECOND)"
            ));
        }
        _ => {
            return Err(invalid!(
                "HOP takes four arguments: HOP(source, time_column, slide, size), e.g. \
                 HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            ));
        }
    };
    Ok(WindowCall {
        function,
        source: ident(source, "first argument (the source)")?,
        time_column: ident(time, "second argument (the time column)")?,
        slide: interval(slide)?,
        size: interval(size)?,
    })
}

/// Every table a view's query reads, by name: the sources inside `TUMBLE(...)` and
/// `HOP(...)`, not the window functions' own names (a view may be called `hop`).
pub fn view_relations(query: &ast::Query) -> Vec<String> {
    let mut query = query.clone();
    let _ = query.visit(&mut WindowRewriter::default());
    relations(&query)
}

/// Every table the query reads, by name.
pub fn relations(query: &ast::Query) -> Vec<String> {
    let mut names = Vec::new();
    let _ = ast::visit_relations(query, |name| {
        // Unquoted names fold to lower case, quoted ones keep theirs (as DataFusion does).
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|part| match part.as_ident() {
                Some(i) if i.quote_style.is_some() => i.value.clone(),
                Some(i) => i.value.to_ascii_lowercase(),
                None => part.to_string(),
            })
            .collect();
        names.push(parts.join("."));
        ControlFlow::<()>::Continue(())
    });
    names
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
        functions: &[datafusion::logical_expr::ScalarUDF],
    ) -> Result<Self> {
        Self::plan_with(view, sources, functions, &LookupTables::new()).await
    }

    /// Plan with plugin functions, and with tables (views) the source may be joined with.
    pub async fn plan_with(
        view: &CreateView,
        sources: &SourceCatalog,
        functions: &[datafusion::logical_expr::ScalarUDF],
        tables: &LookupTables,
    ) -> Result<Self> {
        let mut query = view.query.clone();
        let mut rewriter = WindowRewriter::default();
        let _ = query.visit(&mut rewriter);
        if let Some(e) = rewriter.error {
            return Err(e);
        }
        let mut names = relations(&query);
        names.sort();
        names.dedup();
        if names
            .iter()
            .any(|n| tables.contains_key(n) && !sources.contains_key(n))
        {
            return plan_lookup_join(
                view,
                sources,
                functions,
                &names,
                tables,
                &rewriter.windows,
                query,
            )
            .await;
        }
        let source = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(invalid!(
                    "view {} reads no source: add FROM <source>",
                    view.name
                ));
            }
            _ => {
                return plan_join(view, sources, functions, &names, &rewriter.windows, query).await;
            }
        };
        let info = sources.get(&source).ok_or_else(|| {
            Error::NotFound(format!(
                "no source named {source} (views read sources; SHOW SOURCES lists them)"
            ))
        })?;
        let window_call = match rewriter.windows.as_slice() {
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
        let mut lateness = std::time::Duration::ZERO;
        for (key, value) in &view.options {
            match key.as_str() {
                "allowed_lateness" if window_call.is_some() => lateness = duration_text(value)?,
                "allowed_lateness" => {
                    return Err(invalid!(
                        "allowed_lateness applies to windowed views (TUMBLE, HOP)"
                    ));
                }
                other => {
                    return Err(invalid!(
                        "unknown view option '{other}'; views take allowed_lateness"
                    ));
                }
            }
        }

        // Plan with DataFusion against the source (plus window columns when windowed).
        let ctx = planning_context();
        for f in functions {
            ctx.register_udf(f.clone());
        }
        let (scan_schema, window) = match &window_call {
            None => (info.schema.clone(), None),
            Some(t) => {
                let (schema, time_column) = windowed_schema(&source, info, t)?;
                let ms =
                    |d| duration_in_unit(d, datafusion::arrow::datatypes::TimeUnit::Millisecond);
                let windowing =
                    Windowing::hop(ms(t.slide), ms(t.size))?.with_lateness(ms(lateness));
                (schema, Some((windowing, time_column)))
            }
        };
        let table = Arc::new(WindowRows::new(scan_schema.clone()));
        ctx.register_table(
            datafusion::common::TableReference::bare(source.as_str()),
            table.clone(),
        )?;
        let state = ctx.state();
        let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query.clone())));
        let plan = state.statement_to_plan(statement).await?;
        let plan = state.optimize(&plan)?;

        if let (Some(w), Some((windowing, time_column))) = (&window_call, window)
            && w.function == "SESSION"
        {
            return plan_session(
                w,
                windowing,
                Planned {
                    query,
                    plan,
                    ctx,
                    table,
                    scan_schema,
                },
                source,
                info,
                time_column,
                functions,
            )
            .await;
        }
        let chain = linearize(&plan);
        // Beyond a chain with one aggregate, a windowed query runs whole per window.
        if let Some((windowing, time_column)) = window
            && (chain.is_err() || count_aggregates(&plan) > 1)
        {
            if windowing.lateness() > 0 {
                return Err(unsupported!(
                    "allowed_lateness is not supported for this query (it runs whole per window): \
                     leave it out"
                ));
            }
            check_window_local(&plan)?;
            let Narrowed {
                plan,
                session,
                table,
                schema: scan_schema,
                time_column,
                source_columns,
            } = narrow(
                Planned {
                    query,
                    plan,
                    ctx,
                    table,
                    scan_schema,
                },
                &source,
                info,
                time_column,
                functions,
            )
            .await?;
            let w = window_call.as_ref().expect("a window");
            let window_detail = w.describe();
            let operators = with_held_rows(
                explain(&[], &source, info, None),
                &window_detail,
                "per closed window",
                &plan,
            );
            let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            return Ok(Self {
                other_sources: Vec::new(),
                operators,
                source,
                output_schema,
                description: format!("source -> window ({window_detail}) -> query per window"),
                operator: Box::new(PerWindowQuery::new(PerWindowPlan {
                    windowing,
                    time_column,
                    source_columns,
                    windowed_schema: scan_schema,
                    plan,
                    session,
                    table,
                    others: Vec::new(),
                })),
            });
        }
        let chain = chain?;
        let aggregate_at = chain
            .iter()
            .position(|p| matches!(p, LogicalPlan::Aggregate(_)));
        // ORDER BY / LIMIT rank the rows of each emitted window: only above a windowed
        // aggregate. Anywhere else a stream has no order and no end.
        let ranked_at = chain
            .iter()
            .rposition(|p| matches!(p, LogicalPlan::Sort(_) | LogicalPlan::Limit(_)));
        if let Some(r) = ranked_at
            && (window.is_none() || aggregate_at.is_none_or(|a| r > a))
        {
            return Err(unsupported!(
                "ORDER BY / LIMIT over an unbounded stream is not supported: use them above a windowed \
                 aggregate (FROM TUMBLE(...) GROUP BY window_start, ... ORDER BY ... LIMIT n keeps the \
                 top n rows of each window), or in an ad hoc SELECT over the view"
            ));
        }
        let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let props = ExecutionProps::new();
        match (aggregate_at, window) {
            (None, None) => {
                let steps = lower_chain(&chain, &props)?;
                Ok(Self {
                    other_sources: Vec::new(),
                    operators: explain(&chain, &source, info, None),
                    source,
                    output_schema: output_schema.clone(),
                    description: format!("source -> {}", describe(&chain)),
                    operator: Box::new(Stateless { steps }),
                })
            }
            (None, Some(_)) => Err(unsupported!(
                "a window without GROUP BY is not supported yet: aggregate with GROUP BY window_start, window_end, ..."
            )),
            (Some(at), window) => {
                let grouped = lower_aggregate(&chain, at, window.is_some(), &props)?;
                let operators = explain(&chain, &source, info, window_call.as_ref());
                let Some((windowing, time_column)) = window else {
                    return Ok(Self {
                        other_sources: Vec::new(),
                        operators,
                        source,
                        output_schema,
                        description: format!("source -> {} (updating)", describe(&chain)),
                        operator: Box::new(UpdatingAggregate::new(grouped)?),
                    });
                };
                let description = if windowing.slide() == windowing.size() {
                    format!(
                        "source -> {} (tumbling window {} ms)",
                        describe(&chain),
                        windowing.size()
                    )
                } else {
                    format!(
                        "source -> {} (hopping window {} ms every {} ms)",
                        describe(&chain),
                        windowing.size(),
                        windowing.slide()
                    )
                };
                let plan = WindowedAggregatePlan {
                    windowing,
                    time_column,
                    windowed_schema: scan_schema,
                    grouped,
                };
                Ok(Self {
                    other_sources: Vec::new(),
                    operators,
                    source,
                    output_schema,
                    description,
                    operator: Box::new(WindowedAggregate::new(plan)),
                })
            }
        }
    }
}

/// A DataFusion session for planning continuous queries. It leaves out the rule that
/// turns a lone `count(DISTINCT x)` into two nested aggregations: the distinct
/// accumulator does the same job in one incremental aggregate.
fn planning_context() -> SessionContext {
    // One partition: per-window queries run on the pipeline's thread, without repartitioning.
    let config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
    let rules = Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

/// Lower the aggregate at `chain[at]` with the stateless steps before and after it.
fn lower_aggregate(
    chain: &[&LogicalPlan],
    at: usize,
    windowed: bool,
    props: &ExecutionProps,
) -> Result<GroupedPlan> {
    let LogicalPlan::Aggregate(agg) = chain[at] else {
        unreachable!("position found an Aggregate")
    };
    if chain[at + 1..]
        .iter()
        .any(|p| matches!(p, LogicalPlan::Aggregate(_)))
    {
        return Err(unsupported!(
            "nested aggregation (a grouped subquery) is not supported yet"
        ));
    }
    let is_window_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "window_start" || c.name == "window_end");
    if agg.group_expr.is_empty() {
        return Err(unsupported!(
            "an aggregate without GROUP BY over a stream is not supported yet: group by a key, \
             or read FROM TUMBLE(source, time_column, size) and GROUP BY window_start, window_end"
        ));
    }
    if windowed && !agg.group_expr.iter().any(is_window_key) {
        return Err(invalid!(
            "a windowed query must GROUP BY window_start or window_end (and any keys)"
        ));
    }
    let input = agg.input.schema();
    let pctx = PhysicalPlanningContext::default();
    let group_by = agg
        .group_expr
        .iter()
        .map(|e| match e {
            Expr::GroupingSet(_) => Err(unsupported!(
                "GROUPING SETS, CUBE and ROLLUP are not supported"
            )),
            e => Ok(create_physical_expr(e, input, props, &pctx)?),
        })
        .collect::<Result<Vec<_>>>()?;
    let n_keys = agg.group_expr.len();
    let aggregate_schema: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
    let group_schema = Arc::new(Schema::new(aggregate_schema.fields()[..n_keys].to_vec()));
    let aggregates = agg
        .aggr_expr
        .iter()
        .map(|e| {
            let lowered =
                LoweredAggregateBuilder::new(e, input, input.as_arrow(), props, &pctx).build()?;
            if !lowered.order_bys.is_empty() {
                return Err(unsupported!(
                    "ORDER BY inside an aggregate call ({e}) is not supported yet"
                ));
            }
            let args = lowered.aggregate.expressions();
            Ok(AggregateCall {
                function: lowered.aggregate,
                args,
                filter: lowered.filter,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupedPlan {
        pre: lower_chain(&chain[at + 1..], props)?,
        group_by,
        group_schema,
        aggregates,
        aggregate_schema,
        post: lower_chain(&chain[..at], props)?,
    })
}

/// The plan as a single-input chain, root first.
fn linearize(plan: &LogicalPlan) -> Result<Vec<&LogicalPlan>> {
    let mut chain = Vec::new();
    let mut node = plan;
    loop {
        chain.push(node);
        match node {
            LogicalPlan::TableScan(_) => return Ok(chain),
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Aggregate(_) => {
                node = node.inputs()[0];
            }
            // Allowed only above a windowed aggregate (top-N per window); checked by the caller.
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
                node = node.inputs()[0];
            }
            LogicalPlan::Join(_) => {
                return Err(unsupported!(
                    "joins in materialized views are not supported yet"
                ));
            }
            LogicalPlan::Window(_) => {
                return Err(unsupported!(
                    "window functions (OVER ...) in materialized views are not supported yet; use TUMBLE"
                ));
            }
            LogicalPlan::Distinct(_) => {
                return Err(unsupported!(
                    "SELECT DISTINCT over a stream is not supported yet"
                ));
            }
            LogicalPlan::Union(_) => {
                return Err(unsupported!(
                    "UNION in materialized views is not supported yet"
                ));
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                return Err(invalid!("a materialized view must read a source"));
            }
            other => {
                return Err(unsupported!(
                    "{} is not supported in a materialized view",
                    other
                        .display()
                        .to_string()
                        .split(':')
                        .next()
                        .unwrap_or("this construct")
                ));
            }
        }
    }
}

/// Lower a root-first chain of stateless nodes into steps applied leaf first.
fn lower_chain(chain: &[&LogicalPlan], props: &ExecutionProps) -> Result<Steps> {
    let pctx = PhysicalPlanningContext::default();
    let mut steps = Vec::new();
    for node in chain.iter().rev() {
        match node {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(unsupported!(
                        "LIMIT in a materialized view is not supported yet"
                    ));
                }
                if !scan.filters.is_empty() {
                    return Err(Error::Execution(
                        "unexpected filters pushed into a source scan".into(),
                    ));
                }
                if let Some(projection) = &scan.projection {
                    steps.push(Step::Select(projection.clone()));
                }
            }
            LogicalPlan::Filter(f) => {
                steps.push(Step::Filter(create_physical_expr(
                    &f.predicate,
                    f.input.schema(),
                    props,
                    &pctx,
                )?));
            }
            LogicalPlan::Projection(p) => {
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| create_physical_expr(e, p.input.schema(), props, &pctx))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                steps.push(Step::Project(exprs, Arc::new(p.schema.as_arrow().clone())));
            }
            LogicalPlan::SubqueryAlias(_) => {}
            LogicalPlan::Sort(sort) => {
                let order =
                    create_physical_sort_exprs(&sort.expr, sort.input.schema(), props, &pctx)?;
                steps.push(Step::Sort(order, sort.fetch));
            }
            LogicalPlan::Limit(limit) => {
                let (SkipType::Literal(skip), FetchType::Literal(fetch)) =
                    (limit.get_skip_type()?, limit.get_fetch_type()?)
                else {
                    return Err(unsupported!("LIMIT and OFFSET must be constants"));
                };
                steps.push(Step::Limit(skip, fetch));
            }
            other => {
                return Err(Error::Execution(format!(
                    "cannot lower {}",
                    other.display()
                )));
            }
        }
    }
    Ok(Steps(steps))
}

/// The operators of a planned chain, leaf first, with their expressions.
fn explain(
    chain: &[&LogicalPlan],
    source: &str,
    info: &SourceInfo,
    window: Option<&WindowCall>,
) -> Vec<(String, String)> {
    let list = |exprs: &[Expr]| {
        exprs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut ops = vec![(
        "source".to_string(),
        match &info.watermark {
            Some(w) => format!(
                "{source}, watermark {} - {} ms",
                w.column,
                w.delay.as_millis()
            ),
            None => format!("{source}, no watermark"),
        },
    )];
    for node in chain.iter().rev() {
        match node {
            LogicalPlan::Filter(f) => ops.push(("filter".into(), f.predicate.to_string())),
            LogicalPlan::Sort(sort) => {
                let order = sort
                    .expr
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let keep = sort.fetch.map_or(String::new(), |n| format!(", keep {n}"));
                ops.push((
                    "top-n".into(),
                    format!("per window: order by {order}{keep}"),
                ));
            }
            LogicalPlan::Limit(limit) => {
                let plan = LogicalPlan::Limit(limit.clone());
                ops.push(("top-n".into(), format!("per window: {}", plan.display())));
            }
            LogicalPlan::Projection(p) => ops.push(("project".into(), list(&p.expr))),
            LogicalPlan::Aggregate(a) => {
                if let Some(w) = window {
                    ops.push(("window".into(), w.describe()));
                }
                ops.push((
                    "aggregate".into(),
                    format!(
                        "group by {}; compute {}",
                        list(&a.group_expr),
                        list(&a.aggr_expr)
                    ),
                ));
            }
            _ => {}
        }
    }
    ops
}

impl WindowCall {
    /// For EXPLAIN: the window and its sizes.
    fn describe(&self) -> String {
        if self.function == "HOP" {
            format!(
                "HOP on {}, size {:?}, slide {:?}",
                self.time_column, self.size, self.slide
            )
        } else {
            format!("TUMBLE on {}, size {:?}", self.time_column, self.size)
        }
    }
}

/// EXPLAIN of a view that holds rows and runs `plan` over them `when`: the sources'
/// rows, then its window and its query.
fn with_held_rows(
    mut operators: Vec<(String, String)>,
    window: &str,
    when: &str,
    plan: &LogicalPlan,
) -> Vec<(String, String)> {
    operators.push(("window".into(), window.to_string()));
    operators.push((
        "query".into(),
        format!(
            "{when}, in batch: {}",
            plan.display_indent().to_string().replace('\n', "; ")
        ),
    ));
    operators
}

fn same_window(a: &WindowCall, b: &WindowCall) -> bool {
    (a.function, &a.source, &a.time_column, a.slide, a.size)
        == (b.function, &b.source, &b.time_column, b.slide, b.size)
}

/// A join of several sources, each read through the same TUMBLE or HOP window and
/// matched on `window_start`: it runs whole per closed window over every input's rows.
async fn plan_join(
    view: &CreateView,
    sources: &SourceCatalog,
    functions: &[datafusion::logical_expr::ScalarUDF],
    names: &[String],
    windows: &[WindowCall],
    query: Box<ast::Query>,
) -> Result<ContinuousQuery> {
    let fix = "read each source through the same window and match window_start, e.g. \
               FROM TUMBLE(a, ts, INTERVAL '10' SECOND) AS x JOIN TUMBLE(b, ts, INTERVAL '10' SECOND) AS y \
               ON x.window_start = y.window_start AND ...";
    if windows.is_empty() {
        return plan_interval_join(view, sources, functions, names, query).await;
    }
    if !view.options.is_empty() {
        return Err(unsupported!(
            "view options (allowed_lateness) are not supported for joins of several sources"
        ));
    }
    let first = windows.first().ok_or_else(|| {
        unsupported!(
            "view {} reads {} without a window: {fix}",
            view.name,
            names.join(", ")
        )
    })?;
    if first.function == "SESSION"
        || windows
            .iter()
            .any(|w| (w.function, w.slide, w.size) != (first.function, first.slide, first.size))
    {
        return Err(unsupported!(
            "a join of several sources needs the same TUMBLE or HOP window on each: {fix}"
        ));
    }
    let ms = |d| duration_in_unit(d, datafusion::arrow::datatypes::TimeUnit::Millisecond);
    let windowing = Windowing::hop(ms(first.slide), ms(first.size))?;
    let ctx = planning_context();
    for f in functions {
        ctx.register_udf(f.clone());
    }
    let mut inputs = Vec::with_capacity(names.len());
    for name in names {
        let info = sources.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "no source named {name} (views read sources; SHOW SOURCES lists them)"
            ))
        })?;
        let call = windows.iter().find(|w| &w.source == name).ok_or_else(|| {
            unsupported!("view {} reads {name} without a window: {fix}", view.name)
        })?;
        let (schema, time_column) = windowed_schema(name, info, call)?;
        let table = Arc::new(WindowRows::new(schema.clone()));
        ctx.register_table(
            datafusion::common::TableReference::bare(name.as_str()),
            table.clone(),
        )?;
        inputs.push((name.clone(), info, schema, time_column, table));
    }
    let session = ctx.state();
    let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query.clone())));
    let mut plan = session.optimize(&session.statement_to_plan(statement).await?)?;
    check_window_local(&plan)?;
    let mut session = session;
    // Open windows hold only the source columns the query reads (and the time column).
    let kept: Vec<Option<Vec<usize>>> = inputs
        .iter()
        .map(|(name, info, schema, time_column, _)| {
            let n_source = info.schema.fields().len();
            let mut kept: Vec<usize> = used_columns_of(&plan, name, schema.fields().len())
                .into_iter()
                .filter(|&i| i < n_source)
                .collect();
            if !kept.contains(time_column) {
                kept.push(*time_column);
                kept.sort_unstable();
            }
            (kept.len() < n_source).then_some(kept)
        })
        .collect();
    let mut kept = kept;
    if kept.iter().any(Option::is_some) {
        let ctx = planning_context();
        for f in functions {
            ctx.register_udf(f.clone());
        }
        let mut narrowed = inputs.clone();
        for ((name, info, schema, time_column, table), kept) in narrowed.iter_mut().zip(&kept) {
            if let Some(kept) = kept {
                let n_source = info.schema.fields().len();
                let columns: Vec<usize> = kept
                    .iter()
                    .copied()
                    .chain([n_source, n_source + 1])
                    .collect();
                *schema = Arc::new(schema.project(&columns)?);
                *time_column = kept.iter().position(|i| i == time_column).unwrap_or(0);
                *table = Arc::new(WindowRows::new(schema.clone()));
            }
            ctx.register_table(
                datafusion::common::TableReference::bare(name.as_str()),
                table.clone(),
            )?;
        }
        let narrow_session = ctx.state();
        let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query)));
        // The optimizer may have dropped a column the query names (`x IS NOT NULL` of a
        // column that cannot be NULL): then the query reads every column.
        let replanned = match narrow_session.statement_to_plan(statement).await {
            Ok(p) => narrow_session.optimize(&p).ok(),
            Err(_) => None,
        };
        match replanned {
            Some(p) => {
                plan = p;
                session = narrow_session;
                inputs = narrowed;
            }
            None => kept.iter_mut().for_each(|k| *k = None),
        }
    }
    let mut kept = kept.into_iter();
    let source_columns = kept.next().flatten();
    let mut inputs = inputs.into_iter();
    let (source, info, windowed_schema, time_column, table) =
        inputs.next().expect("two or more sources");
    let others: Vec<_> = inputs.zip(kept).collect();
    let detail = format!(
        "{} on each source, size {:?}{}",
        first.function,
        first.size,
        if first.function == "HOP" {
            format!(", slide {:?}", first.slide)
        } else {
            String::new()
        }
    );
    let mut operators = explain(&[], &source, info, None);
    for ((name, info, ..), _) in &others {
        operators.extend(explain(&[], name, info, None));
    }
    let operators = with_held_rows(
        operators,
        &detail,
        "join per closed window (the minimum watermark of the inputs)",
        &plan,
    );
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    Ok(ContinuousQuery {
        other_sources: others.iter().map(|((n, ..), _)| n.clone()).collect(),
        operators,
        source,
        output_schema,
        description: format!("sources -> window ({detail}) -> join per window"),
        operator: Box::new(PerWindowQuery::new(PerWindowPlan {
            windowing,
            time_column,
            source_columns,
            windowed_schema,
            plan,
            session,
            table,
            others: others
                .into_iter()
                .map(
                    |((_, _, windowed_schema, time_column, table), source_columns)| OtherInput {
                        time_column,
                        source_columns,
                        windowed_schema,
                        table,
                    },
                )
                .collect(),
        })),
    })
}

/// A join of two sources without windows: an interval join, its rows matched within
/// event-time bounds that the join condition states or a `state_ttl` sets.
async fn plan_interval_join(
    view: &CreateView,
    sources: &SourceCatalog,
    functions: &[datafusion::logical_expr::ScalarUDF],
    names: &[String],
    query: Box<ast::Query>,
) -> Result<ContinuousQuery> {
    let fix = "bound the event times in the join condition, e.g. \
               b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND, \
               or declare how long rows wait for a match: WITH (state_ttl = '1 minute'); \
               or read each source through the same window and match window_start";
    let [first, second] = names else {
        return Err(unsupported!(
            "view {} joins {} sources without windows: an interval join reads two",
            view.name,
            names.len()
        ));
    };
    let mut ttl = None;
    for (key, value) in &view.options {
        match key.as_str() {
            "state_ttl" => {
                ttl = Some(duration_in_unit(
                    duration_text(value)?,
                    datafusion::arrow::datatypes::TimeUnit::Millisecond,
                ))
            }
            other => {
                return Err(invalid!(
                    "unknown view option '{other}'; a join of two sources without windows takes state_ttl"
                ));
            }
        }
    }
    let ctx = planning_context();
    for f in functions {
        ctx.register_udf(f.clone());
    }
    let mut inputs = Vec::with_capacity(2);
    for name in [first, second] {
        let info = sources.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "no source named {name} (views read sources; SHOW SOURCES lists them)"
            ))
        })?;
        let watermark = info.watermark.as_ref().ok_or_else(|| {
            invalid!(
                "view {} joins {name}, which has no watermark: an interval join frees rows by \
                 event time; declare WATERMARK FOR <column> AS <column> - INTERVAL '5' SECOND",
                view.name
            )
        })?;
        let time_column = info.schema.index_of(&watermark.column)?;
        let table = Arc::new(WindowRows::new(info.schema.clone()));
        ctx.register_table(
            datafusion::common::TableReference::bare(name.as_str()),
            table.clone(),
        )?;
        inputs.push((
            name.clone(),
            info,
            watermark.column.clone(),
            time_column,
            table,
        ));
    }
    let session = ctx.state();
    let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query)));
    let mut plan = session.statement_to_plan(statement).await?;
    let names_of = |plan: &LogicalPlan| -> Option<(usize, usize)> {
        let join = find_join(plan)?;
        let input_of = |side: &LogicalPlan| {
            let scanned = scanned_table(side);
            inputs
                .iter()
                .position(|i| Some(i.0.as_str()) == scanned.as_deref())
        };
        Some((input_of(&join.left)?, input_of(&join.right)?))
    };
    let sides = |plan: &LogicalPlan| {
        names_of(plan).ok_or_else(|| {
            unsupported!(
                "view {}: an interval join joins {first} with {second}, each side reading one of them: {fix}",
                view.name
            )
        })
    };
    // A state_ttl is part of the join's condition (before the optimizer drops the time
    // columns nothing else reads), so its matches do not depend on when rows are freed.
    if let Some(ttl) = ttl {
        let (left, right) = sides(&plan)?;
        let join = find_join(&plan).expect("found above");
        let time = |side: &LogicalPlan, input: usize| {
            side.schema()
                .qualified_field_with_unqualified_name(&inputs[input].2)
                .map(|(q, f)| datafusion::common::Column::new(q.cloned(), f.name()))
                .map_err(|_| {
                    invalid!(
                        "view {}: state_ttl needs each side of the join to keep its time column {}",
                        view.name,
                        inputs[input].2
                    )
                })
        };
        let (l, r) = (time(&join.left, left)?, time(&join.right, right)?);
        plan = interval_join::with_ttl(plan, l, r, ttl)?;
    }
    let whole = session.optimize(&plan)?;
    // An aggregate over the join's rows runs on its own (below: JoinAggregate); the
    // join part only filters and projects around the join.
    let over = interval_join::aggregate_over_join(&whole).cloned();
    let plan = match &over {
        Some(a) => a.input.as_ref().clone(),
        None => whole.clone(),
    };
    interval_join::check_shape(&plan)?;
    let (left, right) = sides(&plan)?;
    let join = find_join(&plan).expect("found above");
    for (side, input) in [(&join.left, left), (&join.right, right)] {
        if !interval_join::passes_time_through(side, &inputs[input].2) {
            return Err(unsupported!(
                "view {}: the join must compare {}'s own {} column (its watermark column), not a \
                 column computed under that name",
                view.name,
                inputs[input].0,
                inputs[input].2
            ));
        }
    }
    let time_of = |c: &datafusion::common::Column| {
        if join.left.schema().has_column(c) && c.name == inputs[left].2 {
            Some(left)
        } else if join.right.schema().has_column(c) && c.name == inputs[right].2 {
            Some(right)
        } else {
            None
        }
    };
    let (lo, hi) = interval_join::bounds_in(join.filter.as_ref(), &time_of);
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Err(unsupported!(
            "view {} joins {first} and {second} without bounds on their event times, so it \
             would keep every row forever: {fix}",
            view.name
        ));
    };
    if lo > hi {
        return Err(invalid!(
            "view {}: the join's time bounds exclude every pair ({first} - {second} between {lo} and {hi} ms)",
            view.name
        ));
    }
    let detail = format!(
        "{first}.{} - {second}.{} between {lo} and {hi} ms; rows kept until the watermark \
         (the minimum of both inputs') passes their bound",
        inputs[0].2, inputs[1].2
    );
    let mut operators = explain(&[], first, inputs[0].1, None);
    operators.extend(explain(&[], second, inputs[1].1, None));
    operators.push(("join".into(), format!("interval join: {detail}")));
    operators.push((
        "query".into(),
        format!(
            "each batch against the other input's kept rows, in batch: {}",
            plan.display_indent().to_string().replace('\n', "; ")
        ),
    ));
    let output_schema: SchemaRef = Arc::new(whole.schema().as_arrow().clone());
    // Groups of an aggregate over the join close by a side's time column.
    let close = match &over {
        None => None,
        Some(a) => {
            // A qualified column that reaches the join unchanged and is a side's own
            // time column there.
            let found = a.group_expr.iter().find_map(|e| match e {
                Expr::Column(c) => {
                    let at_join = interval_join::column_at_join(&plan, c)?;
                    Some((time_of(&at_join)?, plan.schema().index_of_column(c).ok()?))
                }
                _ => None,
            });
            let Some(found) = found else {
                return Err(unsupported!(
                    "view {}: an aggregate over an interval join must GROUP BY the time column of \
                     one side (e.g. GROUP BY a.id, a.{}), so that each group is final once the \
                     join has freed those rows",
                    view.name,
                    inputs[left].2
                ));
            };
            Some(found)
        }
    };
    let then = match &over {
        None => None,
        Some(a) => Some(plan_after_join_aggregate(view, &whole, a)?),
    };
    if let Some(a) = &over {
        operators.push((
            "aggregate".into(),
            format!(
                "{}, each group final once the join frees its rows; then {}",
                LogicalPlan::Aggregate(a.clone()).display(),
                then.as_ref().map_or(String::new(), |(_, d)| d.clone())
            ),
        ));
    }
    let join_part = plan.clone();
    // Each side keeps only what the join reads of it: its filtered, projected rows.
    let (plan, [left_side, right_side]) = interval_join::read_kept_rows(plan)?;
    let sides = if left == 0 {
        [left_side, right_side]
    } else {
        [right_side, left_side]
    };
    let mut by_input = Vec::with_capacity(2);
    for ((side, kept, kept_schema), (name, _, time, source_time, source)) in
        sides.into_iter().zip(inputs)
    {
        let kept_time = side
            .schema()
            .fields()
            .iter()
            .position(|f| f.name() == &time)
            .ok_or_else(|| {
                invalid!(
                    "view {}: the join must read the time column {time} of {name}",
                    view.name
                )
            })?;
        by_input.push(interval_join::JoinInput {
            source,
            source_time,
            side,
            kept,
            kept_schema,
            kept_time,
        });
    }
    let mut by_input = by_input.into_iter();
    let (Some(i0), Some(i1)) = (by_input.next(), by_input.next()) else {
        return Err(Error::Execution("an interval join has two inputs".into()));
    };
    Ok(ContinuousQuery {
        other_sources: vec![second.clone()],
        operators,
        source: first.clone(),
        output_schema,
        description: format!(
            "sources -> interval join ({detail}){}",
            if over.is_some() { " -> aggregate" } else { "" }
        ),
        operator: {
            let join = interval_join::IntervalJoin::new(interval_join::IntervalJoinPlan {
                plan,
                session,
                inputs: [i0, i1],
                bounds: (lo, hi),
            });
            match (over, close, then) {
                (Some(a), Some((side, close_column)), Some((then, _))) => {
                    let (aggregate, joined, joined_schema) =
                        interval_join::replace_with_scan(LogicalPlan::Aggregate(a), &join_part)?;
                    Box::new(interval_join::JoinAggregate::new(
                        join,
                        interval_join::JoinAggregatePlan {
                            side,
                            close_column,
                            aggregate,
                            joined,
                            joined_schema,
                            then,
                        },
                    ))
                }
                _ => Box::new(join),
            }
        },
    })
}

/// What a view does with the final rows of an aggregate over an interval join: the
/// rest of its plan, over those rows, lowered like a view over one source (projections
/// and filters, or an updating aggregate such as an average of the maximums).
fn plan_after_join_aggregate(
    view: &CreateView,
    whole: &LogicalPlan,
    aggregate: &datafusion::logical_expr::Aggregate,
) -> Result<(Box<dyn Operator>, String)> {
    let (rest, _, _) = interval_join::replace_with_scan(
        whole.clone(),
        &LogicalPlan::Aggregate(aggregate.clone()),
    )?;
    let chain = linearize(&rest)?;
    if chain
        .iter()
        .any(|p| matches!(p, LogicalPlan::Sort(_) | LogicalPlan::Limit(_)))
    {
        return Err(unsupported!(
            "view {}: ORDER BY / LIMIT over a join's aggregate is not supported: use them in an ad hoc SELECT over the view",
            view.name
        ));
    }
    let props = ExecutionProps::new();
    match chain
        .iter()
        .filter(|p| matches!(p, LogicalPlan::Aggregate(_)))
        .count()
    {
        0 => Ok((
            Box::new(Stateless {
                steps: lower_chain(&chain, &props)?,
            }),
            format!("append: {}", describe(&chain)),
        )),
        1 => {
            let at = chain
                .iter()
                .position(|p| matches!(p, LogicalPlan::Aggregate(_)))
                .unwrap_or(0);
            let grouped = lower_aggregate(&chain, at, false, &props)?;
            Ok((
                Box::new(UpdatingAggregate::new(grouped)?),
                format!("updating: {}", describe(&chain)),
            ))
        }
        _ => Err(unsupported!(
            "view {}: more than two levels of aggregation over a join are not supported",
            view.name
        )),
    }
}

/// A source joined with views (tables): each batch joined with the views' rows as they
/// are then.
async fn plan_lookup_join(
    view: &CreateView,
    sources: &SourceCatalog,
    functions: &[datafusion::logical_expr::ScalarUDF],
    names: &[String],
    tables: &LookupTables,
    windows: &[WindowCall],
    query: Box<ast::Query>,
) -> Result<ContinuousQuery> {
    let (read_tables, read_sources): (Vec<&String>, Vec<&String>) = names
        .iter()
        .partition(|n| tables.contains_key(*n) && !sources.contains_key(*n));
    let tables_named = read_tables
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let source = match read_sources.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(unsupported!(
                "view {} reads only views ({tables_named}): views over views are not supported; \
                 a view may read another view only as the table side of a join with a source",
                view.name
            ));
        }
        more => {
            return Err(unsupported!(
                "view {} joins views ({tables_named}) with several sources ({}): a stream-table join reads one source",
                view.name,
                more.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    if !windows.is_empty() {
        return Err(unsupported!(
            "view {}: windows in a join with a view are not supported; window the source in the view the join reads, or join first",
            view.name
        ));
    }
    if !view.options.is_empty() {
        return Err(invalid!(
            "view {}: a join of a source with a view takes no options",
            view.name
        ));
    }
    let info = sources.get(&source).ok_or_else(|| {
        Error::NotFound(format!(
            "no source named {source} (views read sources; SHOW SOURCES lists them)"
        ))
    })?;
    let ctx = planning_context();
    for f in functions {
        ctx.register_udf(f.clone());
    }
    let table = Arc::new(WindowRows::new(info.schema.clone()));
    ctx.register_table(
        datafusion::common::TableReference::bare(source.as_str()),
        table.clone(),
    )?;
    for name in &read_tables {
        ctx.register_table(
            datafusion::common::TableReference::bare(name.as_str()),
            tables[*name].clone(),
        )?;
    }
    let session = ctx.state();
    let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query)));
    let plan = session.optimize(&session.statement_to_plan(statement).await?)?;
    crate::lookup_join::check_linear(&plan, &source)?;
    let detail = format!(
        "lookup join: each batch of {source} against the rows of {tables_named} as they are then \
         (later changes of the table do not change emitted rows); no state of its own"
    );
    let mut operators = explain(&[], &source, info, None);
    operators.push(("join".into(), detail.clone()));
    operators.push((
        "query".into(),
        format!(
            "per batch, in batch: {}",
            plan.display_indent().to_string().replace('\n', "; ")
        ),
    ));
    Ok(ContinuousQuery {
        other_sources: Vec::new(),
        operators,
        source,
        output_schema: Arc::new(plan.schema().as_arrow().clone()),
        description: format!("source -> {detail}"),
        operator: Box::new(crate::lookup_join::LookupJoin {
            plan,
            session,
            source: table,
        }),
    })
}

/// The join a plan (checked by `interval_join::check_shape`) filters and projects.
fn find_join(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Join> {
    match plan {
        LogicalPlan::Join(j) => Some(j),
        other => other.inputs().into_iter().find_map(find_join),
    }
}

/// The one table a side of a join scans.
fn scanned_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(t) => Some(t.table_name.table().to_string()),
        other => match other.inputs().as_slice() {
            [one] => scanned_table(one),
            _ => None,
        },
    }
}

/// The schema a windowed source is planned with (its columns, then `window_start` and
/// `window_end`) and the index of its time column, which must be a TIMESTAMP with a
/// declared watermark.
fn windowed_schema(source: &str, info: &SourceInfo, t: &WindowCall) -> Result<(SchemaRef, usize)> {
    let time_column = info.schema.index_of(&t.time_column).map_err(|_| {
        invalid!(
            "{}: source {source} has no column {}",
            t.function,
            t.time_column
        )
    })?;
    if info.schema.field(time_column).data_type() != &TIMESTAMP {
        return Err(invalid!(
            "{}: column {} must be a TIMESTAMP",
            t.function,
            t.time_column
        ));
    }
    if info
        .watermark
        .as_ref()
        .is_none_or(|w| w.column != t.time_column)
    {
        return Err(invalid!(
            "{function} over {source}.{col} needs a watermark on that column: declare \
             WATERMARK FOR {col} AS {col} - INTERVAL '5' SECOND in CREATE SOURCE",
            function = t.function,
            col = t.time_column
        ));
    }
    let mut fields: Vec<Field> = info
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("window_start", TIMESTAMP, false));
    fields.push(Field::new("window_end", TIMESTAMP, false));
    Ok((Arc::new(Schema::new(fields)), time_column))
}

/// A SESSION view: sessions per key, each evaluated whole once it has ended.
#[allow(clippy::too_many_arguments)]
async fn plan_session(
    call: &WindowCall,
    windowing: Windowing,
    planned: Planned,
    source: String,
    info: &SourceInfo,
    time_column: usize,
    functions: &[datafusion::logical_expr::ScalarUDF],
) -> Result<ContinuousQuery> {
    if windowing.lateness() > 0 {
        return Err(unsupported!(
            "allowed_lateness is not supported for SESSION windows: leave it out"
        ));
    }
    check_window_local(&planned.plan)?;
    let narrowed = narrow(planned, &source, info, time_column, functions).await?;
    // The session keys: the GROUP BY columns (besides the window's) of the aggregate
    // nearest the source.
    let mut aggregates = Vec::new();
    let mut stack = vec![&narrowed.plan];
    while let Some(node) = stack.pop() {
        if let LogicalPlan::Aggregate(a) = node {
            aggregates.push(a);
        }
        stack.extend(node.inputs());
    }
    let Some(lowest) = aggregates.last() else {
        return Err(unsupported!(
            "a SESSION view must aggregate: GROUP BY window_start, window_end and the session's keys"
        ));
    };
    let mut key_columns = Vec::new();
    for e in &lowest.group_expr {
        match e {
            Expr::Column(c) if c.name == "window_start" || c.name == "window_end" => {}
            Expr::Column(c) => match narrowed.schema.index_of(&c.name) {
                Ok(i) if i + 2 < narrowed.schema.fields().len() => key_columns.push(i),
                _ => {
                    return Err(unsupported!(
                        "SESSION keys must be columns of the source; {} is not",
                        c.name
                    ));
                }
            },
            other => {
                return Err(unsupported!(
                    "SESSION keys must be plain columns of the source, not {other}: \
                     compute it in a stream or group by the column"
                ));
            }
        }
    }
    let gap = windowing.size();
    let keys: Vec<String> = key_columns
        .iter()
        .map(|&i| narrowed.schema.field(i).name().clone())
        .collect();
    let detail = format!(
        "SESSION on {}, gap {:?}, per {}",
        call.time_column,
        call.size,
        if keys.is_empty() {
            "stream".to_string()
        } else {
            keys.join(", ")
        }
    );
    let operators = with_held_rows(
        explain(&[], &source, info, None),
        &detail,
        "per ended session",
        &narrowed.plan,
    );
    let output_schema: SchemaRef = Arc::new(narrowed.plan.schema().as_arrow().clone());
    Ok(ContinuousQuery {
        other_sources: Vec::new(),
        operators,
        source,
        output_schema,
        description: format!("source -> window ({detail}) -> query per session"),
        operator: Box::new(SessionQuery::new(SessionPlan {
            gap,
            time_column: narrowed.time_column,
            key_columns,
            source_columns: narrowed.source_columns,
            windowed_schema: narrowed.schema,
            plan: narrowed.plan,
            session: narrowed.session,
            table: narrowed.table,
        })?),
    })
}

/// A plan of rows-holding views (per window, per session), over only the source
/// columns it reads.
struct Narrowed {
    plan: LogicalPlan,
    session: datafusion::execution::SessionState,
    table: Arc<WindowRows>,
    /// The kept source columns plus the two window columns.
    schema: SchemaRef,
    /// Index of the time column among the kept columns.
    time_column: usize,
    /// The kept source columns, when not all.
    source_columns: Option<Vec<usize>>,
}

/// A query as first planned over the full source schema plus window columns.
struct Planned {
    query: Box<ast::Query>,
    plan: LogicalPlan,
    ctx: SessionContext,
    table: Arc<WindowRows>,
    scan_schema: SchemaRef,
}

/// Such views hold rows: keep only the source columns the query reads (and the time
/// column), planning again over just those.
async fn narrow(
    planned: Planned,
    source: &str,
    info: &SourceInfo,
    time_column: usize,
    functions: &[datafusion::logical_expr::ScalarUDF],
) -> Result<Narrowed> {
    let Planned {
        query,
        plan,
        ctx: planned_ctx,
        table,
        scan_schema,
    } = planned;
    let n_source = info.schema.fields().len();
    let mut kept = used_columns_of(&plan, source, n_source + 2);
    kept.retain(|&i| i < n_source);
    if !kept.contains(&time_column) {
        kept.push(time_column);
        kept.sort_unstable();
    }
    if kept.len() == n_source {
        return Ok(Narrowed {
            plan,
            session: planned_ctx.state(),
            table,
            schema: scan_schema,
            time_column,
            source_columns: None,
        });
    }
    let schema = Arc::new(
        scan_schema.project(
            &kept
                .iter()
                .copied()
                .chain([n_source, n_source + 1])
                .collect::<Vec<_>>(),
        )?,
    );
    let ctx = planning_context();
    for f in functions {
        ctx.register_udf(f.clone());
    }
    let narrow_table = Arc::new(WindowRows::new(schema.clone()));
    ctx.register_table(
        datafusion::common::TableReference::bare(source),
        narrow_table.clone(),
    )?;
    let session = ctx.state();
    let statement = DFStatement::Statement(Box::new(ast::Statement::Query(query)));
    // The optimizer may have dropped a column the query names (`x IS NOT NULL` of a
    // column that cannot be NULL): then the query keeps every column.
    let replanned = match session.statement_to_plan(statement).await {
        Ok(p) => session.optimize(&p).ok(),
        Err(_) => None,
    };
    let Some(narrow_plan) = replanned else {
        return Ok(Narrowed {
            plan,
            session: planned_ctx.state(),
            table,
            schema: scan_schema,
            time_column,
            source_columns: None,
        });
    };
    Ok(Narrowed {
        plan: narrow_plan,
        session,
        table: narrow_table,
        schema,
        time_column: kept.iter().position(|&i| i == time_column).unwrap_or(0),
        source_columns: Some(kept),
    })
}

/// Indices of the columns of table `name` that any scan of it in the plan reads.
fn used_columns_of(plan: &LogicalPlan, name: &str, width: usize) -> Vec<usize> {
    let mut used = vec![false; width];
    let mut stack = vec![plan];
    while let Some(node) = stack.pop() {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name.table() == name
        {
            match &scan.projection {
                Some(p) => p
                    .iter()
                    .filter(|&&i| i < width)
                    .for_each(|&i| used[i] = true),
                None => used.iter_mut().for_each(|u| *u = true),
            }
        }
        stack.extend(node.inputs());
    }
    (0..width).filter(|&i| used[i]).collect()
}

/// Aggregations anywhere in the plan.
fn count_aggregates(plan: &LogicalPlan) -> usize {
    let own = usize::from(matches!(plan, LogicalPlan::Aggregate(_)));
    own + plan
        .inputs()
        .into_iter()
        .map(count_aggregates)
        .sum::<usize>()
}

fn describe(chain: &[&LogicalPlan]) -> String {
    chain
        .iter()
        .rev()
        .filter_map(|p| match p {
            LogicalPlan::TableScan(_) => None,
            LogicalPlan::Filter(_) => Some("filter"),
            LogicalPlan::Projection(_) => Some("project"),
            LogicalPlan::Aggregate(_) => Some("aggregate"),
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => Some("top-n"),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// A view of projections and filters: each batch in, its surviving rows out.
struct Stateless {
    steps: Steps,
}

impl Operator for Stateless {
    fn process(
        &mut self,
        batch: &RecordBatch,
        _watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(self.steps.apply(batch.clone())?);
        Ok(())
    }
}

use datafusion::arrow::record_batch::RecordBatch;

#[cfg(test)]
mod tests;
