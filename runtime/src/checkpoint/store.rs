//! Checkpoints on disk: `<data-dir>/checkpoints/<epoch>/`, one directory per checkpoint
//! with Arrow IPC files (each view's operator state and rows) and `manifest.json`, which
//! names every file with its size and SHA-256, every source's position and watermark,
//! and the catalog and plugin versions in force.
//!
//! A checkpoint is written into a temporary directory (files fsynced, manifest last),
//! which is renamed into place and its parent fsynced: a crash leaves a whole
//! checkpoint or none. At start the newest checkpoint whose files match their checksums
//! is restored; a damaged one is skipped with a warning. The newest `keep` are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Position, SourceSnapshot, state_file};
use crate::catalog_file::Entry;
use crate::sink::feed::{Change, Epoch, Outbox};
use crate::sink::spill::Spilled;
use crate::{Error, Result};

/// The manifest format this weir writes. Format 2 added `more_state_files` (the state
/// of a join's further inputs), format 3 a sink's `spilled` epochs (which a weir that
/// reads format 2 would lose); older checkpoints read as format 3 without them.
pub const FORMAT: u32 = 3;
/// The oldest format this weir reads.
const OLDEST_FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    epoch: u64,
    created_ms: i64,
    duration_ms: u64,
    /// The DDL in force when the checkpoint was taken.
    catalog: Vec<Entry>,
    /// Plugin name and the version in use.
    plugins: Vec<(String, u32)>,
    sources: Vec<SourceEntry>,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SourceEntry {
    name: String,
    sql: String,
    position: Position,
    watermark_ms: Option<i64>,
    views: Vec<ViewEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ViewEntry {
    name: String,
    sql: String,
    state_file: Option<String>,
    /// Further state files: state batches of another schema than the one before (the
    /// inputs of a join of several sources), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more_state_files: Vec<String>,
    rows_file: Option<String>,
    /// Per batch of `rows_file`: the key an upsert replaces it by.
    row_keys: Vec<Option<i64>>,
    /// The changes each sink of the view has not delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    outboxes: Vec<OutboxEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutboxEntry {
    sink: String,
    sql: String,
    #[serde(default)]
    lineage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    file: Option<String>,
    /// Per batch of `file`: its epoch and code (`Change::code_batches`).
    batches: Vec<(u64, u8)>,
    /// Epochs spilled to files of their own, outside the checkpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spilled: Vec<SpilledEntry>,
}

/// A spilled epoch as the manifest names it: its file relative to the data dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpilledEntry {
    epoch: u64,
    file: String,
    codes: Vec<u8>,
    rows: usize,
    bytes: u64,
    sha256: String,
}

impl OutboxEntry {
    /// Write a sink's undelivered changes as `name` (no file when there are none);
    /// spilled epochs are named by their files' places under `data_dir`.
    fn write(
        (dir, data_dir): (&Path, &Path),
        name: &str,
        schema: &SchemaRef,
        outbox: &Outbox,
        files: &mut Vec<FileEntry>,
    ) -> Result<Self> {
        let batches = outbox.epochs.iter().flat_map(|(e, changes)| {
            Change::code_batches(changes).map(move |(code, rows)| (*e, code, rows))
        });
        let spilled = outbox
            .spilled
            .iter()
            .map(|(epoch, f)| SpilledEntry {
                epoch: *epoch,
                file: f
                    .file
                    .strip_prefix(data_dir)
                    .unwrap_or(&f.file)
                    .to_string_lossy()
                    .into_owned(),
                codes: f.codes.clone(),
                rows: f.rows,
                bytes: f.bytes,
                sha256: f.sha256.clone(),
            })
            .collect();
        let file = if outbox.epochs.is_empty() {
            None
        } else {
            let rows = batches.clone().map(|(_, _, rows)| rows);
            Some(write_ipc(dir, name, schema, rows, files)?)
        };
        Ok(Self {
            sink: outbox.sink.clone(),
            sql: outbox.sql.clone(),
            lineage: outbox.lineage.clone(),
            failed: outbox.failed.clone(),
            file,
            batches: batches.map(|(e, code, _)| (e, code)).collect(),
            spilled,
        })
    }

    /// The sink's changes again, by epoch, from the batches of its file.
    fn read(self, batches: Vec<RecordBatch>, data_dir: &Path) -> Result<Outbox> {
        if batches.len() != self.batches.len() {
            return Err(Error::Internal(format!(
                "sink {} has {} batches and {} epochs",
                self.sink,
                batches.len(),
                self.batches.len()
            )));
        }
        let mut epochs: Vec<Epoch> = Vec::new();
        let mut coded = self.batches.into_iter().zip(batches).peekable();
        while let Some(((epoch, _), _)) = coded.peek() {
            let epoch = *epoch;
            let mut one = Vec::new();
            while let Some(((_, code), rows)) = coded.next_if(|((e, _), _)| *e == epoch) {
                one.push((code, rows));
            }
            let changes = Change::from_coded(one)
                .map_err(|e| Error::Internal(format!("sink {}: {e}", self.sink)))?;
            epochs.push((epoch, changes));
        }
        let spilled = self
            .spilled
            .into_iter()
            .map(|f| {
                // Only a place under the data dir: the file is removed once delivered.
                let place = Path::new(&f.file);
                if place
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(Error::Internal(format!(
                        "sink {} names a spilled file outside the data dir: {}",
                        self.sink, f.file
                    )));
                }
                let spilled = Spilled {
                    file: data_dir.join(place),
                    codes: f.codes,
                    rows: f.rows,
                    bytes: f.bytes,
                    sha256: f.sha256,
                };
                Ok((f.epoch, spilled))
            })
            .collect::<Result<_>>()?;
        Ok(Outbox {
            sink: self.sink,
            sql: self.sql,
            lineage: self.lineage,
            epochs,
            spilled,
            failed: self.failed,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    sha256: String,
}

/// What the API shows of a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub epoch: u64,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub sources: Vec<SourcePositionInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourcePositionInfo {
    pub name: String,
    pub position: Position,
    pub watermark_ms: Option<i64>,
}

/// A source and its views as restored from a checkpoint.
#[derive(Debug, Clone)]
pub struct RestoredSource {
    pub sql: String,
    pub position: Position,
    pub watermark: Option<i64>,
    pub views: HashMap<String, RestoredView>,
}

#[derive(Debug, Clone)]
pub struct RestoredView {
    pub sql: String,
    pub state: Vec<RecordBatch>,
    pub rows: Vec<(Option<i64>, RecordBatch)>,
    /// Per sink: the changes it had not delivered, by epoch.
    pub outboxes: Vec<Outbox>,
}

/// The newest valid checkpoint, read at start.
#[derive(Debug, Clone)]
pub struct Restored {
    pub epoch: u64,
    pub sources: HashMap<String, RestoredSource>,
}

/// The checkpoints of a data dir.
pub struct CheckpointStore {
    dir: Option<PathBuf>,
    keep: usize,
    /// Problems met while looking for a checkpoint to restore (damaged ones skipped).
    warnings: Mutex<Vec<String>>,
}

impl CheckpointStore {
    /// The store of `data_dir` (none: checkpoints are off).
    pub fn open(data_dir: Option<&Path>, keep: usize) -> Self {
        Self {
            dir: data_dir.map(|d| d.join("checkpoints")),
            keep: keep.max(1),
            warnings: Mutex::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// Warnings of the last restore, for the log and the API.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// Checkpoint directories, newest first.
    fn epochs(&self) -> Vec<(u64, PathBuf)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                Some((name.parse::<u64>().ok()?, e.path()))
            })
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.0));
        found
    }

    /// The epoch the next checkpoint gets.
    pub fn next_epoch(&self) -> u64 {
        self.epochs().first().map_or(1, |(e, _)| e + 1)
    }

    /// Read the newest checkpoint whose files are whole; damaged ones are skipped with
    /// a warning. A checkpoint of another format is an error that changes nothing.
    pub fn restore(&self) -> Result<Option<Restored>> {
        let mut warnings = Vec::new();
        let mut restored = None;
        for (epoch, path) in self.epochs() {
            match read_checkpoint(&path) {
                Ok(r) => {
                    restored = Some(r);
                    break;
                }
                Err(Error::BadRequest(e)) => return Err(Error::BadRequest(e)),
                Err(e) => {
                    let w = format!(
                        "checkpoint {epoch} ({}) is damaged and was skipped: {e}",
                        path.display()
                    );
                    tracing::warn!("{w}");
                    warnings.push(w);
                }
            }
        }
        *self.warnings.lock() = warnings;
        Ok(restored)
    }

    /// The kept checkpoints whose manifests read, newest first: the newest `keep`
    /// directories, as `prune` keeps them. Between a new checkpoint's rename and the
    /// prune that follows, one more is on disk; it is on its way out.
    pub fn list(&self) -> Vec<CheckpointInfo> {
        self.epochs()
            .into_iter()
            .take(self.keep)
            .filter_map(|(_, path)| read_manifest(&path).ok())
            .map(|m| info(&m))
            .collect()
    }

    /// Every checkpoint on disk whose manifest reads, newest first: one a prune could
    /// not remove too, since a restore may still fall back to it.
    pub fn on_disk(&self) -> Vec<CheckpointInfo> {
        self.epochs()
            .into_iter()
            .filter_map(|(_, path)| read_manifest(&path).ok())
            .map(|m| info(&m))
            .collect()
    }

    /// Write a checkpoint of `sources` and prune the old ones.
    pub fn write(
        &self,
        epoch: u64,
        started: Instant,
        sources: &[Arc<SourceSnapshot>],
        catalog: Vec<Entry>,
        plugins: Vec<(String, u32)>,
    ) -> Result<CheckpointInfo> {
        let Some(dir) = &self.dir else {
            return Err(Error::Internal("checkpoints need a data dir".into()));
        };
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{epoch:020}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        let mut files = Vec::new();
        let mut entries = Vec::with_capacity(sources.len());
        for (s, source) in sources.iter().enumerate() {
            let mut views = Vec::with_capacity(source.views.len());
            for (v, view) in source.views.iter().enumerate() {
                let mut state_files = Vec::new();
                for (part, batches) in view
                    .state
                    .chunk_by(|a, b| a.schema() == b.schema())
                    .enumerate()
                {
                    let suffix = if part == 0 {
                        String::new()
                    } else {
                        format!("-{part}")
                    };
                    state_files.push(write_ipc(
                        &tmp,
                        &format!("s{s}-v{v}-state{suffix}.arrow"),
                        &batches[0].schema(),
                        batches.iter(),
                        &mut files,
                    )?);
                }
                let mut state_files = state_files.into_iter();
                let state_file = state_files.next();
                let rows_file = if view.rows.is_empty() {
                    None
                } else {
                    Some(write_ipc(
                        &tmp,
                        &format!("s{s}-v{v}-rows.arrow"),
                        &view.schema,
                        view.rows.iter().map(|(_, b)| b),
                        &mut files,
                    )?)
                };
                let mut outboxes = Vec::with_capacity(view.outboxes.len());
                for (o, outbox) in view.outboxes.iter().enumerate() {
                    let name = format!("s{s}-v{v}-sink{o}.arrow");
                    outboxes.push(OutboxEntry::write(
                        (&tmp, dir.parent().unwrap_or(dir)),
                        &name,
                        &view.schema,
                        outbox,
                        &mut files,
                    )?);
                }
                views.push(ViewEntry {
                    name: view.name.clone(),
                    sql: view.sql.clone(),
                    state_file,
                    more_state_files: state_files.collect(),
                    rows_file,
                    row_keys: view.rows.iter().map(|(k, _)| *k).collect(),
                    outboxes,
                });
            }
            entries.push(SourceEntry {
                name: source.name.clone(),
                sql: source.sql.clone(),
                position: source.position.clone(),
                watermark_ms: source.watermark,
                views,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            epoch,
            created_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            duration_ms: started.elapsed().as_millis() as u64,
            catalog,
            plugins,
            sources: entries,
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Internal(format!("cannot render the manifest: {e}")))?;
        write_synced(&tmp.join(MANIFEST), &json)?;
        crate::durable::sync_dir(&tmp)?;
        let done = dir.join(format!("{epoch:020}"));
        std::fs::rename(&tmp, &done)?;
        crate::durable::sync_dir(dir)?;
        self.prune();
        Ok(info(&manifest))
    }

    /// Keep the newest `keep` checkpoints; remove older ones and leftover temporaries.
    fn prune(&self) {
        let Some(dir) = &self.dir else { return };
        for (_, path) in self.epochs().into_iter().skip(self.keep) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old checkpoint");
            }
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn info(m: &Manifest) -> CheckpointInfo {
    CheckpointInfo {
        epoch: m.epoch,
        created_ms: m.created_ms,
        duration_ms: m.duration_ms,
        bytes: m.files.iter().map(|f| f.bytes).sum(),
        sources: m
            .sources
            .iter()
            .map(|s| SourcePositionInfo {
                name: s.name.clone(),
                position: s.position.clone(),
                watermark_ms: s.watermark_ms,
            })
            .collect(),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Write batches as a state file and note its size and checksum; returns its name.
fn write_ipc<'a>(
    dir: &Path,
    name: &str,
    schema: &SchemaRef,
    batches: impl Iterator<Item = &'a RecordBatch>,
    files: &mut Vec<FileEntry>,
) -> Result<String> {
    let (bytes, sha256) = state_file::write(&dir.join(name), schema, batches)?;
    files.push(FileEntry {
        name: name.to_string(),
        bytes,
        sha256,
    });
    Ok(name.to_string())
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(dir.join(MANIFEST))?;
    let format = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| Error::Internal(format!("manifest.json does not parse: {e}")))?["format"]
        .as_u64();
    if !format.is_some_and(|f| (u64::from(OLDEST_FORMAT)..=u64::from(FORMAT)).contains(&f)) {
        return Err(Error::BadRequest(format!(
            "checkpoint {} was written by another version of weir (format {}, this weir reads formats {OLDEST_FORMAT} to {FORMAT}); \
             run the weir that wrote it, or start with another --data-dir. Nothing was changed.",
            dir.display(),
            format.map_or("unknown".to_string(), |f| f.to_string())
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("manifest.json does not parse: {e}")))
}

/// Read and verify one checkpoint: every file must have its recorded size and checksum.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Restored> {
    let manifest = read_manifest(dir)?;
    // <data dir>/checkpoints/<epoch>
    let data_dir = dir.parent().and_then(Path::parent).unwrap_or(dir);
    let mut verified: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    for f in &manifest.files {
        if f.name.contains(['/', '\\']) || f.name.starts_with('.') {
            return Err(Error::Internal(format!(
                "the manifest names a file outside it: {}",
                f.name
            )));
        }
        let bytes = std::fs::read(dir.join(&f.name))?;
        if bytes.len() as u64 != f.bytes || state_file::sha256_hex(&bytes) != f.sha256 {
            return Err(Error::Internal(format!(
                "{} does not match its checksum ({} bytes, {} expected)",
                f.name,
                bytes.len(),
                f.bytes
            )));
        }
        let batches = state_file::read(&f.name, bytes)?;
        verified.insert(f.name.clone(), batches);
    }
    let mut take = |name: &Option<String>| -> Result<Vec<RecordBatch>> {
        match name {
            None => Ok(Vec::new()),
            Some(n) => verified
                .remove(n)
                .ok_or_else(|| Error::Internal(format!("{n} is not in the manifest's file list"))),
        }
    };
    let mut sources = HashMap::new();
    for s in manifest.sources {
        let mut views = HashMap::new();
        for v in s.views {
            let rows = take(&v.rows_file)?;
            if rows.len() != v.row_keys.len() {
                return Err(Error::Internal(format!(
                    "view {} has {} row batches and {} keys",
                    v.name,
                    rows.len(),
                    v.row_keys.len()
                )));
            }
            let mut state = take(&v.state_file)?;
            for file in &v.more_state_files {
                state.extend(take(&Some(file.clone()))?);
            }
            let mut outboxes = Vec::with_capacity(v.outboxes.len());
            for o in v.outboxes {
                let batches = take(&o.file)?;
                outboxes.push(o.read(batches, data_dir)?);
            }
            views.insert(
                v.name,
                RestoredView {
                    sql: v.sql,
                    state,
                    rows: v.row_keys.into_iter().zip(rows).collect(),
                    outboxes,
                },
            );
        }
        sources.insert(
            s.name,
            RestoredSource {
                sql: s.sql,
                position: s.position,
                watermark: s.watermark_ms,
                views,
            },
        );
    }
    Ok(Restored {
        epoch: manifest.epoch,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::checkpoint::ViewSnapshot;
    use crate::sink::feed::ChangeKind;

    fn snapshot(n: i64) -> Arc<SourceSnapshot> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![n, n + 1]))],
        )
        .expect("batch");
        Arc::new(SourceSnapshot {
            epoch: 1,
            name: "bids".into(),
            sql: "CREATE SOURCE bids ...".into(),
            position: Position::at("event", n as u64),
            watermark: Some(n * 1000),
            views: vec![ViewSnapshot {
                view_id: 1,
                name: "v".into(),
                sql: "CREATE MATERIALIZED VIEW v ...".into(),
                schema: schema.clone(),
                state: vec![batch.clone()],
                rows: vec![(None, batch.clone()), (Some(7), batch.clone())],
                outboxes: vec![Outbox {
                    sink: "k".into(),
                    sql: "CREATE SINK k ...".into(),
                    lineage: "0123".into(),
                    spilled: Vec::new(),
                    failed: Some("gave up".into()),
                    epochs: vec![
                        (4, vec![Change::new(batch.clone(), ChangeKind::Snapshot)]),
                        (
                            5,
                            vec![
                                Change {
                                    rows: batch.clone(),
                                    kind: ChangeKind::Update,
                                    replaced: Some(batch.slice(1, 1)),
                                },
                                Change::new(batch, ChangeKind::Update),
                            ],
                        ),
                    ],
                }],
            }],
        })
    }

    fn write(store: &CheckpointStore, n: i64) -> CheckpointInfo {
        store
            .write(
                store.next_epoch(),
                Instant::now(),
                &[snapshot(n)],
                Vec::new(),
                Vec::new(),
            )
            .expect("written")
    }

    #[test]
    fn the_newest_whole_checkpoint_is_restored_and_old_ones_pruned() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = CheckpointStore::open(Some(dir.path()), 2);
        assert!(store.restore().expect("reads").is_none());
        for n in 1..=4 {
            assert_eq!(write(&store, n).epoch, n as u64);
        }
        let kept: Vec<u64> = store.list().iter().map(|c| c.epoch).collect();
        assert_eq!(kept, vec![4, 3], "only the newest two are kept");
        let r = store.restore().expect("reads").expect("one");
        assert_eq!(r.epoch, 4);
        let bids = &r.sources["bids"];
        assert_eq!(bids.position.offset("event"), Some(4));
        assert_eq!(bids.watermark, Some(4000));
        let v = &bids.views["v"];
        assert_eq!(
            v.rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![None, Some(7)]
        );
        assert_eq!(v.state[0].num_rows(), 2);
        // A sink's undelivered changes come back by epoch, with their kind and the
        // rows they replace.
        let Outbox {
            sink,
            sql,
            lineage,
            epochs,
            failed,
            ..
        } = &v.outboxes[0];
        assert_eq!((sink.as_str(), sql.as_str()), ("k", "CREATE SINK k ..."));
        assert_eq!(
            (lineage.as_str(), failed.as_deref()),
            ("0123", Some("gave up"))
        );
        assert_eq!(
            epochs
                .iter()
                .flat_map(|(e, c)| c.iter().map(move |c| (
                    *e,
                    c.kind,
                    c.rows.num_rows(),
                    c.replaced.as_ref().map(RecordBatch::num_rows)
                )))
                .collect::<Vec<_>>(),
            [
                (4, ChangeKind::Snapshot, 2, None),
                (5, ChangeKind::Update, 2, Some(1)),
                (5, ChangeKind::Update, 2, None)
            ]
        );
        // A checkpoint just renamed into place, before its prune: the list still shows
        // the newest two, not the one about to go.
        let wider = CheckpointStore::open(Some(dir.path()), 3);
        write(&wider, 5);
        assert_eq!(
            std::fs::read_dir(dir.path().join("checkpoints"))
                .expect("dir")
                .count(),
            3
        );
        let listed: Vec<u64> = store.list().iter().map(|c| c.epoch).collect();
        assert_eq!(listed, vec![5, 4], "the list shows the kept ones only");
        let on_disk: Vec<u64> = store.on_disk().iter().map(|c| c.epoch).collect();
        assert_eq!(on_disk, vec![5, 4, 3]);
        assert!(store.warnings().is_empty());
    }

    #[test]
    fn a_spilled_epoch_is_named_by_its_place_in_the_data_dir() {
        let first = tempfile::tempdir().expect("tmp");
        let spilled = Spilled {
            file: first.path().join("sinks").join("k.spill").join("e6.arrow"),
            codes: vec![1, crate::sink::feed::REPLACED],
            rows: 3,
            bytes: 1234,
            sha256: "ab".repeat(32),
        };
        let mut s = (*snapshot(1)).clone();
        s.views[0].outboxes[0].spilled = vec![(6, spilled.clone())];
        let store = CheckpointStore::open(Some(first.path()), 2);
        store
            .write(1, Instant::now(), &[Arc::new(s)], Vec::new(), Vec::new())
            .expect("written");
        let manifest = std::fs::read_to_string(
            first
                .path()
                .join("checkpoints")
                .join(format!("{:020}", 1))
                .join(MANIFEST),
        )
        .expect("manifest");
        assert!(
            manifest.contains("\"sinks/k.spill/e6.arrow\""),
            "{manifest}"
        );
        // A data dir moved elsewhere finds its spilled epochs where it now is.
        let moved = tempfile::tempdir().expect("tmp");
        std::fs::remove_dir(moved.path()).expect("rm");
        std::fs::rename(first.path(), moved.path()).expect("move");
        let r = CheckpointStore::open(Some(moved.path()), 2)
            .restore()
            .expect("reads")
            .expect("one");
        let outbox = &r.sources["bids"].views["v"].outboxes[0];
        let expected = Spilled {
            file: moved.path().join("sinks").join("k.spill").join("e6.arrow"),
            ..spilled
        };
        assert_eq!(outbox.spilled, [(6, expected)]);
        assert_eq!(outbox.epochs.len(), 2, "and the epochs held in memory");
        // A manifest naming a file outside the data dir is damaged.
        let manifest = moved
            .path()
            .join("checkpoints")
            .join(format!("{:020}", 1))
            .join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        std::fs::write(
            &manifest,
            text.replace("sinks/k.spill/e6.arrow", "../e6.arrow"),
        )
        .expect("write");
        let store = CheckpointStore::open(Some(moved.path()), 2);
        assert!(store.restore().expect("reads").is_none());
        assert!(store.warnings()[0].contains("outside the data dir"));
    }

    #[test]
    fn state_of_several_schemas_is_kept_in_order_with_its_metadata() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = CheckpointStore::open(Some(dir.path()), 2);
        let mut s = (*snapshot(1)).clone();
        let first = s.views[0].state[0].clone();
        // Two inputs of one schema, told apart by their metadata, then another schema.
        let tagged = |input: &str| {
            let schema = Arc::new(
                first
                    .schema()
                    .as_ref()
                    .clone()
                    .with_metadata(HashMap::from([("input".to_string(), input.to_string())])),
            );
            first.clone().with_schema(schema).expect("same fields")
        };
        let other = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let other = RecordBatch::new_empty(other);
        s.views[0].state = vec![tagged("0"), tagged("0"), tagged("1"), other.clone()];
        store
            .write(1, Instant::now(), &[Arc::new(s)], Vec::new(), Vec::new())
            .expect("written");
        let r = store.restore().expect("reads").expect("one");
        let state = &r.sources["bids"].views["v"].state;
        let inputs: Vec<_> = state
            .iter()
            .map(|b| b.schema().metadata().get("input").cloned())
            .collect();
        assert_eq!(
            inputs,
            vec![Some("0".into()), Some("0".into()), Some("1".into()), None]
        );
        assert_eq!(state[3].schema(), other.schema());
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = CheckpointStore::open(Some(dir.path()), 3);
        write(&store, 1);
        write(&store, 2);
        let newest = dir.path().join("checkpoints").join(format!("{:020}", 2));
        let state = newest.join("s0-v0-state.arrow");
        let mut bytes = std::fs::read(&state).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&state, bytes).expect("corrupt");
        let r = store.restore().expect("reads").expect("one");
        assert_eq!(r.epoch, 1);
        let w = store.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("checksum"), "{w:?}");
        // A truncated manifest is damage too.
        std::fs::write(newest.join(MANIFEST), b"{\"format\": 1, \"epo").expect("truncate");
        assert_eq!(store.restore().expect("reads").expect("one").epoch, 1);
    }

    #[test]
    fn a_checkpoint_of_another_format_stops_the_restore_untouched() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = CheckpointStore::open(Some(dir.path()), 3);
        write(&store, 1);
        let manifest = dir
            .path()
            .join("checkpoints")
            .join(format!("{:020}", 1))
            .join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).expect("read");
        // Format 1 (before the state of joins' further inputs) is still read.
        let first = text.replacen("\"format\": 3", "\"format\": 1", 1);
        assert_ne!(first, text);
        std::fs::write(&manifest, &first).expect("write");
        assert_eq!(
            store.restore().expect("reads format 1").expect("one").epoch,
            1
        );
        let other = text.replacen("\"format\": 3", "\"format\": 99", 1);
        std::fs::write(&manifest, &other).expect("write");
        let e = store.restore().expect_err("refused");
        assert!(e.to_string().contains("another version"), "{e}");
        assert_eq!(std::fs::read_to_string(&manifest).expect("read"), other);
    }
}
