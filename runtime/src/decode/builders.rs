//! The columns the fast path of JSON decoding ([`super::simd`]) builds: an Arrow
//! builder per kind of column, strings built from bytes and checked as a whole, and
//! placeholders for the columns no view reads.

use std::sync::Arc;

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array, Int64Builder,
    StringArray, TimestampMillisecondArray, TimestampMillisecondBuilder,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, OffsetBuffer, ScalarBuffer};

/// The kinds of column the fast path decodes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int,
    Float,
    Bool,
    Text,
    Millis,
}

/// A column being built, or one only checked (see [`super::simd::SimdPlan::decode`]).
pub enum Column {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Text(TextBuilder),
    Millis(TimestampMillisecondBuilder),
    Unread(Kind),
}

/// A value as its column takes it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// UTF-8 (see [`TextBuilder`]).
    Text(&'a [u8]),
}

impl Column {
    pub fn new(kind: Kind, rows: usize, text_bytes: usize) -> Self {
        match kind {
            Kind::Int => Column::Int(Int64Builder::with_capacity(rows)),
            Kind::Float => Column::Float(Float64Builder::with_capacity(rows)),
            Kind::Bool => Column::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Text => Column::Text(TextBuilder::with_capacity(rows, text_bytes)),
            Kind::Millis => Column::Millis(TimestampMillisecondBuilder::with_capacity(rows)),
        }
    }

    pub fn null(&mut self) {
        let _null_fits_every_kind = self.append(Value::Null);
    }

    /// Append a value of this column's kind (from `simd::value_of` or `simd::value_of_token`).
    #[inline]
    pub fn append(&mut self, value: Value<'_>) -> Option<()> {
        match (self, value) {
            (Column::Unread(_), _) => {}
            (Column::Int(b), Value::Null) => b.append_null(),
            (Column::Float(b), Value::Null) => b.append_null(),
            (Column::Bool(b), Value::Null) => b.append_null(),
            (Column::Text(b), Value::Null) => b.append_null(),
            (Column::Millis(b), Value::Null) => b.append_null(),
            (Column::Int(b), Value::Int(v)) => b.append_value(v),
            (Column::Millis(b), Value::Int(v)) => b.append_value(v),
            (Column::Float(b), Value::Float(v)) => b.append_value(v),
            (Column::Bool(b), Value::Bool(v)) => b.append_value(v),
            (Column::Text(b), Value::Text(v)) => b.append_value(v)?,
            // Not made by `value_of` or `value_of_token` for this kind: arrow-json decides.
            _ => return None,
        }
        Some(())
    }

    /// The column's array of `rows` rows.
    pub fn finish(&mut self, rows: usize) -> Option<ArrayRef> {
        Some(match self {
            Column::Int(b) => Arc::new(b.finish()),
            Column::Float(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Text(b) => Arc::new(b.finish()?),
            Column::Millis(b) => Arc::new(b.finish()),
            Column::Unread(kind) => placeholder(*kind, rows),
        })
    }
}

/// A string column built from bytes, checked to be UTF-8 once, as a whole, when
/// finished: the flat scanner's strings are slices of records it checked already, so a
/// check per string (what `StringBuilder` asks for, a `&str`) would be a second one.
pub struct TextBuilder {
    pub values: Vec<u8>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl TextBuilder {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    /// `None` past 2 GiB of text, which an `i32` offset cannot reach.
    fn append_value(&mut self, value: &[u8]) -> Option<()> {
        self.values.extend_from_slice(value);
        self.offsets.push(i32::try_from(self.values.len()).ok()?);
        self.nulls.append_non_null();
        Some(())
    }

    fn append_null(&mut self) {
        let end = self.offsets.last().copied().unwrap_or_default();
        self.offsets.push(end);
        self.nulls.append_null();
    }

    /// The strings, or `None` if they are not UTF-8 (they always are: see above).
    fn finish(&mut self) -> Option<StringArray> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut self.offsets)));
        let values = Buffer::from_vec(std::mem::take(&mut self.values));
        StringArray::try_new(offsets, values, self.nulls.finish()).ok()
    }
}

/// A column nobody reads: zeros (or empty strings), valid in any column, nullable or not.
fn placeholder(kind: Kind, rows: usize) -> ArrayRef {
    match kind {
        Kind::Int => Arc::new(Int64Array::from_value(0, rows)),
        Kind::Float => Arc::new(Float64Array::from_value(0.0, rows)),
        Kind::Bool => Arc::new(BooleanArray::new(BooleanBuffer::new_unset(rows), None)),
        Kind::Text => Arc::new(StringArray::new(
            OffsetBuffer::new_zeroed(rows),
            Buffer::from(Vec::<u8>::new()),
            None,
        )),
        Kind::Millis => Arc::new(TimestampMillisecondArray::from_value(0, rows)),
    }
}
