//! Batch-mode runs over rows an operator holds. The operators that keep rows (per
//! window, per session, interval and lookup joins) answer with DataFusion in batch mode:
//! the rows are put in a [`WindowRows`] table that the query's scans read, and a
//! [`BatchQuery`] runs the planned query over them.
//!
//! A query is planned once. Its physical plan is made on its first run and kept: the
//! scans of its tables read the rows the tables hold when the plan runs, not when it was
//! made, and before each run the plan's operators drop what an earlier run left them (a
//! hash join's build side), as DataFusion re-runs the plan of a recursive query
//! (`reset_plan_states`). The plan is one partition (the planning context's
//! `target_partitions = 1`), so it runs on the calling thread, a pipeline's plain
//! thread, with no async runtime. An aggregate the plan holds more than once runs once
//! per run ([`repeated`]).

mod repeated;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};

use crate::window::bounds::evaluating;
use crate::{Error, Result};
use repeated::Repeated;

/// The rows a table of a batch query holds while the query runs.
type Held = Arc<Mutex<Vec<RecordBatch>>>;

/// The table a batch query reads: the rows of the window (the session, the batch)
/// being evaluated.
#[derive(Debug)]
pub struct WindowRows {
    schema: SchemaRef,
    rows: Held,
    /// Whether the rows are an aggregate's (at most one per group).
    of_an_aggregate: bool,
}

impl WindowRows {
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            rows: Arc::default(),
            of_an_aggregate: false,
        }
    }

    /// The table holding an aggregate's rows, if `yes`.
    pub(crate) fn of_an_aggregate(self, yes: bool) -> Self {
        Self {
            of_an_aggregate: yes,
            ..self
        }
    }

    pub(crate) fn set(&self, rows: Vec<RecordBatch>) {
        *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = rows;
    }
}

#[async_trait]
impl TableProvider for WindowRows {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(HeldRowsExec {
            of_an_aggregate: self.of_an_aggregate,
            rows: self.rows.clone(),
            projection: projection.cloned(),
            schema,
            properties: Arc::new(properties),
        }))
    }
}

/// The scan of a [`WindowRows`] table: it reads the rows the table holds when it runs,
/// so one physical plan serves every run. It states no statistics: they change with
/// every run.
#[derive(Debug)]
pub(crate) struct HeldRowsExec {
    /// See [`WindowRows`].
    pub(crate) of_an_aggregate: bool,
    rows: Held,
    projection: Option<Vec<usize>>,
    /// The projected schema.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for HeldRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "HeldRowsExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for HeldRowsExec {
    fn name(&self) -> &'static str {
        "HeldRowsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "HeldRowsExec has one partition, not {partition}"
            )));
        }
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let rows = match &self.projection {
            Some(columns) => rows
                .iter()
                .map(|b| b.project(columns))
                .collect::<std::result::Result<_, _>>()?,
            None => rows,
        };
        Ok(Box::pin(MemoryStream::try_new(
            rows,
            self.schema.clone(),
            None,
        )?))
    }
}

/// A query run in batch mode over the rows its [`WindowRows`] tables hold, planned
/// once (see the module's doc).
pub struct BatchQuery {
    /// The plan as given, for copies ([`BatchQuery::with_own_tables`]).
    given: LogicalPlan,
    /// The plan run: `given`, its repeated aggregate read from `repeated`'s table.
    plan: LogicalPlan,
    /// Run first, at each run.
    repeated: Option<Repeated>,
    session: SessionState,
    /// Made on the first run; never run itself, only copies reset from it.
    physical: OnceLock<Arc<dyn ExecutionPlan>>,
    /// Planned again for every run: the query reads other tables (views) whose scans
    /// take those tables' rows when planned.
    plan_each_run: bool,
}

impl BatchQuery {
    /// `plan`, optimized, whose scans read [`WindowRows`] tables registered in `session`.
    pub fn new(plan: LogicalPlan, session: SessionState) -> Self {
        Self::planned(plan, session, false)
    }

    /// `new`, for a plan that also reads tables other than [`WindowRows`] (the views
    /// of a stream-table join): their rows are read as they are at each run.
    pub fn reading_other_tables(plan: LogicalPlan, session: SessionState) -> Self {
        Self::planned(plan, session, true)
    }

    fn planned(given: LogicalPlan, session: SessionState, plan_each_run: bool) -> Self {
        // A plan read anew at each run is left whole; so is one whose rewrite fails (it
        // runs as it did).
        let (plan, repeated) = match plan_each_run {
            // No crate here logs: a failed rewrite shows as the description's missing
            // "runs once" (per-window queries say whether they take it).
            false => repeated::take_out(given.clone()).unwrap_or_else(|_| (given.clone(), None)),
            true => (given.clone(), None),
        };
        Self {
            given,
            plan,
            repeated,
            session,
            physical: OnceLock::new(),
            plan_each_run,
        }
    }

    /// The physical plan of the last run, if any ran.
    #[cfg(test)]
    pub(crate) fn physical_plan(&self) -> Option<Arc<dyn ExecutionPlan>> {
        self.physical.get().cloned()
    }

    /// Whether a part of the query runs once for several occurrences.
    pub fn runs_a_repeated_part_once(&self) -> bool {
        self.repeated.is_some()
    }

    /// The same query reading new tables in place of `tables` (returned in the same
    /// order), so that copies can run side by side, each over rows of its own.
    pub fn with_own_tables(
        &self,
        tables: &[&Arc<WindowRows>],
    ) -> Result<(BatchQuery, Vec<Arc<WindowRows>>)> {
        let own: Vec<Arc<WindowRows>> = tables
            .iter()
            .map(|t| Arc::new(WindowRows::new(t.schema.clone())))
            .collect();
        let plan = self
            .given
            .clone()
            .transform_up(|node| {
                let LogicalPlan::TableScan(mut scan) = node else {
                    return Ok(Transformed::no(node));
                };
                let provider = source_as_provider(&scan.source)?;
                let at = provider
                    .downcast_ref::<WindowRows>()
                    .and_then(|held| tables.iter().position(|t| std::ptr::eq(t.as_ref(), held)));
                match at {
                    Some(at) => {
                        scan.source = provider_as_source(own[at].clone());
                        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                    }
                    None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
                }
            })?
            .data;
        let query = Self::planned(plan, self.session.clone(), self.plan_each_run);
        Ok((query, own))
    }

    /// Run the query over `rows`, the rows its scans of `table` read (its other tables
    /// read what they hold).
    pub fn run(&self, table: &WindowRows, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.run_in_window(table, rows, None)
    }

    /// [`BatchQuery::run`] over the rows of one window, `(start, end)`: what the plan's
    /// [`crate::window::bounds`] read.
    pub fn run_in_window(
        &self,
        table: &WindowRows,
        rows: Vec<RecordBatch>,
        window: Option<(i64, i64)>,
    ) -> Result<Vec<RecordBatch>> {
        table.set(rows);
        let result = outside_async_runtime(|| {
            evaluating(window, || {
                futures::executor::block_on(async {
                    if let Some(repeated) = &self.repeated {
                        let rows =
                            run_kept(&self.session, &repeated.plan, &repeated.physical, false)
                                .await?;
                        let schema = repeated.table.schema.clone();
                        repeated.table.set(
                            rows.into_iter()
                                .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
                                .collect::<std::result::Result<_, _>>()?,
                        );
                    }
                    run_kept(
                        &self.session,
                        &self.plan,
                        &self.physical,
                        self.plan_each_run,
                    )
                    .await
                })
            })
        });
        table.set(Vec::new());
        if let Some(repeated) = &self.repeated {
            repeated.table.set(Vec::new());
        }
        // Results are kept by the view: copy them into buffers of their own size (a
        // join's few output rows may otherwise pin buffers sized for a whole batch).
        result??
            .iter()
            .map(|b| {
                let all = UInt32Array::from_iter_values(0..b.num_rows() as u32);
                Ok(take_record_batch(b, &all)?)
            })
            .collect()
    }
}

/// Run `plan` from a reset copy of its physical plan, made on the first run and kept in
/// `kept` (or made anew for every run, if `each_run`).
async fn run_kept(
    session: &SessionState,
    plan: &LogicalPlan,
    kept: &OnceLock<Arc<dyn ExecutionPlan>>,
    each_run: bool,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let physical = match kept.get() {
        _ if each_run => session.create_physical_plan(plan).await?,
        Some(p) => p.clone(),
        None => {
            let p = session.create_physical_plan(plan).await?;
            kept.get_or_init(|| p).clone()
        }
    };
    datafusion::physical_plan::collect(reset_plan_states(physical)?, session.task_ctx()).await
}

/// Run `f`, which blocks on a query, with a panic as an error. The pipelines' threads
/// are outside any async runtime: `f` runs right there. Within a runtime (tests, a
/// blocking task) DataFusion may hand work to the runtime (`spawn_buffered` on a
/// multi-threaded one) that the blocked thread could starve, so there `f` runs on a
/// thread of its own, outside the runtime.
fn outside_async_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    let result = if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(f).join())
    } else {
        std::panic::catch_unwind(AssertUnwindSafe(f))
    };
    result.map_err(|_| Error::Execution("the per-window query panicked".to_string()))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::assert_batches_sorted_eq;

    use super::*;
    use crate::parser::{Statement, parse_statement};
    use crate::planner::{logical_plan, planning_context, register};

    fn rows(schema: &SchemaRef, values: &[i64]) -> Vec<RecordBatch> {
        let column = Arc::new(Int64Array::from(values.to_vec()));
        vec![RecordBatch::try_new(schema.clone(), vec![column]).expect("batch")]
    }

    /// One physical plan, run again and again over other rows (as a join's build side,
    /// which a hash join keeps), on a thread outside any async runtime.
    #[test]
    fn one_plan_runs_over_the_rows_its_tables_hold_each_time() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let (a, b) = (
            Arc::new(WindowRows::new(schema.clone())),
            Arc::new(WindowRows::new(schema.clone())),
        );
        let ctx = planning_context(&[]);
        register(&ctx, "a", a.clone()).expect("a");
        register(&ctx, "b", b.clone()).expect("b");
        let state = ctx.state();
        let Ok(Statement::CreateView(view)) = parse_statement(
            "CREATE MATERIALIZED VIEW v AS \
             SELECT a.k, count(*) AS n FROM a JOIN b ON a.k = b.k GROUP BY a.k",
        ) else {
            panic!("parses")
        };
        let plan = futures::executor::block_on(logical_plan(&state, view.query)).expect("plans");
        let query = BatchQuery::new(state.optimize(&plan).expect("optimizes"), state);
        for (left, right, expected) in [
            (&[1, 2, 2][..], &[2, 3][..], &["| 2 | 2 |"][..]),
            (
                &[3, 4][..],
                &[3, 3, 4, 5][..],
                &["| 3 | 2 |", "| 4 | 1 |"][..],
            ),
        ] {
            b.set(rows(&schema, right));
            let result = query.run(&a, rows(&schema, left)).expect("runs");
            b.set(Vec::new());
            let result: Vec<_> = result.into_iter().filter(|r| r.num_rows() > 0).collect();
            let border = "+---+---+";
            let mut lines = vec![border, "| k | n |", border];
            lines.extend(expected);
            lines.push(border);
            assert_batches_sorted_eq!(lines, &result);
        }
    }

    /// Nexmark q5's shape without its window: the count per key, joined with the
    /// maximum of the same count. The count is run once per run, read by both of its
    /// occurrences, and every run answers as the plan run whole does, over rows that
    /// change between runs.
    #[test]
    fn a_repeated_aggregate_runs_once_and_answers_as_the_whole_plan() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let a = Arc::new(WindowRows::new(schema.clone()));
        let ctx = planning_context(&[]);
        register(&ctx, "a", a.clone()).expect("a");
        let state = ctx.state();
        let Ok(Statement::CreateView(view)) = parse_statement(
            "CREATE MATERIALIZED VIEW v AS \
             SELECT x.k, x.n FROM (SELECT k, count(*) AS n FROM a GROUP BY k) AS x \
             JOIN (SELECT max(c.n) AS top FROM (SELECT count(*) AS n FROM a GROUP BY k) AS c) \
             AS m ON x.n >= m.top",
        ) else {
            panic!("parses")
        };
        let plan = futures::executor::block_on(logical_plan(&state, view.query)).expect("plans");
        let plan = state.optimize(&plan).expect("optimizes");
        let once = BatchQuery::new(plan.clone(), state.clone());
        assert!(once.runs_a_repeated_part_once());
        let aggregates = |plan: &LogicalPlan| {
            let mut n = 0;
            plan.apply(|node| {
                n += usize::from(matches!(node, LogicalPlan::Aggregate(_)));
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walks");
            n
        };
        // Two counts and a max, then the max over the count's table.
        assert_eq!((aggregates(&plan), aggregates(&once.plan)), (3, 1));
        // The same shape drawing random rows is left whole: each occurrence draws its own.
        let Ok(Statement::CreateView(random)) = parse_statement(
            "CREATE MATERIALIZED VIEW v AS \
             SELECT x.k, x.n FROM (SELECT k, count(*) AS n FROM a WHERE random() < 0.5 GROUP BY k) AS x \
             JOIN (SELECT max(c.n) AS top FROM \
                   (SELECT count(*) AS n FROM a WHERE random() < 0.5 GROUP BY k) AS c) \
             AS m ON x.n >= m.top",
        ) else {
            panic!("parses")
        };
        let random =
            futures::executor::block_on(logical_plan(&state, random.query)).expect("plans");
        let random = BatchQuery::new(state.optimize(&random).expect("optimizes"), state.clone());
        assert!(!random.runs_a_repeated_part_once());
        // A plan planned again at each run is left whole: the reference.
        let whole = BatchQuery::reading_other_tables(plan, state);
        assert!(!whole.runs_a_repeated_part_once());
        let ties: &[i64] = &[1, 2, 2, 3, 3, 4];
        for (run, keys) in [
            &[1, 2, 2, 3][..],
            ties,
            &[7][..],
            &[][..],
            &[5, 5, 5, 6][..],
        ]
        .into_iter()
        .enumerate()
        {
            let answer = |query: &BatchQuery| {
                let result = query.run(&a, rows(&schema, keys)).expect("runs");
                let text = datafusion::arrow::util::pretty::pretty_format_batches(&result)
                    .expect("prints")
                    .to_string();
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                lines.sort();
                lines
            };
            let expected = answer(&whole);
            assert_eq!(answer(&once), expected, "run {run}");
            // The reference itself holds both tied keys (so the comparison above covers a
            // maximum of two groups).
            if keys == ties {
                assert!(
                    expected.iter().any(|l| l.contains("| 2 | 2 |")),
                    "{expected:?}"
                );
                assert!(
                    expected.iter().any(|l| l.contains("| 3 | 2 |")),
                    "{expected:?}"
                );
            }
        }
    }
}
