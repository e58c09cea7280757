//! The SQL front end (weir's parser, then the window, join and session rewrites before
//! DataFusion plans): any text is a statement or an error, never a panic, and an error's
//! position lies within the text. The seeds are the statements of tests/sql/corpus.sql.

use proptest::prelude::*;
use weir_sql::parser::{CreateView, Statement, parse_statement};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{ContinuousQuery, Error};

use super::{config, mutate, mutations};

const CORPUS: &str = include_str!("../../../tests/sql/corpus.sql");

/// The corpus reads `bids` as the Nexmark generator declares it.
const BIDS: &str = "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
    url VARCHAR, date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time) \
    WITH (connector = 'http')";

const TOKENS: &[&str] = &[
    " SELECT ",
    " FROM ",
    " WHERE ",
    " GROUP BY ",
    " JOIN ",
    " ON ",
    " AS ",
    "(",
    ")",
    ",",
    "'",
    "\"",
    "*",
    " TUMBLE(",
    " HOP(",
    " SESSION(",
    " INTERVAL '1' SECOND",
    " window_start",
    " window_end",
    " count(*)",
    " NULL",
    " -",
    "::",
    ";",
    "\n",
    "--",
    "/*",
    "\u{e9}",
    "$1",
    "?",
];

fn statements() -> Vec<&'static str> {
    CORPUS
        .split(";\n")
        .map(|s| {
            let mut s = s.trim();
            while s.starts_with("--") {
                s = s.split_once('\n').map_or("", |(_, rest)| rest).trim();
            }
            s
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn catalog() -> SourceCatalog {
    statements()
        .into_iter()
        .chain([BIDS])
        .filter_map(|s| match parse_statement(s) {
            Ok(Statement::CreateSource(c)) if !c.columns.is_empty() => Some((
                c.name,
                SourceInfo {
                    schema: std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(
                        c.columns,
                    )),
                    watermark: c.watermark,
                },
            )),
            _ => None,
        })
        .collect()
}

/// An error's position, if it has one, lies within `sql`.
fn check_position(e: &Error, sql: &str) {
    if let Some(span) = e.span() {
        let lines = sql.split('\n').count() as u64 + 1;
        assert!(
            span.line >= 1 && span.line <= lines && span.end_line <= lines,
            "{span:?} lies outside a text of {lines} lines: {e}"
        );
    }
}

fn plan(view: &CreateView, sources: &SourceCatalog, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(ContinuousQuery::plan(view, sources)) {
        check_position(&e, sql);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_sql_mutated_statements_parse_and_plan_or_fail_cleanly(
        which in any::<prop::sample::Index>(),
        changes in mutations(TOKENS),
    ) {
        let seeds = statements();
        let seed = seeds[which.index(seeds.len())];
        let sql = String::from_utf8_lossy(&mutate(seed.as_bytes(), &changes)).into_owned();
        match parse_statement(&sql) {
            Ok(Statement::CreateView(view) | Statement::ExplainCreateView(view)) => {
                plan(&view, &catalog(), &sql);
            }
            Ok(_) => {}
            Err(e) => check_position(&e, &sql),
        }
    }

    #[test]
    fn fuzz_sql_random_text_is_an_error_not_a_panic(text in any::<String>()) {
        if let Err(e) = parse_statement(&text) {
            check_position(&e, &text);
        }
    }
}

#[test]
fn the_corpus_views_plan() {
    let sources = catalog();
    assert!(sources.contains_key("events") && sources.contains_key("bids"));
    let mut planned = 0;
    for s in statements() {
        if let Ok(Statement::CreateView(view)) = parse_statement(s)
            && view.query.to_string().contains("TUMBLE")
        {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime
                .block_on(ContinuousQuery::plan(&view, &sources))
                .expect("plans");
            planned += 1;
        }
    }
    assert!(
        planned >= 3,
        "the seeds reach the planner ({planned} planned)"
    );
}
