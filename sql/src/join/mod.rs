//! Joins, one folder per kind, each planner beside its operator:
//!
//! - [`window`]: sources read through the same TUMBLE or HOP window and matched on
//!   `window_start`, run whole per closed window (the operator is
//!   [`crate::window::per_window::PerWindowQuery`]);
//! - [`interval`]: two sources matched within event-time bounds, each keeping the rows
//!   that may still find a partner;
//! - [`keyed`]: a join's rows routed to keyed instances by its equality key;
//! - [`lookup`]: a source joined with views, each batch against the views' rows as they
//!   are then.

pub mod interval;
pub mod keyed;
pub mod lookup;
pub mod window;

#[cfg(test)]
mod tests;

use datafusion::logical_expr::LogicalPlan;

/// The join a plan (checked by `interval::rewrite::check_shape`) filters and projects.
fn find_join(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Join> {
    match plan {
        LogicalPlan::Join(j) => Some(j),
        other => other.inputs().into_iter().find_map(find_join),
    }
}

/// The one table a side of a join scans.
fn scanned_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(t) => Some(t.table_name.table().to_string()),
        other => match other.inputs().as_slice() {
            [one] => scanned_table(one),
            _ => None,
        },
    }
}
