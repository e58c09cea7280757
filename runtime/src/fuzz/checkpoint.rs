//! Checkpoints read at start: a damaged manifest, or a state file damaged in a way its
//! checksum does not catch (the checksum fixed up too), makes that checkpoint damaged
//! (an error, and start goes back to an older one), never a panic, and whatever is
//! restored is valid Arrow.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;
use proptest::sample::Index;
use sha2::{Digest, Sha256};

use super::{assert_valid, config, mutate, mutations};
use crate::checkpoint::store::{CheckpointStore, read_checkpoint};
use crate::checkpoint::{Position, SourceSnapshot, ViewSnapshot};

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "0",
    "-1",
    "18446744073709551616",
    "\"format\"",
    "\"files\"",
    "\"name\"",
    "\"../x\"",
    "ARROW1",
    "\u{ff}\u{ff}\u{ff}\u{ff}",
];

fn snapshot(rows: &[(i64, String)]) -> Arc<SourceSnapshot> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("b", DataType::Binary, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.1.as_bytes()),
            )),
        ],
    )
    .expect("batch");
    Arc::new(SourceSnapshot {
        epoch: 1,
        name: "bids".into(),
        sql: "CREATE SOURCE bids (n BIGINT) WITH (connector = 'http')".into(),
        position: Position::at("event", rows.len() as u64),
        watermark: Some(1000),
        views: vec![ViewSnapshot {
            view_id: 1,
            name: "v".into(),
            sql: "CREATE MATERIALIZED VIEW v AS SELECT * FROM bids".into(),
            schema,
            state: vec![batch.clone()],
            rows: vec![(None, batch.clone()), (Some(7), batch)],
            outboxes: Vec::new(),
        }],
    })
}

/// A written checkpoint: its directory.
fn written(rows: &[(i64, String)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = CheckpointStore::open(Some(dir.path()), 2);
    store
        .write(1, Instant::now(), &[snapshot(rows)], Vec::new(), Vec::new())
        .expect("written");
    let checkpoint = std::fs::read_dir(dir.path().join("checkpoints"))
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("manifest.json").exists())
        .expect("a checkpoint directory");
    (dir, checkpoint)
}

fn rows() -> impl Strategy<Value = Vec<(i64, String)>> {
    prop::collection::vec((any::<i64>(), any::<String>()), 1..6)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_checkpoint_damaged_manifest_is_an_error_not_a_panic(
        rows in rows(),
        changes in mutations(TOKENS),
    ) {
        let (dir, checkpoint) = written(&rows);
        let manifest = checkpoint.join("manifest.json");
        let seed = std::fs::read(&manifest).expect("manifest");
        std::fs::write(&manifest, mutate(&seed, &changes)).expect("write");
        if let Ok(restored) = read_checkpoint(&checkpoint) {
            for view in restored.sources.values().flat_map(|s| s.views.values()) {
                view.state.iter().chain(view.rows.iter().map(|(_, b)| b)).for_each(assert_valid);
            }
        }
        // The store skips it (with a warning) or names another format; it never panics.
        let _ = CheckpointStore::open(Some(dir.path()), 2).restore();
    }

    #[test]
    fn fuzz_checkpoint_damaged_state_file_with_its_checksum_fixed(
        rows in rows(),
        which in any::<Index>(),
        changes in mutations(TOKENS),
    ) {
        let (_dir, checkpoint) = written(&rows);
        let manifest_path = checkpoint.join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
        let files = manifest["files"].as_array_mut().expect("files");
        let pick = which.index(files.len());
        let entry = &mut files[pick];
        let name = entry["name"].as_str().expect("name").to_string();
        let seed = std::fs::read(checkpoint.join(&name)).expect("state file");
        let damaged = mutate(&seed, &changes);
        entry["bytes"] = damaged.len().into();
        entry["sha256"] = Sha256::digest(&damaged)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into();
        std::fs::write(checkpoint.join(&name), &damaged).expect("write");
        std::fs::write(&manifest_path, manifest.to_string()).expect("write");
        match read_checkpoint(&checkpoint) {
            Ok(restored) => {
                for view in restored.sources.values().flat_map(|s| s.views.values()) {
                    view.state.iter().chain(view.rows.iter().map(|(_, b)| b)).for_each(assert_valid);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if changes.is_empty() {
            prop_assert!(read_checkpoint(&checkpoint).is_ok(), "an intact checkpoint reads");
        }
    }
}

/// Found by the target above: a state file whose footer claims a block of absurd length
/// (checksum fixed) made arrow-ipc's FileReader allocate it, and the process abort.
#[test]
fn a_footer_claiming_an_absurd_block_is_damage_not_an_abort() {
    use datafusion::arrow::ipc::root_as_footer;
    let (_dir, checkpoint) = written(&[(1, "a".into())]);
    let manifest_path = checkpoint.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    let entry = &mut manifest["files"][0];
    let name = entry["name"].as_str().expect("name").to_string();
    let mut bytes = std::fs::read(checkpoint.join(&name)).expect("state file");
    // The first record batch block, as the footer stores it (offset, metadata length,
    // padding, body length), found in the file and given a body of 2^62 bytes.
    let footer_len = i32::from_le_bytes(
        bytes[bytes.len() - 10..bytes.len() - 6]
            .try_into()
            .expect("4"),
    ) as usize;
    let footer_start = bytes.len() - 10 - footer_len;
    let footer = root_as_footer(&bytes[footer_start..bytes.len() - 10]).expect("footer");
    let b = footer.recordBatches().expect("blocks").get(0);
    let mut pattern = b.offset().to_le_bytes().to_vec();
    pattern.extend(b.metaDataLength().to_le_bytes());
    pattern.extend([0; 4]);
    pattern.extend(b.bodyLength().to_le_bytes());
    let at = bytes
        .windows(pattern.len())
        .rposition(|w| w == pattern)
        .expect("the block in the footer");
    bytes[at + 16..at + 24].copy_from_slice(&(1i64 << 62).to_le_bytes());
    entry["bytes"] = bytes.len().into();
    entry["sha256"] = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into();
    std::fs::write(checkpoint.join(&name), &bytes).expect("write");
    std::fs::write(&manifest_path, manifest.to_string()).expect("write");
    match read_checkpoint(&checkpoint) {
        Ok(_) => panic!("a block of 2^62 bytes was read"),
        Err(e) => assert!(
            e.to_string().contains("a block lies outside the file"),
            "{e}"
        ),
    }
}
