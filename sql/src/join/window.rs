//! Planning a join of several sources read through the same window: it runs whole per
//! closed window over every input's rows, by [`PerWindowQuery`].

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast;

use crate::batch::{BatchQuery, WindowRows};
use crate::parser::CreateView;
use crate::planner::explain::{explain, with_held_rows};
use crate::planner::narrow::used_columns_of;
use crate::planner::window_call::{WindowCall, windowed_schema};
use crate::planner::{
    ContinuousQuery, SourceCatalog, logical_plan, ms, planning_context, register, source_info,
};
use crate::window::Windowing;
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
        columns_read: None,
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
            query: BatchQuery::new(plan, session),
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
