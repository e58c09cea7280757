//! One error type for every HTTP answer: a status that says what went wrong and a JSON
//! body `{"error": summary, "detail": what to do}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::error::DataFusionError;
use weir_runtime::Error;

/// An error answered over HTTP.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use weir_sql::Error as S;
        let detail = e.to_string();
        match e {
            Error::Sql(S::InvalidSql(_) | S::Plan(_) | S::Execution(_)) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid SQL", detail)
            }
            Error::Sql(S::Unsupported(_)) => {
                Self::new(StatusCode::BAD_REQUEST, "unsupported SQL", detail)
            }
            Error::Sql(S::NotFound(_)) | Error::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not found", detail)
            }
            Error::Sql(S::AlreadyExists(_)) | Error::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", detail)
            }
            Error::BadRequest(_) => Self::bad_request(detail),
            Error::TooLarge(_) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request too large", detail)
            }
            Error::Backpressure {
                retry_after_secs, ..
            } => Self {
                retry_after: Some(retry_after_secs),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "slow down", detail)
            },
            Error::Unavailable(_) => Self {
                retry_after: Some(5),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            },
            Error::Query(DataFusionError::Internal(_)) | Error::Io(_) | Error::Internal(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", detail)
            }
            Error::Query(
                DataFusionError::SchemaError(..)
                | DataFusionError::Plan(_)
                | DataFusionError::SQL(..),
            ) => Self::new(StatusCode::BAD_REQUEST, "invalid SQL", detail),
            Error::Query(_) => Self::new(StatusCode::BAD_REQUEST, "query failed", detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "detail": self.detail });
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
