//! Arrow IPC stream format in and out of a plugin call: a schema message, one record
//! batch, the end-of-stream marker. Calls after the first almost always carry the same
//! schema, so [`Encoder`] reuses the schema message it encoded last and [`Decoder`]
//! skips parsing a schema message it has seen byte for byte. Streams with dictionary
//! or unusual nested types are written by arrow-ipc's general writer and refused by
//! the decoder.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::convert::fb_to_schema;
use arrow_ipc::reader::read_record_batch;
use arrow_ipc::root_as_message;
use arrow_ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, StreamWriter,
    write_message,
};
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Writes batches as IPC streams, caching the encoded schema message.
#[derive(Debug, Default)]
pub struct Encoder {
    options: IpcWriteOptions,
    generator: IpcDataGenerator,
    context: IpcWriteContext,
    schema: Option<(SchemaRef, Vec<u8>)>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `batch` to `out` as a complete stream.
    pub fn encode_into(
        &mut self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ArrowError> {
        let schema = batch.schema();
        if !plain(&schema) {
            let mut writer = StreamWriter::try_new(&mut *out, &schema)?;
            writer.write(batch)?;
            return writer.finish();
        }
        let cached =
            matches!(&self.schema, Some((s, _)) if Arc::ptr_eq(s, &schema) || **s == *schema);
        if !cached {
            let mut tracker = DictionaryTracker::new(false);
            let encoded = self.generator.schema_to_bytes_with_dictionary_tracker(
                &schema,
                &mut tracker,
                &self.options,
            );
            let mut bytes = Vec::new();
            write_message(&mut bytes, encoded, &self.options)?;
            self.schema = Some((schema.clone(), bytes));
        }
        if let Some((_, bytes)) = &self.schema {
            out.extend_from_slice(bytes);
        }
        let mut tracker = DictionaryTracker::new(false);
        let (_, encoded) =
            self.generator
                .encode(batch, &mut tracker, &self.options, &mut self.context)?;
        write_message(&mut *out, encoded, &self.options)?;
        out.extend_from_slice(&END_OF_STREAM);
        Ok(())
    }
}

/// Reads the one batch of an IPC stream, caching the decoded schema.
#[derive(Debug, Default)]
pub struct Decoder {
    schema: Option<(Vec<u8>, SchemaRef)>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The batch in `buffer`, of at most `max_rows` rows. Arrays point into `buffer`
    /// (no copy) where it is aligned for their types. Compressed buffers and dictionary,
    /// union, run-end or list-view columns are refused: the other side is untrusted, and
    /// a compressed buffer declares its own (unbounded) decompressed size.
    pub fn decode(&mut self, buffer: Buffer, max_rows: usize) -> Result<RecordBatch, ArrowError> {
        let bytes = buffer.as_slice();
        let (schema_range, next) = message_at(bytes, 0)?;
        let schema_bytes = &bytes[schema_range];
        let schema = match &self.schema {
            Some((seen, schema)) if seen.as_slice() == schema_bytes => schema.clone(),
            _ => {
                let message = root_as_message(schema_bytes)
                    .map_err(|e| invalid(format!("bad schema message: {e}")))?;
                let fb = message
                    .header_as_schema()
                    .filter(|s| s.fields().is_some())
                    .ok_or_else(|| invalid("the stream does not start with a schema".into()))?;
                let schema = Arc::new(fb_to_schema(fb));
                if !plain(&schema) {
                    return Err(invalid(
                        "dictionary, union, run-end and list-view columns cannot cross the plugin boundary"
                            .into(),
                    ));
                }
                self.schema = Some((schema_bytes.to_vec(), schema.clone()));
                schema
            }
        };
        let (batch_range, body_start) = message_at(bytes, next)?;
        let message = root_as_message(&bytes[batch_range])
            .map_err(|e| invalid(format!("bad record batch message: {e}")))?;
        let batch = message
            .header_as_record_batch()
            .ok_or_else(|| invalid("the second message is not a record batch".into()))?;
        if batch.compression().is_some() {
            return Err(invalid("compressed record batches are not accepted".into()));
        }
        if usize::try_from(batch.length()).map_or(true, |rows| rows > max_rows) {
            return Err(invalid(format!(
                "the batch claims {} rows, more than the {max_rows} allowed",
                batch.length()
            )));
        }
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| invalid("negative body length".into()))?;
        if body_start
            .checked_add(body_len)
            .is_none_or(|end| end > bytes.len())
        {
            return Err(invalid("the record batch body is cut short".into()));
        }
        let body = buffer.slice_with_length(body_start, body_len);
        read_record_batch(
            &body,
            batch,
            schema,
            &HashMap::new(),
            None,
            &message.version(),
        )
    }
}

/// The metadata of the encapsulated message at `at`, and where what follows it starts.
fn message_at(bytes: &[u8], at: usize) -> Result<(Range<usize>, usize), ArrowError> {
    let word = |p: usize| {
        bytes
            .get(p..p + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| invalid("the stream is cut short".into()))
    };
    let mut p = at;
    let mut len = word(p)?;
    if len == u32::MAX {
        p += 4;
        len = word(p)?;
    }
    let start = p + 4;
    let end = start + len as usize;
    if end > bytes.len() {
        return Err(invalid("a message is cut short".into()));
    }
    Ok((start..end, end))
}

fn invalid(message: String) -> ArrowError {
    ArrowError::IpcError(message)
}

/// No dictionaries and no nested types other than lists, structs and maps.
fn plain(schema: &Schema) -> bool {
    fn ok(t: &DataType) -> bool {
        match t {
            DataType::Dictionary(..)
            | DataType::Union(..)
            | DataType::RunEndEncoded(..)
            | DataType::ListView(_)
            | DataType::LargeListView(_) => false,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::FixedSizeList(f, _)
            | DataType::Map(f, _) => ok(f.data_type()),
            DataType::Struct(fields) => fields.iter().all(|f| ok(f.data_type())),
            _ => true,
        }
    }
    schema.fields().iter().all(|f| ok(f.data_type()))
}

std::thread_local! {
    static ENCODER: std::cell::RefCell<Encoder> = std::cell::RefCell::new(Encoder::new());
    static DECODER: std::cell::RefCell<Decoder> = std::cell::RefCell::new(Decoder::new());
}

/// The single batch of an IPC stream (the guest's side, one cache per thread).
pub(crate) fn read_one(buffer: Buffer) -> Result<RecordBatch, crate::PluginError> {
    Ok(DECODER.with(|d| d.borrow_mut().decode(buffer, usize::MAX))?)
}

/// A batch as an IPC stream (the guest's side, one cache per thread).
pub(crate) fn write_one(batch: &RecordBatch) -> Result<Vec<u8>, crate::PluginError> {
    // The sliced size, not get_array_memory_size: arrays decoded from the input share
    // its whole buffer, which would count once per column.
    let data: usize = batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    // Room for the messages and 64-byte padding of up to three buffers per column.
    let mut out = Vec::with_capacity(data + 4096 + 192 * batch.num_columns());
    ENCODER.with(|e| e.borrow_mut().encode_into(batch, &mut out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, DictionaryArray, Int64Array, StringArray, types::Int32Type};

    fn round_trip(
        batch: &RecordBatch,
        encoder: &mut Encoder,
        decoder: &mut Decoder,
    ) -> RecordBatch {
        let mut bytes = Vec::new();
        encoder.encode_into(batch, &mut bytes).expect("encodes");
        // arrow-ipc's own reader must read what the encoder wrote.
        let mut buffer = Buffer::from(bytes.as_slice());
        let general = arrow_ipc::reader::StreamDecoder::new()
            .decode(&mut buffer)
            .expect("a valid stream")
            .expect("a batch");
        assert_eq!(&general, batch);
        decoder
            .decode(Buffer::from(bytes.as_slice()), batch.num_rows())
            .expect("decodes")
    }

    #[test]
    fn caches_schemas_and_still_follows_changes() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new());
        let ints = |v: Vec<Option<i64>>| {
            RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(v)) as ArrayRef)])
                .expect("batch")
        };
        for batch in [ints(vec![Some(1), None]), ints(vec![Some(3)]), ints(vec![])] {
            assert_eq!(round_trip(&batch, &mut e, &mut d), batch);
        }
        let strings = RecordBatch::try_from_iter([(
            "s",
            Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef,
        )])
        .expect("batch");
        assert_eq!(round_trip(&strings, &mut e, &mut d), strings);
        let dict: DictionaryArray<Int32Type> = vec!["p", "q", "p"].into_iter().collect();
        let dicts = RecordBatch::try_from_iter([("d", Arc::new(dict) as ArrayRef)]).expect("batch");
        let mut bytes = Vec::new();
        e.encode_into(&dicts, &mut bytes).expect("encodes");
        let err = d
            .decode(Buffer::from(bytes.as_slice()), 10)
            .expect_err("refused");
        assert!(err.to_string().contains("dictionary"), "{err}");
    }

    #[test]
    fn refuses_truncated_foreign_or_oversized_batches() {
        let mut bytes = Vec::new();
        let batch = RecordBatch::try_from_iter([(
            "a",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .expect("batch");
        Encoder::new()
            .encode_into(&batch, &mut bytes)
            .expect("encodes");
        let mut d = Decoder::new();
        for cut in [0, 3, 9, bytes.len() / 2, bytes.len() - 40] {
            assert!(
                d.decode(Buffer::from(&bytes[..cut]), 3).is_err(),
                "cut at {cut}"
            );
        }
        assert!(
            d.decode(Buffer::from(&b"{\"not\": \"arrow\"}"[..]), 3)
                .is_err()
        );
        let err = d
            .decode(Buffer::from(bytes.as_slice()), 2)
            .expect_err("too many rows");
        assert!(err.to_string().contains("claims 3 rows"), "{err}");
    }
}
