//! Which queries over a window may run whole per window: those whose every part stays
//! inside one window (aggregates group by `window_start`, window functions partition by
//! it, joins match on it), so that their answer for a window depends on that window's
//! rows only. A window column stays the window under any alias (Nexmark's published
//! queries rename it in subqueries: `window_start AS starttime`, then join on
//! `starttime`); a column computed under its name is not the window.

use std::iter::repeat;

use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan};

use crate::{Result, unsupported};

/// Check that every part of `plan` stays inside one window, so that evaluating it per
/// window equals evaluating it over the whole stream. ORDER BY and LIMIT are allowed at
/// the top only (they rank each window's result).
pub fn check_window_local(plan: &LogicalPlan) -> Result<()> {
    check(plan, true)
}

/// One of the two window columns of a windowed scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    Start,
    End,
}

/// For each output column of `plan`, which window column it is, if any: the
/// `window_start` or `window_end` of a windowed scan, passed on unchanged under any name
/// (projections, aliases, group keys, either side of a join).
pub(crate) fn window_columns(plan: &LogicalPlan) -> Vec<Option<Bound>> {
    let width = plan.schema().fields().len();
    let of_exprs = |input: &LogicalPlan, exprs: &[Expr]| {
        let kinds = window_columns(input);
        exprs
            .iter()
            .map(|e| bound_in(input, &kinds, e))
            .collect::<Vec<_>>()
    };
    let kinds = match plan {
        LogicalPlan::TableScan(scan) => scan
            .projected_schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "window_start" => Some(Bound::Start),
                "window_end" => Some(Bound::End),
                _ => None,
            })
            .collect(),
        LogicalPlan::Projection(p) => of_exprs(&p.input, &p.expr),
        // The group keys, then the aggregates.
        LogicalPlan::Aggregate(a) => of_exprs(&a.input, &a.group_expr),
        LogicalPlan::Distinct(Distinct::On(d)) => of_exprs(&d.input, &d.select_expr),
        LogicalPlan::Join(j) => match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => window_columns(&j.left),
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                window_columns(&j.right)
            }
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                let mut kinds = window_columns(&j.left);
                kinds.extend(window_columns(&j.right));
                kinds
            }
        },
        // A column of a union is a window column when it is the same one in every input.
        LogicalPlan::Union(u) => {
            let mut inputs = u.inputs.iter().map(|i| window_columns(i));
            let first = inputs.next().unwrap_or_default();
            inputs.fold(first, |kinds, other| {
                kinds
                    .iter()
                    .zip(other)
                    .map(|(a, b)| a.filter(|a| Some(*a) == b))
                    .collect()
            })
        }
        // The input's columns (a window function's results follow them).
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Distinct(Distinct::All(_))
        | LogicalPlan::Window(_) => match plan.inputs().as_slice() {
            [input] => window_columns(input),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    kinds.into_iter().chain(repeat(None)).take(width).collect()
}

/// Which window column `e` (an expression over `input`, whose columns are `kinds`) is:
/// a column of the input that is one, under any alias.
fn bound_in(input: &LogicalPlan, kinds: &[Option<Bound>], e: &Expr) -> Option<Bound> {
    let Expr::Column(c) = e.clone().unalias() else {
        return None;
    };
    let i = input.schema().index_of_column(&c).ok()?;
    kinds.get(i).copied().flatten()
}

/// Whether any of `exprs` (over `input`) is a window column.
pub(crate) fn any_window_column(input: &LogicalPlan, exprs: &[Expr]) -> bool {
    let kinds = window_columns(input);
    exprs.iter().any(|e| bound_in(input, &kinds, e).is_some())
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
            if !any_window_column(&a.input, &a.group_expr) {
                return Err(unsupported!(
                    "every aggregation in a windowed view must GROUP BY window_start or window_end \
                     (under any alias), so it stays inside one window"
                ));
            }
        }
        LogicalPlan::Window(w) => {
            for e in &w.window_expr {
                let Expr::WindowFunction(f) = e.clone().unalias() else {
                    continue;
                };
                if !any_window_column(&w.input, &f.params.partition_by) {
                    return Err(unsupported!(
                        "window functions in a windowed view must PARTITION BY window_start or \
                         window_end, so they stay inside one window: {e}"
                    ));
                }
            }
        }
        LogicalPlan::Join(j) => {
            let (left, right) = (window_columns(&j.left), window_columns(&j.right));
            let same_window_column = |l: &Expr, r: &Expr| {
                let l = bound_in(&j.left, &left, l);
                l.is_some() && l == bound_in(&j.right, &right, r)
            };
            if !j.on.iter().any(|(l, r)| same_window_column(l, r)) {
                return Err(unsupported!(
                    "a join inside a windowed view must match window_start (or window_end) on \
                     both sides, so it stays inside one window"
                ));
            }
        }
        LogicalPlan::Distinct(_) => {
            if !window_columns(plan).contains(&Some(Bound::Start)) {
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
