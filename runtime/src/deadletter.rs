//! The dead-letter store: every record or batch weir could not process, with where it
//! came from and why. Recent entries stay in memory for the API; all are appended to
//! `dead-letters.jsonl` in the data directory so nothing is lost on restart.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime;
use parking_lot::Mutex;
use serde::{Serialize, Serializer};

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
    /// The partition the record was read from (`topic/partition` for Kafka).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Position of the record in its source (record number for HTTP, the offset in its
    /// partition for Kafka).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Where in its shard the record was, for a Kinesis source: its sequence number
    /// (`seq/sub` inside a KPL aggregated record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
    /// On disk: `"reason": "..."`, or `"late": {"event_time_ms", "watermark_ms"}`.
    #[serde(flatten)]
    pub reason: Reason,
    /// The record as received (or as JSON for rows), truncated past 64 KiB.
    pub raw: String,
    pub truncated: bool,
}

impl DeadLetter {
    /// The reason as a sentence; late rows get theirs here, when read, not when refused.
    pub fn reason_text(&self) -> String {
        match &self.reason {
            Reason::Message(text) => text.to_string(),
            Reason::Late {
                event_time_ms,
                watermark_ms,
            } => format!(
                "late row for view {}: event time {} is behind the watermark {}; its window was already emitted",
                self.view.as_deref().unwrap_or("?"),
                event_time_ms.map_or_else(|| "NULL".to_string(), show_time),
                show_time(*watermark_ms)
            ),
        }
    }
}

/// Why a record was refused. A message is shared by every row of one refusal; a late
/// row keeps its times as numbers, so refusing a million late rows formats nothing.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    #[serde(rename = "reason", serialize_with = "shared_str")]
    Message(Arc<str>),
    /// A row whose event time was behind the watermark: its window was already emitted.
    Late {
        event_time_ms: Option<i64>,
        watermark_ms: i64,
    },
}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Reason::Message(text.into())
    }
}

fn shared_str<S: Serializer>(text: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text)
}

fn show_time(ms: i64) -> String {
    timestamp_ms_to_datetime(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
    )
}

/// What a caller reports; the store stamps id and time.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub source: String,
    pub view: Option<String>,
    pub partition: Option<String>,
    pub position: Option<u64>,
    /// Where in its shard the record was, when that is not a number: a Kinesis
    /// sequence number (`seq`, or `seq/sub` inside a KPL aggregated record).
    pub sequence_number: Option<String>,
    pub reason: Reason,
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
                partition: l.partition,
                position: l.position,
                sequence_number: l.sequence_number,
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
            partition: None,
            position: Some(7),
            sequence_number: None,
            reason: "bad".to_string().into(),
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
        let first: serde_json::Value =
            serde_json::from_str(disk.lines().next().expect("a line")).expect("json");
        assert_eq!(first["reason"], "bad");
    }

    #[test]
    fn a_late_row_keeps_its_times_as_numbers_and_is_described_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DeadLetterStore::open(Some(dir.path()), 10).expect("open");
        store.push_all([NewDeadLetter {
            source: "bids".into(),
            view: Some("per_minute".into()),
            partition: None,
            position: None,
            sequence_number: None,
            reason: Reason::Late {
                event_time_ms: Some(1_000),
                watermark_ms: 61_000,
            },
            raw: b"{}".to_vec(),
        }]);
        let disk = std::fs::read_to_string(dir.path().join("dead-letters.jsonl")).expect("file");
        let line: serde_json::Value = serde_json::from_str(disk.trim()).expect("json");
        assert_eq!(
            line["late"],
            serde_json::json!({"event_time_ms": 1000, "watermark_ms": 61000})
        );
        assert!(
            line.get("reason").is_none(),
            "no text is formatted on write: {line}"
        );
        assert_eq!(
            store.recent(None, None, 1)[0].reason_text(),
            "late row for view per_minute: event time 1970-01-01T00:00:01.000 is behind \
             the watermark 1970-01-01T00:01:01.000; its window was already emitted"
        );
    }
}
