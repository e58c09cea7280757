//! The event-time bounds of an interval join: what its condition says of `t0 - t1`
//! (input 0's time minus input 1's), the bound a `state_ttl` adds, and the checks that
//! the time columns the bounds compare reach the join unchanged.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator as Op, lit};

use crate::Result;

/// A time column of the join's inputs, plus a constant offset in ms.
struct TimeTerm {
    /// 0 or 1: the input whose time column it is.
    input: usize,
    offset_ms: i64,
}

/// The bounds on `t0 - t1` that the join condition `filter` states, as far as it does:
/// conjuncts comparing the two time columns (`time_of` names a column's input, when it
/// is that input's time column), each plus or minus a constant interval.
pub fn bounds_in(
    filter: Option<&Expr>,
    time_of: &dyn Fn(&Column) -> Option<usize>,
) -> (Option<i64>, Option<i64>) {
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        split_and(f, &mut conjuncts);
    }
    for c in conjuncts {
        let mut comparisons = Vec::new();
        match c {
            Expr::Between(b) if !b.negated => {
                comparisons.push((b.expr.as_ref(), Op::GtEq, b.low.as_ref()));
                comparisons.push((b.expr.as_ref(), Op::LtEq, b.high.as_ref()));
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                comparisons.push((left.as_ref(), *op, right.as_ref()));
            }
            _ => {}
        }
        for (l, op, r) in comparisons {
            let (Some(a), Some(b)) = (time_term(l, time_of), time_term(r, time_of)) else {
                continue;
            };
            if a.input == b.input {
                continue;
            }
            // a.t + a.off  op  b.t + b.off, as t0 - t1 op v.
            let (op, v) = if a.input == 0 {
                (op, b.offset_ms.saturating_sub(a.offset_ms))
            } else {
                let Some(flipped) = op.swap() else { continue };
                (flipped, a.offset_ms.saturating_sub(b.offset_ms))
            };
            match op {
                Op::Lt => hi = Some(hi.map_or(v.saturating_sub(1), |h| h.min(v.saturating_sub(1)))),
                Op::LtEq => hi = Some(hi.map_or(v, |h| h.min(v))),
                Op::Gt => lo = Some(lo.map_or(v.saturating_add(1), |l| l.max(v.saturating_add(1)))),
                Op::GtEq => lo = Some(lo.map_or(v, |l| l.max(v))),
                Op::Eq => {
                    lo = Some(lo.map_or(v, |l| l.max(v)));
                    hi = Some(hi.map_or(v, |h| h.min(v)));
                }
                _ => {}
            }
        }
    }
    (lo, hi)
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Op::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other),
    }
}

fn time_term(e: &Expr, time_of: &dyn Fn(&Column) -> Option<usize>) -> Option<TimeTerm> {
    match e {
        Expr::Column(c) => time_of(c).map(|input| TimeTerm {
            input,
            offset_ms: 0,
        }),
        // A cast to a coarser type (a DATE, whole seconds) would make the bounds wrong.
        Expr::Cast(c)
            if matches!(
                c.field.data_type(),
                DataType::Timestamp(
                    TimeUnit::Millisecond | TimeUnit::Microsecond | TimeUnit::Nanosecond,
                    _
                )
            ) =>
        {
            time_term(&c.expr, time_of)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let t = time_term(left, time_of)?;
            let ms = interval_ms(right)?;
            match op {
                Op::Plus => Some(TimeTerm {
                    offset_ms: t.offset_ms.checked_add(ms)?,
                    ..t
                }),
                Op::Minus => Some(TimeTerm {
                    offset_ms: t.offset_ms.checked_sub(ms)?,
                    ..t
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A constant interval or duration literal in ms (no months: their length varies).
fn interval_ms(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::IntervalDayTime(Some(d)) => {
            Some(i64::from(d.days) * 86_400_000 + i64::from(d.milliseconds))
        }
        // Bounds are whole milliseconds, as event times are.
        ScalarValue::IntervalMonthDayNano(Some(d))
            if d.months == 0 && d.nanoseconds % 1_000_000 == 0 =>
        {
            i64::from(d.days)
                .checked_mul(86_400_000)?
                .checked_add(d.nanoseconds / 1_000_000)
        }
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationSecond(Some(s)) => s.checked_mul(1_000),
        _ => None,
    }
}

/// `plan` with its join's condition also requiring `|t_left - t_right| <= ttl_ms`: a
/// join without time bounds keeps rows for a `state_ttl`, and the condition makes that
/// exact rather than a matter of when rows happen to be freed.
pub fn with_ttl(
    plan: LogicalPlan,
    left_time: Column,
    right_time: Column,
    ttl_ms: i64,
) -> Result<LogicalPlan> {
    // A duration, not an interval: timestamp plus duration is plain integer arithmetic.
    let within = |ms: i64| lit(ScalarValue::DurationMillisecond(Some(ms)));
    let condition = Expr::Column(left_time.clone())
        .gt_eq(Expr::Column(right_time.clone()) - within(ttl_ms))
        .and(Expr::Column(left_time).lt_eq(Expr::Column(right_time) + within(ttl_ms)));
    let plan = plan.transform_up(|node| match node {
        LogicalPlan::Join(mut j) => {
            j.filter = Some(match j.filter.take() {
                Some(f) => f.and(condition.clone()),
                None => condition.clone(),
            });
            Ok(Transformed::yes(LogicalPlan::Join(j)))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(plan.data)
}

/// Whether `side` passes its source's column `time` through unchanged (projections may
/// keep it, not compute it): the bounds and the freeing of rows read that column.
pub fn passes_time_through(side: &LogicalPlan, time: &str) -> bool {
    match side {
        LogicalPlan::Projection(p) => {
            p.expr
                .iter()
                .zip(p.schema.fields())
                .filter(|(_, f)| f.name() == time)
                .all(|(e, _)| matches!(e.clone().unalias(), Expr::Column(c) if c.name == time))
                && passes_time_through(&p.input, time)
        }
        other => other
            .inputs()
            .into_iter()
            .all(|i| passes_time_through(i, time)),
    }
}

/// The column of `plan`'s output `column` as it leaves the join below, when every
/// projection on the way passes it through unchanged (qualified, not computed).
pub fn column_at_join(plan: &LogicalPlan, column: &Column) -> Option<Column> {
    column.relation.as_ref()?;
    match plan {
        LogicalPlan::Join(_) => Some(column.clone()),
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(column).ok()?;
            match p.expr.get(i)?.clone().unalias() {
                Expr::Column(c) => column_at_join(&p.input, &c),
                _ => None,
            }
        }
        LogicalPlan::Filter(f) => column_at_join(&f.input, column),
        _ => None,
    }
}
