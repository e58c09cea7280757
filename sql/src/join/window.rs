//! Planning a join of several sources read through the same window: it runs whole per
//! closed window over every input's rows, by [`PerWindowQuery`].

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Distinct, Expr, Join, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::sql::sqlparser::ast;

use crate::batch::{BatchQuery, WindowRows};
use crate::join::keyed::{KEYED, KeyExprs, KeyedWindowJoin};
use crate::parser::CreateView;
use crate::planner::explain::{explain, with_held_rows};
use crate::planner::narrow::used_columns_of;
use crate::planner::window_call::{WindowCall, windowed_schema};
use crate::planner::{
    ContinuousQuery, SourceCatalog, SourceInfo, logical_plan, ms, planning_context, register,
    source_info,
};
use crate::window::Windowing;
use crate::window::bounds::window_bounds_as_constants;
use crate::window::local::check_window_local;
use crate::window::per_window::{OtherInput, PerWindowPlan, PerWindowQuery};
use crate::{Result, unsupported};

/// A join of several sources, each read through the same TUMBLE or HOP window and
/// matched on `window_start`: it runs whole per closed window over every input's rows.
pub(crate) async fn plan_window_join(
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
    if !view.options.is_empty() {
        return Err(unsupported!(
            "view options other than max_rows (allowed_lateness) are not supported for joins of several sources"
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
    let windowing = Windowing::hop(ms(first.slide), ms(first.size))?;
    let ctx = planning_context(functions);
    let mut inputs = Vec::with_capacity(names.len());
    for name in names {
        let info = source_info(sources, name)?;
        let call = windows.iter().find(|w| &w.source == name).ok_or_else(|| {
            unsupported!("view {} reads {name} without a window: {fix}", view.name)
        })?;
        let (schema, time_column) = windowed_schema(name, info, call)?;
        let table = Arc::new(WindowRows::new(schema.clone()));
        register(&ctx, name, table.clone())?;
        inputs.push((name.clone(), info, schema, time_column, table));
    }
    let session = ctx.state();
    let mut plan = session.optimize(&logical_plan(&session, query.clone()).await?)?;
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
        let ctx = planning_context(functions);
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
            register(&ctx, name, table.clone())?;
        }
        let narrow_session = ctx.state();
        // The optimizer may have dropped a column the query names (`x IS NOT NULL` of a
        // column that cannot be NULL): then the query reads every column.
        let replanned = match logical_plan(&narrow_session, query).await {
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
    let keys = match others.as_slice() {
        [((other, other_info, other_windowed, ..), _)] => window_join_keys(
            &plan,
            [
                (&source, info, &windowed_schema),
                (other, other_info, other_windowed),
            ],
        ),
        _ => None,
    };
    let windowed: Vec<&str> = std::iter::once(source.as_str())
        .chain(others.iter().map(|((name, ..), _)| name.as_str()))
        .collect();
    let plan = window_bounds_as_constants(plan, &windowed)?;
    let mut operators = explain(&[], &source, info, None);
    for ((name, info, ..), _) in &others {
        operators.extend(explain(&[], name, info, None));
    }
    let when = format!(
        "join per closed window (the minimum watermark of the inputs), {}",
        if keys.is_some() {
            KEYED
        } else {
            "in one instance (no equality key beside the window's that every part of the query keeps)"
        }
    );
    let operators = with_held_rows(operators, &detail, &when, &plan);
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    Ok(ContinuousQuery {
        // What each input's open windows hold is all the operator reads of it.
        columns_read: source_columns.clone(),
        other_columns_read: others.iter().map(|(_, kept)| kept.clone()).collect(),
        other_sources: others.iter().map(|((n, ..), _)| n.clone()).collect(),
        operators,
        source,
        output_schema,
        description: format!("sources -> window ({detail}) -> join per window"),
        operator: per_window_join(
            keys,
            PerWindowPlan {
                windowing,
                time_column,
                source_columns,
                windowed_schema,
                query: BatchQuery::new(plan, session),
                table,
                others: others
                    .into_iter()
                    .map(
                        |((_, _, windowed_schema, time_column, table), source_columns)| {
                            OtherInput {
                                time_column,
                                source_columns,
                                windowed_schema,
                                table,
                            }
                        },
                    )
                    .collect(),
            },
        )?,
    })
}

/// The operator of a per-window join: in keyed instances when it has `keys` (each
/// input's, over its rows as they arrive and as they are held).
fn per_window_join(
    keys: Option<[Vec<KeyExprs>; 2]>,
    plan: PerWindowPlan,
) -> Result<Box<dyn crate::operator::Operator>> {
    Ok(match keys {
        Some([arriving, held]) => Box::new(KeyedWindowJoin::new(plan, arriving, held)?),
        None => Box::new(PerWindowQuery::new(plan)),
    })
}

/// The equality key of a per-window join of two sources by which its rows can be split
/// into instances: the pairs of `plan`'s join key that are source columns on both sides
/// (not window columns), each passed unchanged to the join by every part of its side
/// and kept together by its aggregates (they group by it), with only filters and
/// projections above the join. For each input (`inputs`: its name, its source, its
/// windowed schema), the key over its rows as they arrive and as they are held.
fn window_join_keys(
    plan: &LogicalPlan,
    inputs: [(&String, &SourceInfo, &SchemaRef); 2],
) -> Option<[Vec<KeyExprs>; 2]> {
    let join = only_filters_above_join(plan)?;
    let input_of = |side: &LogicalPlan| {
        let scanned = scanned_tables(side);
        inputs
            .iter()
            .position(|(name, ..)| scanned.len() == 1 && scanned[0] == name.as_str())
    };
    let (left, right) = (input_of(&join.left)?, input_of(&join.right)?);
    if left == right {
        return None;
    }
    let mut arriving = [Vec::new(), Vec::new()];
    let mut held = [Vec::new(), Vec::new()];
    for (l, r) in &join.on {
        let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
            continue;
        };
        let (Some(l), Some(r)) = (kept_column(&join.left, l), kept_column(&join.right, r)) else {
            continue;
        };
        let source_field = |input: usize, name: &str| {
            let schema = &inputs[input].1.schema;
            schema
                .index_of(name)
                .ok()
                .map(|i| (i, schema.field(i).data_type().clone()))
        };
        let (Some((li, lt)), Some((ri, rt))) = (source_field(left, &l), source_field(right, &r))
        else {
            continue;
        };
        if lt != rt {
            continue;
        }
        let held_at = |input: usize, name: &str| inputs[input].2.index_of(name).ok();
        let (Some(lh), Some(rh)) = (held_at(left, &l), held_at(right, &r)) else {
            continue;
        };
        for (input, name, at, held_at) in [(left, &l, li, lh), (right, &r, ri, rh)] {
            arriving[input].push(Arc::new(PhysicalColumn::new(name, at)) as Arc<dyn PhysicalExpr>);
            held[input].push(Arc::new(PhysicalColumn::new(name, held_at)) as Arc<dyn PhysicalExpr>);
        }
    }
    if arriving[0].is_empty() {
        return None;
    }
    let [a0, a1] = arriving;
    let [h0, h1] = held;
    Some([vec![a0, a1], vec![h0, h1]])
}

/// The join `plan` only filters, projects and renames, if it does.
fn only_filters_above_join(plan: &LogicalPlan) -> Option<&Join> {
    match plan {
        LogicalPlan::Join(j) => Some(j),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            match plan.inputs().as_slice() {
                [one] => only_filters_above_join(one),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The tables `plan` scans.
fn scanned_tables(plan: &LogicalPlan) -> Vec<String> {
    let mut tables = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(t) = node {
            tables.push(t.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables
}

/// The name of the scanned table's column that `column` of `side`'s output is, when
/// every part of `side` keeps rows with one value of it together: renamed or passed on
/// by projections, filtered, grouped by (an aggregate that groups by it), or made
/// distinct. `None` for anything else.
fn kept_column(side: &LogicalPlan, column: &Column) -> Option<String> {
    let at = side.schema().index_of_column(column).ok()?;
    let below = |input: &LogicalPlan, expr: &Expr| match strip_alias(expr) {
        Expr::Column(c) => kept_column(input, c),
        _ => None,
    };
    match side {
        LogicalPlan::TableScan(_) => Some(side.schema().field(at).name().clone()),
        LogicalPlan::Filter(f) => kept_column(&f.input, column),
        LogicalPlan::Distinct(Distinct::All(input)) => kept_column(input, column),
        LogicalPlan::SubqueryAlias(a) => {
            let (qualifier, field) = a.input.schema().qualified_field(at);
            kept_column(&a.input, &Column::new(qualifier.cloned(), field.name()))
        }
        LogicalPlan::Projection(p) => below(&p.input, p.expr.get(at)?),
        LogicalPlan::Aggregate(a) => match a.group_expr.get(at)? {
            Expr::GroupingSet(_) => None,
            e => below(&a.input, e),
        },
        _ => None,
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}
