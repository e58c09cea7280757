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

/// Where in a statement an error is: 1-based lines and columns, the end exclusive when
/// known (the console underlines it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SqlSpan {
    pub line: u64,
    pub column: u64,
    pub end_line: u64,
    pub end_column: u64,
}

impl SqlSpan {
    /// This span kept inside `sql`: the parser places an unterminated string or comment
    /// just past the end of the text, and a span there may at most touch that end.
    pub fn within(self, sql: &str) -> SqlSpan {
        let lines: Vec<&str> = sql.split('\n').collect();
        let last = lines.len() as u64;
        let width = |line: u64| lines[line as usize - 1].chars().count() as u64 + 1;
        let line = self.line.clamp(1, last);
        let column = self.column.clamp(1, width(line));
        let end_line = self.end_line.clamp(line, last);
        let first = if end_line == line { column } else { 1 };
        SqlSpan {
            line,
            column,
            end_line,
            end_column: self.end_column.clamp(first, width(end_line)),
        }
    }
}

impl Error {
    /// Where the statement is wrong, when the parser or DataFusion's planner knows.
    pub fn span(&self) -> Option<SqlSpan> {
        match self {
            Error::InvalidSql(message) => parser_location(message),
            Error::Plan(e) => plan_span(e),
            _ => None,
        }
    }
}

/// The span DataFusion's planner attached to an error (it does with
/// `sql_parser.collect_spans`), or the location a parser error names.
pub fn plan_span(e: &DataFusionError) -> Option<SqlSpan> {
    if let Some(span) = e.diagnostic().and_then(|d| d.span)
        && span.start.line > 0
    {
        return Some(SqlSpan {
            line: span.start.line,
            column: span.start.column,
            end_line: span.end.line,
            end_column: span.end.column,
        });
    }
    match e.find_root() {
        DataFusionError::SQL(p, _) => parser_location(&p.to_string()),
        _ => None,
    }
}

/// sqlparser ends its messages with "at Line: 3, Column: 14"; the span is the one
/// character there.
fn parser_location(message: &str) -> Option<SqlSpan> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let line: u64 = line.trim().parse().ok()?;
    let column: u64 = rest[..digits].parse().ok()?;
    (line > 0 && column > 0).then_some(SqlSpan {
        line,
        column,
        end_line: line,
        end_column: column + 1,
    })
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
