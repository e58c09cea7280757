//! Spilled epochs: once a sink holds more than its `max_pending_rows` in memory (its
//! destination is slow or down), each further epoch it seals is written once to an
//! Arrow file of its own under the data dir (`sinks/<name>.spill/`) and read back when
//! the sink comes to deliver it. Checkpoints name the file instead of holding the rows,
//! so a long backlog costs disk, not memory, and is not written again at every
//! checkpoint.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::feed::Change;
use crate::checkpoint::state_file;

/// An epoch's changes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spilled {
    pub file: PathBuf,
    /// Per batch of the file: what it is (see [`Change::code_batches`]).
    pub codes: Vec<u8>,
    pub rows: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// Where a sink spills, and how much it may.
#[derive(Debug, Clone)]
pub struct SpillLimit {
    pub dir: PathBuf,
    /// Bytes on disk past which the sink gives up (`None`: no end but the disk's).
    pub max_bytes: Option<u64>,
}

/// Write `changes` of `epoch` as one synced file in `dir`, made visible by a rename: a
/// crash leaves no half file under the name a checkpoint may hold.
pub(crate) fn write(
    dir: &Path,
    lineage: &str,
    epoch: u64,
    changes: &[Change],
) -> crate::Result<Spilled> {
    let Some(schema) = changes.first().map(|c| c.rows.schema()) else {
        return Err(crate::Error::Internal(
            "an empty epoch is not spilled".into(),
        ));
    };
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!("{lineage}-{epoch:020}.arrow"));
    let tmp = file.with_extension("arrow.tmp");
    let (codes, batches): (Vec<u8>, Vec<&RecordBatch>) = Change::code_batches(changes).unzip();
    let (bytes, sha256) = state_file::write(&tmp, &schema as &SchemaRef, batches.into_iter())?;
    std::fs::rename(&tmp, &file)?;
    crate::durable::sync_dir(dir)?;
    Ok(Spilled {
        file,
        codes,
        rows: changes.iter().map(Change::len).sum(),
        bytes,
        sha256,
    })
}

/// The changes of a spilled epoch, checked against the size and checksum it was
/// written with.
pub(crate) fn read(spilled: &Spilled) -> crate::Result<Vec<Change>> {
    let name = spilled.file.display().to_string();
    let bytes = std::fs::read(&spilled.file)?;
    if bytes.len() as u64 != spilled.bytes || state_file::sha256_hex(&bytes) != spilled.sha256 {
        return Err(crate::Error::Internal(format!(
            "{name} does not match its checksum ({} bytes, {} expected)",
            bytes.len(),
            spilled.bytes
        )));
    }
    let batches = state_file::read(&name, bytes)?;
    Change::from_coded(spilled.codes.iter().copied().zip(batches))
        .map_err(|e| crate::Error::Internal(format!("{name}: {e}")))
}

/// Remove the files in `dir` that `keep` does not name (epochs spilled before a crash
/// that no checkpoint took, or delivered ones whose removal a crash cut off).
pub(crate) fn remove_others(dir: &Path, keep: &[&Path]) {
    // By name: `keep` came from a checkpoint, which may spell the data dir otherwise.
    let kept: Vec<_> = keep.iter().filter_map(|p| p.file_name()).collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if !kept.contains(&entry.file_name().as_os_str())
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove a spilled epoch");
        }
    }
}

pub(crate) fn remove(spilled: &Spilled) {
    if let Err(e) = std::fs::remove_file(&spilled.file)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %spilled.file.display(), error = %e, "cannot remove a spilled epoch");
    }
}
