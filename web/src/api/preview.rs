//! `GET /api/v1/preview?sql=SELECT...`: a query's first rows over server-sent events,
//! before it becomes a view. Nothing durable is created; the preview stops when the
//! client goes away, after `limit` rows (default 100), or at shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use weir_runtime::Preview;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::format::rows_json;

#[derive(Debug, Deserialize)]
pub struct PreviewQuery {
    pub sql: String,
    /// Stop after this many rows.
    pub limit: Option<usize>,
}

const DEFAULT_LIMIT: usize = 100;

/// Events: `columns` (names and types) first, then `rows` (the rows endpoint's JSON
/// shape) as they come, and `end` with the reason once the preview stops itself.
pub async fn preview(
    State(state): State<AppState>,
    Query(q): Query<PreviewQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).max(1);
    let preview = state
        .engine
        .preview(&q.sql)
        .await
        .map_err(|e| ApiError::of_statement(e, &q.sql))?;
    let schema = match &preview {
        Preview::Live(p) => p.schema.clone(),
        Preview::Rows { schema, .. } => schema.clone(),
    };
    let columns: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "data_type": f.data_type().to_string() }))
        .collect();
    let head = Event::default()
        .event("columns")
        .data(json!({ "columns": columns }).to_string());
    let mut shutdown = state.shutdown.subscribe();
    let rows = move |batches: &[arrow::array::RecordBatch]| match rows_json(&schema, batches) {
        Ok(v) => Event::default().event("rows").data(v.to_string()),
        Err(e) => Event::default().event("error").data(e.to_string()),
    };
    let end = end_event;
    let body: futures::stream::BoxStream<'static, Event> = match preview {
        Preview::Rows { batches, .. } => {
            let kept = first_rows(batches, limit);
            futures::stream::iter([rows(&kept), end("done")]).boxed()
        }
        Preview::Live(live) => {
            let deadline = tokio::time::Instant::now() + live.time_limit;
            // (preview, rows sent, finished): the preview lives as long as the stream.
            futures::stream::unfold((live, 0usize, false), move |(mut live, sent, done)| {
                let rows = rows.clone();
                async move {
                    if done {
                        return None;
                    }
                    let Ok(received) = tokio::time::timeout_at(deadline, live.changes.recv()).await
                    else {
                        let end = futures::stream::iter([end_event("time limit")]);
                        return Some((end.boxed(), (live, sent, true)));
                    };
                    match received {
                        // A preview shows rows as they come; groups leaving are not rows.
                        Ok(change) if change.removed => {
                            Some((futures::stream::iter([]).boxed(), (live, sent, false)))
                        }
                        Ok(change) => {
                            let batch = &change.rows;
                            let take = batch.num_rows().min(limit - sent);
                            let event = rows(&[batch.slice(0, take)]);
                            let sent = sent + take;
                            if sent >= limit {
                                let both = futures::stream::iter([event, end("limit")]);
                                return Some((both.boxed(), (live, sent, true)));
                            }
                            Some((futures::stream::iter([event]).boxed(), (live, sent, false)))
                        }
                        Err(RecvError::Lagged(n)) => {
                            let event = Event::default().event("lagged").data(n.to_string());
                            Some((futures::stream::iter([event]).boxed(), (live, sent, false)))
                        }
                        Err(RecvError::Closed) => None,
                    }
                }
            })
            .flatten()
            .boxed()
        }
    };
    let events = futures::stream::iter([head])
        .chain(body)
        .map(Ok)
        .take_until(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The event that ends a preview, with why.
fn end_event(why: &str) -> Event {
    Event::default().event("end").data(why)
}

/// The first `limit` rows of `batches`.
fn first_rows(
    batches: Vec<arrow::array::RecordBatch>,
    limit: usize,
) -> Vec<arrow::array::RecordBatch> {
    let mut left = limit;
    let mut out = Vec::new();
    for b in batches {
        if left == 0 {
            break;
        }
        let take = b.num_rows().min(left);
        out.push(b.slice(0, take));
        left -= take;
    }
    out
}
