//! `weir bench`: throughput figures anyone can reproduce with the binary alone. A run
//! starts an engine in this process (no HTTP, no checkpoints), creates the sources and
//! one view, and times it from the view's creation until every source has finished,
//! with a progress bar on stderr. It reports events/s, events/s per core actually used
//! (process CPU time), peak memory, the view's end-to-end latency percentiles (exact:
//! every change's latency is kept), and in the same run the ceiling: the Nexmark
//! generator alone, or the JSON decoder alone over the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use weir_runtime::RuntimeConfig;
use weir_runtime::decode::Columns;
use weir_runtime::engine::Engine;
use weir_runtime::source::SourceState;
use weir_runtime::source::nexmark::{Table, chunk_events};

mod ceiling;

use ceiling::{decoder_ceiling, generator_ceiling};

/// The Nexmark queries `weir bench nexmark` knows: name, the Nexmark tables it reads,
/// and its golden test file (the view is the file's first statement).
const QUERIES: &[(&str, &[&str], &str)] = &[
    (
        "q0",
        &["bid"],
        include_str!("../../tests/golden/nexmark/q0_passthrough.sql"),
    ),
    (
        "q1",
        &["bid"],
        include_str!("../../tests/golden/nexmark/q1_currency.sql"),
    ),
    (
        "q2",
        &["bid"],
        include_str!("../../tests/golden/nexmark/q2_selection.sql"),
    ),
    (
        "q3",
        &["person", "auction"],
        include_str!("../../tests/golden/nexmark/q3_local_item_suggestion.sql"),
    ),
    (
        "q4",
        &["auction", "bid"],
        include_str!("../../tests/golden/nexmark/q4_average_price_per_category.sql"),
    ),
    (
        "q5",
        &["bid"],
        include_str!("../../tests/golden/nexmark/q5_hot_items.sql"),
    ),
    (
        "q7",
        &["bid"],
        include_str!("../../tests/golden/nexmark/q7_highest_bid.sql"),
    ),
    (
        "q8",
        &["person", "auction"],
        include_str!("../../tests/golden/nexmark/q8_new_sellers.sql"),
    ),
    (
        "session",
        &["bid"],
        include_str!("../../tests/golden/nexmark/session_bidder_activity.sql"),
    ),
];

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub query: String,
    /// Cores the work was spread over (`runtime.parallelism`).
    pub parallelism: usize,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Process CPU time over wall time.
    pub cores_used: f64,
    pub events_per_core_second: f64,
    pub peak_memory_mib: f64,
    /// End-to-end latency of the view's changes (first record of a batch received to
    /// the change published), over every change: nearest-rank percentiles and the most.
    pub changes: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// The input alone: the generator, or the decoder over the file.
    pub ceiling_events_per_second: f64,
}

/// `weir bench nexmark`.
pub fn nexmark(
    query: &str,
    events: u64,
    parallelism: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    if events == 0 {
        bail!("--events must be at least 1: a benchmark runs a finite stream");
    }
    let config = with_parallelism(RuntimeConfig::default(), parallelism);
    let chosen: Vec<_> = QUERIES
        .iter()
        .filter(|(name, _, _)| query == "all" || *name == query)
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = QUERIES.iter().map(|q| q.0).collect();
        bail!(
            "no query {query}: choose one of {} or all",
            names.join(", ")
        );
    }
    for (name, tables, file) in chosen {
        let rows = tables
            .iter()
            .map(|t| Ok(nexmark_table(t)?.rows_in(events)))
            .sum::<anyhow::Result<u64>>()?;
        let sources = generators(tables, events);
        let (mut figures, columns_read) =
            run(name, &sources, view_of(file)?, config.clone(), rows)?;
        // After the run, in a process as warm as the run was.
        let chunk = chunk_events(config.batch.max_rows, figures.parallelism, 0);
        let tables: Vec<_> = tables.iter().copied().zip(columns_read).collect();
        figures.ceiling_events_per_second = generator_ceiling(&tables, events, chunk)?;
        print(&figures, json)?;
    }
    Ok(())
}

/// The sources of a run: an unthrottled generator of each table, `events` events long.
fn generators(tables: &[&str], events: u64) -> Vec<String> {
    (tables.iter())
        .map(|t| {
            format!(
                "CREATE SOURCE {t} WITH (connector = 'nexmark', table = '{t}', events = {events}, \
                 seed = 1, event_rate = 100000)"
            )
        })
        .collect()
}

/// `weir bench file`: a view over a newline-delimited JSON file of Nexmark `table` rows.
pub fn file(
    input: &Path,
    table: &str,
    query: &str,
    parallelism: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let table_kind = nexmark_table(table)?;
    let input = std::fs::canonicalize(input).with_context(|| format!("{}", input.display()))?;
    let (dir, name) = (
        input.parent().map(PathBuf::from).unwrap_or_default(),
        input
            .file_name()
            .and_then(|n| n.to_str())
            .context("a file name")?,
    );
    let view = match QUERIES.iter().find(|q| q.0 == query) {
        Some((_, _, file)) => view_of(file)?.to_string(),
        None if query.trim_start().to_uppercase().starts_with("SELECT") => {
            format!("CREATE MATERIALIZED VIEW bench AS {query}")
        }
        None => bail!("--sql takes a SELECT over `{table}`, or a query name (q0, q1, ...)"),
    };
    let columns = table_kind
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
        .collect::<Vec<_>>()
        .join(", ");
    let source = format!(
        "CREATE SOURCE {table} ({columns}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
         WITH (connector = 'file', path = '{name}')"
    );
    let config = with_parallelism(
        RuntimeConfig {
            files_dir: Some(dir),
            ..RuntimeConfig::default()
        },
        parallelism,
    );
    let (mut figures, _) = run(query, &[source], &view, config, lines_of(&input)?)?;
    figures.ceiling_events_per_second = decoder_ceiling(&input, table_kind)?;
    print(&figures, json)
}

/// The lines of a file (a last one without a newline too), for the progress bar; read
/// now, so the run starts on a warm page cache as the ceiling does.
fn lines_of(path: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut block = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(lines + u64::from(last != b'\n'));
        }
        lines += memchr::memchr_iter(b'\n', &block[..n]).count() as u64;
        last = block[n - 1];
    }
}

/// `config` spread over `parallelism` cores (default: every core). The worker pool is
/// sized once per process, by the first engine.
fn with_parallelism(config: RuntimeConfig, parallelism: Option<usize>) -> RuntimeConfig {
    RuntimeConfig {
        parallelism: parallelism.unwrap_or(config.parallelism).max(1),
        ..config
    }
}

/// A Nexmark table by the name SQL uses for it.
fn nexmark_table(name: &str) -> anyhow::Result<Table> {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .with_context(|| format!("no Nexmark table {name}: bid, person or auction"))
}

/// The first statement of a golden file (the view; the oracle follows).
fn view_of(file: &str) -> anyhow::Result<&str> {
    let text = file.split("-- oracle").next().unwrap_or(file);
    let start = text
        .find("CREATE MATERIALIZED VIEW")
        .context("no view in the query file")?;
    Ok(text[start..].trim().trim_end_matches(';'))
}

fn sql_type(t: &arrow::datatypes::DataType) -> &'static str {
    use arrow::datatypes::DataType::*;
    match t {
        Int64 | Int32 => "BIGINT",
        Float64 => "DOUBLE",
        Timestamp(..) => "TIMESTAMP",
        Boolean => "BOOLEAN",
        _ => "VARCHAR",
    }
}

fn run(
    query: &str,
    sources: &[String],
    view: &str,
    config: RuntimeConfig,
    expected_events: u64,
) -> anyhow::Result<(Figures, Vec<Columns>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let engine = Engine::in_memory(config);
        engine.metrics().keep_latency_samples();
        let mut names = Vec::new();
        for sql in sources {
            engine.execute(sql).await.with_context(|| sql.clone())?;
            names.push(
                sql.split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        let view_name = view
            .split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .to_string();
        crate::process::reset_peak_memory();
        let (cpu, wall) = (crate::process::cpu_seconds(), Instant::now());
        engine
            .execute(view)
            .await
            .with_context(|| view.to_string())?;
        let mut progress = Progress::new(query, expected_events);
        let events = loop {
            let statuses: Vec<_> = names
                .iter()
                .map(|n| engine.source(n).map(|s| s.status()))
                .collect::<Result<_, _>>()?;
            let events = statuses.iter().map(|s| s.records_in).sum::<u64>();
            // Dead letters are input read too.
            progress.set(events + statuses.iter().map(|s| s.dead_letters).sum::<u64>());
            if statuses.iter().all(|s| s.status == SourceState::Finished) {
                break events;
            }
            if let Some(s) = statuses.iter().find(|s| s.status == SourceState::Stopped) {
                bail!("source {} stopped", s.name);
            }
            if let Some(s) = statuses.iter().find(|s| s.status == SourceState::Failed) {
                bail!(
                    "source {} failed: {}",
                    s.name,
                    s.error.as_deref().unwrap_or("see the log")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        progress.finish();
        let seconds = wall.elapsed().as_secs_f64();
        let cpu = crate::process::cpu_seconds() - cpu;
        let latencies = engine
            .metrics()
            .latency_samples(&view_name)
            .unwrap_or_default();
        let latencies_len = latencies.len();
        let [p50, p99, max] = percentiles(latencies, [0.5, 0.99, 1.0]);
        let columns_read = (names.iter())
            .map(|n| engine.source(n).map(|s| s.columns_read()))
            .collect::<Result<_, _>>()?;
        engine.shut_down();
        let figures = Figures {
            query: query.to_string(),
            parallelism: rayon::current_num_threads(),
            events,
            seconds,
            events_per_second: events as f64 / seconds,
            cores_used: cpu / seconds,
            events_per_core_second: events as f64 / cpu.max(1e-9),
            peak_memory_mib: crate::process::memory_kib("VmHWM:") as f64 / 1024.0,
            changes: latencies_len,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            latency_max_ms: max,
            ceiling_events_per_second: 0.0,
        };
        Ok((figures, columns_read))
    })
}

fn print(f: &Figures, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(f)?);
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    println!(
        "{} (parallelism {}): {} events in {:.2} s = {:.0} events/s; {:.2} cores used = {:.0} events/s per core; \
         peak memory {:.0} MiB; latency over {} changes p50 {}, p99 {}, max {}; ceiling (input alone) {:.0} events/s",
        f.query,
        f.parallelism,
        f.events,
        f.seconds,
        f.events_per_second,
        f.cores_used,
        f.events_per_core_second,
        f.peak_memory_mib,
        f.changes,
        ms(f.latency_p50_ms),
        ms(f.latency_p99_ms),
        ms(f.latency_max_ms),
        f.ceiling_events_per_second
    );
    Ok(())
}

/// Progress towards `total` events on stderr: a bar with the rate and the time left on
/// a terminal, otherwise (a log) a line a second.
struct Progress {
    bar: indicatif::ProgressBar,
    /// When the last line was written, where lines are written.
    last_line: Option<Instant>,
    query: String,
    started: Instant,
}

impl Progress {
    fn new(query: &str, total: u64) -> Self {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_length(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {human_pos}/{human_len} events, {msg}, {elapsed} ({eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(query.to_string());
        Self {
            bar,
            last_line: (!terminal).then(Instant::now),
            query: query.to_string(),
            started: Instant::now(),
        }
    }

    fn set(&mut self, events: u64) {
        self.bar.set_position(events);
        let rate = events as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar
            .set_message(format!("{:.2} M events/s", rate / 1e6));
        if self
            .last_line
            .is_some_and(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.line();
        }
    }

    fn line(&mut self) {
        let (events, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let seconds = self.started.elapsed().as_secs_f64();
        eprintln!(
            "{}: {events}/{total} events ({:.0}%) in {seconds:.1} s, {:.0} events/s",
            self.query,
            events as f64 * 100.0 / total.max(1) as f64,
            events as f64 / seconds.max(1e-9)
        );
        self.last_line = Some(Instant::now());
    }

    fn finish(mut self) {
        self.bar.finish();
        if self.last_line.is_some() {
            self.line();
        }
    }
}

/// The nearest-rank percentiles `qs` (0 to 1) of `seconds`, in milliseconds; `None`
/// when there is no sample.
fn percentiles<const N: usize>(mut seconds: Vec<f64>, qs: [f64; N]) -> [Option<f64>; N] {
    seconds.sort_by(f64::total_cmp);
    qs.map(|q| {
        let rank = ((seconds.len() as f64 * q).ceil() as usize).max(1);
        seconds.get(rank - 1).map(|s| s * 1000.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_file_holds_a_view() {
        for (name, _, file) in QUERIES {
            let view = view_of(file).expect("a view");
            assert!(view.starts_with("CREATE MATERIALIZED VIEW"), "{name}");
            assert!(!view.contains("-- oracle"), "{name}");
        }
    }

    /// The ceiling makes what the run's source made: q2 reads no `extra` column (the
    /// padding, about half of the generator's work), so the ceiling makes none either.
    #[test]
    fn a_run_says_which_columns_its_sources_made_for_the_ceiling() -> anyhow::Result<()> {
        let bid = nexmark_table("bid")?.schema();
        let column = |name: &str| bid.index_of(name);
        for (query, extra_read) in [("q2", false), ("q0", true)] {
            let (_, _, file) = QUERIES.iter().find(|q| q.0 == query).expect("a query");
            let (figures, read) = run(
                query,
                &generators(&["bid"], 20_000),
                view_of(file)?,
                RuntimeConfig::default(),
                nexmark_table("bid")?.rows_in(20_000),
            )?;
            assert!(figures.events > 0, "{query}");
            assert_eq!(read.len(), 1, "{query}: one source");
            assert_eq!(read[0].contains(column("extra")?), extra_read, "{query}");
            assert!(read[0].contains(column("auction")?), "{query}");
        }
        Ok(())
    }

    #[test]
    fn a_file_has_its_lines_counted_a_last_one_without_newline_too() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        for (text, lines) in [("", 0), ("a\n", 1), ("a\nb", 2), ("a\n\nb\n", 3)] {
            std::fs::write(&path, text)?;
            assert_eq!(lines_of(&path)?, lines, "{text:?}");
        }
        Ok(())
    }

    #[test]
    fn percentiles_are_the_nearest_rank_of_every_sample() {
        // 1 ms to 200 ms, shuffled.
        let samples: Vec<f64> = (1..=200).rev().map(|ms| ms as f64 / 1000.0).collect();
        let [p50, p99, max] = percentiles(samples, [0.5, 0.99, 1.0]);
        let ms = |v: Option<f64>| v.map(|v| v.round());
        assert_eq!(
            (ms(p50), ms(p99), ms(max)),
            (Some(100.0), Some(198.0), Some(200.0))
        );
        assert_eq!(
            percentiles(vec![0.007], [0.5, 0.99]),
            [Some(7.0), Some(7.0)]
        );
        assert_eq!(percentiles(Vec::new(), [0.5]), [None]);
    }
}
