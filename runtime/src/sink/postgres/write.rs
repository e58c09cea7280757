//! An epoch's changes as statements: appends (and, with a key, upserts) gathered into as
//! few statements as the changes allow, each column one text array. A row whose key
//! has a null is set apart: a primary key cannot hold it.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, is_not_null, not};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;

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
    /// Rows the step writes (for a delete: the keys it may remove).
    pub rows: usize,
}

/// An epoch's steps, and the rows set apart (their key has a null).
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub steps: Vec<Step>,
    pub null_keys: Vec<RecordBatch>,
}

/// The steps that write `changes` in order. `key` (column indexes) empty: every new row
/// is appended. With a key: new rows are upserted and the keys of replaced rows that
/// have no new row are deleted.
pub(super) fn plan(changes: &[Change], key: &[usize]) -> Result<Plan, ArrowError> {
    let mut plan = Plan::default();
    // Consecutive appends go in one statement.
    let mut pending: Vec<&RecordBatch> = Vec::new();
    let action = if key.is_empty() {
        Action::Insert
    } else {
        Action::Upsert
    };
    for change in changes {
        let replaced = match (&change.replaced, change.kind) {
            (Some(r), ChangeKind::Update) if !key.is_empty() && r.num_rows() > 0 => Some(r),
            _ => None,
        };
        if let Some(replaced) = replaced {
            plan.flush(&mut pending, action, key)?;
            let mut columns = text_columns(replaced, key)?;
            columns.extend(text_columns(&change.rows, key)?);
            plan.steps.push(Step {
                action: Action::Delete,
                columns,
                rows: replaced.num_rows(),
            });
        }
        if change.rows.num_rows() > 0 {
            pending.push(&change.rows);
        }
    }
    plan.flush(&mut pending, action, key)?;
    Ok(plan)
}

impl Plan {
    fn flush(
        &mut self,
        pending: &mut Vec<&RecordBatch>,
        action: Action,
        key: &[usize],
    ) -> Result<(), ArrowError> {
        let Some(first) = pending.first() else {
            return Ok(());
        };
        let mut rows = concat_batches(&first.schema(), pending.iter().copied())?;
        pending.clear();
        if !key.is_empty() {
            let mut keyed: Option<BooleanArray> = None;
            for &k in key {
                let present = is_not_null(rows.column(k))?;
                keyed = Some(match keyed {
                    Some(all) => and(&all, &present)?,
                    None => present,
                });
            }
            if let Some(keyed) = keyed.filter(|k| k.false_count() > 0) {
                self.null_keys
                    .push(filter_record_batch(&rows, &not(&keyed)?)?);
                rows = filter_record_batch(&rows, &keyed)?;
            }
        }
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let all: Vec<usize> = (0..rows.num_columns()).collect();
        self.steps.push(Step {
            action,
            columns: text_columns(&rows, &all)?,
            rows: rows.num_rows(),
        });
        Ok(())
    }
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
    fn an_update_deletes_the_keys_that_left_before_the_upserts_that_follow() {
        let changes = [
            Change::new(rows(&[Some(1), Some(2)], &[1.0, 2.0]), ChangeKind::Snapshot),
            Change {
                replaced: Some(rows(&[Some(1), Some(2)], &[1.0, 2.0])),
                ..Change::new(rows(&[Some(2)], &[5.0]), ChangeKind::Update)
            },
            Change::new(rows(&[Some(7)], &[7.0]), ChangeKind::Update),
        ];
        let plan = plan(&changes, &[0]).expect("plan");
        let actions: Vec<Action> = plan.steps.iter().map(|s| s.action).collect();
        assert_eq!(actions, [Action::Upsert, Action::Delete, Action::Upsert]);
        // The replaced keys, then the keys that stay.
        assert_eq!(
            texts(&plan.steps[1]),
            vec![
                vec![Some("1".into()), Some("2".into())],
                vec![Some("2".into())],
            ]
        );
        assert_eq!(
            plan.steps[2].rows, 2,
            "the update's rows and the next change's"
        );
    }

    #[test]
    fn rows_with_a_null_key_are_set_apart() {
        let changes = [Change::new(
            rows(&[Some(1), None, Some(3)], &[1.0, 2.0, 3.0]),
            ChangeKind::Append,
        )];
        let plan = plan(&changes, &[0]).expect("plan");
        assert_eq!(plan.steps[0].rows, 2);
        assert_eq!(plan.null_keys.len(), 1);
        assert_eq!(plan.null_keys[0].num_rows(), 1);
    }
}
