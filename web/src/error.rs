//! One error type for every HTTP answer: a status that says what went wrong and a JSON
//! body `{"error": summary, "detail": what to do}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weir_runtime::{Error, ErrorClass};

/// An error answered over HTTP.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub detail: String,
    pub retry_after: Option<u64>,
    /// Where in the statement the error is (`{line, column, end_line, end_column}`).
    pub position: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: detail.into(),
            retry_after: None,
            position: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }
}

impl ApiError {
    /// The error of statement `sql`, its position kept inside the text.
    pub fn of_statement(e: Error, sql: &str) -> Self {
        let position = e
            .sql_span()
            .and_then(|span| serde_json::to_value(span.within(sql)).ok());
        Self {
            position,
            ..Self::from(e)
        }
    }
}

impl From<Error> for ApiError {
    /// The status says who must act: 4xx the client, 503 the server's operator (with a
    /// retry hint), 500 us.
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        let position = e
            .sql_span()
            .and_then(|span| serde_json::to_value(span).ok());
        let (status, error, retry_after) = match e.class() {
            ErrorClass::InvalidSql => (StatusCode::BAD_REQUEST, "invalid SQL", None),
            ErrorClass::UnsupportedSql => (StatusCode::BAD_REQUEST, "unsupported SQL", None),
            ErrorClass::QueryFailed => (StatusCode::BAD_REQUEST, "query failed", None),
            ErrorClass::BadRequest => (StatusCode::BAD_REQUEST, "bad request", None),
            ErrorClass::BadPlugin => (StatusCode::BAD_REQUEST, "bad plugin", None),
            ErrorClass::NotFound => (StatusCode::NOT_FOUND, "not found", None),
            ErrorClass::Conflict => (StatusCode::CONFLICT, "conflict", None),
            ErrorClass::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request too large", None),
            ErrorClass::SlowDown { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "slow down",
                Some(retry_after_secs),
            ),
            ErrorClass::Unavailable { retry_after_secs } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(retry_after_secs),
            ),
            ErrorClass::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error", None),
        };
        Self {
            retry_after,
            position,
            ..Self::new(status, error, detail)
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    /// Work moved off the API's threads panicked: a bug of ours.
    fn from(e: tokio::task::JoinError) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.error, "detail": self.detail });
        if let Some(position) = self.position {
            body["position"] = position;
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
