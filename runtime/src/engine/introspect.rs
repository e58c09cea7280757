//! Introspection: SHOW SOURCES, SHOW VIEWS, SHOW SINKS, EXPLAIN VIEW (the running operators and
//! their live state) and EXPLAIN CREATE MATERIALIZED VIEW (the plan, not run).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{Field, Schema};

use super::{Engine, SqlOutput};
use crate::{Error, Result};
use weir_sql::{ContinuousQuery, CreateView};

impl Engine {
    /// `EXPLAIN CREATE MATERIALIZED VIEW ...`: the operators it would run.
    pub(super) async fn explain_create_view(&self, v: &CreateView) -> Result<SqlOutput> {
        let mut v = v.clone();
        super::views::take_max_rows(&mut v, self.inner.config.view_max_rows)?;
        let parallelism = super::views::take_parallelism(&mut v, self.inner.config.parallelism)?;
        let mut query =
            ContinuousQuery::plan_with_functions(&v, &self.catalog(), &self.plugin_functions())
                .await?;
        super::views::parallelize(&mut query, parallelism)?;
        let n = query.operators.len() + 1;
        explain_rows(
            query
                .operators
                .into_iter()
                .chain([("sink".to_string(), format!("view {}", v.name))]),
            std::iter::repeat_n("not running".to_string(), n),
        )
    }

    /// `EXPLAIN VIEW name`: the running view's operators and their live state.
    pub(super) fn explain_view(&self, name: &str) -> Result<SqlOutput> {
        let view = self.view(name)?;
        let status = view.status();
        let source = self.source(&view.source)?.status();
        let states = view.operators.iter().map(|(op, detail)| match op.as_str() {
            "source" => {
                // A join lists each of its sources: the detail starts with the name.
                let named = detail
                    .split(',')
                    .next()
                    .and_then(|n| self.source(n).ok())
                    .map(|s| s.status());
                let source = named.as_ref().unwrap_or(&source);
                format!(
                    "{}, {} records in, watermark {}",
                    serde_json::to_value(&source.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    source.records_in,
                    source
                        .watermark_ms
                        .map_or("none yet".to_string(), |w| w.to_string())
                )
            }
            "window" => format!("{} open windows", status.open_windows),
            "aggregate" => format!("{} bytes of state", status.state_bytes),
            "query" => format!("{} bytes of held rows", status.state_bytes),
            _ => "stateless".to_string(),
        });
        let sink = format!(
            "{} rows, {} emitted, {} late",
            status.rows, status.rows_emitted, status.late_rows
        );
        explain_rows(
            view.operators
                .iter()
                .cloned()
                .chain([("sink".to_string(), format!("view {name}"))]),
            states.chain([sink]),
        )
    }

    pub(super) fn show_sources(&self) -> Result<SqlOutput> {
        let s = self.sources();
        rows(vec![
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    s.iter().map(|s| s.name.clone()),
                )),
            ),
            (
                "connector",
                Arc::new(StringArray::from_iter_values(
                    s.iter().map(|s| s.connector.clone()),
                )),
            ),
            (
                "status",
                Arc::new(StringArray::from_iter_values(
                    s.iter().map(|s| format!("{:?}", s.status).to_lowercase()),
                )),
            ),
            (
                "records_in",
                Arc::new(UInt64Array::from_iter_values(
                    s.iter().map(|s| s.records_in),
                )),
            ),
            (
                "dead_letters",
                Arc::new(UInt64Array::from_iter_values(
                    s.iter().map(|s| s.dead_letters),
                )),
            ),
            (
                "watermark_ms",
                Arc::new(Int64Array::from_iter(s.iter().map(|s| s.watermark_ms))),
            ),
        ])
    }

    pub(super) fn show_views(&self) -> Result<SqlOutput> {
        let v = self.views();
        rows(vec![
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    v.iter().map(|v| v.name.clone()),
                )),
            ),
            (
                "source",
                Arc::new(StringArray::from_iter_values(
                    v.iter().map(|v| v.source.clone()),
                )),
            ),
            (
                "rows",
                Arc::new(UInt64Array::from_iter_values(
                    v.iter().map(|v| v.rows as u64),
                )),
            ),
            (
                "late_rows",
                Arc::new(UInt64Array::from_iter_values(v.iter().map(|v| v.late_rows))),
            ),
            (
                "plan",
                Arc::new(StringArray::from_iter_values(
                    v.iter().map(|v| v.plan.clone()),
                )),
            ),
        ])
    }
}

impl Engine {
    pub(super) fn show_sinks(&self) -> Result<SqlOutput> {
        let k = self.sinks();
        let text = |f: fn(&crate::sink::SinkStatus) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(k.iter().map(f)))
        };
        rows(vec![
            ("name", text(|s| s.name.clone())),
            ("view", text(|s| s.view.clone())),
            ("connector", text(|s| s.connector.clone())),
            ("status", text(|s| s.status.to_string())),
            (
                "delivered_epoch",
                Arc::new(UInt64Array::from_iter_values(
                    k.iter().map(|s| s.delivered_epoch),
                )),
            ),
            (
                "rows_pending",
                Arc::new(UInt64Array::from_iter_values(
                    k.iter().map(|s| s.rows_pending as u64),
                )),
            ),
            ("error", text(|s| s.error.clone().unwrap_or_default())),
        ])
    }
}

/// EXPLAIN's answer: one row per operator, source first.
fn explain_rows(
    operators: impl Iterator<Item = (String, String)>,
    states: impl Iterator<Item = String>,
) -> Result<SqlOutput> {
    let (names, details): (Vec<String>, Vec<String>) = operators.unzip();
    let states: Vec<String> = states.collect();
    rows(vec![
        ("operator", Arc::new(StringArray::from(names))),
        ("detail", Arc::new(StringArray::from(details))),
        ("state", Arc::new(StringArray::from(states))),
    ])
}

/// One batch of the named columns. Columns of different lengths are a bug of ours.
pub(super) fn rows(columns: Vec<(&str, ArrayRef)>) -> Result<SqlOutput> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(|e| Error::Internal(format!("cannot assemble the answer: {e}")))?;
    Ok(SqlOutput::Rows {
        schema,
        batches: vec![batch],
        cut: None,
    })
}
