//! Planning an interval join of two sources: the time bounds its condition states (or a
//! `state_ttl` sets), its shape, and the operator, with an aggregate over it if any.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::sqlparser::ast;

use super::aggregate::{JoinAggregate, JoinAggregatePlan, plan_after_join_aggregate};
use super::bounds::{bounds_in, column_at_join, passes_time_through, with_ttl};
use super::rewrite::{aggregate_over_join, check_shape, read_kept_rows, replace_with_scan};
use super::{IntervalJoin, IntervalJoinPlan, JoinInput};
use crate::batch::{BatchQuery, WindowRows};
use crate::join::keyed::{KEYED, equality_keys};
use crate::join::{find_join, scanned_table};
use crate::parser::CreateView;
use crate::planner::explain::explain;
use crate::planner::narrow::used_columns_of;
use crate::planner::{
    ContinuousQuery, SourceCatalog, logical_plan, planning_context, register, source_info,
};
use crate::schema::{duration_in_unit, duration_text};
use crate::{Error, Result, invalid, unsupported};

/// A join of two sources without windows: an interval join, its rows matched within
/// event-time bounds that the join condition states or a `state_ttl` sets.
pub(crate) async fn plan_interval_join(
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
                    "unknown view option '{other}'; a join of two sources without windows takes state_ttl and max_rows"
                ));
            }
        }
    }
    let ctx = planning_context(functions);
    let mut inputs = Vec::with_capacity(2);
    for name in [first, second] {
        let info = source_info(sources, name)?;
        let watermark = info.watermark.as_ref().ok_or_else(|| {
            invalid!(
                "view {} joins {name}, which has no watermark: an interval join frees rows by \
                 event time; declare WATERMARK FOR <column> AS <column> - INTERVAL '5' SECOND",
                view.name
            )
        })?;
        let time_column = info.schema.index_of(&watermark.column)?;
        let table = Arc::new(WindowRows::new(info.schema.clone()));
        register(&ctx, name, table.clone())?;
        inputs.push((
            name.clone(),
            info,
            watermark.column.clone(),
            time_column,
            table,
        ));
    }
    let session = ctx.state();
    let mut plan = logical_plan(&session, query).await?;
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
        plan = with_ttl(plan, l, r, ttl)?;
    }
    let whole = session.optimize(&plan)?;
    // An aggregate over the join's rows runs on its own (below: JoinAggregate); the
    // join part only filters and projects around the join.
    let over = aggregate_over_join(&whole).cloned();
    let plan = match &over {
        Some(a) => a.input.as_ref().clone(),
        None => whole.clone(),
    };
    check_shape(&plan)?;
    let (left, right) = sides(&plan)?;
    let join = find_join(&plan).expect("found above");
    for (side, input) in [(&join.left, left), (&join.right, right)] {
        if !passes_time_through(side, &inputs[input].2) {
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
    let (lo, hi) = bounds_in(join.filter.as_ref(), &time_of);
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
                    let at_join = column_at_join(&plan, c)?;
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
    let (plan, [left_side, right_side]) = read_kept_rows(plan)?;
    // The equality key over each side's kept rows, which are the side's output.
    let keys = find_join(&plan)
        .and_then(equality_keys)
        .map(|[l, r]| if left == 0 { [l, r] } else { [r, l] });
    if let Some((_, line)) = operators.iter_mut().find(|(op, _)| op == "join") {
        match keys {
            Some(_) => line.push_str(&format!("; {KEYED}")),
            None => line.push_str("; in one instance (no equality key to route rows by)"),
        }
    }
    let sides = if left == 0 {
        [left_side, right_side]
    } else {
        [right_side, left_side]
    };
    let mut by_input = Vec::with_capacity(2);
    // What each input's side reads of its source, and its time column (rows are freed
    // by it): all the operator reads of that source.
    let mut read = Vec::with_capacity(2);
    for ((side, kept, kept_schema), (name, info, time, source_time, source)) in
        sides.into_iter().zip(inputs)
    {
        let width = info.schema.fields().len();
        let mut columns = used_columns_of(&side, &name, width);
        if !columns.contains(&source_time) {
            columns.push(source_time);
            columns.sort_unstable();
        }
        read.push((columns.len() < width).then_some(columns));
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
        by_input.push(JoinInput {
            source,
            source_time,
            side: BatchQuery::new(side, session.clone()),
            kept,
            kept_schema,
            kept_time,
        });
    }
    let mut by_input = by_input.into_iter();
    let (Some(i0), Some(i1)) = (by_input.next(), by_input.next()) else {
        return Err(Error::Execution("an interval join has two inputs".into()));
    };
    let [first_read, second_read]: [Option<Vec<usize>>; 2] = read
        .try_into()
        .map_err(|_| Error::Execution("an interval join has two inputs".into()))?;
    Ok(ContinuousQuery {
        columns_read: first_read,
        other_columns_read: vec![second_read],
        other_sources: vec![second.clone()],
        operators,
        source: first.clone(),
        output_schema,
        description: format!(
            "sources -> interval join ({detail}){}",
            if over.is_some() { " -> aggregate" } else { "" }
        ),
        operator: {
            let join = IntervalJoin::new(IntervalJoinPlan {
                query: BatchQuery::new(plan, session.clone()),
                inputs: [i0, i1],
                bounds: (lo, hi),
                keys,
            })?;
            match (over, close, then) {
                (Some(a), Some((side, close_column)), Some((then, _))) => {
                    let (aggregate, joined, joined_schema) =
                        replace_with_scan(LogicalPlan::Aggregate(a), &join_part)?;
                    Box::new(JoinAggregate::new(
                        join,
                        JoinAggregatePlan {
                            side,
                            close_column,
                            aggregate: BatchQuery::new(aggregate, session),
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
