//! Errors of the runtime, and who must act on each: the user (bad SQL, bad options, a
//! bad plugin: change the request), the operator of the server (a full disk, a broker
//! down: fix it and retry), or us (a bug). [`Error::class`] says which; the web layer
//! turns a class into a status code without looking inside the error.

use datafusion::error::DataFusionError;

use crate::plugin::PluginError;

/// Result of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning a continuous query failed (see the inner error for whose fault).
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
    /// DataFusion failed to plan or run an ad hoc query.
    #[error("{0}")]
    Query(#[from] DataFusionError),
    /// A plugin was refused, or could not be stored or loaded.
    #[error(transparent)]
    Plugin(#[from] PluginError),
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

impl Error {
    /// Where in the statement the error is, when the parser or planner knows.
    pub fn sql_span(&self) -> Option<weir_sql::SqlSpan> {
        match self {
            Error::Sql(e) => e.span(),
            Error::Query(e) => weir_sql::error::plan_span(e),
            _ => None,
        }
    }
}

/// Who must act on an error, and so how an API answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user's SQL does not parse or does not make sense.
    InvalidSql,
    /// Valid SQL that weir cannot run (continuously) yet.
    UnsupportedSql,
    /// An ad hoc query failed on the data (a cast, a division by zero, ...).
    QueryFailed,
    /// A request the user must change.
    BadRequest,
    /// An uploaded plugin weir refuses; the plugin's author must change it.
    BadPlugin,
    NotFound,
    Conflict,
    TooLarge,
    /// The user sends faster than weir takes: retry after the given seconds.
    SlowDown {
        retry_after_secs: u64,
    },
    /// Something the operator of the server must fix (disk, memory, a broker):
    /// nothing was done; retry after the given seconds.
    Unavailable {
        retry_after_secs: u64,
    },
    /// A bug of ours.
    Internal,
}

/// How long a client should wait before retrying what the operator must fix.
const RETRY_UNAVAILABLE_SECS: u64 = 5;

impl Error {
    /// Who must act on this error.
    pub fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        match self {
            Error::Sql(e) => sql_class(e),
            Error::BadRequest(_) => C::BadRequest,
            Error::NotFound(_) => C::NotFound,
            Error::Conflict(_) => C::Conflict,
            Error::TooLarge(_) => C::TooLarge,
            Error::Backpressure {
                retry_after_secs, ..
            } => C::SlowDown {
                retry_after_secs: *retry_after_secs,
            },
            Error::Query(e) => datafusion_class(e, C::QueryFailed),
            Error::Plugin(e) => match e {
                PluginError::Rejected(_) => C::BadPlugin,
                PluginError::Storage(_) => C::Unavailable {
                    retry_after_secs: RETRY_UNAVAILABLE_SECS,
                },
                PluginError::Host(_) => C::Internal,
            },
            Error::Io(_) | Error::Unavailable(_) => C::Unavailable {
                retry_after_secs: RETRY_UNAVAILABLE_SECS,
            },
            Error::Internal(_) => C::Internal,
        }
    }
}

fn sql_class(e: &weir_sql::Error) -> ErrorClass {
    use weir_sql::Error as S;
    match e {
        S::InvalidSql(_) => ErrorClass::InvalidSql,
        S::Unsupported(_) => ErrorClass::UnsupportedSql,
        S::NotFound(_) => ErrorClass::NotFound,
        S::AlreadyExists(_) => ErrorClass::Conflict,
        S::Plan(e) => datafusion_class(e, ErrorClass::InvalidSql),
        // While planning, an operator that fails to evaluate is a bug of ours.
        S::Execution(_) => ErrorClass::Internal,
    }
}

/// DataFusion's errors by whose fault they are; `user` is the class of an error in
/// what the user asked for (their SQL, or their query's data).
fn datafusion_class(e: &DataFusionError, user: ErrorClass) -> ErrorClass {
    use DataFusionError as D;
    match e {
        D::SQL(..) | D::Plan(_) | D::SchemaError(..) => ErrorClass::InvalidSql,
        D::NotImplemented(_) => ErrorClass::UnsupportedSql,
        D::Internal(_) | D::ExecutionJoin(_) => ErrorClass::Internal,
        D::ResourcesExhausted(_) | D::IoError(_) => ErrorClass::Unavailable {
            retry_after_secs: RETRY_UNAVAILABLE_SECS,
        },
        D::Context(_, inner) | D::Diagnostic(_, inner) => datafusion_class(inner, user),
        D::Shared(inner) => datafusion_class(inner, user),
        D::Collection(all) => all
            .first()
            .map_or(user, |first| datafusion_class(first, user)),
        _ => user,
    }
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

/// What a caught panic said (its message, when it gave one as text).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    (panic.downcast_ref::<String>().cloned())
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_says_what_it_said() {
        let formatted = std::panic::catch_unwind(|| panic!("bad block {}", 7)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "bad block 7");
        let plain = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(plain.as_ref()), "plain");
    }

    #[test]
    fn each_error_names_who_must_act() {
        let df = |e: DataFusionError| Error::Query(e).class();
        assert_eq!(
            df(DataFusionError::Plan("x".into())),
            ErrorClass::InvalidSql
        );
        assert_eq!(
            df(DataFusionError::Internal("x".into())),
            ErrorClass::Internal
        );
        assert!(matches!(
            df(DataFusionError::ResourcesExhausted("x".into())),
            ErrorClass::Unavailable { .. }
        ));
        assert_eq!(
            df(DataFusionError::Execution("x".into())),
            ErrorClass::QueryFailed
        );
        assert_eq!(
            df(DataFusionError::Context(
                "while planning".into(),
                Box::new(DataFusionError::Internal("x".into()))
            )),
            ErrorClass::Internal
        );
        // Planning a view: DataFusion's bugs and limits are not the user's SQL.
        let sql = |e: weir_sql::Error| Error::Sql(e).class();
        assert_eq!(
            sql(weir_sql::Error::Plan(DataFusionError::Internal("x".into()))),
            ErrorClass::Internal
        );
        assert!(matches!(
            sql(weir_sql::Error::Plan(DataFusionError::ResourcesExhausted(
                "x".into()
            ))),
            ErrorClass::Unavailable { .. }
        ));
        assert_eq!(
            sql(weir_sql::Error::Plan(DataFusionError::Plan("x".into()))),
            ErrorClass::InvalidSql
        );
        assert_eq!(
            sql(weir_sql::Error::Execution("x".into())),
            ErrorClass::Internal
        );
        // The operator's side: the disk, not the request.
        assert!(matches!(
            Error::Io(std::io::Error::other("disk full")).class(),
            ErrorClass::Unavailable { .. }
        ));
        assert!(matches!(
            Error::Plugin(PluginError::Storage(std::io::Error::other("disk full"))).class(),
            ErrorClass::Unavailable { .. }
        ));
        assert_eq!(
            Error::Plugin(PluginError::Rejected("not wasm".into())).class(),
            ErrorClass::BadPlugin
        );
    }
}
