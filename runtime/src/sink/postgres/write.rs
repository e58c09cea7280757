//! An epoch's changes as statements, each column one text array. Without a key, every
//! new row of the epoch in one insert. With a key, the epoch is folded first: each key's
//! last change wins, so the table takes one upsert of the newest row of every key the
//! epoch kept, and one delete of the keys whose last change removed them, however often
//! the epoch changed a group. A row whose key has a null is set apart: a primary key
//! cannot hold it.

use std::collections::HashMap;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::{
    cast, concat_batches, filter_record_batch, is_not_null, not, take_record_batch,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::sink::feed::{Change, ChangeKind};

/// What one statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Insert,
    Upsert,
    Delete,
}

/// One statement's parameters: a text array per column, in the statement's order.
#[derive(Debug)]
pub(super) struct Step {
    pub action: Action,
    pub columns: Vec<ArrayRef>,
}

/// An epoch's steps, and the rows set apart (their key has a null).
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub steps: Vec<Step>,
    pub null_keys: Vec<RecordBatch>,
}

/// The steps that write `changes`. `key` (column indexes) empty: every new row is
/// appended. With a key: the newest row of each key is upserted, and the keys whose
/// last change removed them (a replaced row without a new row of its key) are deleted.
pub(super) fn plan(changes: &[Change], key: &[usize]) -> Result<Plan, ArrowError> {
    let mut plan = Plan::default();
    let new: Vec<&RecordBatch> = changes
        .iter()
        .map(|c| &c.rows)
        .filter(|r| r.num_rows() > 0)
        .collect();
    let Some(first) = new.first() else {
        return plan.with_removals(changes, key);
    };
    let rows = concat_batches(&first.schema(), new.iter().copied())?;
    if key.is_empty() {
        plan.steps.push(Step {
            action: Action::Insert,
            columns: all_text_columns(&rows)?,
        });
        return Ok(plan);
    }
    plan.fold(changes, &rows, key)?;
    Ok(plan)
}

/// A key's last change in an epoch.
#[derive(Debug, Clone, Copy)]
enum Last {
    /// Its newest row: a place in the epoch's new rows.
    Row(usize),
    /// It left: (the change, the place in that change's replaced rows).
    Gone(usize, usize),
}

impl Plan {
    /// An epoch without new rows: only removals.
    fn with_removals(mut self, changes: &[Change], key: &[usize]) -> Result<Self, ArrowError> {
        if !key.is_empty()
            && let Some(schema) = changes
                .iter()
                .find_map(|c| c.replaced.as_ref().map(RecordBatch::schema))
        {
            let empty = RecordBatch::new_empty(schema);
            self.fold(changes, &empty, key)?;
        }
        Ok(self)
    }

    /// Fold the epoch by key: `rows` are its new rows in order (those of `changes`,
    /// concatenated).
    fn fold(
        &mut self,
        changes: &[Change],
        rows: &RecordBatch,
        key: &[usize],
    ) -> Result<(), ArrowError> {
        let fields: Vec<SortField> = key
            .iter()
            .map(|&i| SortField::new(rows.schema().field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let key_columns = |b: &RecordBatch| -> Vec<ArrayRef> {
            key.iter().map(|&i| b.column(i).clone()).collect()
        };
        let new_keys = converter.convert_columns(&key_columns(rows))?;
        let present = keyed_rows(rows, key)?;
        let replaced: Vec<Option<(&RecordBatch, _)>> = changes
            .iter()
            .map(|c| match (&c.replaced, c.kind) {
                (Some(r), ChangeKind::Update) if r.num_rows() > 0 => {
                    Some(converter.convert_columns(&key_columns(r)).map(|k| (r, k)))
                }
                _ => None,
            })
            .map(Option::transpose)
            .collect::<Result<_, _>>()?;
        // Each key's last change: within a change, a replaced key without a new row is
        // a removal; new rows come in order, the newest last.
        let mut last: HashMap<datafusion::arrow::row::Row<'_>, Last> = HashMap::new();
        let mut place = 0;
        for (i, change) in changes.iter().enumerate() {
            let n = change.rows.num_rows();
            if let Some((_, keys)) = &replaced[i] {
                let kept: std::collections::HashSet<_> =
                    (place..place + n).map(|p| new_keys.row(p)).collect();
                for (r, k) in keys.iter().enumerate() {
                    if !kept.contains(&k) {
                        last.insert(k, Last::Gone(i, r));
                    }
                }
            }
            for p in place..place + n {
                if present.value(p) {
                    last.insert(new_keys.row(p), Last::Row(p));
                }
            }
            place += n;
        }
        let mut newest: Vec<u32> = Vec::new();
        let mut gone: Vec<Vec<u32>> = vec![Vec::new(); changes.len()];
        for state in last.values() {
            match *state {
                Last::Row(p) => newest.push(p as u32),
                Last::Gone(i, r) => gone[i].push(r as u32),
            }
        }
        let removed: Vec<RecordBatch> = gone
            .iter()
            .zip(&replaced)
            .filter(|(rows, _)| !rows.is_empty())
            .filter_map(|(rows, r)| r.as_ref().map(|(batch, _)| (rows, *batch)))
            .map(|(rows, batch)| take_record_batch(batch, &UInt32Array::from(rows.clone())))
            .collect::<Result<_, _>>()?;
        if let Some(first) = removed.first() {
            let removed = concat_batches(&first.schema(), &removed)?;
            let mut columns = text_columns(&removed, key)?;
            // The delete's second set (keys to keep) is empty: every key here is gone.
            columns.extend(text_columns(&removed.slice(0, 0), key)?);
            self.steps.push(Step {
                action: Action::Delete,
                columns,
            });
        }
        if present.false_count() > 0 {
            self.null_keys
                .push(filter_record_batch(rows, &not(&present)?)?);
        }
        if !newest.is_empty() {
            // In the order the rows came.
            newest.sort_unstable();
            let upserted = take_record_batch(rows, &UInt32Array::from(newest))?;
            self.steps.push(Step {
                action: Action::Upsert,
                columns: all_text_columns(&upserted)?,
            });
        }
        Ok(())
    }
}

/// Which rows have every key column set.
fn keyed_rows(rows: &RecordBatch, key: &[usize]) -> Result<BooleanArray, ArrowError> {
    let mut keyed = BooleanArray::from(vec![true; rows.num_rows()]);
    for &k in key {
        keyed = and(&keyed, &is_not_null(rows.column(k))?)?;
    }
    Ok(keyed)
}

/// Every column of `batch` as text.
fn all_text_columns(batch: &RecordBatch) -> Result<Vec<ArrayRef>, ArrowError> {
    text_columns(batch, &(0..batch.num_columns()).collect::<Vec<_>>())
}

/// Columns `which` of `batch` as text, formatted by Arrow.
fn text_columns(batch: &RecordBatch, which: &[usize]) -> Result<Vec<ArrayRef>, ArrowError> {
    which
        .iter()
        .map(|&i| cast(batch.column(i), &DataType::Utf8))
        .collect()
}

/// A text column as the parameter tokio-postgres sends as `text[]`.
pub(super) fn strings(column: &ArrayRef) -> Vec<Option<&str>> {
    match column.as_any().downcast_ref::<StringArray>() {
        Some(strings) => strings.iter().collect(),
        // text_columns casts every column to Utf8.
        None => vec![None; column.len()],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn rows(keys: &[Option<i64>], values: &[f64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(Float64Array::from(values.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn texts(step: &Step) -> Vec<Vec<Option<String>>> {
        step.columns
            .iter()
            .map(|c| {
                strings(c)
                    .into_iter()
                    .map(|s| s.map(str::to_string))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn appends_in_a_row_are_one_insert() {
        let changes = [
            Change::new(rows(&[Some(1)], &[1.5]), ChangeKind::Append),
            Change::new(rows(&[None, Some(3)], &[2.0, 3.0]), ChangeKind::Append),
        ];
        let plan = plan(&changes, &[]).expect("plan");
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].action, Action::Insert);
        assert_eq!(
            texts(&plan.steps[0]),
            vec![
                vec![Some("1".into()), None, Some("3".into())],
                vec![Some("1.5".into()), Some("2.0".into()), Some("3.0".into())],
            ]
        );
    }

    #[test]
    fn an_epoch_is_folded_to_the_newest_row_of_each_key_and_the_keys_that_left() {
        let changes = [
            Change::new(rows(&[Some(1), Some(2)], &[1.0, 2.0]), ChangeKind::Snapshot),
            // Key 1 leaves, key 2 changes.
            Change {
                replaced: Some(rows(&[Some(1), Some(2)], &[1.0, 2.0])),
                ..Change::new(rows(&[Some(2)], &[5.0]), ChangeKind::Update)
            },
            // Key 7 comes, then leaves; key 2 changes again.
            Change::new(rows(&[Some(7), Some(2)], &[7.0, 6.0]), ChangeKind::Update),
            Change {
                replaced: Some(rows(&[Some(7), Some(2)], &[7.0, 6.0])),
                ..Change::new(rows(&[Some(2)], &[8.0]), ChangeKind::Update)
            },
            // Key 3 leaves and comes back.
            Change {
                replaced: Some(rows(&[Some(3)], &[3.0])),
                ..Change::new(rows(&[], &[]), ChangeKind::Update)
            },
            Change::new(rows(&[Some(3)], &[4.0]), ChangeKind::Update),
        ];
        let plan = plan(&changes, &[0]).expect("plan");
        let actions: Vec<Action> = plan.steps.iter().map(|s| s.action).collect();
        assert_eq!(actions, [Action::Delete, Action::Upsert]);
        let mut deleted = texts(&plan.steps[0])[0].clone();
        deleted.sort();
        assert_eq!(deleted, vec![Some("1".into()), Some("7".into())]);
        assert!(texts(&plan.steps[0])[1].is_empty(), "no key to keep");
        // One row per key, the newest: 2 at 8.0 and 3 at 4.0.
        assert_eq!(
            texts(&plan.steps[1]),
            vec![
                vec![Some("2".into()), Some("3".into())],
                vec![Some("8.0".into()), Some("4.0".into())],
            ]
        );
    }

    #[test]
    fn rows_with_a_null_key_are_set_apart() {
        let changes = [Change::new(
            rows(&[Some(1), None, Some(3)], &[1.0, 2.0, 3.0]),
            ChangeKind::Append,
        )];
        let plan = plan(&changes, &[0]).expect("plan");
        assert_eq!(plan.steps[0].columns[0].len(), 2);
        assert_eq!(plan.null_keys.len(), 1);
        assert_eq!(plan.null_keys[0].num_rows(), 1);
    }
}
