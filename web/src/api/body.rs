//! Request bodies with a size limit: a declared Content-Length over the limit is refused
//! before anything is read, and reading stops at the limit. Both answer 413.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};

use crate::error::{ApiError, ApiResult};

/// A body limit and what to tell a client that goes over it.
pub struct Limit {
    pub bytes: usize,
    pub detail: String,
}

impl Limit {
    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request too large",
            self.detail.clone(),
        )
    }

    /// Refuse a body whose Content-Length is over the limit, without reading it.
    pub fn check_declared(&self, headers: &HeaderMap) -> ApiResult<()> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match declared {
            Some(n) if n > self.bytes => Err(self.too_large()),
            _ => Ok(()),
        }
    }

    /// Read the body, refusing it once it passes the limit.
    pub async fn read(&self, body: Body) -> ApiResult<Bytes> {
        axum::body::to_bytes(body, self.bytes)
            .await
            .map_err(|_| self.too_large())
    }
}
