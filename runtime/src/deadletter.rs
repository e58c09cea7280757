//! The dead-letter store: every record or batch weir could not process, with where it
//! came from and why. Recent entries stay in memory for the API; all are appended to
//! `dead-letters.jsonl` in the data directory so nothing is lost on restart.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Raw records are kept up to this many bytes.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

/// One record or batch that could not be processed.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Sequence number in this store.
    pub id: u64,
    /// Milliseconds since the Unix epoch when it was dead-lettered.
    pub time_ms: u64,
    pub source: String,
    /// The view that refused it (late rows, failed operators), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Position of the record in its source (record number for HTTP, event id for Nexmark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    pub reason: String,
    /// The record as received (or as JSON for rows), truncated past 64 KiB.
    pub raw: String,
    pub truncated: bool,
}

/// What a caller reports; the store stamps id and time.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub source: String,
    pub view: Option<String>,
    pub position: Option<u64>,
    pub reason: String,
    pub raw: Vec<u8>,
}

/// Bounded in memory, complete on disk.
pub struct DeadLetterStore {
    recent: Mutex<VecDeque<DeadLetter>>,
    keep: usize,
    next_id: AtomicU64,
    file: Mutex<Option<BufWriter<File>>>,
}

impl DeadLetterStore {
    /// A store keeping `keep` entries in memory and appending to `dir/dead-letters.jsonl`.
    pub fn open(dir: Option<&Path>, keep: usize) -> std::io::Result<Self> {
        let file = match dir {
            Some(dir) => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("dead-letters.jsonl"))?,
            )),
            None => None,
        };
        Ok(Self {
            recent: Mutex::new(VecDeque::new()),
            keep,
            next_id: AtomicU64::new(0),
            file: Mutex::new(file),
        })
    }

    /// Record dead letters; returns how many were stored.
    pub fn push_all(&self, letters: impl IntoIterator<Item = NewDeadLetter>) -> usize {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut file = self.file.lock();
        let mut recent = self.recent.lock();
        let mut n = 0;
        for l in letters {
            let truncated = l.raw.len() > MAX_RAW_BYTES;
            let raw =
                String::from_utf8_lossy(&l.raw[..l.raw.len().min(MAX_RAW_BYTES)]).into_owned();
            let letter = DeadLetter {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                time_ms,
                source: l.source,
                view: l.view,
                position: l.position,
                reason: l.reason,
                raw,
                truncated,
            };
            if let Some(f) = file.as_mut()
                && let Ok(line) = serde_json::to_string(&letter)
                && let Err(e) = writeln!(f, "{line}")
            {
                tracing::error!(error = %e, "cannot append to dead-letters.jsonl");
            }
            recent.push_back(letter);
            if recent.len() > self.keep {
                recent.pop_front();
            }
            n += 1;
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = f.flush()
        {
            tracing::error!(error = %e, "cannot flush dead-letters.jsonl");
        }
        n
    }

    /// Total dead letters since start.
    pub fn total(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// The newest `limit` entries (oldest first), optionally of one source or view.
    pub fn recent(
        &self,
        source: Option<&str>,
        view: Option<&str>,
        limit: usize,
    ) -> Vec<DeadLetter> {
        let recent = self.recent.lock();
        let mut out: Vec<DeadLetter> = recent
            .iter()
            .rev()
            .filter(|l| {
                source.is_none_or(|s| l.source == s)
                    && view.is_none_or(|v| l.view.as_deref() == Some(v))
            })
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(source: &str, raw: Vec<u8>) -> NewDeadLetter {
        NewDeadLetter {
            source: source.into(),
            view: None,
            position: Some(7),
            reason: "bad".into(),
            raw,
        }
    }

    #[test]
    fn keeps_recent_in_memory_and_everything_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DeadLetterStore::open(Some(dir.path()), 2).expect("open");
        store.push_all([
            letter("a", b"1".to_vec()),
            letter("b", b"2".to_vec()),
            letter("a", vec![b'x'; MAX_RAW_BYTES + 10]),
        ]);
        assert_eq!(store.total(), 3);
        let recent = store.recent(None, None, 10);
        assert_eq!(recent.iter().map(|l| l.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(recent[1].truncated && recent[1].raw.len() == MAX_RAW_BYTES);
        assert_eq!(store.recent(Some("a"), None, 10).len(), 1);
        let disk = std::fs::read_to_string(dir.path().join("dead-letters.jsonl")).expect("file");
        assert_eq!(disk.lines().count(), 3);
    }
}
