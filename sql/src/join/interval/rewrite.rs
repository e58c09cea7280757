//! The shape of an interval join's plan, and how it is cut up to run incrementally: each
//! side's part (run as its rows arrive) is replaced by a scan of the rows kept for it,
//! and an aggregate over the join by a scan of the join's rows.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder};

use crate::batch::WindowRows;
use crate::{Result, unsupported};

/// Check that `plan` only filters and projects around one inner join of two sources
/// that each side only filters and projects: then the query over the union of batches
/// is the union of its results per batch.
pub fn check_shape(plan: &LogicalPlan) -> Result<()> {
    fn below(plan: &LogicalPlan) -> Result<()> {
        match plan {
            LogicalPlan::TableScan(_) => Ok(()),
            LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
                plan.inputs().into_iter().try_for_each(below)
            }
            other => Err(unsupported!(
                "{} inside an interval join of two sources is not supported: each side may only filter and project its source",
                other.display()
            )),
        }
    }
    match plan {
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            plan.inputs().into_iter().try_for_each(check_shape)
        }
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            below(&j.left)?;
            below(&j.right)
        }
        LogicalPlan::Join(j) => Err(unsupported!(
            "{} joins of two sources are not supported: only inner joins, whose matches are final",
            j.join_type
        )),
        other => Err(unsupported!(
            "{} over a join of two sources without a window is not supported: an interval join \
             may only be filtered and projected; aggregate it per window instead \
             (join TUMBLE(a, ...) with TUMBLE(b, ...) on window_start)",
            other.display()
        )),
    }
}

/// One side of the join as it is kept: the side's own plan, the table of its kept rows
/// and their schema.
pub type KeptSide = (LogicalPlan, Arc<WindowRows>, SchemaRef);

/// Replace each side of the join in `plan` by a scan of the rows kept for it: the
/// side's output, computed as rows arrive. Returns the plan and, per side (left, right),
/// the side's own plan, the kept table and its schema.
pub fn read_kept_rows(plan: LogicalPlan) -> Result<(LogicalPlan, [KeptSide; 2])> {
    let mut sides = Vec::with_capacity(2);
    let plan = plan
        .transform_up(|node| match node {
            LogicalPlan::Join(mut j) => {
                for side in [&mut j.left, &mut j.right] {
                    let (scan, table, schema) = kept_scan(side)
                        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                    sides.push((side.as_ref().clone(), table, schema));
                    *side = Arc::new(scan);
                }
                Ok(Transformed::yes(LogicalPlan::Join(j)))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let mut sides = sides.into_iter();
    match (sides.next(), sides.next(), sides.next()) {
        (Some(left), Some(right), None) => Ok((plan, [left, right])),
        _ => Err(unsupported!("an interval join has exactly one join")),
    }
}

/// A scan of a new table of `side`'s rows that yields exactly `side`'s schema (the same
/// qualified names), so the expressions above it still resolve.
fn kept_scan(side: &LogicalPlan) -> Result<(LogicalPlan, Arc<WindowRows>, SchemaRef)> {
    let fields: Vec<datafusion::arrow::datatypes::Field> = side
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
        .collect();
    let schema: SchemaRef = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let table = Arc::new(WindowRows::new(schema.clone()));
    let exprs: Vec<Expr> = side
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (qualifier, f))| {
            Expr::Column(Column::new(Some("kept"), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), f.name())
        })
        .collect();
    let scan = LogicalPlanBuilder::scan(
        "kept",
        datafusion::datasource::provider_as_source(table.clone()),
        None,
    )?
    .project(exprs)?
    .build()?;
    Ok((scan, table, schema))
}

/// The lowest aggregate above the join in `plan`, if any: the one over the join's rows.
pub fn aggregate_over_join(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Aggregate> {
    let mut found = None;
    let mut node = plan;
    loop {
        if let LogicalPlan::Aggregate(a) = node {
            found = Some(a);
        }
        match node {
            LogicalPlan::Join(_) => return found,
            other => match other.inputs().as_slice() {
                [one] => node = one,
                _ => return None,
            },
        }
    }
}

/// `plan` with `node` (a part of it) replaced by a scan of a new table of its rows.
pub fn replace_with_scan(
    plan: LogicalPlan,
    node: &LogicalPlan,
) -> Result<(LogicalPlan, Arc<WindowRows>, SchemaRef)> {
    let (scan, table, schema) = kept_scan(node)?;
    let mut scan = Some(scan);
    let plan = plan
        .transform_down(|n| {
            if &n == node
                && let Some(scan) = scan.take()
            {
                return Ok(Transformed::new(
                    scan,
                    true,
                    datafusion::common::tree_node::TreeNodeRecursion::Jump,
                ));
            }
            Ok(Transformed::no(n))
        })?
        .data;
    Ok((plan, table, schema))
}
