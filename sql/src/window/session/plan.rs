//! Planning a SESSION view: its keys (the GROUP BY columns besides the window's) and
//! the query run over each ended session's rows.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::{SessionPlan, SessionQuery};
use crate::batch::BatchQuery;
use crate::planner::explain::{explain, with_held_rows};
use crate::planner::narrow::{Planned, narrow};
use crate::planner::window_call::WindowCall;
use crate::planner::{ContinuousQuery, SourceInfo};
use crate::window::Windowing;
use crate::window::local::{any_window_column, check_window_local};
use crate::{Result, unsupported};

/// A SESSION view: sessions per key, each evaluated whole once it has ended.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn plan_session(
    call: &WindowCall,
    windowing: Windowing,
    planned: Planned,
    source: String,
    info: &SourceInfo,
    time_column: usize,
    functions: &[datafusion::logical_expr::ScalarUDF],
) -> Result<ContinuousQuery> {
    if windowing.lateness() > 0 {
        return Err(unsupported!(
            "allowed_lateness is not supported for SESSION windows: leave it out"
        ));
    }
    check_window_local(&planned.plan)?;
    let narrowed = narrow(planned, &source, info, time_column, functions).await?;
    // The session keys: the GROUP BY columns (besides the window's) of the aggregate
    // nearest the source.
    let mut aggregates = Vec::new();
    let mut stack = vec![&narrowed.plan];
    while let Some(node) = stack.pop() {
        if let LogicalPlan::Aggregate(a) = node {
            aggregates.push(a);
        }
        stack.extend(node.inputs());
    }
    let Some(lowest) = aggregates.last() else {
        return Err(unsupported!(
            "a SESSION view must aggregate: GROUP BY window_start, window_end and the session's keys"
        ));
    };
    let mut key_columns = Vec::new();
    for e in &lowest.group_expr {
        match e {
            e if any_window_column(&lowest.input, std::slice::from_ref(e)) => {}
            Expr::Column(c) => match narrowed.schema.index_of(&c.name) {
                Ok(i) if i + 2 < narrowed.schema.fields().len() => key_columns.push(i),
                _ => {
                    return Err(unsupported!(
                        "SESSION keys must be columns of the source; {} is not",
                        c.name
                    ));
                }
            },
            other => {
                return Err(unsupported!(
                    "SESSION keys must be plain columns of the source, not {other}: \
                     compute it in a stream or group by the column"
                ));
            }
        }
    }
    let gap = windowing.size();
    let keys: Vec<String> = key_columns
        .iter()
        .map(|&i| narrowed.schema.field(i).name().clone())
        .collect();
    let detail = format!(
        "SESSION on {}, gap {:?}, per {}",
        call.time_column,
        call.size,
        if keys.is_empty() {
            "stream".to_string()
        } else {
            keys.join(", ")
        }
    );
    let operators = with_held_rows(
        explain(&[], &source, info, None),
        &detail,
        "per ended session",
        &narrowed.plan,
    );
    let output_schema: SchemaRef = Arc::new(narrowed.plan.schema().as_arrow().clone());
    Ok(ContinuousQuery {
        columns_read: None,
        other_columns_read: Vec::new(),
        other_sources: Vec::new(),
        operators,
        source,
        output_schema,
        description: format!("source -> window ({detail}) -> query per session"),
        operator: Box::new(SessionQuery::new(SessionPlan {
            gap,
            time_column: narrowed.time_column,
            key_columns,
            source_columns: narrowed.source_columns,
            windowed_schema: narrowed.schema,
            query: BatchQuery::new(narrowed.plan, narrowed.session),
            table: narrowed.table,
        })?),
    })
}
