//! Views: list, current rows, and live changes over server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use weir_runtime::view::Published;

use crate::app::AppState;
use arrow::array::RecordBatch;
use arrow::compute::{SortOptions, concat_batches, sort_to_indices, take};
use arrow::datatypes::SchemaRef;

use crate::error::{ApiError, ApiResult};
use crate::format::{Format, rows_json, rows_response};

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "views": state.engine.views() }))
}

#[derive(Debug, Deserialize)]
pub struct RowsQuery {
    /// Alone: only the newest `limit` rows. With `offset` or `sort`: a page of that size.
    pub limit: Option<usize>,
    /// Skip this many rows (of the sorted rows when `sort` is given).
    pub offset: Option<usize>,
    /// Sort by this column (nulls last), ascending unless `desc=true`.
    pub sort: Option<String>,
    #[serde(default)]
    pub desc: bool,
    /// `json`, `csv` or `arrow`, over the Accept header (for download links).
    pub format: Option<String>,
    #[serde(default)]
    pub consistency: Consistency,
}

/// Which rows a reader sees (docs/RECOVERY.md).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Everything processed, at once; after a crash, what came after the last
    /// checkpoint is computed again (the same rows for a replayed input).
    #[default]
    Live,
    /// Only what a written checkpoint holds: never taken back by a crash, at most one
    /// checkpoint interval behind.
    Committed,
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    pub consistency: Consistency,
}

/// `GET /api/v1/views/{name}`: the view's current rows, oldest first.
pub async fn rows(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RowsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let view = state.engine.view(&name)?;
    let mut batches = match q.consistency {
        Consistency::Live => view.snapshot(),
        Consistency::Committed => view.committed_snapshot(),
    };
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if q.offset.is_some() || q.sort.is_some() {
        batches = page(&view.schema, batches, &q)?;
    } else if let Some(limit) = q.limit {
        batches = newest(batches, limit);
    }
    let format = match q.format.as_deref() {
        None => Format::from_headers(&headers),
        Some(name) => Format::from_name(name)?,
    };
    let mut response = rows_response(format, &view.schema, &batches)?;
    response
        .headers_mut()
        .insert("weir-total-rows", HeaderValue::from(total));
    // Rows the view no longer holds: say so, whatever the format.
    if let Some(cut) = view.rows_cut() {
        let h = response.headers_mut();
        h.insert(
            "weir-rows-released",
            HeaderValue::from(view.rows_released()),
        );
        if let Ok(v) = HeaderValue::from_str(&cut) {
            h.insert("weir-rows-cut", v);
        }
    }
    Ok(response)
}

/// One page of the rows: sorted by a column if asked, then `offset` and `limit`.
fn page(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    q: &RowsQuery,
) -> ApiResult<Vec<RecordBatch>> {
    let all = concat_batches(schema, &batches).map_err(render_error)?;
    let offset = q.offset.unwrap_or(0).min(all.num_rows());
    let limit = q.limit.unwrap_or(usize::MAX).min(all.num_rows() - offset);
    let Some(column) = &q.sort else {
        return Ok(vec![all.slice(offset, limit)]);
    };
    let Some(index) = schema.index_of(column).ok() else {
        return Err(ApiError::bad_request(format!(
            "no column named {column} to sort by; the view has {}",
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let options = SortOptions {
        descending: q.desc,
        nulls_first: false,
    };
    // Only the first offset + limit positions are sorted fully.
    let order = sort_to_indices(
        all.column(index),
        Some(options),
        Some(offset.saturating_add(limit)),
    )
    .map_err(|e| {
        ApiError::bad_request(format!(
            "cannot sort by {column} ({}): {e}",
            schema.field(index).data_type()
        ))
    })?;
    let wanted = order.slice(offset, limit);
    let columns = all
        .columns()
        .iter()
        .map(|c| take(c, &wanted, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(render_error)?;
    Ok(vec![
        RecordBatch::try_new(schema.clone(), columns).map_err(render_error)?,
    ])
}

fn render_error(e: arrow::error::ArrowError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "cannot page the rows",
        e.to_string(),
    )
}

/// Keep the newest `limit` rows of `batches`.
fn newest(batches: Vec<arrow::array::RecordBatch>, limit: usize) -> Vec<arrow::array::RecordBatch> {
    let mut out = Vec::new();
    let mut remaining = limit;
    for b in batches.into_iter().rev() {
        if remaining == 0 {
            break;
        }
        let take = remaining.min(b.num_rows());
        out.push(b.slice(b.num_rows() - take, take));
        remaining -= take;
    }
    out.reverse();
    out
}

/// `GET /api/v1/views/{name}/stream`: an SSE event `rows` per emitted batch, with the
/// same JSON shape as the rows endpoint. A client that falls behind by more than the
/// view's change buffer gets `lagged` (the number of changes it missed) and the stream
/// ends: it must refetch the rows and subscribe again (an `EventSource` reconnects by
/// itself). So a slow reader holds nothing but its place in that bounded buffer.
/// With `?consistency=committed` a change comes once a written checkpoint holds it,
/// and its event id is that checkpoint's epoch.
pub async fn stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let view = state.engine.view(&name)?;
    let schema = view.schema.clone();
    let changes = match q.consistency {
        Consistency::Live => Changes::Live(view.subscribe()),
        Consistency::Committed => Changes::Committed(view.subscribe_committed()),
    };
    let mut shutdown = state.shutdown.subscribe();
    let events = futures::stream::unfold(Some(changes), move |changes| {
        let schema = schema.clone();
        async move {
            // None: the client lagged and was told so; the stream ends.
            let mut changes = changes?;
            let (epoch, received) = match &mut changes {
                Changes::Live(rx) => (None, rx.recv().await),
                Changes::Committed(rx) => match rx.recv().await {
                    Ok((epoch, change)) => (Some(epoch), Ok(change)),
                    Err(e) => (None, Err(e)),
                },
            };
            let event = match received {
                // Encoded once for all of the view's readers.
                Ok(change) => match change.text(|rows| {
                    rows_json(&schema, std::slice::from_ref(rows))
                        .map(|v| v.to_string())
                        .map_err(|e| e.to_string())
                }) {
                    Ok(text) => {
                        let kind = if change.removed { "removed" } else { "rows" };
                        Event::default().event(kind).data(text)
                    }
                    Err(e) => Event::default().event("error").data(e),
                },
                Err(RecvError::Lagged(n)) => {
                    let lagged = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(lagged), None));
                }
                Err(RecvError::Closed) => return None,
            };
            let event = match epoch {
                Some(e) => event.id(e.to_string()),
                None => event,
            };
            Some((Ok(event), Some(changes)))
        }
    });
    let events = events.take_until(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// What a stream follows.
enum Changes {
    Live(tokio::sync::broadcast::Receiver<Arc<Published>>),
    Committed(tokio::sync::broadcast::Receiver<(u64, Arc<Published>)>),
}
