//! Errors of the runtime, each saying whose fault it is and whether retrying helps.

/// Result of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's SQL or the objects it names (see the inner error).
    #[error(transparent)]
    Sql(#[from] weir_sql::Error),
    /// A request the user must change (bad options, wrong connector, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The named source, view or object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken or the object is in use.
    #[error("{0}")]
    Conflict(String),
    /// The request is too large.
    #[error("{0}")]
    TooLarge(String),
    /// A buffer is full: slow down and retry after the given seconds.
    #[error("{message}")]
    Backpressure {
        message: String,
        retry_after_secs: u64,
    },
    /// DataFusion failed to run an ad hoc query.
    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// The data directory or another local resource failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A resource weir needs is failing (the data dir is full or read-only, say):
    /// nothing was done; retry once it is fixed.
    #[error("{0}")]
    Unavailable(String),
    /// A bug of ours.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        match e {
            // Writing Arrow files: a full or read-only disk is not a bug of ours.
            datafusion::arrow::error::ArrowError::IoError(_, io) => Error::Io(io),
            e => Error::Internal(e.to_string()),
        }
    }
}
