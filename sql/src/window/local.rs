//! Which queries over a window may run whole per window: those whose every part stays
//! inside one window (aggregates group by `window_start`, window functions partition by
//! it, joins match on it), so that their answer for a window depends on that window's
//! rows only.

use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::{Result, unsupported};

/// Check that every part of `plan` stays inside one window, so that evaluating it per
/// window equals evaluating it over the whole stream. ORDER BY and LIMIT are allowed at
/// the top only (they rank each window's result).
pub fn check_window_local(plan: &LogicalPlan) -> Result<()> {
    check(plan, true)
}

fn is_window_column(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == "window_start" || c.name == "window_end")
}

fn check(plan: &LogicalPlan, top: bool) -> Result<()> {
    let stays_top = top
        && matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::SubqueryAlias(_)
        );
    match plan {
        LogicalPlan::TableScan(_)
        | LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Union(_) => {}
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) if top => {}
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            return Err(unsupported!(
                "ORDER BY / LIMIT inside a subquery of a windowed view is not supported: \
                 rank per window with row_number() OVER (PARTITION BY window_start ORDER BY ...)"
            ));
        }
        LogicalPlan::Aggregate(a) => {
            if !a.group_expr.iter().any(is_window_column) {
                return Err(unsupported!(
                    "every aggregation in a windowed view must GROUP BY window_start or window_end \
                     (keep those names in subqueries), so it stays inside one window"
                ));
            }
        }
        LogicalPlan::Window(w) => {
            for e in &w.window_expr {
                let Expr::WindowFunction(f) = e.clone().unalias() else {
                    continue;
                };
                if !f.params.partition_by.iter().any(is_window_column) {
                    return Err(unsupported!(
                        "window functions in a windowed view must PARTITION BY window_start or \
                         window_end, so they stay inside one window: {e}"
                    ));
                }
            }
        }
        LogicalPlan::Join(j) => {
            let same_window_column = |l: &Expr, r: &Expr| match (l, r) {
                (Expr::Column(a), Expr::Column(b)) => {
                    is_window_column(l) && is_window_column(r) && a.name == b.name
                }
                _ => false,
            };
            if !j.on.iter().any(|(l, r)| same_window_column(l, r)) {
                return Err(unsupported!(
                    "a join inside a windowed view must match window_start (or window_end) on \
                     both sides, so it stays inside one window"
                ));
            }
        }
        LogicalPlan::Distinct(_) => {
            if plan
                .schema()
                .field_with_unqualified_name("window_start")
                .is_err()
            {
                return Err(unsupported!(
                    "SELECT DISTINCT in a windowed view must keep window_start among its columns"
                ));
            }
        }
        other => {
            return Err(unsupported!(
                "{} in a windowed view is not supported",
                other.display()
            ));
        }
    }
    for input in plan.inputs() {
        check(input, stays_top)?;
    }
    Ok(())
}
