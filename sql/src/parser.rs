//! weir's SQL statements. Our own DDL (`CREATE SOURCE`, `CREATE MATERIALIZED VIEW`,
//! `DROP`, `SHOW`) is read here with sqlparser's token-level API; everything else is
//! handed to DataFusion's parser and must be a query.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::datatypes::Field;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{self, BinaryOperator, Expr, Query, Value};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::{Result, invalid, schema, unsupported};

/// One statement of weir's SQL.
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE SOURCE [IF NOT EXISTS] name [(columns, WATERMARK FOR ...)] WITH (...)`
    CreateSource(CreateSource),
    /// `DROP SOURCE [IF EXISTS] name`
    DropSource { name: String, if_exists: bool },
    /// `SHOW SOURCES`
    ShowSources,
    /// `CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS query`
    CreateView(CreateView),
    /// `DROP [MATERIALIZED] VIEW [IF EXISTS] name`
    DropView { name: String, if_exists: bool },
    /// `SHOW VIEWS`
    ShowViews,
    /// `EXPLAIN CREATE MATERIALIZED VIEW ...`: the operators a view would run.
    ExplainCreateView(CreateView),
    /// `EXPLAIN VIEW name`: a running view's operators and their state.
    ExplainView { name: String },
    /// `CREATE STREAM [IF NOT EXISTS] name AS TRANSFORM source USING PLUGIN 'p[.t]'`
    CreateStream(CreateStream),
    /// `DROP STREAM [IF EXISTS] name`
    DropStream { name: String, if_exists: bool },
    /// `SHOW STREAMS`
    ShowStreams,
    /// `CREATE SINK [IF NOT EXISTS] name FROM view WITH (connector = ..., ...)`
    CreateSink(CreateSink),
    /// `DROP SINK [IF EXISTS] name`
    DropSink { name: String, if_exists: bool },
    /// `SHOW SINKS`
    ShowSinks,
    /// An ad hoc query (SELECT) over views.
    Query(Box<ast::Statement>),
}

/// A derived stream: a source's batches through a plugin's batch transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateStream {
    pub name: String,
    pub if_not_exists: bool,
    pub source: String,
    pub plugin: String,
    /// The transform's name; `None` means the plugin's only transform.
    pub transform: Option<String>,
}

/// A sink: where a view's changes are written.
#[derive(Debug, Clone)]
pub struct CreateSink {
    pub name: String,
    pub if_not_exists: bool,
    /// The view whose changes it writes.
    pub view: String,
    /// `WITH (...)` options, keys lower-cased, values as text.
    pub options: BTreeMap<String, String>,
}

/// A declared source: its columns, watermark and connector options.
#[derive(Debug, Clone)]
pub struct CreateSource {
    pub name: String,
    pub if_not_exists: bool,
    /// Declared columns; empty when the connector supplies them (nexmark).
    pub columns: Vec<Field>,
    pub watermark: Option<WatermarkSpec>,
    /// `WITH (...)` options, keys lower-cased, values as text.
    pub options: BTreeMap<String, String>,
}

/// `WATERMARK FOR column AS column - INTERVAL ...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkSpec {
    pub column: String,
    pub delay: Duration,
}

/// A continuous query kept up to date as a named view.
#[derive(Debug, Clone)]
pub struct CreateView {
    pub name: String,
    pub if_not_exists: bool,
    /// `WITH (...)` options before `AS`, keys lower-cased (e.g. `allowed_lateness`).
    pub options: BTreeMap<String, String>,
    pub query: Box<Query>,
}

/// Parse exactly one statement (a trailing `;` is allowed).
pub fn parse_statement(sql: &str) -> Result<Statement> {
    let mut df = DFParserBuilder::new(sql).build()?;
    let stmt = {
        let p = &mut df.parser;
        if p.parse_keywords(&[Keyword::CREATE, Keyword::SOURCE]) {
            Some(Statement::CreateSource(parse_create_source(p)?))
        } else if p.parse_keywords(&[Keyword::CREATE, Keyword::MATERIALIZED, Keyword::VIEW]) {
            Some(Statement::CreateView(parse_create_view(p)?))
        } else if p.parse_keywords(&[
            Keyword::EXPLAIN,
            Keyword::CREATE,
            Keyword::MATERIALIZED,
            Keyword::VIEW,
        ]) {
            Some(Statement::ExplainCreateView(parse_create_view(p)?))
        } else if p.parse_keywords(&[Keyword::EXPLAIN, Keyword::VIEW]) {
            Some(Statement::ExplainView {
                name: object_name(p)?,
            })
        } else if p.parse_keywords(&[Keyword::CREATE, Keyword::STREAM]) {
            Some(Statement::CreateStream(parse_create_stream(p)?))
        } else if p.parse_keywords(&[Keyword::DROP, Keyword::STREAM]) {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            Some(Statement::DropStream {
                name: object_name(p)?,
                if_exists,
            })
        } else if p.peek_keyword(Keyword::CREATE) && word_after_is(p, "sink") {
            p.next_token();
            p.next_token();
            Some(Statement::CreateSink(parse_create_sink(p)?))
        } else if p.peek_keyword(Keyword::DROP) && word_after_is(p, "sink") {
            p.next_token();
            p.next_token();
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            Some(Statement::DropSink {
                name: object_name(p)?,
                if_exists,
            })
        } else if p.parse_keywords(&[Keyword::CREATE, Keyword::VIEW]) {
            return Err(unsupported!(
                "CREATE VIEW is not supported: weir keeps views up to date, so write CREATE MATERIALIZED VIEW"
            ));
        } else if p.parse_keywords(&[Keyword::DROP, Keyword::SOURCE]) {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            Some(Statement::DropSource {
                name: object_name(p)?,
                if_exists,
            })
        } else if p.parse_keywords(&[Keyword::DROP, Keyword::MATERIALIZED, Keyword::VIEW])
            || p.parse_keywords(&[Keyword::DROP, Keyword::VIEW])
        {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            Some(Statement::DropView {
                name: object_name(p)?,
                if_exists,
            })
        } else if p.parse_keyword(Keyword::SHOW)
            && (next_word_is(p, "sources")
                || next_word_is(p, "views")
                || next_word_is(p, "streams")
                || next_word_is(p, "sinks"))
        {
            let word = p.next_token().to_string().to_ascii_lowercase();
            Some(match word.as_str() {
                "sources" => Statement::ShowSources,
                "streams" => Statement::ShowStreams,
                "sinks" => Statement::ShowSinks,
                _ => Statement::ShowViews,
            })
        } else {
            None
        }
    };
    let stmt = match stmt {
        Some(s) => s,
        None => {
            // Not ours: start over with DataFusion's own parser.
            let mut df = DFParserBuilder::new(sql).build()?;
            let parsed = df.parse_statement()?;
            expect_end(&mut df.parser)?;
            return match parsed {
                DFStatement::Statement(s)
                    if matches!(
                        *s,
                        ast::Statement::Query(_) | ast::Statement::Explain { .. }
                    ) =>
                {
                    Ok(Statement::Query(s))
                }
                other => Err(unsupported!(
                    "statement not supported: {}. weir runs CREATE SOURCE, CREATE MATERIALIZED VIEW, \
                     DROP SOURCE, DROP VIEW, CREATE SINK, DROP SINK, SHOW SOURCES, SHOW VIEWS, SHOW SINKS, EXPLAIN CREATE MATERIALIZED VIEW, \
                     EXPLAIN VIEW and SELECT over views",
                    first_words(&other.to_string())
                )),
            };
        }
    };
    expect_end(&mut df.parser)?;
    Ok(stmt)
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Whether the word after the next token is `word`.
fn word_after_is(p: &Parser, word: &str) -> bool {
    matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
}

fn next_word_is(p: &Parser, word: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
}

fn expect_end(p: &mut Parser) -> Result<()> {
    while p.consume_token(&Token::SemiColon) {}
    let t = p.peek_token();
    if t.token != Token::EOF {
        return Err(invalid!(
            "unexpected '{}' after the end of the statement at {}",
            t.token,
            t.span.start
        ));
    }
    Ok(())
}

fn object_name(p: &mut Parser) -> Result<String> {
    let name = p.parse_object_name(false)?;
    if name.0.len() != 1 {
        return Err(invalid!("name {name} must not be qualified"));
    }
    Ok(normalize(&name.0[0].to_string()))
}

/// Unquoted identifiers are case-insensitive (folded to lower case), as in DataFusion.
fn normalize(ident: &str) -> String {
    if let Some(quoted) = ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        quoted.to_string()
    } else {
        ident.to_ascii_lowercase()
    }
}

/// After `CREATE MATERIALIZED VIEW`: `[IF NOT EXISTS] name [WITH (...)] AS query`.
fn parse_create_stream(p: &mut Parser) -> Result<CreateStream> {
    let usage = "write CREATE STREAM name AS TRANSFORM source USING PLUGIN 'plugin' \
                 (or 'plugin.transform' when the plugin has several)";
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(p)?;
    if !(p.parse_keyword(Keyword::AS) && next_word_is(p, "transform")) {
        return Err(invalid!("CREATE STREAM {name}: {usage}"));
    }
    p.next_token();
    let source = object_name(p)?;
    if !(p.parse_keyword(Keyword::USING) && next_word_is(p, "plugin")) {
        return Err(invalid!("CREATE STREAM {name}: {usage}"));
    }
    p.next_token();
    let target = match p.next_token().token {
        Token::SingleQuotedString(s) => s,
        other => {
            return Err(invalid!(
                "CREATE STREAM {name}: expected a quoted plugin name, found {other}; {usage}"
            ));
        }
    };
    let (plugin, transform) = match target.split_once('.') {
        Some((p, t)) => (p.to_string(), Some(t.to_string())),
        None => (target, None),
    };
    Ok(CreateStream {
        name,
        if_not_exists,
        source,
        plugin,
        transform,
    })
}

/// After `CREATE SINK`: `[IF NOT EXISTS] name FROM view WITH (connector = ..., ...)`.
fn parse_create_sink(p: &mut Parser) -> Result<CreateSink> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(p)?;
    if !p.parse_keyword(Keyword::FROM) {
        return Err(invalid!(
            "CREATE SINK {name}: write CREATE SINK name FROM view WITH (connector = 'kafka', ...)"
        ));
    }
    let view = object_name(p)?;
    let options = parse_with(p)?;
    if !options.contains_key("connector") {
        return Err(invalid!(
            "sink {name} needs WITH (connector = 'kafka', ...)"
        ));
    }
    Ok(CreateSink {
        name,
        if_not_exists,
        view,
        options,
    })
}

fn parse_create_view(p: &mut Parser) -> Result<CreateView> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(p)?;
    let options = parse_with(p)?;
    p.expect_keyword(Keyword::AS)?;
    let query = p.parse_query()?;
    Ok(CreateView {
        name,
        if_not_exists,
        options,
        query,
    })
}

/// `WITH (key = value, ...)`, keys lower-cased, values as text; empty when absent.
/// A key is a name or dotted names: `properties.fetch.max.bytes` passes a setting on
/// to a client library.
fn parse_with(p: &mut Parser) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    if !p.parse_keyword(Keyword::WITH) {
        return Ok(options);
    }
    p.expect_token(&Token::LParen)?;
    if p.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let mut key = p.parse_identifier()?.value;
        while p.consume_token(&Token::Period) {
            key.push('.');
            key.push_str(&p.parse_identifier()?.value);
        }
        if !p.consume_token(&Token::Eq) {
            return Err(invalid!(
                "WITH options are written key = 'value' (after {key})"
            ));
        }
        let value = p.parse_expr()?;
        options.insert(key.to_ascii_lowercase(), option_value(&value)?);
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen)?;
        return Ok(options);
    }
}

/// The field metadata key naming what a `METADATA FROM 'key'` column holds.
pub const METADATA_KEY: &str = "weir.metadata";

/// `name TYPE [NOT NULL | NULL] [METADATA FROM 'key']`: a metadata column is filled by
/// the connector from the record's envelope (a Kafka message's partition, offset, ...).
fn source_column(p: &mut Parser) -> Result<Field> {
    let name = normalize(&p.parse_identifier()?.to_string());
    let data_type = schema::arrow_type(&p.parse_data_type()?)?;
    let mut nullable = true;
    let mut metadata = None;
    loop {
        if next_word_is(p, "metadata") {
            p.next_token();
            p.expect_keyword(Keyword::FROM)?;
            metadata = Some(p.parse_literal_string()?.to_ascii_lowercase());
        } else if p.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
            nullable = false;
        } else if !p.parse_keyword(Keyword::NULL) {
            break;
        }
    }
    let field = Field::new(name, data_type, nullable);
    Ok(match metadata {
        Some(key) => field.with_metadata([(METADATA_KEY.to_string(), key)].into()),
        None => field,
    })
}

fn parse_create_source(p: &mut Parser) -> Result<CreateSource> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(p)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    if p.consume_token(&Token::LParen) {
        loop {
            if next_word_is(p, "watermark") {
                p.next_token();
                if watermark.is_some() {
                    return Err(invalid!("source {name} declares more than one WATERMARK"));
                }
                p.expect_keyword(Keyword::FOR)?;
                let column = normalize(&p.parse_identifier()?.to_string());
                p.expect_keyword(Keyword::AS)?;
                let expr = p.parse_expr()?;
                watermark = Some(watermark_spec(column, &expr)?);
            } else {
                columns.push(source_column(p)?);
            }
            if p.consume_token(&Token::Comma) {
                continue;
            }
            p.expect_token(&Token::RParen)?;
            break;
        }
    }
    let options = parse_with(p)?;
    if !options.contains_key("connector") {
        return Err(invalid!(
            "source {name} needs WITH (connector = 'http' | 'nexmark', ...)"
        ));
    }
    if let Some(wm) = &watermark {
        let Some(col) = columns.iter_mut().find(|f| f.name() == &wm.column) else {
            if columns.is_empty() {
                // Connector-defined columns: checked when the connector supplies its schema.
                return Ok(CreateSource {
                    name,
                    if_not_exists,
                    columns,
                    watermark,
                    options,
                });
            }
            return Err(invalid!(
                "WATERMARK FOR {}: no such column in source {name}",
                wm.column
            ));
        };
        if !matches!(
            col.data_type(),
            datafusion::arrow::datatypes::DataType::Timestamp(_, _)
        ) {
            return Err(invalid!(
                "WATERMARK FOR {}: the column must be a TIMESTAMP, not {}",
                wm.column,
                col.data_type()
            ));
        }
        // Rows without an event time cannot be placed in a window: they are dead-lettered.
        *col = col.clone().with_nullable(false);
    }
    Ok(CreateSource {
        name,
        if_not_exists,
        columns,
        watermark,
        options,
    })
}

fn watermark_spec(column: String, expr: &Expr) -> Result<WatermarkSpec> {
    let is_col = |e: &Expr| matches!(e, Expr::Identifier(i) if normalize(&i.to_string()) == column);
    let delay = match expr {
        e if is_col(e) => Duration::ZERO,
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_col(left) => schema::interval(right)?,
        other => {
            return Err(invalid!(
                "WATERMARK FOR {column} AS {other}: write `{column} - INTERVAL 'n' SECOND` (or just `{column}`)"
            ));
        }
    };
    Ok(WatermarkSpec { column, delay })
}

fn option_value(expr: &Expr) -> Result<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
            Value::Number(n, _) => Ok(n.clone()),
            Value::Boolean(b) => Ok(b.to_string()),
            other => Err(invalid!(
                "option value {other} must be a string or a number"
            )),
        },
        Expr::Identifier(i) => Ok(i.value.clone()),
        Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => Ok(format!("-{}", option_value(expr)?)),
        other => Err(invalid!(
            "option value {other} must be a string or a number"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::DataType;

    #[test]
    fn create_drop_and_show_streams() {
        let s = parse_statement("CREATE STREAM Clean AS TRANSFORM bids USING PLUGIN 'pii.redact'")
            .expect("parses");
        let Statement::CreateStream(s) = s else {
            panic!("not a stream: {s:?}")
        };
        assert_eq!(
            s,
            CreateStream {
                name: "clean".into(),
                if_not_exists: false,
                source: "bids".into(),
                plugin: "pii".into(),
                transform: Some("redact".into()),
            }
        );
        let s = parse_statement("CREATE STREAM IF NOT EXISTS c AS TRANSFORM b USING PLUGIN 'p'")
            .expect("parses");
        assert!(matches!(
            s,
            Statement::CreateStream(CreateStream {
                if_not_exists: true,
                transform: None,
                ..
            })
        ));
        assert!(matches!(
            parse_statement("DROP STREAM IF EXISTS c").expect("parses"),
            Statement::DropStream {
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            parse_statement("SHOW STREAMS").expect("parses"),
            Statement::ShowStreams
        ));
        let e = parse_statement("CREATE STREAM c AS SELECT 1").expect_err("needs TRANSFORM");
        assert!(
            e.to_string().contains("TRANSFORM source USING PLUGIN"),
            "{e}"
        );
        let e =
            parse_statement("CREATE STREAM c AS TRANSFORM b USING PLUGIN p").expect_err("quoted");
        assert!(e.to_string().contains("quoted plugin name"), "{e}");
    }

    #[test]
    fn create_source_with_columns_watermark_and_options() {
        let s = parse_statement(
            "CREATE SOURCE Bids (auction BIGINT NOT NULL, price DOUBLE, date_time TIMESTAMP, \
             WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
             WITH (connector = 'http', max_rows = 100);",
        )
        .expect("parses");
        let Statement::CreateSource(s) = s else {
            panic!("not a source: {s:?}")
        };
        assert_eq!(s.name, "bids");
        assert_eq!(s.columns.len(), 3);
        assert_eq!(s.columns[0].data_type(), &DataType::Int64);
        assert!(!s.columns[0].is_nullable());
        assert!(s.columns[1].is_nullable());
        assert!(
            !s.columns[2].is_nullable(),
            "the watermark column is required"
        );
        assert_eq!(
            s.watermark,
            Some(WatermarkSpec {
                column: "date_time".into(),
                delay: Duration::from_secs(4)
            })
        );
        assert_eq!(s.options["connector"], "http");
        assert_eq!(s.options["max_rows"], "100");
    }

    #[test]
    fn nexmark_source_needs_no_columns() {
        let s = parse_statement(
            "CREATE SOURCE bid WITH (connector = 'nexmark', table = 'bid', seed = 3)",
        )
        .expect("parses");
        assert!(
            matches!(s, Statement::CreateSource(c) if c.columns.is_empty() && c.options["seed"] == "3")
        );
    }

    #[test]
    fn view_drop_show_and_query() {
        assert!(matches!(
            parse_statement("CREATE MATERIALIZED VIEW v AS SELECT a FROM s WHERE a > 1").expect("parses"),
            Statement::CreateView(v) if v.name == "v"
        ));
        assert!(matches!(
            parse_statement("drop view if exists v").expect("parses"),
            Statement::DropView {
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            parse_statement("DROP SOURCE s").expect("parses"),
            Statement::DropSource { .. }
        ));
        assert!(matches!(
            parse_statement("SHOW SOURCES").expect("parses"),
            Statement::ShowSources
        ));
        assert!(matches!(
            parse_statement("show views;").expect("parses"),
            Statement::ShowViews
        ));
        assert!(matches!(
            parse_statement("SELECT 1").expect("parses"),
            Statement::Query(_)
        ));
    }

    #[test]
    fn sinks_are_created_dropped_and_shown() {
        let Statement::CreateSink(s) = parse_statement(
            "CREATE SINK IF NOT EXISTS out FROM top_bids WITH (connector = 'kafka', topic = 't', key = 'auction')",
        )
        .expect("parses") else {
            panic!("a sink")
        };
        assert_eq!((s.name.as_str(), s.view.as_str()), ("out", "top_bids"));
        assert!(s.if_not_exists);
        assert_eq!(s.options["key"], "auction");
        assert!(matches!(
            parse_statement("DROP SINK IF EXISTS out").expect("parses"),
            Statement::DropSink { name, if_exists: true } if name == "out"
        ));
        assert!(matches!(
            parse_statement("show sinks").expect("parses"),
            Statement::ShowSinks
        ));
        let e = parse_statement("CREATE SINK out TO v WITH (connector = 'kafka')")
            .expect_err("FROM is needed");
        assert!(e.to_string().contains("CREATE SINK name FROM view"), "{e}");
        let e = parse_statement("CREATE SINK out FROM v").expect_err("a connector is needed");
        assert!(e.to_string().contains("connector"), "{e}");
    }

    #[test]
    fn metadata_columns_name_what_they_hold() {
        let Statement::CreateSource(s) = parse_statement(
            "CREATE SOURCE k (id BIGINT NOT NULL, part INT METADATA FROM 'partition', \
             ts TIMESTAMP NOT NULL METADATA FROM 'Timestamp', WATERMARK FOR ts AS ts) \
             WITH (connector = 'kafka', properties.fetch.max.bytes = '1048576')",
        )
        .expect("parses") else {
            panic!("a source")
        };
        assert_eq!(
            s.options
                .get("properties.fetch.max.bytes")
                .map(String::as_str),
            Some("1048576")
        );
        let meta = |i: usize| s.columns[i].metadata().get(METADATA_KEY).cloned();
        assert_eq!(meta(0), None);
        assert!(!s.columns[0].is_nullable());
        assert_eq!(meta(1).as_deref(), Some("partition"));
        assert!(s.columns[1].is_nullable());
        assert_eq!(meta(2).as_deref(), Some("timestamp"));
        assert!(!s.columns[2].is_nullable());
        let e = parse_statement("CREATE SOURCE k (a INT METADATA 'x') WITH (connector = 'kafka')")
            .expect_err("no FROM");
        assert!(e.to_string().contains("FROM"), "{e}");
    }

    #[test]
    fn helpful_errors() {
        let e = parse_statement("CREATE SOURCE s (a BIGINT) WITH (format = 'json')")
            .expect_err("no connector");
        assert!(e.to_string().contains("connector"), "{e}");
        let e = parse_statement("CREATE SOURCE s (a BIGINT, t TIMESTAMP, WATERMARK FOR t AS t + 1) WITH (connector='http')")
            .expect_err("bad watermark");
        assert!(e.to_string().contains("INTERVAL"), "{e}");
        let e = parse_statement("INSERT INTO t VALUES (1)").expect_err("not supported");
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = parse_statement("SELEC 1").expect_err("typo");
        assert!(e.to_string().contains("SELEC"), "{e}");
        let e = parse_statement("SELECT 1; SELECT 2").expect_err("two statements");
        assert!(e.to_string().contains("unexpected"), "{e}");
    }
}
