//! Decoding raw records into Arrow record batches of a source's schema.

pub mod json;
pub mod simd;

pub use json::{Decoded, JsonDecoder, Rejected};
