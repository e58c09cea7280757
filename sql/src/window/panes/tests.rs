use std::collections::BTreeMap;

use datafusion::arrow::array::{AsArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

use super::*;
use crate::schema::TIMESTAMP;

/// A small deterministic generator (no randomness crate in this one).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn kept_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("t", TIMESTAMP, true),
    ]))
}

fn windowed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("t", TIMESTAMP, true),
        Field::new("window_start", TIMESTAMP, false),
        Field::new("window_end", TIMESTAMP, false),
    ]))
}

fn batch(rows: &[(i64, Option<i64>)]) -> RecordBatch {
    RecordBatch::try_new(
        kept_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter().map(|r| r.1),
            )),
        ],
    )
    .expect("a batch")
}

/// The ids of a window's rows, sorted, after checking every row's window columns and
/// that its time lies in the window.
fn ids(rows: &[RecordBatch], start: i64, end: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for b in rows {
        let times = b
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        let starts = b
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        let ends = b
            .column(3)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        for i in 0..b.num_rows() {
            assert_eq!((starts.value(i), ends.value(i)), (start, end));
            assert!(times.value(i) >= start && times.value(i) < end);
        }
        ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
    }
    ids.sort_unstable();
    ids
}

/// Panes give each closing window exactly the rows a copy per window would have held:
/// those that came while it was open, rows out of order and late rows among them, for
/// tumbling and hopping windows whose size is or is not a multiple of the slide, with a
/// checkpoint's rows put back part way as the operator does.
#[test]
fn each_window_gets_the_rows_a_copy_per_window_would_hold() {
    for (seed, (slide, size)) in [(10, 10), (2, 10), (3, 10), (4, 10), (7, 7), (3, 4)]
        .into_iter()
        .enumerate()
    {
        let windowing = Windowing::hop(slide, size).expect("a windowing");
        let mut rng = Lcg(seed as u64 + 11);
        let mut panes = Panes::default();
        // The model: each window's copy of its rows' ids.
        let mut model: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        let (mut closed_at, mut clock, mut next_id, mut late_rows) = (None, 0i64, 0i64, 0usize);
        // After a restore, the watermark the pipeline restored with: none older comes.
        let mut floor = None;
        let mut windows_closed = 0;
        for round in 0..400 {
            clock += rng.below(4) as i64;
            // Rows about the clock, some far behind it, a few without a time.
            let rows: Vec<(i64, Option<i64>)> = (0..1 + rng.below(6))
                .map(|_| {
                    next_id += 1;
                    let t = match rng.below(20) {
                        0 => None,
                        1 => Some(clock - 15 - rng.below(10) as i64),
                        _ => Some(clock - rng.below(5) as i64),
                    };
                    (next_id, t)
                })
                .collect();
            // The watermark a batch comes with may be older than the one windows
            // closed at (a join's other input): the operator takes the later.
            let given = (rng.below(3) > 0).then(|| clock - 3 - rng.below(4) as i64);
            let watermark = given.max(closed_at).max(floor);
            let b = batch(&rows);
            let late = panes.hold(windowing, 1, &b, watermark).expect("holds");
            let mut model_late = 0;
            for (id, t) in &rows {
                let open: Vec<i64> = t
                    .map(|t| {
                        windowing
                            .starts(t)
                            .filter(|&s| !windowing.is_closed(s, watermark))
                            .collect()
                    })
                    .unwrap_or_default();
                if open.is_empty() {
                    model_late += 1;
                }
                for s in open {
                    model.entry(s).or_default().push(*id);
                }
            }
            let late = late.map_or(0, |l| l.len());
            assert_eq!(late, model_late, "late rows, round {round}");
            late_rows += late;

            if rng.below(3) == 0 {
                let w = (clock - 2 - rng.below(3) as i64).max(floor.unwrap_or(i64::MIN));
                let closing: Vec<i64> = panes
                    .open_starts(windowing, closed_at, Some(w))
                    .into_iter()
                    .collect();
                let expected: Vec<i64> = model
                    .keys()
                    .copied()
                    .filter(|&s| windowing.is_closed(s, Some(w)))
                    .collect();
                assert_eq!(closing, expected, "windows closing at {w}, round {round}");
                for s in closing {
                    let rows = panes
                        .window_rows(windowing, 1, &windowed_schema(), s)
                        .expect("rows");
                    let mut want = model.remove(&s).expect("in the model");
                    want.sort_unstable();
                    assert_eq!(ids(&rows, s, windowing.end(s)), want, "window {s}");
                    windows_closed += 1;
                }
                let c = closed_at.max(Some(w)).expect("a watermark");
                closed_at = Some(c);
                panes.drop_closed(windowing, c);
            }
            // Counted in one pass: every open window, and (until a restore, or with a
            // last pane cut short) no more.
            let open = panes.open_starts(windowing, closed_at, None);
            let counted = panes.open_count(windowing, closed_at);
            assert!(counted >= open.len(), "round {round}");
            if floor.is_none() && size % slide == 0 {
                assert_eq!(counted, open.len(), "round {round}");
            }
            if rng.below(40) == 0 {
                // A checkpoint: the open windows' rows, put back as the operator does.
                assert_eq!(
                    open.iter().copied().collect::<Vec<_>>(),
                    model.keys().copied().collect::<Vec<_>>()
                );
                let mut restored = Panes::default();
                if let Some(&earliest) = open.first() {
                    let came_at = Some(windowing.end(earliest - windowing.slide()));
                    for &s in &open {
                        for rows in panes
                            .window_rows(windowing, 1, &windowed_schema(), s)
                            .expect("rows")
                        {
                            restored
                                .restore(windowing, 1, s, &rows, came_at)
                                .expect("restores");
                        }
                    }
                }
                panes = restored;
                floor = closed_at;
                closed_at = None;
            }
        }
        assert!(
            windows_closed > 20 && late_rows > 10,
            "the test covers closing and lateness"
        );
    }
}

/// A batch whose rows all fall in one open pane is held whole, not copied.
#[test]
fn a_batch_in_one_pane_is_held_whole() {
    let windowing = Windowing::hop(2, 10).expect("a windowing");
    let times = TimestampMillisecondArray::from(vec![4, 5, 4]);
    let split = split_by_pane(&times, windowing, Some(0));
    assert_eq!(split.windows, vec![(4, None)]);
    assert_eq!(split.late, None);
    // Closed at 14: the window starting at 4 ends at 14, so those rows are late; the
    // pane starting at 6 is open until 16.
    let times = TimestampMillisecondArray::from(vec![Some(4), None, Some(7), Some(6)]);
    let split = split_by_pane(&times, windowing, Some(14));
    assert_eq!(
        split.windows,
        vec![(6, Some(UInt32Array::from(vec![2, 3])))]
    );
    assert_eq!(split.late, Some(UInt32Array::from(vec![0, 1])));
}
