//! Which of a source's columns are decoded: those its views read. A source's other
//! columns are still checked (a record is accepted or refused the same either way) but
//! hold placeholders, so a query that reads 2 of 7 columns does not build the 5 others.

use std::sync::atomic::{AtomicU64, Ordering};

/// A set of a schema's columns, by index. Columns from 64 on are always in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns(u64);

impl Columns {
    pub const ALL: Columns = Columns(u64::MAX);

    /// The columns at `indices` (and every column from 64 on).
    pub fn of(indices: impl IntoIterator<Item = usize>) -> Self {
        let bits = indices
            .into_iter()
            .filter(|&i| i < 64)
            .fold(0, |bits, i| bits | 1 << i);
        Columns(bits)
    }

    pub fn contains(self, column: usize) -> bool {
        column >= 64 || self.0 >> column & 1 == 1
    }

    /// Whether every column of `other` is in this set.
    pub fn covers(self, other: Columns) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn union(self, other: Columns) -> Columns {
        Columns(self.0 | other.0)
    }

    pub fn intersection(self, other: Columns) -> Columns {
        Columns(self.0 & other.0)
    }
}

/// The columns a source's views read now, shared by the source with its decoders.
#[derive(Debug)]
pub struct ColumnsRead(AtomicU64);

impl Default for ColumnsRead {
    fn default() -> Self {
        ColumnsRead(AtomicU64::new(Columns::ALL.0))
    }
}

impl ColumnsRead {
    pub fn get(&self) -> Columns {
        Columns(self.0.load(Ordering::Acquire))
    }

    pub fn set(&self, columns: Columns) {
        self.0.store(columns.0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_its_columns_and_every_column_past_63() {
        let two = Columns::of([0, 5]);
        assert!(two.contains(0) && two.contains(5) && two.contains(64) && two.contains(100));
        assert!(!two.contains(1) && !two.contains(63));
        assert!(Columns::ALL.covers(two) && two.covers(Columns::of([5])));
        assert!(!two.covers(Columns::of([1])) && !two.covers(Columns::ALL));
        assert_eq!(two.union(Columns::of([1])), Columns::of([0, 1, 5]));
        assert_eq!(two.intersection(Columns::of([5, 6])), Columns::of([5]));
        assert!(
            Columns::of([]).covers(Columns::of([70])),
            "past 63 is always there"
        );
    }
}
