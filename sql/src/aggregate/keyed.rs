//! Rows kept by a dense id (a group's index), changed in place at a cost in proportion
//! to the rows changed, not to the rows kept.
//!
//! Arrow arrays are immutable, so a change appends its rows as a new chunk and points
//! each id at its new row; the rows it replaced stay behind as garbage. Chunks are
//! merged like a binary counter: while the newest chunk is at least half the size of
//! the one before, the two become one, keeping only their live rows. So there are
//! O(log rows) chunks, and each row written is copied O(log rows) times. When garbage
//! still outweighs the live rows (in old, large chunks), everything live is copied into
//! one chunk. Reads gather rows from the chunks with one `interleave` per column.
//!
//! An updating aggregate keeps its groups' intermediate states here, and an updating
//! view its rows (see [`KeyedChange`]).

use std::sync::Arc;

use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::Result;

/// Where an id has no row.
const ABSENT: (u32, u32) = (u32::MAX, u32::MAX);
/// Garbage rows tolerated beyond the live ones before everything is compacted.
const SLACK_ROWS: usize = 4096;

/// A change to an updating view, by group id: the groups a batch touched now show
/// `rows` (the row of `ids[i]` is `rows` row `i`); a touched group not in `ids` shows
/// nothing now (HAVING filtered it out).
#[derive(Debug, Clone)]
pub struct KeyedChange {
    /// Every group the batch touched (distinct).
    pub touched: Vec<u32>,
    /// The groups with a row now, a subset of `touched`, in the order of `rows`.
    pub ids: Vec<u32>,
    pub rows: RecordBatch,
}

/// A batch of rows and the id each row was written for (live while `at` points at it).
#[derive(Debug)]
struct Chunk {
    rows: RecordBatch,
    ids: Vec<u32>,
}

/// Rows by id; see the module documentation.
#[derive(Debug)]
pub struct KeyedRows {
    schema: SchemaRef,
    chunks: Vec<Chunk>,
    /// For each id, the chunk and row that hold its row, or [`ABSENT`].
    at: Vec<(u32, u32)>,
    live: usize,
    /// Rows in `chunks`, live or not.
    held: usize,
}

impl KeyedRows {
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            chunks: Vec::new(),
            at: Vec::new(),
            live: 0,
            held: 0,
        }
    }

    /// Ids with a row.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Bytes held, garbage included.
    pub fn size(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.rows.get_array_memory_size() + c.ids.capacity() * 4)
            .sum::<usize>()
            + self.at.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// Row `i` of `rows` is now the row of `ids[i]` (distinct ids).
    pub fn set(&mut self, ids: &[u32], rows: RecordBatch) -> Result<()> {
        if ids.len() != rows.num_rows() {
            return Err(crate::Error::Execution(format!(
                "{} ids for {} rows",
                ids.len(),
                rows.num_rows()
            )));
        }
        if ids.is_empty() {
            return Ok(());
        }
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
    pub fn remove(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            if let Some(at) = self.at.get_mut(id as usize).filter(|at| **at != ABSENT) {
                *at = ABSENT;
                self.live -= 1;
            }
        }
        self.compact_if_sparse()
    }

    /// The rows of those of `ids` that have one, in the order of `ids`, with their
    /// positions in `ids`.
    pub fn get(&self, ids: &[u32]) -> Result<(Vec<usize>, RecordBatch)> {
        let mut positions = Vec::with_capacity(ids.len());
        let mut from = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if let Some(&(chunk, row)) = self.at.get(id as usize).filter(|at| **at != ABSENT) {
                positions.push(i);
                from.push((chunk as usize, row as usize));
            }
        }
        Ok((positions, self.gather(0, &from)?))
    }

    /// Every row, by id, with the ids.
    pub fn all(&self) -> Result<(Vec<u32>, RecordBatch)> {
        let mut ids = Vec::with_capacity(self.live);
        let mut from = Vec::with_capacity(self.live);
        for (id, &(chunk, row)) in self.at.iter().enumerate() {
            if (chunk, row) != ABSENT {
                ids.push(id as u32);
                from.push((chunk as usize, row as usize));
            }
        }
        Ok((ids, self.gather(0, &from)?))
    }

    /// Apply a change to an updating view: what the touched groups showed before is
    /// returned (the rows a sink replaces), and they show the change's rows now.
    pub fn apply(&mut self, change: &KeyedChange) -> Result<RecordBatch> {
        let (_, before) = self.get(&change.touched)?;
        self.remove(&change.touched)?;
        self.set(&change.ids, change.rows.clone())?;
        Ok(before)
    }

    /// Rows of `chunks[first..]` at `from` (chunk index, row), in our schema.
    fn gather(&self, first: usize, from: &[(usize, usize)]) -> Result<RecordBatch> {
        let chunks = &self.chunks[first..];
        let columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<_> = chunks.iter().map(|k| k.rows.column(c).as_ref()).collect();
                match arrays.first() {
                    Some(_) => interleave(&arrays, from),
                    None => Ok(datafusion::arrow::array::new_empty_array(
                        self.schema.field(c).data_type(),
                    )),
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(from.len()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?)
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
            let rows = self.gather(first, &from)?;
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
        let (ids, rows) = self.all()?;
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
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
    }

    fn rows(values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))])
            .expect("batch")
    }

    fn values(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn rows_are_set_read_and_removed_by_id() {
        let mut kept = KeyedRows::new(schema());
        kept.set(&[0, 1, 2], rows(&[10, 11, 12])).expect("set");
        kept.set(&[1, 5], rows(&[21, 25])).expect("set");
        assert_eq!(kept.len(), 4);
        let (positions, got) = kept.get(&[5, 3, 1]).expect("get");
        assert_eq!(positions, vec![0, 2], "id 3 has no row");
        assert_eq!(values(&got), vec![25, 21]);
        kept.remove(&[0, 3]).expect("remove");
        let (ids, all) = kept.all().expect("all");
        assert_eq!(ids, vec![1, 2, 5]);
        assert_eq!(values(&all), vec![21, 12, 25]);
    }

    #[test]
    fn a_change_returns_what_its_groups_showed_and_drops_groups_without_a_row() {
        let mut view = KeyedRows::new(schema());
        view.set(&[0, 1], rows(&[1, 2])).expect("set");
        let before = view
            .apply(&KeyedChange {
                touched: vec![0, 1, 7],
                ids: vec![1, 7],
                rows: rows(&[20, 70]),
            })
            .expect("apply");
        assert_eq!(values(&before), vec![1, 2]);
        let (ids, all) = view.all().expect("all");
        assert_eq!(ids, vec![1, 7]);
        assert_eq!(values(&all), vec![20, 70]);
    }

    #[test]
    fn garbage_is_compacted_away_and_the_rows_stay_the_same() {
        let mut kept = KeyedRows::new(schema());
        let ids: Vec<u32> = (0..100).collect();
        for round in 0..200i64 {
            let v: Vec<i64> = (0..100).map(|i| round * 1000 + i).collect();
            kept.set(&ids, rows(&v)).expect("set");
        }
        // 20,000 rows written; at most twice the live rows plus the slack are held.
        assert!(
            kept.held <= 2 * kept.len() + SLACK_ROWS,
            "held {}",
            kept.held
        );
        assert!(
            kept.chunks.len() < 200,
            "compacted: {} chunks",
            kept.chunks.len()
        );
        let (_, all) = kept.all().expect("all");
        let expected: Vec<i64> = (0..100).map(|i| 199_000 + i).collect();
        assert_eq!(values(&all), expected);
    }

    #[test]
    fn random_changes_match_a_map() {
        let mut kept = KeyedRows::new(schema());
        let mut model = std::collections::BTreeMap::new();
        let mut x = 7u64;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for round in 0..3_000i64 {
            let size = [1, 3, 50, 700][next(4) as usize];
            let universe = [20, 2_000, 50_000][(round / 1_000) as usize];
            let mut ids: Vec<u32> = (0..size).map(|_| next(universe) as u32).collect();
            ids.sort_unstable();
            ids.dedup();
            if next(5) == 0 {
                kept.remove(&ids).expect("remove");
                ids.iter().for_each(|id| {
                    model.remove(id);
                });
            } else {
                let v: Vec<i64> = ids.iter().map(|&id| round * 100_000 + id as i64).collect();
                kept.set(&ids, rows(&v)).expect("set");
                ids.iter().zip(&v).for_each(|(id, v)| {
                    model.insert(*id, *v);
                });
            }
            assert_eq!(kept.len(), model.len(), "round {round}");
            if round % 100 == 0 {
                let (ids, all) = kept.all().expect("all");
                let got: Vec<(u32, i64)> = ids.into_iter().zip(values(&all)).collect();
                let want: Vec<(u32, i64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                assert_eq!(got, want, "round {round}");
            }
            let probe: Vec<u32> = (0..10).map(|_| next(universe) as u32).collect();
            let (positions, got) = kept.get(&probe).expect("get");
            let want: Vec<i64> = probe
                .iter()
                .filter_map(|id| model.get(id).copied())
                .collect();
            assert_eq!(values(&got), want, "round {round}");
            assert_eq!(positions.len(), want.len());
        }
    }

    #[test]
    fn one_row_changes_keep_few_chunks() {
        // 100,000 groups, then changes of one group each: the chunks stay few, so a
        // read does not pass over one chunk per change.
        let mut kept = KeyedRows::new(schema());
        let ids: Vec<u32> = (0..100_000).collect();
        let v: Vec<i64> = (0..100_000).collect();
        kept.set(&ids, rows(&v)).expect("set");
        for i in 0..5_000u32 {
            kept.set(&[i * 7 % 100_000], rows(&[-(i as i64)]))
                .expect("set");
            assert!(
                kept.chunks.len() <= 2 * 17 + 2,
                "{} chunks",
                kept.chunks.len()
            );
        }
        let (_, got) = kept.get(&[0, 7, 8]).expect("get");
        assert_eq!(values(&got), vec![0, -1, 8]);
        assert_eq!(kept.len(), 100_000);
    }
}
