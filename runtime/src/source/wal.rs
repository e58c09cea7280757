//! The write-ahead log of an HTTP source: every accepted request body, appended and
//! fsynced before the request answers 200, and replayed after a crash from the
//! position of the checkpoint that was restored.
//!
//! Files: `<data-dir>/wal/<source>/<first offset>.wal`, segments of up to
//! [`SEGMENT_BYTES`]. An offset is a byte position over all segments, so it only grows;
//! the position after an entry is what checkpoints record. Each entry is
//! `[payload length u32][crc32 u32][payload]`, the payload being the records accepted
//! and dead-lettered (u32 each), the idempotency key (u16 length, bytes) and the body.
//! A torn last entry (a crash mid-write) fails its checksum and is cut off at open.
//!
//! fsync is batched: a request waits until its entry is synced; one fsync covers every
//! entry written before it, so concurrent requests share it (group commit).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// A segment is closed once it grows past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Idempotency keys remembered (the oldest are forgotten first).
pub const MAX_KEYS: usize = 1_000_000;
const HEADER: usize = 8;

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub accepted: u32,
    pub dead_lettered: u32,
    pub key: Option<String>,
    pub body: Vec<u8>,
    /// Offset after this entry.
    pub end: u64,
}

struct Writer {
    file: File,
    /// Offset after the last entry.
    end: u64,
    /// First offset of the open segment.
    segment_start: u64,
}

/// The log of one source.
pub struct Wal {
    dir: PathBuf,
    /// Names this log among the logs a source of the same name ever had, so a position
    /// from a checkpoint is only used on the log it was taken from.
    id: String,
    /// Set when an fsync failed: nothing more is accepted (what was written may not be
    /// on disk, and the system may have dropped it).
    broken: Mutex<Option<String>>,
    writer: Mutex<Writer>,
    synced: Mutex<u64>,
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    /// Per key: records accepted and dead-lettered, and the offset after its entry.
    reports: HashMap<String, (u32, u32, u64)>,
    order: VecDeque<String>,
}

impl Keys {
    fn insert(&mut self, key: String, report: (u32, u32, u64)) {
        if self.reports.insert(key.clone(), report).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.reports.remove(&old);
            }
        }
    }
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.wal")
}

impl Wal {
    /// Open the log in `dir` (created if missing), cutting off a torn last entry.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let id_file = dir.join("id");
        let id = match std::fs::read_to_string(&id_file) {
            Ok(id) => id.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
                    .to_string();
                crate::durable::write_atomically(&id_file, id.as_bytes())?;
                id
            }
            Err(e) => return Err(e),
        };
        let segments = segments(dir)?;
        let mut keys = Keys::default();
        let mut end = 0;
        let mut segment_start = 0;
        for (i, &start) in segments.iter().enumerate() {
            let path = dir.join(segment_name(start));
            let (entries, valid, torn_tail) = read_segment(&path, start)?;
            for e in entries {
                if let Some(k) = e.key {
                    keys.insert(k, (e.accepted, e.dead_lettered, e.end));
                }
            }
            let len = std::fs::metadata(&path)?.len();
            if start + len != valid {
                if i + 1 != segments.len() || !torn_tail {
                    return Err(std::io::Error::other(format!(
                        "{} is damaged at byte {} with acknowledged records after it; weir will not \
                         drop them silently. Move the file aside to accept the loss",
                        path.display(),
                        valid - start
                    )));
                }
                tracing::warn!(segment = %path.display(), at = valid - start, "cutting off a torn entry at the end of the write-ahead log");
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(valid - start)?;
            }
            end = valid;
            segment_start = start;
        }
        let path = dir.join(segment_name(segment_start));
        let created = !path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if created {
            crate::durable::sync_dir(dir)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            broken: Mutex::new(None),
            writer: Mutex::new(Writer {
                file,
                end,
                segment_start,
            }),
            synced: Mutex::new(end),
            keys: Mutex::new(keys),
        })
    }

    /// Which log this is (see the field).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What a request with this idempotency key was answered, if it was logged; once
    /// its entry is on disk (the first request may still be waiting for its fsync).
    pub fn answered(&self, key: &str) -> std::io::Result<Option<(u32, u32)>> {
        let found = self.keys.lock().reports.get(key).copied();
        match found {
            Some((accepted, dead_lettered, end)) => {
                self.sync_to(end)?;
                Ok(Some((accepted, dead_lettered)))
            }
            None => Ok(None),
        }
    }

    /// Append a request and run `then` with the offset after it while still holding the
    /// log, so whatever `then` queues is queued in log order. Not yet synced: call
    /// [`Wal::sync_to`] before acknowledging.
    pub fn append<T>(
        &self,
        accepted: u32,
        dead_lettered: u32,
        key: Option<&str>,
        body: &[u8],
        then: impl FnOnce(u64) -> T,
    ) -> std::io::Result<T> {
        let key_bytes = key.unwrap_or("").as_bytes();
        let key_len = u16::try_from(key_bytes.len())
            .map_err(|_| std::io::Error::other("the idempotency key is longer than 65535 bytes"))?;
        let mut payload = Vec::with_capacity(10 + key_bytes.len() + body.len());
        payload.extend_from_slice(&accepted.to_le_bytes());
        payload.extend_from_slice(&dead_lettered.to_le_bytes());
        payload.extend_from_slice(&key_len.to_le_bytes());
        payload.extend_from_slice(key_bytes);
        payload.extend_from_slice(body);
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::other("a request body over 4 GiB cannot be logged"))?;
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);

        let mut w = self.writer.lock();
        if let Some(why) = self.broken.lock().clone() {
            return Err(std::io::Error::other(why));
        }
        if let Some(k) = key
            && self.keys.lock().reports.contains_key(k)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a request with this idempotency key was logged already",
            ));
        }
        if w.end - w.segment_start >= SEGMENT_BYTES {
            // Close the full segment: synced now, so syncing the new file covers it.
            w.file.sync_data()?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(segment_name(w.end)))?;
            crate::durable::sync_dir(&self.dir)?;
            w.segment_start = w.end;
            w.file = file;
        }
        if let Err(e) = w.file.write_all(&record) {
            // A partial write would break the entries after it: cut it off.
            let keep = w.end - w.segment_start;
            let _ = w.file.set_len(keep);
            return Err(e);
        }
        w.end += record.len() as u64;
        if let Some(k) = key {
            self.keys
                .lock()
                .insert(k.to_string(), (accepted, dead_lettered, w.end));
        }
        Ok(then(w.end))
    }

    /// Return once everything up to `offset` is on disk. Requests waiting together
    /// share one fsync.
    pub fn sync_to(&self, offset: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock();
        if *synced >= offset {
            return Ok(());
        }
        let (file, end) = {
            let w = self.writer.lock();
            (w.file.try_clone()?, w.end)
        };
        if let Err(e) = file.sync_data() {
            let why = format!(
                "the write-ahead log could not be synced ({e}); restart weir once the data dir is healthy"
            );
            *self.broken.lock() = Some(why.clone());
            return Err(std::io::Error::other(why));
        }
        *synced = end;
        Ok(())
    }

    /// Offset after the last entry.
    pub fn end(&self) -> u64 {
        self.writer.lock().end
    }

    /// Every entry that ends after `from`, oldest first, one segment in memory at a time.
    /// `each` returns false to stop.
    pub fn for_each_from(
        &self,
        from: u64,
        mut each: impl FnMut(Entry) -> bool,
    ) -> std::io::Result<()> {
        let segments = segments(&self.dir)?;
        for (i, &start) in segments.iter().enumerate() {
            let next = segments.get(i + 1).copied().unwrap_or(u64::MAX);
            if next <= from {
                continue;
            }
            let (entries, _, _) = read_segment(&self.dir.join(segment_name(start)), start)?;
            for e in entries.into_iter().filter(|e| e.end > from) {
                if !each(e) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Every entry that ends after `from`, oldest first.
    pub fn read_from(&self, from: u64) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.for_each_from(from, |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// Remove segments that end at or before `offset` (no checkpoint needs them).
    pub fn prune_before(&self, offset: u64) -> std::io::Result<usize> {
        let open = self.writer.lock().segment_start;
        let segments = segments(&self.dir)?;
        let mut removed = 0;
        for pair in segments.windows(2) {
            let (start, next) = (pair[0], pair[1]);
            if next <= offset && start < open {
                std::fs::remove_file(self.dir.join(segment_name(start)))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Delete the log (its source was dropped); nothing more is accepted.
    pub fn destroy(&self) -> std::io::Result<()> {
        *self.broken.lock() = Some("the source was dropped".into());
        std::fs::remove_dir_all(&self.dir)
    }
}

/// The segments' first offsets, in order.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut starts: Vec<u64> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse().ok())
        .collect();
    starts.sort_unstable();
    Ok(starts)
}

/// Read a segment file and parse it ([`parse_segment`]).
fn read_segment(path: &Path, start: u64) -> std::io::Result<(Vec<Entry>, u64, bool)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(parse_segment(&bytes, start))
}

/// The whole entries of a segment that starts at offset `start`, the offset after the
/// last of them, and whether what follows them (if anything) is a torn last entry: one
/// that reaches the end of the file, as a write cut short by a crash does. Anything
/// else is damage.
pub(crate) fn parse_segment(bytes: &[u8], start: u64) -> (Vec<Entry>, u64, bool) {
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len < 10 || crc32fast::hash(payload) != crc {
            break;
        }
        let word = |i: usize| {
            u32::from_le_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        let key_len = u16::from_le_bytes([payload[8], payload[9]]) as usize;
        let Some(key) = payload.get(10..10 + key_len) else {
            break;
        };
        at += HEADER + len;
        entries.push(Entry {
            accepted: word(0),
            dead_lettered: word(4),
            key: (key_len > 0).then(|| String::from_utf8_lossy(key).into_owned()),
            body: payload[10 + key_len..].to_vec(),
            end: start + at as u64,
        });
    }
    let torn_tail = match bytes.get(at..at + HEADER) {
        None => true,
        Some(h) => {
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            at + HEADER + len >= bytes.len()
        }
    };
    (entries, start + at as u64, torn_tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(wal: &Wal, key: Option<&str>, body: &str) -> u64 {
        let end = wal
            .append(1, 0, key, body.as_bytes(), |end| end)
            .expect("append");
        wal.sync_to(end).expect("sync");
        end
    }

    #[test]
    fn entries_survive_a_reopen_and_replay_from_an_offset() {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = Wal::open(dir.path()).expect("open");
        let a = log(&wal, Some("k1"), "{\"id\":1}");
        let b = log(&wal, None, "{\"id\":2}");
        log(&wal, Some("k3"), "{\"id\":3}");
        drop(wal);
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(wal.answered("k1").expect("io"), Some((1, 0)));
        assert_eq!(wal.answered("k3").expect("io"), Some((1, 0)));
        assert_eq!(wal.answered("k2").expect("io"), None);
        let all = wal.read_from(0).expect("read");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].end, a);
        assert_eq!(all[1].body, b"{\"id\":2}");
        let rest = wal.read_from(b).expect("read");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].key.as_deref(), Some("k3"));
        assert_eq!(wal.end(), rest[0].end);
    }

    #[test]
    fn a_torn_last_entry_is_cut_off_and_writing_goes_on() {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = Wal::open(dir.path()).expect("open");
        let first = log(&wal, None, "{\"id\":1}");
        log(&wal, None, "{\"id\":2}");
        drop(wal);
        let segment = dir.path().join(segment_name(0));
        let len = std::fs::metadata(&segment).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&segment).expect("open");
        f.set_len(len - 3).expect("tear");
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(wal.end(), first, "the torn entry is gone");
        let third = log(&wal, None, "{\"id\":3}");
        let all = wal.read_from(0).expect("read");
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].body, b"{\"id\":3}");
        assert_eq!(all[1].end, third);
        // A flipped bit in the last entry looks like a torn write: cut off.
        drop(wal);
        let mut bytes = std::fs::read(&segment).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&segment, &bytes).expect("write");
        assert_eq!(Wal::open(dir.path()).expect("reopen").end(), first);
        // In an entry with acknowledged entries after it, it is damage: refuse to start.
        let wal = Wal::open(dir.path()).expect("reopen");
        log(&wal, None, "{\"id\":5}");
        drop(wal);
        let mut bytes = std::fs::read(&segment).expect("read");
        bytes[HEADER + 12] ^= 1;
        std::fs::write(&segment, &bytes).expect("write");
        let e = Wal::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("Move the file aside"), "{e}");
    }

    #[test]
    fn old_segments_are_pruned_but_never_the_open_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = Wal::open(dir.path()).expect("open");
        let end = log(&wal, None, "{}");
        // Pretend the first segment is full by starting a second one by hand.
        drop(wal);
        std::fs::write(dir.path().join(segment_name(end)), b"").expect("segment");
        let wal = Wal::open(dir.path()).expect("reopen");
        let later = log(&wal, None, "{\"x\":1}");
        assert_eq!(wal.read_from(0).expect("read").len(), 2);
        assert_eq!(wal.prune_before(end - 1).expect("prune"), 0, "still needed");
        assert_eq!(wal.prune_before(later).expect("prune"), 1);
        assert_eq!(wal.read_from(0).expect("read").len(), 1);
        assert_eq!(
            wal.prune_before(u64::MAX).expect("prune"),
            0,
            "the open segment stays"
        );
    }
}
