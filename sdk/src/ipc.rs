//! Arrow IPC stream format in and out of a plugin: one schema message, one batch.

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;

use crate::PluginError;

/// The single batch of an IPC stream. Arrays point into `buffer` (no copy) when it is
/// aligned for their types.
pub(crate) fn read_one(mut buffer: Buffer) -> Result<RecordBatch, PluginError> {
    let mut decoder = StreamDecoder::new();
    match decoder.decode(&mut buffer)? {
        Some(batch) => Ok(batch),
        None => Err(PluginError::new("the input stream holds no batch")),
    }
}

/// A batch as an IPC stream.
pub(crate) fn write_one(batch: &RecordBatch) -> Result<Vec<u8>, PluginError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 512);
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}
