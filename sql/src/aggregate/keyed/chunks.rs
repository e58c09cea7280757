//! Rows of variable width (strings, lists) kept by id, changed at a cost in proportion
//! to the rows changed, not to the rows kept.
//!
//! Arrow arrays are immutable, so a change appends its rows as a new chunk and points
//! each id at its new row; the rows it replaced stay behind as garbage. Chunks are
//! merged like a binary counter: while the newest chunk is at least half the size of
//! the one before, the two become one, keeping only their live rows. So there are
//! O(log rows) chunks, and each row written is copied O(log rows) times. When garbage
//! still outweighs the live rows (in old, large chunks), everything live is copied into
//! one chunk. Reads gather rows from the chunks with one `interleave` per column.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::Result;

/// Where an id has no row.
const ABSENT: (u32, u32) = (u32::MAX, u32::MAX);
/// Garbage rows tolerated beyond the live ones before everything is compacted.
const SLACK_ROWS: usize = 4096;

/// A batch of rows and the id each row was written for (live while `at` points at it).
struct Chunk {
    rows: RecordBatch,
    ids: Vec<u32>,
}

/// Rows by id; see the module documentation.
pub(super) struct Chunks {
    schema: SchemaRef,
    chunks: Vec<Chunk>,
    /// For each id, the chunk and row that hold its row, or [`ABSENT`].
    at: Vec<(u32, u32)>,
    live: usize,
    /// Rows in `chunks`, live or not.
    held: usize,
}

impl Chunks {
    pub(super) fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            chunks: Vec::new(),
            at: Vec::new(),
            live: 0,
            held: 0,
        }
    }

    /// Bytes held, garbage included.
    pub(super) fn size(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.rows.get_array_memory_size() + c.ids.capacity() * 4)
            .sum::<usize>()
            + self.at.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// Row `i` of `columns` is now the row of `ids[i]` (distinct ids).
    pub(super) fn set(&mut self, ids: &[u32], columns: Vec<ArrayRef>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let rows = self.batch(columns, ids.len())?;
        let chunk = self.chunks.len() as u32;
        for (row, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.at.len() {
                self.at.resize(id + 1, ABSENT);
            }
            if self.at[id] == ABSENT {
                self.live += 1;
            }
            self.at[id] = (chunk, row as u32);
        }
        self.held += rows.num_rows();
        self.chunks.push(Chunk {
            rows,
            ids: ids.to_vec(),
        });
        self.merge_tail()?;
        self.compact_if_sparse()
    }

    /// The ids have no row any more.
    pub(super) fn remove(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            if let Some(at) = self.at.get_mut(id as usize).filter(|at| **at != ABSENT) {
                *at = ABSENT;
                self.live -= 1;
            }
        }
        self.compact_if_sparse()
    }

    /// The rows of `ids`, in their order (each id has a row).
    pub(super) fn get(&self, ids: &[u32]) -> Result<Vec<ArrayRef>> {
        let from = ids
            .iter()
            .map(|&id| match self.at.get(id as usize) {
                Some(&(chunk, row)) if (chunk, row) != ABSENT => Ok((chunk as usize, row as usize)),
                _ => Err(crate::Error::Execution(format!("id {id} has no row"))),
            })
            .collect::<Result<Vec<_>>>()?;
        self.gather(0, &from)
    }

    fn batch(&self, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?)
    }

    /// Rows of `chunks[first..]` at `from` (chunk index, row), a column each.
    fn gather(&self, first: usize, from: &[(usize, usize)]) -> Result<Vec<ArrayRef>> {
        let chunks = &self.chunks[first..];
        (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<_> = chunks.iter().map(|k| k.rows.column(c).as_ref()).collect();
                Ok(match arrays.first() {
                    Some(_) => interleave(&arrays, from)?,
                    None => {
                        datafusion::arrow::array::new_empty_array(self.schema.field(c).data_type())
                    }
                })
            })
            .collect()
    }

    /// Merge the newest chunks while the newest is at least half the size of the one
    /// before (their live rows only).
    fn merge_tail(&mut self) -> Result<()> {
        while let [.., older, newer] = &self.chunks[..] {
            if newer.rows.num_rows() * 2 < older.rows.num_rows() {
                break;
            }
            let first = self.chunks.len() - 2;
            let (mut ids, mut from) = (Vec::new(), Vec::new());
            for (local, chunk) in self.chunks[first..].iter().enumerate() {
                for (row, &id) in chunk.ids.iter().enumerate() {
                    if self.at[id as usize] == ((first + local) as u32, row as u32) {
                        ids.push(id);
                        from.push((local, row));
                    }
                }
            }
            let rows = self.batch(self.gather(first, &from)?, from.len())?;
            self.held -=
                self.chunks[first].rows.num_rows() + self.chunks[first + 1].rows.num_rows();
            self.held += rows.num_rows();
            self.chunks.truncate(first);
            for (row, &id) in ids.iter().enumerate() {
                self.at[id as usize] = (first as u32, row as u32);
            }
            self.chunks.push(Chunk { rows, ids });
        }
        Ok(())
    }

    /// Copy the live rows into one chunk once garbage outweighs them.
    fn compact_if_sparse(&mut self) -> Result<()> {
        if self.held <= 2 * self.live + SLACK_ROWS {
            return Ok(());
        }
        let (mut ids, mut from) = (Vec::with_capacity(self.live), Vec::with_capacity(self.live));
        for (id, &(chunk, row)) in self.at.iter().enumerate() {
            if (chunk, row) != ABSENT {
                ids.push(id as u32);
                from.push((chunk as usize, row as usize));
            }
        }
        let rows = self.batch(self.gather(0, &from)?, from.len())?;
        self.at.iter_mut().for_each(|at| *at = ABSENT);
        for (row, &id) in ids.iter().enumerate() {
            self.at[id as usize] = (0, row as u32);
        }
        self.held = rows.num_rows();
        self.chunks = vec![Chunk { rows, ids }];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]))
    }

    fn column(values: &[i64]) -> Vec<ArrayRef> {
        let strings: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        vec![Arc::new(StringArray::from(strings))]
    }

    fn values(columns: &[ArrayRef]) -> Vec<i64> {
        columns[0]
            .as_string::<i32>()
            .iter()
            .map(|s| s.and_then(|s| s.parse().ok()).unwrap_or(i64::MIN))
            .collect()
    }

    #[test]
    fn garbage_is_compacted_away_and_the_rows_stay_the_same() {
        let mut kept = Chunks::new(schema());
        let ids: Vec<u32> = (0..100).collect();
        for round in 0..200i64 {
            let v: Vec<i64> = (0..100).map(|i| round * 1000 + i).collect();
            kept.set(&ids, column(&v)).expect("set");
        }
        // 20,000 rows written; at most twice the live rows plus the slack are held.
        assert!(
            kept.held <= 2 * kept.live + SLACK_ROWS,
            "held {}",
            kept.held
        );
        assert!(
            kept.chunks.len() < 200,
            "compacted: {} chunks",
            kept.chunks.len()
        );
        let expected: Vec<i64> = (0..100).map(|i| 199_000 + i).collect();
        assert_eq!(values(&kept.get(&ids).expect("get")), expected);
    }

    #[test]
    fn one_row_changes_keep_few_chunks() {
        // 100,000 ids, then changes of one id each: the chunks stay few, so a read does
        // not pass over one chunk per change.
        let mut kept = Chunks::new(schema());
        let ids: Vec<u32> = (0..100_000).collect();
        let v: Vec<i64> = (0..100_000).collect();
        kept.set(&ids, column(&v)).expect("set");
        for i in 0..5_000u32 {
            kept.set(&[i * 7 % 100_000], column(&[-(i as i64)]))
                .expect("set");
            assert!(
                kept.chunks.len() <= 2 * 17 + 2,
                "{} chunks",
                kept.chunks.len()
            );
        }
        assert_eq!(values(&kept.get(&[0, 7, 8]).expect("get")), vec![0, -1, 8]);
        assert_eq!(kept.live, 100_000);
    }
}
