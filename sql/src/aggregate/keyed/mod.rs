//! Rows kept by a dense id (a group's index), changed in place at a cost in proportion
//! to the rows changed, not to the rows kept.
//!
//! Columns of fixed width (integers, floats, timestamps, decimals: numeric keys and the
//! states of count, sum, min, max and avg over numbers) are kept in place, a slot per id
//! ([`FixedColumn`]); the other columns (strings, lists) in chunks of rows ([`Chunks`]).
//!
//! An updating aggregate keeps its groups' intermediate states here, and an updating
//! view its rows (see [`KeyedChange`]).

mod chunks;
mod fixed;

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::Result;
use chunks::Chunks;
use fixed::FixedColumn;

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

/// Where a column of the schema is kept.
#[derive(Clone, Copy)]
enum Kept {
    /// `fixed[i]`.
    InPlace(usize),
    /// Column `i` of the chunks.
    Chunked(usize),
}

/// Rows by id; see the module documentation.
pub struct KeyedRows {
    schema: SchemaRef,
    kept: Vec<Kept>,
    fixed: Vec<FixedColumn>,
    /// The columns of variable width, if any.
    chunks: Option<Chunks>,
    /// Whether each id has a row.
    present: Vec<bool>,
    live: usize,
}

impl std::fmt::Debug for KeyedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRows")
            .field("schema", &self.schema)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl KeyedRows {
    pub fn new(schema: SchemaRef) -> Self {
        let (mut kept, mut fixed, mut varying) = (Vec::new(), Vec::new(), Vec::new());
        for field in schema.fields() {
            match FixedColumn::new(field.data_type()) {
                Some(column) => {
                    kept.push(Kept::InPlace(fixed.len()));
                    fixed.push(column);
                }
                None => {
                    kept.push(Kept::Chunked(varying.len()));
                    varying.push(Arc::clone(field));
                }
            }
        }
        let chunks = (!varying.is_empty()).then(|| Chunks::new(Arc::new(Schema::new(varying))));
        Self {
            schema,
            kept,
            fixed,
            chunks,
            present: Vec::new(),
            live: 0,
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
        self.fixed.iter().map(FixedColumn::size).sum::<usize>()
            + self.chunks.as_ref().map_or(0, Chunks::size)
            + self.present.capacity()
    }

    /// Row `i` of `rows` is now the row of `ids[i]` (distinct ids).
    pub fn set(&mut self, ids: &[u32], rows: RecordBatch) -> Result<()> {
        if ids.len() != rows.num_rows() || rows.num_columns() != self.kept.len() {
            return Err(crate::Error::Execution(format!(
                "{} ids for {} rows of {} columns (expected {})",
                ids.len(),
                rows.num_rows(),
                rows.num_columns(),
                self.kept.len()
            )));
        }
        // Checked before anything is written, so a bad batch changes nothing.
        for (column, field) in rows.columns().iter().zip(self.schema.fields()) {
            if column.data_type() != field.data_type()
                || (!field.is_nullable() && column.null_count() > 0)
            {
                return Err(crate::Error::Execution(format!(
                    "column {} is {} with {} nulls, not {}{}",
                    field.name(),
                    column.data_type(),
                    column.null_count(),
                    field.data_type(),
                    if field.is_nullable() {
                        ""
                    } else {
                        " without nulls"
                    }
                )));
            }
        }
        let Some(&top) = ids.iter().max() else {
            return Ok(());
        };
        let slots = top as usize + 1;
        if slots > self.present.len() {
            // Exactly the slots needed: the `Vec`s' capacities double on their own (so
            // ids growing one batch at a time copy each slot O(1) times), and the slots
            // past the top id are not written, so their pages are never touched.
            self.present.resize(slots, false);
            self.fixed.iter_mut().for_each(|c| c.grow(slots));
        }
        let mut varying = Vec::new();
        for (column, kept) in rows.columns().iter().zip(&self.kept) {
            match *kept {
                Kept::InPlace(i) => self.fixed[i].write(ids, column.as_ref())?,
                Kept::Chunked(_) => varying.push(Arc::clone(column)),
            }
        }
        if let Some(chunks) = &mut self.chunks {
            chunks.set(ids, varying)?;
        }
        for &id in ids {
            let present = &mut self.present[id as usize];
            self.live += usize::from(!*present);
            *present = true;
        }
        Ok(())
    }

    /// The ids have no row any more.
    pub fn remove(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            if let Some(present) = self.present.get_mut(id as usize).filter(|p| **p) {
                *present = false;
                self.live -= 1;
            }
        }
        match &mut self.chunks {
            Some(chunks) => chunks.remove(ids),
            None => Ok(()),
        }
    }

    /// The rows of those of `ids` that have one, in the order of `ids`, with their
    /// positions in `ids`.
    pub fn get(&self, ids: &[u32]) -> Result<(Vec<usize>, RecordBatch)> {
        let mut positions = Vec::with_capacity(ids.len());
        let mut found = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if self.present.get(id as usize).copied().unwrap_or(false) {
                positions.push(i);
                found.push(id);
            }
        }
        Ok((positions, self.read(&found)?))
    }

    /// Every row, by id, with the ids.
    pub fn all(&self) -> Result<(Vec<u32>, RecordBatch)> {
        let ids: Vec<u32> = (0..self.present.len())
            .filter(|&id| self.present[id])
            .map(|id| id as u32)
            .collect();
        let rows = self.read(&ids)?;
        Ok((ids, rows))
    }

    /// Apply a change to an updating view: what the touched groups showed before is
    /// returned (the rows a sink replaces), and they show the change's rows now.
    pub fn apply(&mut self, change: &KeyedChange) -> Result<RecordBatch> {
        let (_, before) = self.get(&change.touched)?;
        self.remove(&change.touched)?;
        self.set(&change.ids, change.rows.clone())?;
        Ok(before)
    }

    /// The rows of `ids`, each of which has one.
    fn read(&self, ids: &[u32]) -> Result<RecordBatch> {
        let varying = match &self.chunks {
            Some(chunks) => chunks.get(ids)?,
            None => Vec::new(),
        };
        let columns = self
            .kept
            .iter()
            .map(|kept| match *kept {
                Kept::InPlace(i) => self.fixed[i].read(ids),
                Kept::Chunked(i) => Ok(Arc::clone(&varying[i])),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(ids.len()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Array, AsArray, Decimal128Array, Decimal256Array, Float64Array, Int8Array, Int16Array,
        Int64Array, IntervalMonthDayNanoArray, StringArray, TimestampMillisecondArray, UInt32Array,
    };
    use datafusion::arrow::datatypes::{
        DataType, Field, Int64Type, IntervalMonthDayNano, Schema, i256,
    };

    /// A nullable number kept in place and its text kept in chunks: both ways at once.
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    /// Multiples of 7 are null.
    fn rows(values: &[i64]) -> RecordBatch {
        let v: Int64Array = values.iter().map(|&v| (v % 7 != 0).then_some(v)).collect();
        let s: StringArray = values
            .iter()
            .map(|&v| (v % 7 != 0).then(|| format!("#{v}")))
            .collect();
        RecordBatch::try_new(schema(), vec![Arc::new(v), Arc::new(s)]).expect("batch")
    }

    /// Each row's number, checked against its text (`i64::MIN` for null).
    fn values(batch: &RecordBatch) -> Vec<i64> {
        let v = batch.column(0).as_primitive::<Int64Type>();
        let s = batch.column(1).as_string::<i32>();
        (0..batch.num_rows())
            .map(|i| {
                assert_eq!(v.is_null(i), s.is_null(i), "row {i}");
                if v.is_null(i) {
                    return i64::MIN;
                }
                assert_eq!(s.value(i), format!("#{}", v.value(i)), "row {i}");
                v.value(i)
            })
            .collect()
    }

    fn model_value(v: i64) -> i64 {
        if v % 7 == 0 { i64::MIN } else { v }
    }

    #[test]
    fn rows_are_set_read_and_removed_by_id() {
        let mut kept = KeyedRows::new(schema());
        kept.set(&[0, 1, 2], rows(&[10, 11, 12])).expect("set");
        kept.set(&[1, 5], rows(&[22, 25])).expect("set");
        assert_eq!(kept.len(), 4);
        let (positions, got) = kept.get(&[5, 3, 1, 900]).expect("get");
        assert_eq!(positions, vec![0, 2], "ids 3 and 900 have no row");
        assert_eq!(values(&got), vec![25, 22]);
        kept.remove(&[0, 3]).expect("remove");
        let (ids, all) = kept.all().expect("all");
        assert_eq!(ids, vec![1, 2, 5]);
        assert_eq!(values(&all), vec![22, 12, 25]);
        // A value written null and then not null again reads back not null.
        kept.set(&[2], rows(&[14])).expect("set");
        // The first null: ids written before it still read back valid.
        assert_eq!(
            values(&kept.get(&[1, 2, 5]).expect("get").1),
            vec![22, i64::MIN, 25]
        );
        kept.set(&[2], rows(&[15])).expect("set");
        assert_eq!(values(&kept.get(&[2]).expect("get").1), vec![15]);
        // A batch that does not fit the schema changes nothing.
        let strict = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let mut strict_rows = KeyedRows::new(strict.clone());
        let valid = RecordBatch::try_new(
            strict.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["#1"])),
            ],
        )
        .expect("batch");
        strict_rows.set(&[0], valid).expect("set");
        let with_null =
            RecordBatch::try_new(schema(), rows(&[7]).columns().to_vec()).expect("batch");
        assert!(
            strict_rows.set(&[0], with_null).is_err(),
            "a null where none may be"
        );
        assert_eq!(values(&strict_rows.all().expect("all").1), vec![1]);
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
        assert_eq!(values(&all), vec![20, i64::MIN]);
    }

    #[test]
    fn every_fixed_width_reads_back_as_written() {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int8Array::from(vec![Some(1), None, Some(-3)])),
            Arc::new(Int16Array::from(vec![Some(300), Some(-2), None])),
            Arc::new(UInt32Array::from(vec![None, Some(7), Some(u32::MAX)])),
            Arc::new(Float64Array::from(vec![Some(0.5), Some(-1.25), None])),
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(1), Some(2), None])
                    .with_timezone("+01:00"),
            ),
            Arc::new(
                Decimal128Array::from(vec![Some(12345), None, Some(-9)])
                    .with_precision_and_scale(20, 3)
                    .expect("decimal"),
            ),
            Arc::new(Decimal256Array::from(vec![
                Some(i256::from_i128(i128::MAX)),
                None,
                Some(i256::MINUS_ONE),
            ])),
            Arc::new(IntervalMonthDayNanoArray::from(vec![
                Some(IntervalMonthDayNano::new(1, 2, 3)),
                None,
                Some(IntervalMonthDayNano::new(-1, 0, 9)),
            ])),
        ];
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let mut kept = KeyedRows::new(schema);
        assert!(kept.chunks.is_none(), "every column is kept in place");
        kept.set(&[40, 3, 17], batch.clone()).expect("set");
        let (positions, got) = kept.get(&[40, 3, 17]).expect("get");
        assert_eq!(positions, vec![0, 1, 2]);
        assert_eq!(got, batch);
        // A slice starts at an offset into its buffers (values and validity bits).
        kept.set(&[8, 9], batch.slice(1, 2)).expect("set");
        assert_eq!(kept.get(&[8, 9]).expect("get").1, batch.slice(1, 2));
        let (_, reversed) = kept.get(&[17, 3, 40]).expect("get");
        let back = UInt32Array::from(vec![2, 1, 0]);
        for (c, column) in reversed.columns().iter().enumerate() {
            let want =
                datafusion::arrow::compute::take(batch.column(c), &back, None).expect("take");
            assert_eq!(column.as_ref(), want.as_ref(), "column {c}");
        }
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
                    model.insert(*id, model_value(*v));
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
}
