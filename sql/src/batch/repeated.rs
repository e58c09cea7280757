//! A part a batch query holds more than once, run once per run.
//!
//! DataFusion plans each occurrence of a subquery on its own: Nexmark q5 counts each
//! window's bids per auction twice, once for the rows and once for their maximum, and
//! that grouping was four fifths of its pipeline thread's time. An aggregate whose plan
//! (with everything under it) occurs more than once is taken out: each run runs it
//! first, and its occurrences read its rows from a table of their own (marked as an
//! aggregate's rows, so a hash join still builds on it: planner/build_side.rs).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Volatility};
use datafusion::physical_plan::ExecutionPlan;

use super::WindowRows;
use crate::Result;
use crate::window::bounds::WindowBound;

/// The name the occurrences read the part's rows by.
const TABLE: &str = "weir_repeated";

/// The part taken out, and the table its occurrences read.
pub(super) struct Repeated {
    pub(super) plan: LogicalPlan,
    pub(super) table: Arc<WindowRows>,
    /// Made on the first run, as the query's own.
    pub(super) physical: OnceLock<Arc<dyn ExecutionPlan>>,
}

/// `plan` with its outermost repeated aggregate read from a table, and that part; or
/// `plan` as it is when no aggregate repeats.
pub(super) fn take_out(plan: LogicalPlan) -> Result<(LogicalPlan, Option<Repeated>)> {
    let Some(part) = outermost_repeated_aggregate(&plan)? else {
        return Ok((plan, None));
    };
    // A part that reads an outer query's columns cannot run on its own, and one with a
    // volatile function (`random()`) gives each occurrence rows of its own.
    if part.contains_outer_reference() || volatile(&part)? {
        return Ok((plan, None));
    }
    let schema = part.schema().clone();
    // Columns named by position: a part's output may hold one name under two qualifiers.
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
        .collect();
    let single = match &part {
        LogicalPlan::Aggregate(a) => !a
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_))),
        _ => false,
    };
    let table = Arc::new(WindowRows::new(Arc::new(Schema::new(fields))).of_an_aggregate(single));
    // Each occurrence becomes the table's columns under the part's own names.
    let named_as_before: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(TABLE), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let read = LogicalPlanBuilder::scan(TABLE, provider_as_source(table.clone()), None)?
        .project(named_as_before)?
        .build()?;
    // The nodes above an occurrence keep the schema they were planned with: the read
    // must give exactly the part's columns, or the plan stays whole.
    if !read.schema().iter().eq(part.schema().iter()) {
        return Ok((plan, None));
    }
    let rewritten = plan
        .transform_down(|node| {
            if node == part {
                Ok(Transformed::new(
                    read.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })?
        .data;
    Ok((
        rewritten,
        Some(Repeated {
            plan: part,
            table,
            physical: OnceLock::new(),
        }),
    ))
}

/// Whether `part` calls a volatile function other than a window's bounds (constant
/// within a run).
fn volatile(part: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    part.apply(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility == Volatility::Volatile
                    && f.func.inner().downcast_ref::<WindowBound>().is_none()
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// The first aggregate, outermost first, whose plan occurs more than once in `plan`.
fn outermost_repeated_aggregate(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let mut seen: HashMap<&LogicalPlan, usize> = HashMap::new();
    let mut order = Vec::new();
    plan.apply(|node| {
        if matches!(node, LogicalPlan::Aggregate(_)) {
            let count = seen.entry(node).or_insert(0);
            if *count == 0 {
                order.push(node);
            }
            *count += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(order
        .into_iter()
        .find(|node| seen.get(node).is_some_and(|&n| n > 1))
        .cloned())
}
