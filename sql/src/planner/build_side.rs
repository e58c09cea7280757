//! Which side of a hash join of a batch query builds the table.
//!
//! A batch query's scans read rows held for one run (a window's, a session's), so they
//! state no statistics, and DataFusion builds a hash join's table on the left side as
//! written. Nexmark q7 (the bids whose price is their window's highest) joins the
//! window's bids with their maximum: as written, every run hashed all of a window's
//! bids to probe them with one row. An aggregate has at most as many rows as its input,
//! and most often far fewer (one per window there), so a join of rows with an
//! aggregate builds on the aggregate.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// Swaps a hash join whose right side is an aggregate and left side is not, so that
/// the aggregate is the build side (DataFusion's `swap_inputs` keeps the join's
/// meaning: a semi join keeping the rows becomes one keeping the probe side's). Runs
/// right after DataFusion's `JoinSelection`, and only where DataFusion cannot count the
/// left side's rows: a side of known size (a VALUES list) keeps its place.
#[derive(Debug, Default)]
pub(crate) struct BuildOnTheAggregate;

impl PhysicalOptimizerRule for BuildOnTheAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if !config.optimizer.join_reordering {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            // Only joins DataFusion's own rule would swap (a null-aware anti join keeps
            // its sides).
            let swap = join.join_type().supports_swap()
                && !join.null_aware
                && *join.partition_mode() == PartitionMode::CollectLeft
                && from_an_aggregate(join.right())
                && !from_an_aggregate(join.left())
                && !counted(join.left());
            if swap {
                Ok(Transformed::yes(
                    join.swap_inputs(PartitionMode::CollectLeft)?,
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "build_on_the_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan`'s rows are an aggregate's (one row per group at most, so no more
/// than its input's: not grouping sets), through operators that keep or drop rows but
/// never add any.
fn from_an_aggregate(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        return aggregate.group_expr().is_single();
    }
    // An aggregate a batch query holds twice, run once and read from a table.
    if let Some(held) = plan.downcast_ref::<crate::batch::HeldRowsExec>() {
        return held.of_an_aggregate;
    }
    let passes_rows = plan.downcast_ref::<ProjectionExec>().is_some()
        || plan.downcast_ref::<FilterExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
        || plan.downcast_ref::<RepartitionExec>().is_some();
    match plan.children()[..] {
        [child] if passes_rows => from_an_aggregate(child),
        _ => false,
    }
}

/// Whether DataFusion can estimate `plan`'s rows (read as its `JoinSelection` reads
/// them; statistics that fail to compute count as unknown, as there).
fn counted(plan: &Arc<dyn ExecutionPlan>) -> bool {
    StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .is_ok_and(|stats| stats.num_rows.get_value().is_some())
}

/// DataFusion's physical rules, with [`BuildOnTheAggregate`] right after the rule that
/// picks join sides and modes (before any rule that relies on the sides).
pub(crate) fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    // Should a DataFusion release rename the rule, `the_rule_follows_join_selection`
    // fails (appended last, the rule would no longer see q7's plan as planned).
    let after = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(rules.len(), |at| at + 1);
    rules.insert(after, Arc::new(BuildOnTheAggregate));
    rules
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::assert_batches_sorted_eq;
    use datafusion::physical_plan::collect;

    use super::*;
    use crate::batch::WindowRows;
    use crate::parser::{Statement, parse_statement};
    use crate::planner::{logical_plan, planning_context, register};

    /// A table `bid(w, price)` registered in a planning context.
    fn bid_table() -> (Arc<WindowRows>, datafusion::prelude::SessionContext) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("w", DataType::Int64, false),
            Field::new("price", DataType::Int64, false),
        ]));
        let bid = Arc::new(WindowRows::new(schema));
        let ctx = planning_context(&[]);
        register(&ctx, "bid", bid.clone()).expect("registers");
        (bid, ctx)
    }

    /// Rows of `bid` in window 1 at `prices`.
    fn bids(bid: &WindowRows, prices: &[i64]) -> Vec<RecordBatch> {
        vec![
            RecordBatch::try_new(
                datafusion::catalog::TableProvider::schema(bid),
                vec![
                    Arc::new(Int64Array::from(vec![1; prices.len()])),
                    Arc::new(Int64Array::from(prices.to_vec())),
                ],
            )
            .expect("batch"),
        ]
    }

    /// The optimized logical plan of the view query `sql`.
    fn optimized(
        state: &datafusion::execution::SessionState,
        sql: &str,
    ) -> datafusion::logical_expr::LogicalPlan {
        let Ok(Statement::CreateView(view)) =
            parse_statement(&format!("CREATE MATERIALIZED VIEW v AS {sql}"))
        else {
            panic!("parses")
        };
        let plan = futures::executor::block_on(logical_plan(state, view.query)).expect("plans");
        state.optimize(&plan).expect("optimizes")
    }

    /// The physical plan of `sql` over a table `bid(w, price)` holding `prices` in
    /// window 1, and its result.
    fn plan_and_run(sql: &str, prices: &[i64]) -> (Arc<dyn ExecutionPlan>, Vec<RecordBatch>) {
        let (bid, ctx) = bid_table();
        bid.set(bids(&bid, prices));
        let state = ctx.state();
        let plan = optimized(&state, sql);
        futures::executor::block_on(async {
            let physical = state
                .create_physical_plan(&plan)
                .await
                .expect("physical plan");
            let result = collect(physical.clone(), state.task_ctx())
                .await
                .expect("runs");
            (physical, result)
        })
    }

    /// The columns of each hash join's build side in `plan`.
    fn build_sides(plan: &Arc<dyn ExecutionPlan>) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        plan.apply(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                let schema = join.left().schema();
                found.push(schema.fields().iter().map(|f| f.name().clone()).collect());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walks");
        found
    }

    /// q7's shape: rows joined with their maximum, written rows first, build on the
    /// maximum (`top`); the rows that come out are the same.
    #[test]
    fn a_join_of_rows_with_their_aggregate_builds_on_the_aggregate() {
        let (plan, result) = plan_and_run(
            "SELECT b.w, b.price FROM bid AS b \
             JOIN (SELECT w, max(price) AS top FROM bid GROUP BY w) AS m \
             ON b.w = m.w AND b.price = m.top",
            &[5, 9, 2, 9, 7],
        );
        assert_eq!(build_sides(&plan), vec![vec!["w", "top"]]);
        assert_batches_sorted_eq!(
            [
                "+---+-------+",
                "| w | price |",
                "+---+-------+",
                "| 1 | 9     |",
                "| 1 | 9     |",
                "+---+-------+",
            ],
            &result
        );
        // An inner join (the aggregate's columns read too, not a semi join) alike.
        let (plan, result) = plan_and_run(
            "SELECT b.price, m.top FROM bid AS b \
             JOIN (SELECT w, max(price) AS top FROM bid GROUP BY w) AS m ON b.price = m.top",
            &[5, 9, 2],
        );
        assert!(build_sides(&plan)[0].contains(&"top".to_string()));
        assert!(!build_sides(&plan)[0].contains(&"price".to_string()));
        assert_batches_sorted_eq!(
            [
                "+-------+-----+",
                "| price | top |",
                "+-------+-----+",
                "| 9     | 9   |",
                "+-------+-----+",
            ],
            &result
        );
        // Written aggregate first, it already is the build side: left as it is.
        let (plan, _) = plan_and_run(
            "SELECT b.w, b.price FROM (SELECT w, max(price) AS top FROM bid GROUP BY w) AS m \
             JOIN bid AS b ON b.w = m.w AND b.price = m.top",
            &[5, 9],
        );
        assert_eq!(build_sides(&plan), vec![vec!["w", "top"]]);
    }

    /// An aggregate a batch query holds twice runs once and is read from a table of
    /// its own: a join of rows with it still builds on it, and the rows are the same.
    #[test]
    fn a_join_of_rows_with_a_repeated_aggregate_builds_on_the_aggregate() {
        let (bid, ctx) = bid_table();
        let state = ctx.state();
        let plan = optimized(
            &state,
            "SELECT b.w, b.price FROM bid AS b \
             JOIN (SELECT w, max(price) AS top FROM bid GROUP BY w) AS m \
             ON b.w = m.w AND b.price = m.top \
             JOIN (SELECT w, max(price) AS top FROM bid GROUP BY w) AS n \
             ON b.w = n.w AND b.price = n.top",
        );
        let query = crate::batch::BatchQuery::new(plan, state);
        assert!(query.runs_a_repeated_part_once());
        let result = query.run(&bid, bids(&bid, &[5, 9, 2, 9, 7])).expect("runs");
        let plan = query.physical_plan().expect("planned by the run");
        let sides = build_sides(&plan);
        assert!(!sides.is_empty(), "hash joins: {sides:?}");
        for side in &sides {
            assert!(side.contains(&"top".to_string()), "{sides:?}");
            assert!(!side.contains(&"price".to_string()), "{sides:?}");
        }
        assert_batches_sorted_eq!(
            [
                "+---+-------+",
                "| w | price |",
                "+---+-------+",
                "| 1 | 9     |",
                "| 1 | 9     |",
                "+---+-------+",
            ],
            &result
        );
    }

    /// Joins of rows with rows, of aggregates with aggregates, or of rows whose number
    /// DataFusion knows (a VALUES list) with an aggregate keep the side written first.
    #[test]
    fn other_joins_keep_the_side_written_first() {
        let (plan, result) = plan_and_run(
            "SELECT a.price FROM bid AS a JOIN (SELECT price AS p FROM bid) AS b ON a.price = b.p",
            &[1, 2, 2],
        );
        assert_eq!(build_sides(&plan), vec![vec!["price"]]);
        assert_eq!(result.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        let (plan, _) = plan_and_run(
            "SELECT a.n FROM (SELECT price, count(*) AS n FROM bid GROUP BY price) AS a \
             JOIN (SELECT w, max(price) AS top FROM bid GROUP BY w) AS m ON a.price = m.top",
            &[1, 2, 2],
        );
        assert!(build_sides(&plan)[0].contains(&"n".to_string()));
        let (plan, result) = plan_and_run(
            "SELECT t.price FROM (VALUES (1, 2)) AS t(w, price) \
             JOIN (SELECT w, max(price) AS top FROM bid GROUP BY w) AS m ON t.price = m.top",
            &[1, 2, 2],
        );
        assert!(!build_sides(&plan)[0].contains(&"top".to_string()));
        assert_eq!(result.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    /// Right after the rule that picks join sides, before any rule that wraps or
    /// prunes the plan's nodes.
    #[test]
    fn the_rule_follows_join_selection() {
        let names: Vec<String> = physical_rules()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        let at = names.iter().position(|n| n == "build_on_the_aggregate");
        let selection = names.iter().position(|n| n == "join_selection");
        assert_eq!(at, selection.map(|s| s + 1), "{names:?}");
    }
}
