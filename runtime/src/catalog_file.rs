//! The catalog on disk: every CREATE SOURCE, STREAM, MATERIALIZED VIEW and SINK in force, in
//! the order it ran. It is written (temporary file, fsync, rename) before a DDL
//! statement answers, and replayed at start, so a view created a moment before a crash
//! exists after the restart. Plugins are stored beside it (`plugins/`).

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::durable::write_atomically;
use crate::{Error, Result};

/// The format this weir writes and reads.
pub const FORMAT: u32 = 1;
const FILE: &str = "catalog.json";

/// One statement in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `source`, `stream`, `view` or `sink`.
    pub kind: String,
    pub name: String,
    pub sql: String,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    statements: Vec<Entry>,
}

/// The catalog file of a data dir (or nothing, for an in-memory engine).
pub struct CatalogFile {
    path: Option<PathBuf>,
    entries: Mutex<Vec<Entry>>,
}

impl CatalogFile {
    /// Read the catalog of `data_dir`. A file of another format is an error that
    /// changes nothing on disk.
    pub fn open(data_dir: Option<&Path>) -> Result<Self> {
        let path = data_dir.map(|d| d.join(FILE));
        let entries = match &path {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p)?;
                let format = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["format"].as_u64());
                if format != Some(u64::from(FORMAT)) {
                    return Err(Error::BadRequest(format!(
                        "{} was written by another version of weir (catalog format {}, this weir reads format {FORMAT}); \
                         run the weir that wrote it, or start with another --data-dir. Nothing was changed.",
                        p.display(),
                        format.map_or("unknown".to_string(), |f| f.to_string())
                    )));
                }
                let on_disk: OnDisk = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::BadRequest(format!("{} is damaged: {e}", p.display())))?;
                on_disk.statements
            }
            _ => Vec::new(),
        };
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// The statements to replay at start, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().clone()
    }

    /// Record a statement that just succeeded. An entry of the same name (one that could
    /// not be restored, or the same statement replayed) is replaced in place.
    pub fn record(&self, kind: &str, name: &str, sql: &str) -> std::io::Result<()> {
        let mut entries = self.entries.lock();
        let entry = Entry {
            kind: kind.into(),
            name: name.into(),
            sql: sql.trim().into(),
        };
        let before = entries.clone();
        match entries.iter_mut().find(|e| e.name == name) {
            Some(existing) if *existing == entry => return Ok(()),
            Some(existing) => *existing = entry,
            None => entries.push(entry),
        }
        self.save(&entries).inspect_err(|_| *entries = before)
    }

    /// Forget the statement that created `name`.
    pub fn forget(&self, name: &str) -> std::io::Result<()> {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|e| e.name != name);
        if entries.len() == before {
            return Ok(());
        }
        self.save(&entries)
    }

    fn save(&self, entries: &[Entry]) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&OnDisk {
            format: FORMAT,
            statements: entries.to_vec(),
        })
        .map_err(std::io::Error::other)?;
        // Synced, renamed into place, and its directory synced.
        write_atomically(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_forgets_and_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let file = CatalogFile::open(Some(dir.path())).expect("opens");
        file.record("source", "s", "CREATE SOURCE s ...")
            .expect("records");
        file.record("view", "v", " CREATE MATERIALIZED VIEW v ... ")
            .expect("records");
        file.record("view", "v", " CREATE MATERIALIZED VIEW v ... ")
            .expect("idempotent");
        file.record("view", "w", "CREATE MATERIALIZED VIEW w ...")
            .expect("records");
        file.forget("v").expect("forgets");
        let again = CatalogFile::open(Some(dir.path())).expect("reopens");
        let names: Vec<String> = again.entries().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["s", "w"]);
        assert_eq!(again.entries()[1].sql, "CREATE MATERIALIZED VIEW w ...");
    }

    #[test]
    fn another_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let text = r#"{"format": 99, "statements": [], "future": true}"#;
        std::fs::write(dir.path().join(FILE), text).expect("writes");
        let err = CatalogFile::open(Some(dir.path())).err().expect("refused");
        assert!(err.to_string().contains("catalog format 99"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).expect("reads"),
            text
        );
    }
}
