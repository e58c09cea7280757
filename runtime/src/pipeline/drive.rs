//! The watermark rules every driver of an operator follows, apart from threads and
//! clocks, so the pipeline and the tests that check views against a batch oracle run
//! operators by the same rules rather than by two copies of them: an input's
//! watermark trails the largest event time of its batches; a query over several
//! inputs is at the minimum of theirs, where a finished input (at the end of time) no
//! longer holds the others back; a batch is judged by the watermark windows were
//! closed at before it, and windows close only when that watermark moves on.
//!
//! The pipeline spreads a join's inputs over one thread per source, so it uses
//! [`InputWatermark`] and [`join_watermark`] directly; [`WatermarkedInputs`] puts them
//! together for one thread that drives every input of a query in turn.

use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::max;
use weir_sql::{Collector, Operator, Watermark};

/// An input's watermark: the largest event time of its batches so far, less the delay.
/// Without a time column it only moves when the input finishes.
#[derive(Debug, Clone)]
pub struct InputWatermark {
    watermark: Watermark,
    time_column: Option<usize>,
}

impl InputWatermark {
    /// A watermark `delay_ms` behind the largest value of column `time_column` (a
    /// millisecond timestamp) of the batches observed.
    pub fn new(delay_ms: i64, time_column: Option<usize>) -> Self {
        Self {
            watermark: Watermark::new(delay_ms),
            time_column,
        }
    }

    /// The current watermark; `None` before the first event time.
    pub fn current(&self) -> Option<i64> {
        self.watermark.current()
    }

    /// Observe a batch's largest event time (null times do not count). The new
    /// watermark if it advanced.
    pub fn observe(&mut self, batch: &RecordBatch) -> Option<i64> {
        let time = self.time_column.and_then(|c| {
            batch
                .column(c)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .and_then(max)
        })?;
        self.watermark.observe(time)
    }

    /// Move to `value` if that is later (a watermark restored from a checkpoint).
    pub fn advance_to(&mut self, value: i64) -> Option<i64> {
        self.watermark.advance_to(value)
    }

    /// The input ended: the end of time, so every window closes.
    pub fn finish(&mut self) -> Option<i64> {
        self.watermark.finish()
    }
}

/// The watermark of a source read in splits (a Kafka topic's partitions): each split
/// trails its own largest event time, and the source is at the minimum over its
/// splits, leaving out those idle longer than the idle timeout, so a partition far
/// behind does not make the others' rows late and a silent one does not stall windows.
/// It never moves back: a split that comes back from idle behind it finds its rows
/// late. A source read as one split behaves exactly like one [`InputWatermark`].
#[derive(Debug, Clone)]
pub struct SplitWatermarks {
    /// A new split's watermark, before it has seen anything.
    fresh: InputWatermark,
    splits: std::collections::BTreeMap<u32, Split>,
    current: Option<i64>,
}

#[derive(Debug, Clone)]
struct Split {
    watermark: InputWatermark,
    /// Wall-clock ms of its last batch (or of when it was announced).
    last_ms: i64,
}

impl SplitWatermarks {
    pub fn new(fresh: InputWatermark) -> Self {
        Self {
            fresh,
            splits: Default::default(),
            current: None,
        }
    }

    /// The source's watermark; `None` before every split heard from has one.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Split `split` was heard from at wall-clock `ms` (rows sent, or it was
    /// announced): it holds the source back until it has a watermark or goes idle.
    pub fn heard_from(&mut self, split: u32, ms: i64) {
        let s = self.split(split, ms);
        s.last_ms = s.last_ms.max(ms);
    }

    /// Split `split` is no longer read here: it no longer counts.
    pub fn forget(&mut self, split: u32) {
        self.splits.remove(&split);
    }

    /// Split `split`'s rows `batch` were processed.
    pub fn observe(&mut self, split: u32, batch: &RecordBatch, now_ms: i64) {
        if batch.num_rows() > 0 {
            self.split(split, now_ms).watermark.observe(batch);
        }
    }

    fn split(&mut self, split: u32, now_ms: i64) -> &mut Split {
        self.splits.entry(split).or_insert_with(|| Split {
            watermark: self.fresh.clone(),
            last_ms: now_ms,
        })
    }

    /// Move to the minimum of the active splits' watermarks; the new watermark if it
    /// advanced.
    pub fn update(&mut self, now_ms: i64, idle_ms: i64) -> Option<i64> {
        let joined = join_watermark(self.splits.values().map(|s| {
            if now_ms.saturating_sub(s.last_ms) > idle_ms {
                JoinInput::Idle(s.watermark.current())
            } else {
                s.watermark
                    .current()
                    .map_or(JoinInput::Pending, JoinInput::At)
            }
        }))?;
        (Some(joined) > self.current).then(|| {
            self.current = Some(joined);
            joined
        })
    }

    /// Each split's own watermark.
    pub fn of_splits(&self) -> impl Iterator<Item = (u32, Option<i64>)> + '_ {
        self.splits.iter().map(|(k, s)| (*k, s.watermark.current()))
    }

    /// Move to `value` if that is later (a watermark restored from a checkpoint).
    pub fn advance_to(&mut self, value: i64) -> Option<i64> {
        (Some(value) > self.current).then(|| {
            self.current = Some(value);
            value
        })
    }

    /// The source ended: the end of time, so every window closes.
    pub fn finish(&mut self) -> Option<i64> {
        self.advance_to(i64::MAX)
    }
}

/// What one input of a join counts for in the join's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinInput {
    /// Idle for longer than the idle timeout (at this watermark, if it has one), or
    /// gone: it holds no other input back.
    Idle(Option<i64>),
    /// Counted, but without a watermark yet.
    Pending,
    /// Counted, at this watermark (`i64::MAX` once finished).
    At(i64),
}

/// The watermark of a query over several inputs: the minimum of the active inputs'.
/// None while an active input has no watermark yet (its first rows may be anywhere in
/// time). When every input is idle, the minimum of those that have a watermark: the
/// rows already in still close their windows (a batch slower than the idle timeout
/// makes its own input count as idle by the time it is processed), and no input that
/// is merely behind (a busy pipeline looks idle too) finds its next rows late.
pub fn join_watermark(inputs: impl IntoIterator<Item = JoinInput>) -> Option<i64> {
    let min = |a: Option<i64>, w: i64| Some(a.map_or(w, |m| m.min(w)));
    let (mut active, mut idle): (Option<i64>, Option<i64>) = (None, None);
    for input in inputs {
        match input {
            JoinInput::Idle(Some(w)) => idle = min(idle, w),
            JoinInput::Idle(None) => {}
            JoinInput::Pending => return None,
            JoinInput::At(w) => active = min(active, w),
        }
    }
    active.or(idle)
}

/// The inputs of one query driven from one thread, batch by batch (input 0 is the
/// query's first source). Unlike the pipeline it has no idle inputs: whoever calls it
/// decides the order the inputs' batches come in.
#[derive(Debug, Clone)]
pub struct WatermarkedInputs {
    inputs: Vec<InputWatermark>,
    /// How far windows are closed: the watermark the next batch is judged by.
    closed: Option<i64>,
}

impl WatermarkedInputs {
    pub fn new(inputs: Vec<InputWatermark>) -> Self {
        Self {
            inputs,
            closed: None,
        }
    }

    /// The watermark windows are closed at; `None` before every input has one.
    pub fn closed(&self) -> Option<i64> {
        self.closed
    }

    /// One batch of input `input`, as a pipeline runs it: the operator processes it
    /// under the watermark before it (rows behind that are late), then the input
    /// observes the batch's event times, and if the query's watermark moved on the
    /// operator emits what that completes.
    pub fn drive(
        &mut self,
        op: &mut dyn Operator,
        input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> weir_sql::Result<()> {
        op.process_input(input, batch, self.closed, out)?;
        if self.input(input)?.observe(batch).is_some() {
            self.close(op, out)?;
        }
        Ok(())
    }

    /// Input `input` ended: it no longer holds the others back, and windows close as
    /// far as they allow.
    pub fn finish(
        &mut self,
        op: &mut dyn Operator,
        input: usize,
        out: &mut Collector,
    ) -> weir_sql::Result<()> {
        if self.input(input)?.finish().is_some() {
            self.close(op, out)?;
        }
        Ok(())
    }

    fn input(&mut self, input: usize) -> weir_sql::Result<&mut InputWatermark> {
        let count = self.inputs.len();
        self.inputs.get_mut(input).ok_or_else(|| {
            weir_sql::Error::Execution(format!("no input {input} (the query has {count})"))
        })
    }

    fn close(&mut self, op: &mut dyn Operator, out: &mut Collector) -> weir_sql::Result<()> {
        let joined = join_watermark(
            self.inputs
                .iter()
                .map(|i| i.current().map_or(JoinInput::Pending, JoinInput::At)),
        );
        match joined {
            Some(w) if Some(w) > self.closed => {
                self.closed = Some(w);
                op.on_watermark(w, out)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::error::ArrowError;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn times(ms: &[i64]) -> Result<RecordBatch, ArrowError> {
        let schema = Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(TimestampMillisecondArray::from(ms.to_vec()))],
        )
    }

    /// Records what the driver asks of it.
    #[derive(Default)]
    struct Calls(Vec<String>);

    impl Operator for Calls {
        fn process(
            &mut self,
            _: &RecordBatch,
            _: Option<i64>,
            _: &mut Collector,
        ) -> weir_sql::Result<()> {
            unreachable!("driven through process_input")
        }

        fn process_input(
            &mut self,
            input: usize,
            batch: &RecordBatch,
            watermark: Option<i64>,
            _: &mut Collector,
        ) -> weir_sql::Result<()> {
            self.0.push(format!(
                "input {input}: {} rows under {watermark:?}",
                batch.num_rows()
            ));
            Ok(())
        }

        fn on_watermark(&mut self, watermark: i64, _: &mut Collector) -> weir_sql::Result<()> {
            self.0.push(format!("close at {watermark}"));
            Ok(())
        }
    }

    #[test]
    fn an_input_trails_its_largest_event_time() -> TestResult {
        let mut w = InputWatermark::new(1_000, Some(0));
        assert_eq!(w.observe(&times(&[5_000, 9_000, 7_000])?), Some(8_000));
        assert_eq!(w.observe(&times(&[6_000])?), None, "never goes back");
        let mut untimed = InputWatermark::new(1_000, None);
        assert_eq!(untimed.observe(&times(&[5_000])?), None);
        assert_eq!(untimed.finish(), Some(i64::MAX));
        Ok(())
    }

    #[test]
    fn a_source_in_splits_is_at_its_slowest_active_split() -> TestResult {
        let mut w = SplitWatermarks::new(InputWatermark::new(1_000, Some(0)));
        let idle = 10_000;
        // Both partitions announced: the fast one alone moves nothing.
        w.heard_from(0, 0);
        w.heard_from(1, 0);
        w.heard_from(0, 100);
        w.observe(0, &times(&[50_000])?, 100);
        assert_eq!(w.update(100, idle), None);
        // The slow partition holds the source back, not the fast one's rows.
        w.heard_from(1, 200);
        w.observe(1, &times(&[5_000])?, 200);
        assert_eq!(w.update(200, idle), Some(4_000));
        w.heard_from(0, 300);
        w.observe(0, &times(&[60_000])?, 300);
        assert_eq!(w.update(300, idle), None, "partition 1 is still at 4 s");
        // Partition 1 falls silent: after the idle timeout it no longer counts.
        assert_eq!(w.update(200 + idle + 1, idle), Some(59_000));
        // It comes back behind: the source does not go back.
        w.heard_from(1, 20_000);
        w.observe(1, &times(&[6_000])?, 20_000);
        assert_eq!(w.update(20_000, idle), None);
        assert_eq!(w.current(), Some(59_000));
        assert_eq!(
            w.of_splits().collect::<Vec<_>>(),
            [(0, Some(59_000)), (1, Some(5_000))]
        );
        // A partition handed to another process no longer counts at all.
        let mut handed = SplitWatermarks::new(InputWatermark::new(0, Some(0)));
        handed.heard_from(0, 0);
        handed.heard_from(1, 0);
        handed.observe(0, &times(&[9_000])?, 0);
        assert_eq!(handed.update(0, idle), None, "split 1 has no watermark yet");
        handed.forget(1);
        assert_eq!(handed.update(0, idle), Some(9_000));
        // A single split is an InputWatermark.
        let mut one = SplitWatermarks::new(InputWatermark::new(1_000, Some(0)));
        one.heard_from(0, 0);
        one.observe(0, &times(&[5_000, 9_000])?, 0);
        assert_eq!(one.update(0, idle), Some(8_000));
        assert_eq!(one.finish(), Some(i64::MAX));
        Ok(())
    }

    #[test]
    fn a_batch_processed_after_the_idle_timeout_still_moves_the_watermark() -> TestResult {
        // Rows heard at 0 ms, processed only at 2 s (a slow batch on a loaded machine):
        // the one split counts as idle by then, and its own rows must still close
        // windows, as one InputWatermark would.
        let mut w = SplitWatermarks::new(InputWatermark::new(0, Some(0)));
        w.heard_from(0, 0);
        w.observe(0, &times(&[5_000])?, 2_000);
        assert_eq!(w.update(2_000, 1_000), Some(5_000));
        // Two splits, both idle: the one behind still holds the source back (a split
        // looks idle while the pipeline is busy; its next rows must not be late).
        let mut both = SplitWatermarks::new(InputWatermark::new(0, Some(0)));
        both.heard_from(0, 0);
        both.heard_from(1, 0);
        both.observe(0, &times(&[9_000])?, 0);
        assert_eq!(both.update(0, 1_000), None, "split 1 has no watermark yet");
        assert_eq!(both.update(2_000, 1_000), Some(9_000), "both idle");
        both.heard_from(1, 2_000);
        both.observe(1, &times(&[5_000])?, 2_000);
        both.observe(0, &times(&[12_000])?, 2_000);
        assert_eq!(both.update(4_000, 1_000), None, "split 1 is at 5 s");
        assert_eq!(both.current(), Some(9_000));
        Ok(())
    }

    #[test]
    fn a_split_whose_rows_wait_behind_a_busy_pipeline_is_not_idle() -> TestResult {
        let idle = 1_000;
        let mut w = SplitWatermarks::new(InputWatermark::new(0, Some(0)));
        w.heard_from(0, 0);
        w.heard_from(1, 0);
        w.observe(0, &times(&[5_000])?, 0);
        w.observe(1, &times(&[5_000])?, 0);
        assert_eq!(w.update(0, idle), Some(5_000));
        // Split 1 sends its next rows at 1.5 s; they wait in the channel while split
        // 0's rows, sent at 1.9 s, take the pipeline until 2 s. Heard from as sent, split
        // 1 still holds the source back; counted by when its last rows were taken (0),
        // it would be idle, and the rows waiting would be late at 60 s.
        w.heard_from(1, 1_500);
        w.heard_from(0, 1_900);
        w.observe(0, &times(&[60_000])?, 2_000);
        assert_eq!(w.update(2_000, idle), None, "split 1 still counts");
        // Hearing of an older chunk later does not move a split back in time.
        w.heard_from(1, 100);
        assert_eq!(w.update(2_400, idle), None, "split 1 heard from at 1.5 s");
        assert_eq!(w.update(2_600, idle), Some(60_000), "split 1 idle at last");
        Ok(())
    }

    #[test]
    fn a_join_waits_for_every_counted_input() {
        use JoinInput::*;
        assert_eq!(join_watermark([At(5), At(3), Idle(Some(9))]), Some(3));
        assert_eq!(join_watermark([At(5), At(3), Idle(Some(1))]), Some(3));
        assert_eq!(join_watermark([At(5), Pending, Idle(Some(9))]), None);
        assert_eq!(join_watermark([At(5), Pending]), None);
        // Every input idle: the rows already in close their windows, as far as the
        // input furthest behind allows.
        assert_eq!(join_watermark([Idle(Some(24)), Idle(None)]), Some(24));
        assert_eq!(join_watermark([Idle(Some(24)), Idle(Some(7))]), Some(7));
        assert_eq!(join_watermark([Idle(None), Idle(None)]), None);
        assert_eq!(join_watermark([At(i64::MAX), At(7)]), Some(7));
    }

    #[test]
    fn batches_are_judged_by_the_watermark_before_them() -> TestResult {
        let mut op = Calls::default();
        let mut out = Collector::default();
        let mut inputs = WatermarkedInputs::new(vec![
            InputWatermark::new(0, Some(0)),
            InputWatermark::new(0, Some(0)),
        ]);
        inputs.drive(&mut op, 0, &times(&[10])?, &mut out)?;
        inputs.drive(&mut op, 1, &times(&[20, 30])?, &mut out)?;
        inputs.drive(&mut op, 0, &times(&[40])?, &mut out)?;
        inputs.finish(&mut op, 0, &mut out)?;
        inputs.finish(&mut op, 1, &mut out)?;
        assert_eq!(
            op.0,
            [
                "input 0: 1 rows under None",
                "input 1: 2 rows under None",
                "close at 10",
                "input 0: 1 rows under Some(10)",
                "close at 30",
                // Input 0's end moves nothing (input 1 holds the query at 30); input
                // 1's closes every window.
                "close at 9223372036854775807",
            ]
        );
        assert!(inputs.drive(&mut op, 2, &times(&[1])?, &mut out).is_err());
        Ok(())
    }
}
