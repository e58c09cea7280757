//! weir-sql: continuous queries. It parses weir's SQL dialect (CREATE SOURCE with a
//! WATERMARK, CREATE MATERIALIZED VIEW over TUMBLE windows, DROP and SHOW), plans view
//! queries with DataFusion, and runs them incrementally over Arrow micro-batches:
//! stateless projections and filters evaluated as DataFusion physical expressions, and
//! windowed aggregation on DataFusion's own `GroupValues` and `GroupsAccumulator`s.
//! It is pure: no I/O and no tasks of its own; the runtime drives it batch by batch.

pub mod aggregate;
pub mod error;
pub mod interval_join;
pub mod lookup_join;
pub mod operator;
pub mod parser;
pub mod per_window;
pub mod planner;
pub mod schema;
pub mod session;
pub mod watermark;
pub mod window;

pub use error::{Error, Result};
pub use operator::{Collector, Operator};
pub use parser::{
    CreateSource, CreateStream, CreateView, Statement, WatermarkSpec, parse_statement,
};
pub use planner::{ContinuousQuery, SourceCatalog};
pub use watermark::Watermark;
