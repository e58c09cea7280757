//! Arrow IPC stream format in and out of a plugin: one schema message, one batch.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use crate::PluginError;

/// The single batch of an IPC stream.
pub(crate) fn read_one(bytes: &[u8]) -> Result<RecordBatch, PluginError> {
    let mut reader = StreamReader::try_new(bytes, None)?;
    match reader.next() {
        Some(batch) => Ok(batch?),
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
