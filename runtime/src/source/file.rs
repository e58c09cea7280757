//! The `file` connector: replays a file of newline-delimited JSON, then ends (a finite
//! source: the final watermark closes every window). Its position is the byte offset
//! after the last line read, so a restart from a checkpoint reads on from there.
//!
//! The file is read ahead, on a thread of its own, in blocks of whole lines; each block
//! is decoded on a worker thread as soon as one is free (`runtime.parallelism` and one
//! more are queued at once) and sent in file order, so rows keep their order and each
//! chunk's position is exact.
//!
//! Paths are relative to `runtime.files-dir` (default `<data-dir>/files`) and may not
//! leave it: SQL users must not be able to read any file the server can.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::Deserialize;

use super::connector::{Connector, Feed, SourceDef};
use super::in_order::InOrder;
use crate::checkpoint::Position;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::NewDeadLetter;
use crate::decode::{Decoded, JsonDecoder};
use crate::{Error, Result};

/// Options of `WITH (connector = 'file', ...)` beyond the common ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    /// The file, relative to the files dir.
    path: Option<String>,
}

/// A source replaying one file.
pub struct FileSource {
    path: PathBuf,
    schema: SchemaRef,
    parallelism: usize,
}

pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    def.json_only()?;
    def.no_properties()?;
    def.no_metadata_columns()?;
    let options: FileOptions = crate::options::parse_own(def.name, def.options)?;
    let files_dir = def.config.files_dir();
    let path = options.path.ok_or_else(|| {
        Error::BadRequest(format!(
            "source {}: a file source needs path = 'name.jsonl' (inside {})",
            def.name,
            files_dir.display()
        ))
    })?;
    Ok(Box::new(FileSource {
        path: resolve(&files_dir, &path)?,
        schema: Arc::new(Schema::new(def.declared_columns()?.to_vec())),
        parallelism: def.config.parallelism.max(1),
    }))
}

impl Connector for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn start(&self, feed: Feed, resume: Option<Position>) -> Result<()> {
        let reader = FileReader {
            path: self.path.clone(),
            start: resume.and_then(|p| p.offset(POSITION)).unwrap_or(0),
            decoder: Arc::new(JsonDecoder::new(self.schema.clone())),
            parallelism: self.parallelism,
            block_bytes: READ_BYTES,
            feed,
        };
        std::thread::Builder::new()
            .name(format!("file-{}", reader.feed.source))
            .spawn(move || {
                if let Err(e) = reader.run() {
                    reader.feed.fail(format!("the file source stopped: {e}"));
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the file reader: {e}")))?;
        Ok(())
    }
}

/// The partition name of a file source's position: the byte offset read up to.
pub const POSITION: &str = "offset";

/// Bytes read per chunk (the chunk ends at the last complete line).
const READ_BYTES: usize = 1 << 20;

/// The file `path` names inside `dir`, which it may not leave.
pub fn resolve(dir: &Path, path: &str) -> Result<PathBuf> {
    let dir = dir.canonicalize().map_err(|e| {
        Error::BadRequest(format!(
            "the files dir {} is not readable ({e}); create it and put the files to replay there",
            dir.display()
        ))
    })?;
    let file = dir.join(path).canonicalize().map_err(|e| {
        Error::BadRequest(format!(
            "file {path} cannot be read in {} ({e})",
            dir.display()
        ))
    })?;
    if !file.starts_with(&dir) || !file.is_file() {
        return Err(Error::BadRequest(format!(
            "file {path} must be a file inside the files dir {}",
            dir.display()
        )));
    }
    Ok(file)
}

/// Reads one file into its source's feed.
struct FileReader {
    path: PathBuf,
    start: u64,
    decoder: Arc<JsonDecoder>,
    /// Blocks decoded at once.
    parallelism: usize,
    /// Bytes read per block (the block ends at its last complete line).
    block_bytes: usize,
    feed: Feed,
}

/// Whole lines of the file and the byte range they came from.
struct Block {
    lines: Vec<u8>,
    from: u64,
    end: u64,
}

impl FileReader {
    fn run(&self) -> std::io::Result<()> {
        if !self.feed.wait_for_a_view() {
            return Ok(());
        }
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.start))?;
        // Blocks are read ahead on a thread of their own while the workers decode the
        // ones before (read in turn with decoding, the read left both workers idle).
        // It ends at the end of the file, or when this side stops and drops `blocks`.
        let (tx, blocks) = mpsc::sync_channel(self.parallelism);
        // Decoded blocks' buffers go back to the reader: a fresh buffer's pages fault
        // in, zeroed, on the first read (a few per cent of the run).
        let (give_back, spares) = mpsc::sync_channel(self.parallelism + 2);
        let (start, block_bytes) = (self.start, self.block_bytes);
        std::thread::Builder::new()
            .name(format!("file-read-{}", self.feed.source))
            .spawn(move || read_blocks(file, start, block_bytes, tx, spares))?;
        // Blocks decode on the workers as soon as a worker is free, a few ahead of the
        // one being sent, and are sent in file order: no round waits for its slowest
        // block, and no worker waits while a block is sent.
        let mut decoding = InOrder::new(self.parallelism + 1);
        let mut at_end = false;
        loop {
            if self.feed.stopped() {
                return Ok(());
            }
            while !at_end && decoding.has_room() {
                match blocks.recv() {
                    Ok(Ok(Some(block))) => {
                        let decoder = Arc::clone(&self.decoder);
                        // What the views read when the block is decoded.
                        let wanted = self.feed.columns_read.get();
                        let give_back = give_back.clone();
                        decoding.spawn((block.from, block.end), move || {
                            let decoded = decoder.decode_columns(&block.lines, wanted);
                            let _full_or_gone = give_back.try_send(block.lines);
                            decoded
                        });
                    }
                    Ok(Ok(None)) => at_end = true,
                    Ok(Err(e)) => return Err(e),
                    // Gone without saying the file ended (it panicked): the windows
                    // must not close as if the whole file had been read.
                    Err(_) => {
                        return Err(std::io::Error::other(
                            "the file's reader stopped before its end",
                        ));
                    }
                }
            }
            let Some(((from, end), decoded)) = decoding.next() else {
                break;
            };
            // A block whose decoding panicked stops the source, saying why.
            let decoded = decoded.map_err(|why| {
                std::io::Error::other(format!("decoding bytes {from}..{end} failed: {why}"))
            })?;
            if !self.send(decoded, from, end) {
                return Ok(());
            }
        }
        self.feed.end();
        Ok(())
    }

    /// Send the decoded lines at `from..end`; false once the pipeline is gone.
    fn send(&self, decoded: Decoded, from: u64, end: u64) -> bool {
        self.feed.dead_letter(decoded.rejected.into_iter().map(|r| {
            NewDeadLetter {
                source: self.feed.source.clone(),
                view: None,
                partition: None,
                position: None,
                sequence_number: None,
                reason: format!(
                    "{} (in bytes {from}..{end} of {})",
                    r.reason,
                    self.path.display()
                )
                .into(),
                raw: r.raw,
            }
        }));
        let position = Position::at(POSITION, end);
        (self.feed).send_decoded(decoded.batch, decoded.columns, position, 0)
    }
}

/// Read `file` from byte `offset` on in blocks of whole lines, about `block_bytes`
/// each (at the end, a last line without a newline too), until its end or until the
/// other side of `tx` is gone; `None` says the end was reached. A blank block is not
/// sent: its bytes are re-read after a restart.
fn read_blocks(
    mut file: File,
    mut offset: u64,
    block_bytes: usize,
    tx: mpsc::SyncSender<std::io::Result<Option<Block>>>,
    spares: mpsc::Receiver<Vec<u8>>,
) {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        carry.reserve(block_bytes);
        let n = match (&mut file).take(block_bytes as u64).read_to_end(&mut carry) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let at_end = n == 0;
        let take = if at_end {
            carry.len()
        } else {
            match memchr::memrchr(b'\n', &carry) {
                Some(i) => i + 1,
                None => continue,
            }
        };
        // The lines keep the buffer; only the partial line after them is copied, into a
        // buffer given back if there is one.
        let mut next = spares.try_recv().unwrap_or_default();
        next.clear();
        next.extend_from_slice(&carry[take..]);
        carry.truncate(take);
        let lines = std::mem::replace(&mut carry, next);
        let end = offset + lines.len() as u64;
        if lines.iter().any(|b| !b.is_ascii_whitespace())
            && tx
                .send(Ok(Some(Block {
                    lines,
                    from: offset,
                    end,
                })))
                .is_err()
        {
            return;
        }
        offset = end;
        if at_end {
            let _ = tx.send(Ok(None));
            return;
        }
    }
}

/// The connection test: is the file there, inside the files dir, and readable?
fn test_file(
    options: &std::collections::BTreeMap<String, String>,
    config: &crate::config::RuntimeConfig,
) -> Result<String> {
    let files_dir = config.files_dir();
    let path = options.get("path").ok_or_else(|| {
        Error::BadRequest(format!(
            "name the file first (path, inside {})",
            files_dir.display()
        ))
    })?;
    let path = resolve(&files_dir, path)?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| Error::BadRequest(format!("cannot read {}: {e}", path.display())))?;
    Ok(format!("{} is there: {} bytes", path.display(), meta.len()))
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "file",
        kind: "source",
        doc: "Replays a file of newline-delimited JSON from the files dir once, then finishes.",
        declares_columns: true,
        passes_through: None,
        options: [crate::connectors::COMMON_SOURCE_OPTIONS, &OWN_OPTIONS[..]].concat(),
    },
    fields: field_names::<FileOptions>,
    test: test_file,
};

const OWN_OPTIONS: [OptionDoc; 1] = [OptionDoc {
    name: "path",
    kind: "text",
    choices: &[],
    required: true,
    default: None,
    doc: "The file, relative to the files dir (runtime.files-dir, default <data-dir>/files); it may not leave it.",
}];

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type};

    use super::*;
    use crate::source::Chunk;

    fn read(dir: &Path, start: u64) -> (Vec<i64>, Vec<u64>, usize) {
        read_in_blocks(dir, start, READ_BYTES)
    }

    /// The ids read, each chunk's end offset (`u64::MAX` for the end) and the dead
    /// letters, reading `block_bytes` at a time, 3 blocks decoded at once.
    fn read_in_blocks(dir: &Path, start: u64, block_bytes: usize) -> (Vec<i64>, Vec<u64>, usize) {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let (feed, rx, dead_letters) = Feed::for_test(schema.clone(), 4096);
        FileReader {
            path: resolve(dir, "records.jsonl").expect("inside"),
            start,
            decoder: Arc::new(JsonDecoder::new(schema)),
            parallelism: 3,
            block_bytes,
            feed,
        }
        .run()
        .expect("reads");
        let (mut ids, mut ends) = (Vec::new(), Vec::new());
        for chunk in rx.try_iter() {
            match chunk {
                Chunk::Rows {
                    batch, position, ..
                } => {
                    let batch: RecordBatch = batch;
                    ids.extend(
                        batch
                            .column(0)
                            .as_primitive::<Int64Type>()
                            .values()
                            .iter()
                            .copied(),
                    );
                    ends.push(position.offset(POSITION).expect("offset"));
                }
                Chunk::End => ends.push(u64::MAX),
                Chunk::SplitGone(_) => unreachable!("a file is one split"),
            }
        }
        (ids, ends, dead_letters.recent(None, None, 10).len())
    }

    #[test]
    fn reads_every_line_and_resumes_at_a_byte_offset() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = "{\"id\":1}\n{\"id\":\"bad\"}\n{\"id\":3}\n{\"id\":4}";
        std::fs::write(dir.path().join("records.jsonl"), text).expect("write");
        let (ids, ends, bad) = read(dir.path(), 0);
        assert_eq!(ids, vec![1, 3, 4]);
        assert_eq!(bad, 1);
        // Whole lines first; the last line, without a newline, once the end is reached.
        let whole_lines = text.rfind('\n').expect("newlines") as u64 + 1;
        assert_eq!(ends, vec![whole_lines, text.len() as u64, u64::MAX]);
        // From the offset after the second line: the rest only.
        let (ids, _, bad) = read(dir.path(), "{\"id\":1}\n{\"id\":\"bad\"}\n".len() as u64);
        assert_eq!(ids, vec![3, 4]);
        assert_eq!(bad, 0);
    }

    #[test]
    fn blocks_decoded_side_by_side_keep_the_file_order_and_exact_offsets() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut text = String::new();
        let (mut line_ends, mut id_ends) = (Vec::new(), Vec::new());
        for id in 0..500 {
            if id % 97 == 13 {
                text.push_str("{\"id\":\"bad\"}\n");
                line_ends.push(text.len() as u64);
            }
            if id % 61 == 5 {
                // Blank lines, more than a block of them: a blank block is not sent.
                for _ in 0..30 {
                    text.push_str("  \n");
                    line_ends.push(text.len() as u64);
                }
            }
            if id % 50 == 7 {
                // A line longer than a block.
                text.push_str(&format!(
                    "{{\"id\":{id},\"pad\":\"{}\"}}\n",
                    "x".repeat(100)
                ));
            } else {
                text.push_str(&format!("{{\"id\":{id}}}\n"));
            }
            line_ends.push(text.len() as u64);
            id_ends.push(text.len() as u64);
        }
        std::fs::write(dir.path().join("records.jsonl"), &text).expect("write");
        // Blocks of about 3 lines, decoded 3 at a time.
        let (ids, ends, bad) = read_in_blocks(dir.path(), 0, 40);
        assert_eq!(
            ids,
            (0..500).collect::<Vec<i64>>(),
            "every row once, in order"
        );
        assert_eq!(bad, 6);
        assert!(ends.len() > 100, "many blocks: {}", ends.len());
        assert_eq!(ends.last(), Some(&u64::MAX));
        let offsets = &ends[..ends.len() - 1];
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "positions only grow"
        );
        assert!(
            offsets.iter().all(|o| line_ends.contains(o)),
            "every position is the end of a line"
        );
        assert_eq!(offsets.last(), Some(&(text.len() as u64)));
        // Resumed from a block's end: exactly the rows after it.
        let resume = offsets[offsets.len() / 2];
        let (rest, _, _) = read_in_blocks(dir.path(), resume, 40);
        let before = id_ends.iter().filter(|&&e| e <= resume).count() as i64;
        assert_eq!(rest, (before..500).collect::<Vec<i64>>());
    }

    #[test]
    fn paths_may_not_leave_the_files_dir() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = dir.path().join("files");
        std::fs::create_dir(&files).expect("dir");
        std::fs::write(dir.path().join("secret"), "x").expect("write");
        std::fs::write(files.join("ok.jsonl"), "{}").expect("write");
        assert!(resolve(&files, "ok.jsonl").is_ok());
        for bad in ["../secret", "/etc/passwd", "missing.jsonl", "."] {
            let e = resolve(&files, bad).expect_err(bad).to_string();
            assert!(
                e.contains("files dir") || e.contains("cannot be read"),
                "{bad}: {e}"
            );
        }
    }
}
