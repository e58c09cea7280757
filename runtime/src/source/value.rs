//! How a log record's value becomes columns, for connectors whose records carry one
//! value each (Kafka messages, Kinesis records): a JSON object decoded against the
//! value columns, or (`raw`) the whole value in one VARCHAR or BYTEA column.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::decode::{JsonDecoder, Rejected};
use crate::{Error, Result};

/// The `format` of a source's values.
#[derive(Debug, Clone)]
pub enum ValueFormat {
    /// A JSON object per record, decoded against the value columns.
    Json(JsonDecoder),
    /// The whole value in one column (`VARCHAR` must be UTF-8).
    Raw { utf8: bool },
}

impl ValueFormat {
    /// The format `format` of `fields` (the declared columns that are not metadata), for
    /// source `source` of connector `connector`.
    pub fn new(source: &str, connector: &str, fields: Vec<Field>, format: &str) -> Result<Self> {
        match format.to_ascii_lowercase().as_str() {
            "json" => Ok(ValueFormat::Json(JsonDecoder::new(Arc::new(Schema::new(
                fields,
            ))))),
            "raw" => {
                let [f] = fields.as_slice() else {
                    return Err(Error::BadRequest(format!(
                        "source {source}: format 'raw' reads the whole record into one column: \
                         declare value VARCHAR (or BYTEA) and metadata columns only"
                    )));
                };
                match f.data_type() {
                    DataType::Utf8 => Ok(ValueFormat::Raw { utf8: true }),
                    DataType::Binary => Ok(ValueFormat::Raw { utf8: false }),
                    other => Err(Error::BadRequest(format!(
                        "source {source}: format 'raw' needs the value column {} to be VARCHAR or BYTEA, not {other}",
                        f.name()
                    ))),
                }
            }
            other => Err(Error::BadRequest(format!(
                "source {source}: format '{other}' is not supported by the {connector} connector; use 'json' or 'raw'"
            ))),
        }
    }

    pub fn is_raw(&self) -> bool {
        matches!(self, ValueFormat::Raw { .. })
    }

    /// The value columns of `n` records (`value(i)`: record i's value, `None` for a
    /// record without one, each a slice of `buffer`), and the records refused with their
    /// index.
    pub fn decode<'a>(
        &self,
        n: usize,
        value: impl Fn(usize) -> Option<&'a [u8]>,
        buffer: &[u8],
    ) -> (Vec<ArrayRef>, Vec<Rejected>) {
        match self {
            ValueFormat::Json(decoder) => {
                let values = (0..n).map(|i| value(i).unwrap_or_default());
                let decoded = decoder.decode_records_in(values, buffer);
                (decoded.batch.columns().to_vec(), decoded.rejected)
            }
            ValueFormat::Raw { utf8 } => raw(n, value, *utf8),
        }
    }
}

/// The one value column of a `raw` source; non-UTF-8 values of a VARCHAR column are
/// refused.
fn raw<'a>(
    n: usize,
    value: impl Fn(usize) -> Option<&'a [u8]>,
    utf8: bool,
) -> (Vec<ArrayRef>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut ends = Vec::with_capacity(n + 1);
    ends.push(0i32);
    let mut bytes = Vec::new();
    let mut valid = Vec::with_capacity(n);
    for i in 0..n {
        let v = value(i);
        if utf8
            && let Some(v) = v
            && let Err(e) = std::str::from_utf8(v)
        {
            rejected.push(Rejected {
                index: i,
                raw: v.to_vec(),
                reason: format!("the value is not UTF-8 text ({e}); declare the column BYTEA"),
            });
            continue;
        }
        bytes.extend_from_slice(v.unwrap_or_default());
        ends.push(bytes.len() as i32);
        valid.push(v.is_some());
    }
    let offsets = OffsetBuffer::new(ends.into());
    let nulls = Some(valid.into());
    let array: ArrayRef = if utf8 {
        Arc::new(StringArray::new(offsets, bytes.into(), nulls))
    } else {
        Arc::new(BinaryArray::new(offsets, bytes.into(), nulls))
    };
    (vec![array], rejected)
}
