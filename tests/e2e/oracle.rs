//! Continuous queries against a batch oracle. Each file in tests/golden/nexmark holds a
//! view and the same query for DataFusion in batch mode, and is its own test, named
//! after the file. The view runs incrementally over finite Nexmark sources (`bid`,
//! `auction`, `person`), batch by batch under the pipeline's watermark rules
//! (`weir_runtime::pipeline::drive`); its final rows must equal the oracle's over the
//! same events, and a summary (row count, checksum, header, first rows, and a checksum
//! per range of the sorted rows with the range's first row) must equal the reviewed
//! `.out` file. A failure shows the rows that differ from the oracle, or a diff of the
//! summary, whose changed range lines say where the rows changed.
//! Regenerate the `.out` files with `WEIR_BLESS=1 cargo test -p weir-tests oracle`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::min;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use weir_runtime::pipeline::drive::{InputWatermark, WatermarkedInputs};
use weir_runtime::source::nexmark::{Generator, GeneratorConfig, Table};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{Collector, ContinuousQuery, KeyedRows, Statement, WatermarkSpec, parse_statement};

/// 400,000 events (368,000 bids, 24,000 auctions, 8,000 persons; 40 s of event time),
/// seed 7: each table its own source, as `CREATE SOURCE ... table = '...'` makes them.
const EVENTS: u64 = 400_000;
const DELAY_MS: i64 = 4_000;
const TABLES: [(&str, Table); 3] = [
    ("bid", Table::Bid),
    ("auction", Table::Auction),
    ("person", Table::Person),
];

fn generate(table: Table) -> Vec<RecordBatch> {
    let mut g = Generator::new(GeneratorConfig {
        table,
        seed: 7,
        events: Some(EVENTS),
        event_rate: 10_000,
        start_time_ms: 1_436_918_400_000,
    });
    std::iter::from_fn(|| g.next_batch(4_000)).collect()
}

/// Every table's batches, by name.
fn tables() -> BTreeMap<&'static str, Vec<RecordBatch>> {
    TABLES
        .iter()
        .map(|(name, t)| (*name, generate(*t)))
        .collect()
}

fn times(batch: &RecordBatch) -> Result<&TimestampMillisecondArray> {
    let c = batch.schema().index_of("date_time")?;
    batch
        .column(c)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .context("date_time")
}

/// How a view is run: its keyed operators in `parallelism` instances, and, if
/// `restored_in` is set, checkpointed halfway through its input batches and restored
/// into a new operator in that many instances, which runs the rest.
#[derive(Debug, Clone, Copy)]
struct Run {
    parallelism: usize,
    restored_in: Option<usize>,
}

const SERIAL: Run = Run {
    parallelism: 1,
    restored_in: None,
};

/// Run the view incrementally, as the runtime drives it, with the pipeline's watermark
/// rules ([`WatermarkedInputs`]); its rows at the end, and the instances its operator
/// runs in, as (asked, given), at the start and after a restore. Each input's columns
/// that the view says it does not read (`columns_read`, `other_columns_read`) hold
/// nonsense, as a source that decodes only the others leaves them. Each input it reads is a source
/// with its own watermark; batches arrive in event-time order across inputs (the
/// pipeline's watermark alignment, made deterministic), and an input ends after its
/// last batch.
async fn stream(
    view: &str,
    tables: &BTreeMap<&str, Vec<RecordBatch>>,
    run: Run,
) -> Result<(Vec<RecordBatch>, Vec<(usize, usize)>)> {
    let Statement::CreateView(view) = parse_statement(view)? else {
        bail!("not a CREATE MATERIALIZED VIEW")
    };
    let watermark = WatermarkSpec {
        column: "date_time".into(),
        delay: Duration::from_millis(DELAY_MS as u64),
    };
    let catalog: SourceCatalog = TABLES
        .iter()
        .map(|(name, t)| {
            (
                name.to_string(),
                SourceInfo {
                    schema: t.schema(),
                    watermark: Some(watermark.clone()),
                },
            )
        })
        .collect();
    let mut query = ContinuousQuery::plan(&view, &catalog).await?;
    let mut instances = vec![(
        run.parallelism,
        query.operator.set_parallelism(run.parallelism)?,
    )];
    // Every golden join has an equality key: it must run keyed, not serially.
    if run.parallelism > 1 && !query.other_sources.is_empty() {
        let keyed = weir_sql::join::keyed::KEYED;
        ensure!(
            query.operators.iter().any(|(_, d)| d.contains(keyed)),
            "a join of golden sources runs in one instance: {:?}",
            query.operators
        );
    }
    let reads = std::iter::once(query.columns_read.clone()).chain(
        (0..query.other_sources.len()).map(|i| query.other_columns_read.get(i).cloned().flatten()),
    );
    let names: Vec<&String> = std::iter::once(&query.source)
        .chain(&query.other_sources)
        .collect();
    let mut scrambled_inputs = Vec::new();
    let mut marks = Vec::new();
    for (name, read) in names.into_iter().zip(reads) {
        let batches = tables.get(name.as_str()).context("no such table")?;
        let schema = &catalog[name.as_str()].schema;
        let time = schema.index_of(&watermark.column).ok();
        scrambled_inputs.push(scrambled(batches, read, time)?);
        marks.push(InputWatermark::new(DELAY_MS, time));
    }
    let inputs: Vec<&[RecordBatch]> = scrambled_inputs.iter().map(Vec::as_slice).collect();
    let mut marks = WatermarkedInputs::new(marks);
    let mut op = query.operator;
    let mut rows = Vec::new();
    let mut by_group: Option<KeyedRows> = None;
    let mut collect = |out: Collector, by_group: &mut Option<KeyedRows>| -> Result<()> {
        if !out.late.is_empty() || !out.failed.is_empty() {
            bail!("late or failed rows in an in-order stream");
        }
        for change in &out.keyed {
            by_group
                .get_or_insert_with(|| KeyedRows::new(change.rows.schema()))
                .apply(change)?;
        }
        rows.extend(out.rows);
        Ok(())
    };
    let mut next = vec![0usize; inputs.len()];
    for (i, batches) in inputs.iter().enumerate() {
        if batches.is_empty() {
            let mut out = Collector::default();
            marks.finish(op.as_mut(), i, &mut out)?;
            collect(out, &mut by_group)?;
        }
    }
    let mut driven = 0;
    let halfway = inputs.iter().map(|i| i.len()).sum::<usize>() / 2;
    // The input whose next batch starts earliest, each time.
    while let Some(input) = (0..inputs.len())
        .filter(|&i| next[i] < inputs[i].len())
        .min_by_key(|&i| times(&inputs[i][next[i]]).ok().and_then(min))
    {
        let mut out = Collector::default();
        marks.drive(op.as_mut(), input, &inputs[input][next[input]], &mut out)?;
        next[input] += 1;
        if next[input] == inputs[input].len() {
            marks.finish(op.as_mut(), input, &mut out)?;
        }
        collect(out, &mut by_group)?;
        driven += 1;
        if let Some(restored_in) = run.restored_in.filter(|_| driven == halfway) {
            // A checkpoint, restored into a new operator at another parallelism.
            let state = op.snapshot()?;
            op = ContinuousQuery::plan(&view, &catalog).await?.operator;
            instances.push((restored_in, op.set_parallelism(restored_in)?));
            op.restore(&state)?;
            if let Some(change) = op.keyed_rows()? {
                let mut restored = KeyedRows::new(change.rows.schema());
                restored.apply(&change)?;
                by_group = Some(restored);
            }
        }
    }
    if let Some(view) = by_group {
        return Ok((vec![view.all()?.1], instances));
    }
    Ok((rows, instances))
}

/// `batches` with each column not in `read` (when given) but the watermark's `time`
/// column made nonsense: numbers and times from a formula, text a constant.
fn scrambled(
    batches: &[RecordBatch],
    read: Option<Vec<usize>>,
    time: Option<usize>,
) -> Result<Vec<RecordBatch>> {
    let Some(read) = read else {
        return Ok(batches.to_vec());
    };
    batches
        .iter()
        .map(|b| {
            let n = b.num_rows() as i64;
            let numbers = || (0..n).map(|i| 1_000_003 * i + 17);
            let columns = (0..b.num_columns())
                .map(|c| {
                    let column = b.column(c);
                    if read.contains(&c) || Some(c) == time {
                        return column.clone();
                    }
                    let nonsense: ArrayRef = match column.data_type() {
                        DataType::Int64 => Arc::new(Int64Array::from_iter_values(numbers())),
                        DataType::Utf8 => {
                            Arc::new(StringArray::from_iter_values((0..n).map(|_| "nonsense")))
                        }
                        DataType::Timestamp(TimeUnit::Millisecond, None) => {
                            Arc::new(TimestampMillisecondArray::from_iter_values(numbers()))
                        }
                        _ => column.clone(),
                    };
                    nonsense
                })
                .collect();
            Ok(RecordBatch::try_new(b.schema(), columns)?)
        })
        .collect()
}

async fn oracle(sql: &str, tables: &BTreeMap<&str, Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
    // Read numeric literals as views do: with a decimal point, exact decimals.
    let config =
        SessionConfig::new().set_bool("datafusion.sql_parser.parse_float_as_decimal", true);
    let ctx = SessionContext::new_with_config(config);
    for (name, t) in TABLES {
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(t.schema(), vec![tables[name].clone()])?),
        )?;
    }
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// The header line and the sorted row lines of a pretty-printed table.
fn table(batches: &[RecordBatch]) -> Result<(String, Vec<String>)> {
    let text = pretty_format_batches(batches)?.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.get(1).map(|s| s.to_string()).unwrap_or_default();
    let mut rows: Vec<String> = lines
        .iter()
        .skip(3)
        .filter(|l| !l.starts_with('+'))
        .map(|s| s.to_string())
        .collect();
    rows.sort();
    Ok((header, rows))
}

/// The sorted rows in (at most) 16 ranges, a line each: the range, its checksum and
/// its first row. When rows change, the lines of the ranges they fall in change, so a
/// changed `.out` says where the rows differ, not only that they do.
fn ranges(rows: &[String]) -> String {
    let size = rows.len().div_ceil(16).max(1);
    let mut out = String::from("ranges (first row, checksum):\n");
    for (i, range) in rows.chunks(size).enumerate() {
        let from = i * size;
        out.push_str(&format!(
            "{from}..{} {:016x} {}\n",
            from + range.len(),
            fnv1a(range),
            range[0]
        ));
    }
    out
}

fn fnv1a(lines: &[String]) -> u64 {
    lines
        .iter()
        .flat_map(|l| l.bytes().chain([b'\n']))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// One test per golden case, named after its file, so a case runs and fails alone
/// (`cargo test -p weir-tests --test e2e q5_hot_items`).
macro_rules! golden_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() -> Result<()> {
                golden_case(stringify!($case)).await
            }
        )*

        /// The cases above, for the check that none is left out.
        const CASES: &[&str] = &[$(stringify!($case)),*];
    };
}

/// The golden views whose operator runs in one instance at any parallelism: a bare
/// choice of columns (nothing to spread: a batch passes through as it is), and queries
/// run whole over each window's rows (a maximum or a ranking over all of a window's
/// keys), which no key of their own splits.
const RUN_IN_ONE_INSTANCE: &[&str] = &[
    "q0_passthrough",
    "q5_hot_items",
    "q5_hot_items_published",
    "q7_highest_bid",
    "tumble_row_number_top_bids",
];

golden_cases!(
    hop_bids_per_auction,
    interval_early_bids,
    q0_passthrough,
    q1_currency,
    q2_selection,
    q3_local_item_suggestion,
    q4_average_price_per_category,
    q5_hot_items,
    q5_hot_items_published,
    q7_highest_bid,
    q8_new_sellers,
    session_bidder_activity,
    tumble_bids_per_auction,
    tumble_channel_stats,
    tumble_row_number_top_bids,
    tumble_top_auctions,
    updating_per_channel,
);

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/nexmark")
}

/// A new `.sql` file must be listed in `golden_cases!`, or it would never run.
#[test]
fn every_golden_file_is_a_listed_case() -> Result<()> {
    let mut files: Vec<String> = std::fs::read_dir(golden_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().to_string()))
        .collect();
    files.sort();
    let unlisted: Vec<&String> = files
        .iter()
        .filter(|f| !CASES.contains(&f.as_str()))
        .collect();
    let missing: Vec<&&str> = CASES
        .iter()
        .filter(|c| !files.iter().any(|f| f == *c))
        .collect();
    ensure!(
        unlisted.is_empty() && missing.is_empty(),
        "golden files not listed in golden_cases!: {unlisted:?}; listed cases without a .sql file: {missing:?}"
    );
    Ok(())
}

/// The generated events, once per test binary: every case reads the same.
fn shared_tables() -> &'static BTreeMap<&'static str, Vec<RecordBatch>> {
    static TABLES_BY_NAME: LazyLock<BTreeMap<&'static str, Vec<RecordBatch>>> =
        LazyLock::new(tables);
    &TABLES_BY_NAME
}

/// Golden case `name`: the view's final rows equal the batch oracle's, and their
/// summary equals the reviewed `.out` file (written instead with `WEIR_BLESS=1`).
async fn golden_case(name: &str) -> Result<()> {
    let file = golden_dir().join(format!("{name}.sql"));
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    let (view, oracle_sql) = text
        .split_once("-- oracle")
        .with_context(|| format!("{}: a `-- oracle` line", file.display()))?;
    let batches = shared_tables();
    let (serial, _) = stream(view.trim(), batches, SERIAL)
        .await
        .with_context(|| file.display().to_string())?;
    let (streamed_header, streamed) = table(&serial)?;
    // Keyed operators in 3 parallel instances (uninterrupted; and checkpointed halfway
    // and restored in 2), and a serial run checkpointed halfway and restored in 3: the
    // same rows as the serial, uninterrupted run.
    for (parallelism, restored_in) in [(3, None), (3, Some(2)), (1, Some(3))] {
        let run = Run {
            parallelism,
            restored_in,
        };
        let (rows, instances) = stream(view.trim(), batches, run)
            .await
            .with_context(|| format!("{} {run:?}", file.display()))?;
        // The parallel runs (and restores) must be parallel: a view that fell back to
        // one instance would compare a serial run with itself.
        let in_one = RUN_IN_ONE_INSTANCE.contains(&name);
        for (asked, given) in instances.into_iter().filter(|&(asked, _)| asked > 1) {
            ensure!(
                (given > 1) != in_one,
                "{name}: {run:?}: its operator runs in {given} instances when asked for {asked}, {}",
                if in_one {
                    "yet RUN_IN_ONE_INSTANCE lists it"
                } else {
                    "and RUN_IN_ONE_INSTANCE does not list it"
                }
            );
        }
        let (_, in_parallel) = table(&rows)?;
        if in_parallel != streamed {
            bail!(
                "{name}: {run:?}: the view ({} rows) differs from the serial run ({} rows)\n{streamed_header}\n{}",
                in_parallel.len(),
                streamed.len(),
                row_difference(&in_parallel, &streamed)
            );
        }
    }
    let (oracle_header, expected) = table(&oracle(oracle_sql.trim(), batches).await?)?;
    ensure!(!streamed.is_empty(), "{name}: the view produced no rows");
    ensure!(
        streamed_header == oracle_header,
        "{name}: the view's columns differ from the oracle's\n  view:   {streamed_header}\n  oracle: {oracle_header}"
    );
    if streamed != expected {
        bail!(
            "{name}: the view ({} rows) differs from the oracle ({} rows)\n{streamed_header}\n{}",
            streamed.len(),
            expected.len(),
            row_difference(&streamed, &expected)
        );
    }
    let summary = format!(
        "rows: {}\nchecksum: {:016x}\n{streamed_header}\n{}\n{}",
        streamed.len(),
        fnv1a(&streamed),
        streamed
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        ranges(&streamed)
    );
    let golden = file.with_extension("out");
    if std::env::var("WEIR_BLESS").is_ok() {
        std::fs::write(&golden, &summary)?;
        return Ok(());
    }
    let Ok(reviewed) = std::fs::read_to_string(&golden) else {
        bail!(
            "{name}: no {} (run with WEIR_BLESS=1 and review it)",
            golden.display()
        );
    };
    ensure!(
        reviewed == summary,
        "{name}: the view equals the oracle, but not {} (- reviewed, + now; WEIR_BLESS=1 rewrites it):\n{}",
        golden.display(),
        line_diff(&reviewed, &summary)
    );
    Ok(())
}

/// Rows only in the view and rows only in the oracle (both sorted), the first few of
/// each with their counts.
fn row_difference(view: &[String], oracle: &[String]) -> String {
    const SHOWN: usize = 10;
    let (mut only_view, mut only_oracle) = (Vec::new(), Vec::new());
    let (mut v, mut o) = (view.iter().peekable(), oracle.iter().peekable());
    loop {
        match (v.peek(), o.peek()) {
            (Some(a), Some(b)) if a == b => {
                v.next();
                o.next();
            }
            (Some(a), Some(b)) if a < b => only_view.extend(v.next()),
            (Some(_), Some(_)) | (None, Some(_)) => only_oracle.extend(o.next()),
            (Some(_), None) => only_view.extend(v.next()),
            (None, None) => break,
        }
    }
    let list = |what: &str, rows: &[&String]| {
        let more = rows.len().saturating_sub(SHOWN);
        let mut s = format!("{} rows only in the {what}", rows.len());
        if !rows.is_empty() {
            s.push(':');
        }
        for r in rows.iter().take(SHOWN) {
            s.push_str(&format!("\n  {r}"));
        }
        if more > 0 {
            s.push_str(&format!("\n  ... and {more} more"));
        }
        s
    };
    format!(
        "{}\n{}",
        list("view", &only_view),
        list("oracle", &only_oracle)
    )
}

/// A line diff of two short texts (longest common subsequence): `-` lines only in
/// `old`, `+` lines only in `new`, the rest indented.
fn line_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // common[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out.join("\n")
}
