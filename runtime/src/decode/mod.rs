//! Decoding raw records into Arrow record batches of a source's schema.

mod builders;
pub mod columns;
mod flat;
pub mod json;
pub mod simd;

pub use columns::{Columns, ColumnsRead};
pub use json::{Decoded, JsonDecoder, Rejected};
