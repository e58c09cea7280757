//! A view's change as its stream readers receive it: the rows, and their text made once
//! for all of them. A thousand readers of one view then cost one encoding per change,
//! not a thousand; each reader only copies the text into its own event.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::RecordBatch;

#[derive(Debug)]
pub struct Published {
    pub rows: RecordBatch,
    /// The rows of groups that left an updating view (their last values), not new rows.
    pub removed: bool,
    text: OnceLock<Result<String, String>>,
}

impl Published {
    pub fn new(rows: RecordBatch) -> Arc<Self> {
        Self::with_kind(rows, false)
    }

    /// Groups that left the view, with the rows they showed.
    pub fn removal(rows: RecordBatch) -> Arc<Self> {
        Self::with_kind(rows, true)
    }

    fn with_kind(rows: RecordBatch, removed: bool) -> Arc<Self> {
        Arc::new(Self {
            rows,
            removed,
            text: OnceLock::new(),
        })
    }

    /// The rows as text: `encode` runs for the first reader that asks (every reader of
    /// a view encodes alike), the others get what it made, or why it failed.
    pub fn text(
        &self,
        encode: impl FnOnce(&RecordBatch) -> Result<String, String>,
    ) -> Result<&str, &str> {
        match self.text.get_or_init(|| encode(&self.rows)) {
            Ok(text) => Ok(text),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use datafusion::arrow::array::Int64Array;

    use super::*;

    #[test]
    fn the_text_is_made_once_for_every_reader() {
        let rows = RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2])) as _)])
            .expect("batch");
        let change = Published::new(rows);
        let made = AtomicUsize::new(0);
        let encode = |b: &RecordBatch| {
            made.fetch_add(1, Ordering::Relaxed);
            Ok(format!("{} rows", b.num_rows()))
        };
        let readers: Vec<&str> = (0..1000)
            .map(|_| change.text(encode).expect("text"))
            .collect();
        assert!(readers.iter().all(|t| *t == "2 rows"));
        assert_eq!(made.load(Ordering::Relaxed), 1);
    }
}
