//! Lowering a planned chain (one source, stateless nodes around at most one aggregate)
//! into the steps and grouped plan the incremental operators run.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, FetchType, LogicalPlan, SkipType};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::expressions::lit;
use datafusion::physical_expr::{create_physical_expr, create_physical_sort_exprs};

use super::steps::{Step, Steps};
use crate::aggregate::{AggregateCall, GroupedPlan};
use crate::window::local::any_window_column;
use crate::{Error, Result, invalid, unsupported};

/// Lower the aggregate at `chain[at]` with the stateless steps before and after it.
pub(crate) fn lower_aggregate(
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
    if windowed && !any_window_column(&agg.input, &agg.group_expr) {
        return Err(invalid!(
            "a windowed query must GROUP BY window_start or window_end (and any keys)"
        ));
    }
    let input = agg.input.schema();
    let pctx = PhysicalPlanningContext::default();
    if agg.group_expr.is_empty() {
        return lower_global(agg, chain, at, props);
    }
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
    let aggregates = lower_calls(agg, props)?;
    Ok(GroupedPlan {
        pre: lower_chain(&chain[at + 1..], props)?,
        group_by,
        group_schema,
        aggregates,
        aggregate_schema,
        post: lower_chain(&chain[..at], props)?,
        shards: 1,
    })
}

/// The aggregate calls of `agg`, as the group tables run them.
fn lower_calls(
    agg: &datafusion::logical_expr::Aggregate,
    props: &ExecutionProps,
) -> Result<Vec<AggregateCall>> {
    let input = agg.input.schema();
    let pctx = PhysicalPlanningContext::default();
    agg.aggr_expr
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
        .collect()
}

/// An aggregate without GROUP BY (`SELECT count(*) FROM s`): one group, whose row the
/// view keeps up to date. DataFusion's group tables need a key, so the group is keyed by
/// a constant that the first step after the aggregate drops again.
fn lower_global(
    agg: &datafusion::logical_expr::Aggregate,
    chain: &[&LogicalPlan],
    at: usize,
    props: &ExecutionProps,
) -> Result<GroupedPlan> {
    let key = Field::new(GLOBAL_KEY, DataType::Boolean, false);
    let aggregates = lower_calls(agg, props)?;
    let fields: Vec<FieldRef> = std::iter::once(Arc::new(key.clone()))
        .chain(agg.schema.as_arrow().fields().iter().cloned())
        .collect();
    let n = agg.aggr_expr.len();
    Ok(GroupedPlan {
        pre: lower_chain(&chain[at + 1..], props)?,
        group_by: vec![lit(true)],
        group_schema: Arc::new(Schema::new(vec![key])),
        aggregates,
        aggregate_schema: Arc::new(Schema::new(fields)),
        post: lower_chain(&chain[..at], props)?.after(Step::Select((1..=n).collect())),
        shards: 1,
    })
}

/// The name of the constant key of an aggregate without GROUP BY.
pub(crate) const GLOBAL_KEY: &str = "__weir_global";

/// The plan as a single-input chain, root first.
pub(crate) fn linearize(plan: &LogicalPlan) -> Result<Vec<&LogicalPlan>> {
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
pub(crate) fn lower_chain(chain: &[&LogicalPlan], props: &ExecutionProps) -> Result<Steps> {
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
    Ok(Steps::new(steps))
}

/// Aggregations anywhere in the plan.
pub(crate) fn count_aggregates(plan: &LogicalPlan) -> usize {
    let own = usize::from(matches!(plan, LogicalPlan::Aggregate(_)));
    own + plan
        .inputs()
        .into_iter()
        .map(count_aggregates)
        .sum::<usize>()
}

pub(crate) fn describe(chain: &[&LogicalPlan]) -> String {
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
