//! State files: a checkpoint's Arrow data (operator state, view rows, sink outboxes),
//! one Arrow IPC file each, written with its size and SHA-256 for the manifest and read
//! back with every block checked to lie within the file.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::{FileDecoder, read_footer_length};
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::ipc::{Block, root_as_footer};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Write `batches` to `path`, synced; its size and SHA-256 (hex).
pub(crate) fn write<'a>(
    path: &Path,
    schema: &SchemaRef,
    batches: impl Iterator<Item = &'a RecordBatch>,
) -> Result<(u64, String)> {
    // Streamed to the file, hashed on the way: no copy of the state in memory.
    let sink = HashingWriter {
        file: std::io::BufWriter::new(std::fs::File::create(path)?),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut writer = FileWriter::try_new(sink, schema)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    let HashingWriter {
        file,
        hasher,
        bytes,
    } = writer.into_inner()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((bytes, hex(&hasher.finalize())))
}

/// The SHA-256 of `bytes`, in hex as the manifest keeps it.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file writer that counts and hashes what passes through it.
struct HashingWriter {
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    bytes: u64,
}

impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The batches of a state file. A file that matches its checksum was written by weir,
/// but a damaged disk or a hand edit (with the checksum fixed) must make this checkpoint
/// damaged, not the start fail: arrow-ipc's `FileReader` allocates whatever length a
/// footer claims (a process abort when it is absurd), so the file is read from memory
/// and every block checked to lie within it first; a panic of the decoder is an error.
pub(crate) fn read(name: &str, bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    std::panic::catch_unwind(|| decode_ipc_file(Buffer::from_vec(bytes)))
        .unwrap_or_else(|_| Err(ArrowError::IpcError("the reader panicked".into())))
        .map_err(|e| Error::Internal(format!("{name} does not decode: {e}")))
}

/// Every record batch of an Arrow IPC file held in memory.
fn decode_ipc_file(file: Buffer) -> std::result::Result<Vec<RecordBatch>, ArrowError> {
    let bad = |what: &str| ArrowError::IpcError(format!("not an Arrow file: {what}"));
    let trailer_start = file.len().checked_sub(10).ok_or_else(|| bad("too short"))?;
    let trailer: [u8; 10] = file[trailer_start..]
        .try_into()
        .map_err(|_| bad("too short"))?;
    let footer_start = trailer_start
        .checked_sub(read_footer_length(trailer)?)
        .ok_or_else(|| bad("the footer is longer than the file"))?;
    let footer = root_as_footer(&file[footer_start..trailer_start])
        .map_err(|e| bad(&format!("bad footer: {e}")))?;
    let schema = footer.schema().ok_or_else(|| bad("no schema"))?;
    let mut decoder = FileDecoder::new(Arc::new(fb_to_schema(schema)), footer.version());
    let block = |b: &Block| {
        let start = usize::try_from(b.offset()).ok();
        let len = usize::try_from(b.metaDataLength())
            .ok()
            .zip(usize::try_from(b.bodyLength()).ok())
            .and_then(|(m, body)| m.checked_add(body));
        match start.zip(len) {
            Some((start, len))
                if start
                    .checked_add(len)
                    .is_some_and(|end| end <= footer_start) =>
            {
                Ok(file.slice_with_length(start, len))
            }
            _ => Err(bad("a block lies outside the file")),
        }
    };
    for b in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(b, &block(b)?)?;
    }
    let mut batches = Vec::new();
    for b in footer.recordBatches().iter().flatten() {
        batches.extend(decoder.read_record_batch(b, &block(b)?)?);
    }
    Ok(batches)
}
