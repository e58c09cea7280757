//! weir-sql: continuous queries. It parses weir's SQL dialect (CREATE SOURCE with a
//! WATERMARK, CREATE MATERIALIZED VIEW over TUMBLE, HOP and SESSION windows and joins,
//! DROP and SHOW), plans view queries with DataFusion, and runs them incrementally over
//! Arrow micro-batches. It is pure: no I/O and no tasks of its own; the runtime drives
//! it batch by batch.
//!
//! - [`parser`]: the dialect's statements; [`schema`]: SQL types and intervals.
//! - [`planner`]: from a view's query to a [`ContinuousQuery`] and its [`Operator`]
//!   (the contract in [`operator`]).
//! - [`stateless`]: projections and filters, evaluated as DataFusion physical
//!   expressions, in slices side by side; [`settle`]: outside calls made by slices
//!   counted once per batch.
//! - [`aggregate`]: windowed and updating aggregation on DataFusion's own
//!   `GroupValues` and `GroupsAccumulator`s.
//! - [`window`]: window assignment, and the operators that hold a window's or a
//!   session's rows and run the query over them.
//! - [`join`]: joins per window, interval joins and lookup joins, each with its planner.
//! - [`batch`]: the batch-mode runs over held rows those operators share.
//! - [`watermark`]: event-time progress; [`error`]: who must act on a failure.

pub mod aggregate;
pub mod batch;
pub mod error;
pub mod join;
pub mod operator;
pub mod parallel;
pub mod parser;
pub mod planner;
pub mod schema;
pub mod settle;
pub mod stateless;
pub mod watermark;
pub mod window;

#[cfg(test)]
mod testing;

pub use aggregate::{KeyedChange, KeyedRows};
pub use error::{Error, Result, SqlSpan};
pub use operator::{Collector, Operator, Stage};
pub use parser::{
    CreateSink, CreateSource, CreateStream, CreateView, Statement, WatermarkSpec, parse_statement,
};
pub use planner::{ContinuousQuery, SourceCatalog};
pub use watermark::Watermark;
