//! Stream-table joins: a source joined with a view (an updating table, such as an
//! aggregate per key), as ksqlDB's stream-table joins and Flink's lookup joins do. Each
//! batch of the source is joined with the table's rows as they are when the batch is
//! processed; later changes of the table do not change rows already emitted. The join
//! keeps no state of its own: the table is the other view's rows, bounded by its keys.
//!
//! The query runs in batch mode per source batch, so it must be linear in the source:
//! on the way from the source to the result only filters, projections and joins (inner,
//! or left with the source on the left) are allowed; the table's side may aggregate.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{JoinType, LogicalPlan};
use datafusion::sql::sqlparser::ast;

use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator};
use crate::parser::CreateView;
use crate::planner::explain::explain;
use crate::planner::window_call::WindowCall;
use crate::planner::{
    ContinuousQuery, LookupTables, SourceCatalog, logical_plan, planning_context, register,
    source_info,
};
use crate::{Result, invalid, unsupported};

/// The running operator: the query, and the table its source's batch is read through.
pub struct LookupJoin {
    pub query: BatchQuery,
    pub source: Arc<WindowRows>,
}

impl Operator for LookupJoin {
    fn process(
        &mut self,
        batch: &RecordBatch,
        _watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.query
            .run(&self.source, vec![batch.clone()])?
            .into_iter()
            .for_each(|b| out.emit(b));
        Ok(())
    }
}

/// A source joined with views (tables): each batch joined with the views' rows as they
/// are then.
pub(crate) async fn plan_lookup_join(
    view: &CreateView,
    sources: &SourceCatalog,
    functions: &[datafusion::logical_expr::ScalarUDF],
    names: &[String],
    tables: &LookupTables,
    windows: &[WindowCall],
    query: Box<ast::Query>,
) -> Result<ContinuousQuery> {
    let (read_tables, read_sources): (Vec<&String>, Vec<&String>) = names
        .iter()
        .partition(|n| tables.contains_key(*n) && !sources.contains_key(*n));
    let tables_named = read_tables
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let source = match read_sources.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(unsupported!(
                "view {} reads only views ({tables_named}): views over views are not supported; \
                 a view may read another view only as the table side of a join with a source",
                view.name
            ));
        }
        more => {
            return Err(unsupported!(
                "view {} joins views ({tables_named}) with several sources ({}): a stream-table join reads one source",
                view.name,
                more.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    if !windows.is_empty() {
        return Err(unsupported!(
            "view {}: windows in a join with a view are not supported; window the source in the view the join reads, or join first",
            view.name
        ));
    }
    if !view.options.is_empty() {
        return Err(invalid!(
            "view {}: a join of a source with a view takes no options but max_rows",
            view.name
        ));
    }
    let info = source_info(sources, &source)?;
    let ctx = planning_context(functions);
    let table = Arc::new(WindowRows::new(info.schema.clone()));
    register(&ctx, &source, table.clone())?;
    for name in &read_tables {
        register(&ctx, name, tables[*name].clone())?;
    }
    let session = ctx.state();
    let plan = session.optimize(&logical_plan(&session, query).await?)?;
    check_linear(&plan, &source)?;
    let detail = format!(
        "lookup join: each batch of {source} against the rows of {tables_named} as they are then \
         (later changes of the table do not change emitted rows); no state of its own"
    );
    let mut operators = explain(&[], &source, info, None);
    operators.push(("join".into(), detail.clone()));
    operators.push((
        "query".into(),
        format!(
            "per batch, in batch: {}",
            plan.display_indent().to_string().replace('\n', "; ")
        ),
    ));
    Ok(ContinuousQuery {
        columns_read: None,
        other_columns_read: Vec::new(),
        other_sources: Vec::new(),
        operators,
        source,
        output_schema: Arc::new(plan.schema().as_arrow().clone()),
        description: format!("source -> {detail}"),
        operator: Box::new(LookupJoin {
            // The views' rows are read as they are when each batch runs.
            query: BatchQuery::reading_other_tables(plan, session),
            source: table,
        }),
    })
}

/// Check that every path from `source`'s scan to the top of `plan` only filters,
/// projects and joins (so that the query over many batches is the union of its results
/// per batch), and that the source is read once.
pub fn check_linear(plan: &LogicalPlan, source: &str) -> Result<()> {
    match scans_of(plan, source) {
        0 => Err(unsupported!("the query does not read its source {source}")),
        1 => check(plan, source),
        _ => Err(unsupported!(
            "a join with a view may read its source {source} once"
        )),
    }
}

fn scans_of(plan: &LogicalPlan, source: &str) -> usize {
    match plan {
        LogicalPlan::TableScan(t) if t.table_name.table() == source => 1,
        other => other
            .inputs()
            .into_iter()
            .map(|i| scans_of(i, source))
            .sum(),
    }
}

fn check(plan: &LogicalPlan, source: &str) -> Result<()> {
    if scans_of(plan, source) == 0 {
        // The table's side: anything goes, it is read whole each time.
        return Ok(());
    }
    match plan {
        LogicalPlan::TableScan(_)
        | LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_) => {}
        LogicalPlan::Join(j) => {
            let source_on_left = scans_of(&j.left, source) > 0;
            let fine = match j.join_type {
                JoinType::Inner => true,
                JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => source_on_left,
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => !source_on_left,
                JoinType::Full | JoinType::LeftMark | JoinType::RightMark => false,
            };
            if !fine {
                return Err(unsupported!(
                    "a {} join that keeps the view's unmatched rows is not supported in a stream-table join: \
                     use an inner join, or a left join with the source on the left",
                    j.join_type
                ));
            }
        }
        other => {
            return Err(unsupported!(
                "{} over a stream-table join is not supported: a join of a source with a view only \
                 filters and projects the source's rows (aggregate in another view over the source, \
                 or per window)",
                other.display()
            ));
        }
    }
    plan.inputs().into_iter().try_for_each(|i| check(i, source))
}
