//! Views that hold rows (per window, per session) keep only the source columns their
//! query reads: the query is planned again over just those.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast;

use super::{SourceInfo, logical_plan, planning_context, register};
use crate::Result;
use crate::batch::WindowRows;

/// A plan of rows-holding views (per window, per session), over only the source
/// columns it reads.
pub(crate) struct Narrowed {
    pub(crate) plan: LogicalPlan,
    pub(crate) session: datafusion::execution::SessionState,
    pub(crate) table: Arc<WindowRows>,
    /// The kept source columns plus the two window columns.
    pub(crate) schema: SchemaRef,
    /// Index of the time column among the kept columns.
    pub(crate) time_column: usize,
    /// The kept source columns, when not all.
    pub(crate) source_columns: Option<Vec<usize>>,
}

/// A query as first planned over the full source schema plus window columns.
pub(crate) struct Planned {
    pub(crate) query: Box<ast::Query>,
    pub(crate) plan: LogicalPlan,
    pub(crate) ctx: SessionContext,
    pub(crate) table: Arc<WindowRows>,
    pub(crate) scan_schema: SchemaRef,
}

/// Such views hold rows: keep only the source columns the query reads (and the time
/// column), planning again over just those.
pub(crate) async fn narrow(
    planned: Planned,
    source: &str,
    info: &SourceInfo,
    time_column: usize,
    functions: &[datafusion::logical_expr::ScalarUDF],
) -> Result<Narrowed> {
    let Planned {
        query,
        plan,
        ctx: planned_ctx,
        table,
        scan_schema,
    } = planned;
    let n_source = info.schema.fields().len();
    let kept = source_columns_read(&plan, source, n_source, Some(time_column));
    if kept.len() == n_source {
        return Ok(Narrowed {
            plan,
            session: planned_ctx.state(),
            table,
            schema: scan_schema,
            time_column,
            source_columns: None,
        });
    }
    let schema = Arc::new(
        scan_schema.project(
            &kept
                .iter()
                .copied()
                .chain([n_source, n_source + 1])
                .collect::<Vec<_>>(),
        )?,
    );
    let ctx = planning_context(functions);
    let narrow_table = Arc::new(WindowRows::new(schema.clone()));
    register(&ctx, source, narrow_table.clone())?;
    let session = ctx.state();
    // The optimizer may have dropped a column the query names (`x IS NOT NULL` of a
    // column that cannot be NULL): then the query keeps every column.
    let replanned = match logical_plan(&session, query).await {
        Ok(p) => session.optimize(&p).ok(),
        Err(_) => None,
    };
    let Some(narrow_plan) = replanned else {
        return Ok(Narrowed {
            plan,
            session: planned_ctx.state(),
            table,
            schema: scan_schema,
            time_column,
            source_columns: None,
        });
    };
    Ok(Narrowed {
        plan: narrow_plan,
        session,
        table: narrow_table,
        schema,
        time_column: kept.iter().position(|&i| i == time_column).unwrap_or(0),
        source_columns: Some(kept),
    })
}

/// The columns of `source` (of `width` columns) a plan over it and its two window
/// columns reads, by index, with the window's `time_column`: the windowing reads it,
/// not the plan.
pub(crate) fn source_columns_read(
    plan: &LogicalPlan,
    source: &str,
    width: usize,
    time_column: Option<usize>,
) -> Vec<usize> {
    let mut read = used_columns_of(plan, source, width + 2);
    read.retain(|&i| i < width);
    if let Some(t) = time_column.filter(|t| !read.contains(t)) {
        read.push(t);
        read.sort_unstable();
    }
    read
}

/// Indices of the columns of table `name` that any scan of it in the plan reads,
/// subqueries inside its expressions included.
pub(crate) fn used_columns_of(plan: &LogicalPlan, name: &str, width: usize) -> Vec<usize> {
    let mut used = vec![false; width];
    let _always_continues = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name.table() == name
        {
            match &scan.projection {
                Some(p) => p
                    .iter()
                    .filter(|&&i| i < width)
                    .for_each(|&i| used[i] = true),
                None => used.iter_mut().for_each(|u| *u = true),
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    (0..width).filter(|&i| used[i]).collect()
}
