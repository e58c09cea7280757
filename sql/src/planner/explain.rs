//! EXPLAIN: the operators of a planned view, from its sources to its result, each with
//! what it does.

use datafusion::logical_expr::{Expr, LogicalPlan};

use super::SourceInfo;
use super::window_call::WindowCall;

/// The operators of a planned chain, leaf first, with their expressions.
pub(crate) fn explain(
    chain: &[&LogicalPlan],
    source: &str,
    info: &SourceInfo,
    window: Option<&WindowCall>,
) -> Vec<(String, String)> {
    let list = |exprs: &[Expr]| {
        exprs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut ops = vec![(
        "source".to_string(),
        match &info.watermark {
            Some(w) => format!(
                "{source}, watermark {} - {} ms",
                w.column,
                w.delay.as_millis()
            ),
            None => format!("{source}, no watermark"),
        },
    )];
    for node in chain.iter().rev() {
        match node {
            LogicalPlan::Filter(f) => ops.push(("filter".into(), f.predicate.to_string())),
            LogicalPlan::Sort(sort) => {
                let order = sort
                    .expr
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let keep = sort.fetch.map_or(String::new(), |n| format!(", keep {n}"));
                ops.push((
                    "top-n".into(),
                    format!("per window: order by {order}{keep}"),
                ));
            }
            LogicalPlan::Limit(limit) => {
                let plan = LogicalPlan::Limit(limit.clone());
                ops.push(("top-n".into(), format!("per window: {}", plan.display())));
            }
            LogicalPlan::Projection(p) => ops.push(("project".into(), list(&p.expr))),
            LogicalPlan::Aggregate(a) => {
                if let Some(w) = window {
                    ops.push(("window".into(), w.describe()));
                }
                let groups = if a.group_expr.is_empty() {
                    "one group (no GROUP BY)".to_string()
                } else {
                    format!("group by {}", list(&a.group_expr))
                };
                ops.push((
                    "aggregate".into(),
                    format!("{groups}; compute {}", list(&a.aggr_expr)),
                ));
            }
            _ => {}
        }
    }
    ops
}

impl WindowCall {
    /// For EXPLAIN: the window and its sizes.
    pub(crate) fn describe(&self) -> String {
        if self.function == "HOP" {
            format!(
                "HOP on {}, size {:?}, slide {:?}",
                self.time_column, self.size, self.slide
            )
        } else {
            format!("TUMBLE on {}, size {:?}", self.time_column, self.size)
        }
    }
}

/// EXPLAIN of a view that holds rows and runs `plan` over them `when`: the sources'
/// rows, then its window and its query.
pub(crate) fn with_held_rows(
    mut operators: Vec<(String, String)>,
    window: &str,
    when: &str,
    plan: &LogicalPlan,
) -> Vec<(String, String)> {
    operators.push(("window".into(), window.to_string()));
    operators.push((
        "query".into(),
        format!(
            "{when}, in batch: {}",
            plan.display_indent().to_string().replace('\n', "; ")
        ),
    ));
    operators
}
