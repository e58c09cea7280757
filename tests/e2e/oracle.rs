//! Continuous queries against a batch oracle. Each file in tests/golden/nexmark holds a
//! view and the same query for DataFusion in batch mode. The view runs incrementally over
//! finite Nexmark sources (`bid`, `auction`, `person`), micro-batch by micro-batch with
//! watermarks, exactly as the pipelines drive it; its final rows must equal the oracle's over the same events, and a
//! summary (row count, checksum, first rows) must equal the reviewed `.out` file.
//! Regenerate the `.out` files with `WEIR_BLESS=1 cargo test -p weir-tests oracle`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::{max, min};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use weir_runtime::source::nexmark::{Generator, GeneratorConfig, Table};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{Collector, ContinuousQuery, Statement, Watermark, WatermarkSpec, parse_statement};

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

/// Run the view incrementally, as the runtime drives it; its rows at the end. Each
/// input it reads is a source with its own watermark; batches arrive in event-time
/// order across inputs, and the view's watermark is the minimum of its inputs'.
async fn stream(view: &str, tables: &BTreeMap<&str, Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
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
    let inputs: Vec<&[RecordBatch]> = std::iter::once(&query.source)
        .chain(&query.other_sources)
        .map(|name| {
            tables
                .get(name.as_str())
                .map(Vec::as_slice)
                .context("no such table")
        })
        .collect::<Result<_>>()?;
    let mut next = vec![0usize; inputs.len()];
    let mut marks: Vec<Watermark> = inputs.iter().map(|_| Watermark::new(DELAY_MS)).collect();
    // A finished input no longer holds the others back.
    let combined = |marks: &[Watermark], next: &[usize]| -> Option<i64> {
        marks
            .iter()
            .zip(next)
            .zip(&inputs)
            .map(|((m, &n), batches)| {
                if n >= batches.len() {
                    Some(i64::MAX)
                } else {
                    m.current()
                }
            })
            .collect::<Option<Vec<i64>>>()
            .and_then(|w| w.into_iter().min())
    };
    let (mut rows, mut current) = (Vec::new(), None);
    let mut collect = |out: Collector| -> Result<()> {
        if !out.late.is_empty() || !out.failed.is_empty() {
            bail!("late or failed rows in an in-order stream");
        }
        match out.replace {
            Some(all) => current = Some(all),
            None => rows.extend(out.rows),
        }
        Ok(())
    };
    // The input whose next batch starts earliest, each time.
    while let Some(input) = (0..inputs.len())
        .filter(|&i| next[i] < inputs[i].len())
        .min_by_key(|&i| times(&inputs[i][next[i]]).ok().and_then(min))
    {
        let batch = &inputs[input][next[input]];
        let before = combined(&marks, &next);
        let mut out = Collector::default();
        query
            .operator
            .process_input(input, batch, before, &mut out)?;
        if let Some(m) = max(times(batch)?) {
            marks[input].observe(m);
        }
        next[input] += 1;
        if let Some(w) = combined(&marks, &next).filter(|&w| Some(w) > before) {
            query.operator.on_watermark(w, &mut out)?;
        }
        collect(out)?;
    }
    Ok(current.map_or(rows, |all| vec![all]))
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

fn fnv1a(lines: &[String]) -> u64 {
    lines
        .iter()
        .flat_map(|l| l.bytes().chain([b'\n']))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[tokio::test]
async fn views_equal_the_batch_oracle_and_their_golden_files() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/nexmark");
    let bless = std::env::var("WEIR_BLESS").is_ok();
    let batches = tables();
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "golden cases missing in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let (view, oracle_sql) = text.split_once("-- oracle").context("a `-- oracle` line")?;
        let (streamed_header, streamed) = table(
            &stream(view.trim(), &batches)
                .await
                .with_context(|| file.display().to_string())?,
        )?;
        let (oracle_header, expected) = table(&oracle(oracle_sql.trim(), &batches).await?)?;
        let name = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if streamed.is_empty() {
            failures.push(format!("{name}: the view produced no rows"));
        }
        if streamed_header != oracle_header || streamed != expected {
            let first_diff = streamed.iter().zip(&expected).find(|(a, b)| a != b);
            failures.push(format!(
                "{name}: view ({} rows) differs from the oracle ({} rows)\n  headers: {streamed_header} / {oracle_header}\n  first difference: {first_diff:?}",
                streamed.len(),
                expected.len()
            ));
            continue;
        }
        let summary = format!(
            "rows: {}\nchecksum: {:016x}\n{streamed_header}\n{}\n",
            streamed.len(),
            fnv1a(&streamed),
            streamed
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let golden = file.with_extension("out");
        if bless {
            std::fs::write(&golden, &summary)?;
        } else {
            match std::fs::read_to_string(&golden) {
                Ok(g) if g == summary => {}
                Ok(g) => failures.push(format!(
                    "{name}: differs from {}:\n--- golden\n{g}--- now\n{summary}",
                    golden.display()
                )),
                Err(_) => failures.push(format!(
                    "{name}: no {} (run with WEIR_BLESS=1 and review it)",
                    golden.display()
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
