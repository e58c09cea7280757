//! Errors of the SQL layer. Each variant says whose fault it is: the user's SQL
//! (fix the statement), a name conflict, or a bug of ours.

use datafusion::error::DataFusionError;

/// Result of the SQL layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while parsing, planning or running a continuous query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement does not parse or does not make sense; the user must change it.
    #[error("{0}")]
    InvalidSql(String),
    /// The statement is valid SQL but weir cannot run it continuously (yet).
    #[error("{0}")]
    Unsupported(String),
    /// A name the statement refers to does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name the statement wants to create is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// DataFusion rejected the statement while planning; usually the user's SQL.
    #[error("{0}")]
    Plan(DataFusionError),
    /// Evaluating an operator on a batch failed; a bug or an unexpected input.
    #[error("{0}")]
    Execution(String),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e {
            // Parser errors are the user's SQL: show sqlparser's message without wrappers.
            DataFusionError::SQL(e, _) => Error::InvalidSql(e.to_string()),
            DataFusionError::Context(ctx, inner) => match Error::from(*inner) {
                Error::Plan(inner) => Error::Plan(DataFusionError::Context(ctx, Box::new(inner))),
                other => other,
            },
            other => Error::Plan(other),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::Execution(e.to_string())
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for Error {
    fn from(e: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        Error::InvalidSql(e.to_string())
    }
}

/// Shorthand for an [`Error::Unsupported`] with a formatted message.
#[macro_export]
macro_rules! unsupported {
    ($($arg:tt)*) => { $crate::error::Error::Unsupported(format!($($arg)*)) };
}

/// Shorthand for an [`Error::InvalidSql`] with a formatted message.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::Error::InvalidSql(format!($($arg)*)) };
}
