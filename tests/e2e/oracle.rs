//! Continuous queries against a batch oracle. Each file in tests/golden/nexmark holds a
//! view and the same query for DataFusion in batch mode. The view runs incrementally over
//! a finite Nexmark bid stream, micro-batch by micro-batch with watermarks, exactly as a
//! pipeline drives it; its final rows must equal the oracle's over the same events, and a
//! summary (row count, checksum, first rows) must equal the reviewed `.out` file.
//! Regenerate the `.out` files with `WEIR_BLESS=1 cargo test -p weir-tests oracle`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::max;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use weir_runtime::source::nexmark::{Generator, GeneratorConfig, Table};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{Collector, ContinuousQuery, Statement, Watermark, WatermarkSpec, parse_statement};

/// 200,000 events (184,000 bids, 20 s of event time), seed 7.
const EVENTS: u64 = 200_000;
const DELAY_MS: i64 = 4_000;

fn bids() -> Vec<RecordBatch> {
    let mut g = Generator::new(GeneratorConfig {
        table: Table::Bid,
        seed: 7,
        events: Some(EVENTS),
        event_rate: 10_000,
        start_time_ms: 1_436_918_400_000,
    });
    std::iter::from_fn(|| g.next_batch(4_000)).collect()
}

/// Run the view incrementally; its rows at the end of the stream.
async fn stream(view: &str, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let Statement::CreateView(view) = parse_statement(view)? else {
        bail!("not a CREATE MATERIALIZED VIEW")
    };
    let watermark = WatermarkSpec {
        column: "date_time".into(),
        delay: Duration::from_millis(DELAY_MS as u64),
    };
    let catalog = SourceCatalog::from([(
        "bid".to_string(),
        SourceInfo {
            schema: Table::Bid.schema(),
            watermark: Some(watermark),
        },
    )]);
    let mut query = ContinuousQuery::plan(&view, &catalog).await?;
    let time = Table::Bid.schema().index_of("date_time")?;
    let mut wm = Watermark::new(DELAY_MS);
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
    for b in batches {
        let mut out = Collector::default();
        query.operator.process(b, wm.current(), &mut out)?;
        let times = b
            .column(time)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .context("date_time")?;
        if let Some(w) = max(times).and_then(|m| wm.observe(m)) {
            query.operator.on_watermark(w, &mut out)?;
        }
        collect(out)?;
    }
    let mut out = Collector::default();
    if let Some(w) = wm.finish() {
        query.operator.on_watermark(w, &mut out)?;
    }
    collect(out)?;
    Ok(current.map_or(rows, |all| vec![all]))
}

async fn oracle(sql: &str, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    ctx.register_table(
        "bid",
        Arc::new(MemTable::try_new(
            Table::Bid.schema(),
            vec![batches.to_vec()],
        )?),
    )?;
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
    let batches = bids();
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
