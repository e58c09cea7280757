//! Rows as HTTP bodies: JSON `{"columns": [...], "rows": [[...]]}` by default, CSV for
//! `Accept: text/csv`, Arrow IPC stream for `Accept: application/vnd.apache.arrow.stream`.

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::csv::WriterBuilder as CsvWriterBuilder;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::json::WriterBuilder as JsonWriterBuilder;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    /// `?format=json|csv|arrow`.
    pub fn from_name(name: &str) -> ApiResult<Self> {
        match name {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "arrow" => Ok(Format::Arrow),
            other => Err(ApiError::bad_request(format!(
                "unknown format {other}: use json, csv or arrow"
            ))),
        }
    }

    pub fn from_headers(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains(ARROW_STREAM) {
            Format::Arrow
        } else if accept.contains("text/csv") {
            Format::Csv
        } else {
            Format::Json
        }
    }
}

/// Render rows in the requested format.
pub fn rows_response(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> ApiResult<Response> {
    let internal = |e: arrow::error::ArrowError| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot render rows",
            e.to_string(),
        )
    };
    match format {
        Format::Json => {
            Ok(axum::Json(rows_json(schema, batches).map_err(internal)?).into_response())
        }
        Format::Csv => {
            let mut w = CsvWriterBuilder::new().with_header(true).build(Vec::new());
            for b in batches {
                w.write(b).map_err(internal)?;
            }
            if batches.is_empty() {
                let header = schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                return Ok(body("text/csv", format!("{header}\n").into_bytes()));
            }
            Ok(body("text/csv", w.into_inner()))
        }
        Format::Arrow => {
            let mut w = StreamWriter::try_new(Vec::new(), schema).map_err(internal)?;
            for b in batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
            Ok(body(ARROW_STREAM, w.into_inner().map_err(internal)?))
        }
    }
}

fn body(content_type: &'static str, bytes: Vec<u8>) -> Response {
    let mut r = bytes.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `{"columns": [names], "types": [arrow types], "rows": [[values]]}`.
pub fn rows_json(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Value, arrow::error::ArrowError> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    // Write under positional keys: output names may repeat (`SELECT a.id, b.id ...`).
    let keys: Vec<String> = (0..names.len()).map(|i| i.to_string()).collect();
    let keyed = std::sync::Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .zip(&keys)
            .map(|(f, k)| f.as_ref().clone().with_name(k))
            .collect::<Vec<_>>(),
    ));
    let mut writer = JsonWriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for b in batches {
        // With options: a query may select no columns at all (`SELECT FROM t`).
        let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
        writer.write(&RecordBatch::try_new_with_options(
            keyed.clone(),
            b.columns().to_vec(),
            &options,
        )?)?;
    }
    writer.finish()?;
    let objects: Vec<serde_json::Map<String, Value>> = if batches.iter().all(|b| b.num_rows() == 0)
    {
        Vec::new()
    } else {
        serde_json::from_slice(&writer.into_inner())
            .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?
    };
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|mut o| {
            Value::Array(
                keys.iter()
                    .map(|k| o.remove(k).unwrap_or(Value::Null))
                    .collect(),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "columns": names,
        "types": schema.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
        "rows": rows,
    }))
}
