//! A window's bounds as constants of its evaluation. A query run whole over one closed
//! window ([`super::per_window`]) sees the same `window_start` and `window_end` on
//! every row. Grouped by as columns, they are hashed and compared for every row: `GROUP
//! BY auction, window_start, window_end` keys three columns where one would do, which
//! costs DataFusion three to four times the work of grouping by `auction` alone.
//!
//! [`window_bounds_as_constants`] takes such columns out of each GROUP BY that keeps
//! another key, and puts them back above the aggregate as [`WindowBound`] functions,
//! which return the bounds of the window being evaluated (set by [`evaluating`] on the
//! thread that runs the query). Every column the plan's nodes see keeps its name, type
//! and nullability: the rest of the plan is unchanged.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::Result;
use crate::schema::TIMESTAMP;

thread_local! {
    /// The bounds (start, end) of the window whose query this thread is running.
    static EVALUATING: Cell<Option<(i64, i64)>> = const { Cell::new(None) };
}

/// Run `f` (a query over one window's rows, on this thread) with the window's bounds.
pub(crate) fn evaluating<R>(window: Option<(i64, i64)>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(i64, i64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            EVALUATING.set(self.0);
        }
    }
    let _restore = Restore(EVALUATING.replace(window));
    f()
}

/// Which bound of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    Start,
    End,
}

/// `window_start` or `window_end` of the window being evaluated. Volatile, so that
/// DataFusion never folds it at plan time, when no window is being evaluated.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowBound {
    bound: Bound,
    signature: Signature,
}

impl WindowBound {
    fn expr(bound: Bound) -> Expr {
        let udf = ScalarUDF::new_from_impl(WindowBound {
            bound,
            signature: Signature::nullary(Volatility::Volatile),
        });
        Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), Vec::new()))
    }
}

impl ScalarUDFImpl for WindowBound {
    fn name(&self) -> &str {
        match self.bound {
            Bound::Start => "evaluated_window_start",
            Bound::End => "evaluated_window_end",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(TIMESTAMP)
    }

    /// Never NULL, as the window columns it stands for.
    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), TIMESTAMP, false)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (start, end) = EVALUATING.get().ok_or_else(|| {
            DataFusionError::Execution(format!(
                "{} was read outside the evaluation of a window",
                self.name()
            ))
        })?;
        let value = match self.bound {
            Bound::Start => start,
            Bound::End => end,
        };
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
            Some(value),
            None,
        )))
    }
}

type DfResult<T> = datafusion::error::Result<T>;

/// The columns of a node's output that hold the evaluated window's bounds.
type Constants = HashMap<Column, Bound>;

/// `plan`, run over one window's rows of the tables `windowed` (each with its
/// `window_start` and `window_end` columns), with those columns taken out of every
/// GROUP BY that keeps another key (see the module's doc).
pub fn window_bounds_as_constants(plan: LogicalPlan, windowed: &[&str]) -> Result<LogicalPlan> {
    Ok(rewrite(plan, windowed)?.0)
}

/// `plan` rewritten, and the columns of its output that hold the window's bounds.
fn rewrite(plan: LogicalPlan, windowed: &[&str]) -> DfResult<(LogicalPlan, Constants)> {
    let mut inputs: Vec<Constants> = Vec::new();
    let plan = plan
        .map_children(|child| {
            let (child, constants) = rewrite(child, windowed)?;
            inputs.push(constants);
            Ok(Transformed::yes(child))
        })?
        .data;
    let input = |n: usize| inputs.get(n).cloned().unwrap_or_default();
    let constants = match &plan {
        LogicalPlan::TableScan(scan) if windowed.contains(&scan.table_name.table()) => scan
            .projected_schema
            .columns()
            .into_iter()
            .filter_map(|c| match c.name.as_str() {
                "window_start" => Some((c, Bound::Start)),
                "window_end" => Some((c, Bound::End)),
                _ => None,
            })
            .collect(),
        // Same columns, new names: by position.
        LogicalPlan::SubqueryAlias(alias) => {
            let from = alias.input.schema().columns();
            let constants = input(0);
            from.into_iter()
                .zip(alias.schema.columns())
                .filter_map(|(from, to)| constants.get(&from).map(|&b| (to, b)))
                .collect()
        }
        LogicalPlan::Projection(p) => {
            let constants = input(0);
            p.expr
                .iter()
                .zip(p.schema.columns())
                .filter_map(|(e, to)| bound_of(e, &constants).map(|b| (to, b)))
                .collect()
        }
        // The input's columns, and only the input's rows.
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Window(_) => input(0),
        LogicalPlan::Join(join) => match join.join_type {
            JoinType::Inner => input(0).into_iter().chain(input(1)).collect(),
            JoinType::LeftSemi | JoinType::LeftAnti => input(0),
            JoinType::RightSemi | JoinType::RightAnti => input(1),
            // An outer join's unmatched rows have NULL in the other side's columns.
            _ => Constants::new(),
        },
        LogicalPlan::Aggregate(_) => {
            let LogicalPlan::Aggregate(aggregate) = plan else {
                unreachable!("matched above")
            };
            return without_constant_keys(aggregate, &input(0));
        }
        _ => Constants::new(),
    };
    Ok((plan, constants))
}

/// Which bound `e` is, over an input whose bound columns are `constants`.
fn bound_of(e: &Expr, constants: &Constants) -> Option<Bound> {
    match e {
        Expr::Column(c) => constants.get(c).copied(),
        Expr::Alias(alias) => bound_of(&alias.expr, constants),
        Expr::ScalarFunction(f) => f
            .func
            .inner()
            .downcast_ref::<WindowBound>()
            .map(|w| w.bound),
        _ => None,
    }
}

/// `aggregate` grouping by its other keys only, under a projection that gives the
/// window's bounds back in their columns' places; as it is when every key is a bound
/// (a GROUP BY of none would answer one row over no rows) or none is.
fn without_constant_keys(
    aggregate: Aggregate,
    constants: &Constants,
) -> DfResult<(LogicalPlan, Constants)> {
    let bounds: Vec<Option<Bound>> = aggregate
        .group_expr
        .iter()
        .map(|e| bound_of(e, constants))
        .collect();
    let output: Vec<Column> = aggregate.schema.columns();
    let kept_constants: Constants = output
        .iter()
        .zip(&bounds)
        .filter_map(|(c, b)| b.map(|b| (c.clone(), b)))
        .collect();
    let unchanged =
        |aggregate: Aggregate| Ok((LogicalPlan::Aggregate(aggregate), kept_constants.clone()));
    if bounds.iter().all(Option::is_some) || bounds.iter().all(Option::is_none) {
        return unchanged(aggregate);
    }
    let keys: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .zip(&bounds)
        .filter(|(_, b)| b.is_none())
        .map(|(e, _)| e.clone())
        .collect();
    let Ok(grouped) =
        Aggregate::try_new(aggregate.input.clone(), keys, aggregate.aggr_expr.clone())
    else {
        return unchanged(aggregate);
    };
    let fields: Vec<_> = aggregate.schema.iter().collect();
    let projection: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .zip(&bounds)
        .enumerate()
        .map(|(i, (e, b))| match b {
            Some(b) => {
                let (qualifier, field) = fields[i];
                WindowBound::expr(*b).alias_qualified(qualifier.cloned(), field.name())
            }
            None => e.clone(),
        })
        .chain(aggregate.aggr_expr.iter().cloned())
        .collect();
    let rewritten = LogicalPlanBuilder::from(LogicalPlan::Aggregate(grouped))
        .project(projection)
        .and_then(LogicalPlanBuilder::build);
    // The nodes above read the aggregate's columns by name: keep them exactly, or
    // leave the aggregate as it is.
    match rewritten {
        Ok(plan) if plan.schema().iter().eq(aggregate.schema.iter()) => Ok((plan, kept_constants)),
        _ => unchanged(aggregate),
    }
}

#[cfg(test)]
mod tests;
