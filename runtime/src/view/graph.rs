//! The operator graph of a view: each operator EXPLAIN lists, with the rows it took
//! and gave, its batches and its time. Stateless steps time themselves (weir-sql's
//! `StepClock`); the view times each call of its operator, and the stateful core
//! (aggregate, join, session, per-window query) is that time less its steps'.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use weir_sql::Stage;
use weir_sql::planner::steps::StepClock;

use super::ViewRuntime;

/// What the view counts of its operator as a whole.
#[derive(Debug, Default)]
pub(crate) struct OperatorClock {
    /// Rows handed to the operator.
    rows_in: AtomicU64,
    /// Calls (batches and watermarks) and their time.
    calls: AtomicU64,
    nanos: AtomicU64,
}

/// One operator of the graph, as the API shows it. Counts are totals since the view
/// started: a reader takes two and divides by the time between them.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorStatus {
    pub name: String,
    pub detail: String,
    pub rows_in: u64,
    pub rows_out: u64,
    /// Batches it ran over, and the seconds they took (`None`: counted with another
    /// operator, as a window's time is its aggregate's).
    pub batches: Option<u64>,
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_windows: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_rows: Option<u64>,
}

/// Operators EXPLAIN lists that are stateless steps.
const STEPS: &[&str] = &["filter", "project", "top-n"];

impl ViewRuntime {
    /// Call the operator over a batch of `rows` (0 for a watermark), timed.
    pub(crate) fn run_timed(
        &self,
        rows: usize,
        call: impl FnOnce(&mut dyn weir_sql::Operator) -> weir_sql::Result<()>,
    ) -> weir_sql::Result<()> {
        let started = Instant::now();
        let result = self.run_operator(call);
        let clock = &self.clock;
        clock.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
        clock.calls.fetch_add(1, Ordering::Relaxed);
        (clock.nanos).fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }

    /// Each operator EXPLAIN lists, with its figures.
    pub fn operator_graph(&self, state_bytes: usize, open_windows: usize) -> Vec<OperatorStatus> {
        let total_rows_in = self.clock.rows_in.load(Ordering::Relaxed);
        let total_rows_out = self.rows_emitted.get();
        let total_nanos = self.clock.nanos.load(Ordering::Relaxed);
        let calls = self.clock.calls.load(Ordering::Relaxed);
        // Steps matched to EXPLAIN's lines by label, in order.
        let mut steps = self.stages.iter().filter_map(|s| match s {
            Stage::Step(label, clock) if *label != "select" => Some((*label, clock)),
            _ => None,
        });
        let step_nanos: u64 = (self.stages.iter())
            .filter_map(|s| match s {
                Stage::Step(_, clock) => Some(clock.nanos.load(Ordering::Relaxed)),
                Stage::Core => None,
            })
            .sum();
        let has_core = self.stages.iter().any(|s| matches!(s, Stage::Core));
        let last_core = (self.operators.iter())
            .rposition(|(name, _)| name != "source" && !STEPS.contains(&name.as_str()));
        let mut graph: Vec<OperatorStatus> = Vec::with_capacity(self.operators.len());
        for (i, (name, detail)) in self.operators.iter().enumerate() {
            let mut op = OperatorStatus {
                name: name.clone(),
                detail: detail.clone(),
                rows_in: 0,
                rows_out: 0,
                batches: None,
                seconds: None,
                state_bytes: None,
                open_windows: None,
                late_rows: None,
            };
            let clock: Option<&Arc<StepClock>> = if STEPS.contains(&name.as_str()) {
                steps.find(|(label, _)| label == name).map(|(_, c)| c)
            } else {
                None
            };
            if let Some(c) = clock {
                op.rows_in = c.rows_in.load(Ordering::Relaxed);
                op.rows_out = c.rows_out.load(Ordering::Relaxed);
                op.batches = Some(c.batches.load(Ordering::Relaxed));
                op.seconds = Some(c.nanos.load(Ordering::Relaxed) as f64 / 1e9);
            } else if name == "source" {
                op.rows_in = total_rows_in;
                op.rows_out = total_rows_in;
            } else {
                if Some(i) == last_core && has_core {
                    op.batches = Some(calls);
                    op.seconds = Some(total_nanos.saturating_sub(step_nanos) as f64 / 1e9);
                    op.state_bytes = Some(state_bytes);
                    op.late_rows = Some(self.late_rows.get());
                }
                if name == "window" || (Some(i) == last_core && open_windows > 0) {
                    op.open_windows = Some(open_windows);
                }
            }
            graph.push(op);
        }
        // Rows of the operators without a clock of their own: what came before them;
        // they give what the next step took, pass theirs on to a next stateful
        // operator (a window to its aggregate), or, last, the view's rows.
        for i in 1..graph.len() {
            let clocked =
                |g: &OperatorStatus| STEPS.contains(&g.name.as_str()) && g.batches.is_some();
            if clocked(&graph[i]) || graph[i].name == "source" {
                continue;
            }
            graph[i].rows_in = graph[i - 1].rows_out;
            graph[i].rows_out = match graph.get(i + 1) {
                Some(next) if clocked(next) => next.rows_in,
                Some(_) => graph[i].rows_in,
                None => total_rows_out,
            };
        }
        graph
    }
}
