//! The window table functions of a view's query: `TUMBLE(src, col, size)`,
//! `HOP(src, col, slide, size)` and `SESSION(src, col, gap)` are rewritten to a plain
//! reference to `src`, which is then planned with two more columns, `window_start` and
//! `window_end`.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, ObjectNamePart, TableFactor, VisitMut, VisitorMut,
};

use super::SourceInfo;
use crate::schema::{TIMESTAMP, interval};
use crate::{Error, Result, invalid, unsupported};

/// A `TUMBLE(src, col, size)` or `HOP(src, col, slide, size)` found in the query.
#[derive(Debug, Clone)]
pub(crate) struct WindowCall {
    pub(crate) function: &'static str,
    pub(crate) source: String,
    pub(crate) time_column: String,
    pub(crate) slide: std::time::Duration,
    pub(crate) size: std::time::Duration,
}

/// Rewrites window table functions to plain table references and remembers them.
#[derive(Default)]
pub(crate) struct WindowRewriter {
    pub(crate) windows: Vec<WindowCall>,
    pub(crate) error: Option<Error>,
}

impl VisitorMut for WindowRewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table { name, args, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let Some(fargs) = args.as_ref() else {
            return ControlFlow::Continue(());
        };
        let function = name.to_string().to_ascii_lowercase();
        let result = match function.as_str() {
            "tumble" => window_call("TUMBLE", &fargs.args),
            "hop" => window_call("HOP", &fargs.args),
            "session" => window_call("SESSION", &fargs.args),
            other => Err(unsupported!(
                "table function {other}(...) is not supported; use TUMBLE(source, time_column, size)"
            )),
        };
        match result {
            Ok(call) => {
                *name = ast::ObjectName(vec![ObjectNamePart::Identifier(ast::Ident::new(
                    call.source.clone(),
                ))]);
                *args = None;
                self.windows.push(call);
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn window_call(function: &'static str, args: &[FunctionArg]) -> Result<WindowCall> {
    let exprs: Vec<&ast::Expr> = args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let ident = |e: &ast::Expr, what: &str| match e {
        ast::Expr::Identifier(i) => Ok(if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_ascii_lowercase()
        }),
        other => Err(invalid!(
            "{function}'s {what} must be a name, found {other}"
        )),
    };
    let (source, time, slide, size) = match (function, exprs.as_slice()) {
        ("TUMBLE", [source, time, size]) => (source, time, size, size),
        ("HOP", [source, time, slide, size]) => (source, time, slide, size),
        ("SESSION", [source, time, gap]) => (source, time, gap, gap),
        ("SESSION", _) => {
            return Err(invalid!(
                "SESSION takes three arguments: SESSION(source, time_column, gap), e.g. \
                 SESSION(bids, date_time, INTERVAL '10' SECOND)"
            ));
        }
        ("TUMBLE", _) => {
            return Err(invalid!(
                "TUMBLE takes three arguments: TUMBLE(source, time_column, INTERVAL '10' SECOND)"
            ));
        }
        _ => {
            return Err(invalid!(
                "HOP takes four arguments: HOP(source, time_column, slide, size), e.g. \
                 HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            ));
        }
    };
    Ok(WindowCall {
        function,
        source: ident(source, "first argument (the source)")?,
        time_column: ident(time, "second argument (the time column)")?,
        slide: interval(slide)?,
        size: interval(size)?,
    })
}

/// Every table a view's query reads, by name: the sources inside `TUMBLE(...)` and
/// `HOP(...)`, not the window functions' own names (a view may be called `hop`).
pub fn view_relations(query: &ast::Query) -> Vec<String> {
    let mut query = query.clone();
    let _ = query.visit(&mut WindowRewriter::default());
    relations(&query)
}

/// Every table the query reads, by name.
pub fn relations(query: &ast::Query) -> Vec<String> {
    let mut names = Vec::new();
    let _ = ast::visit_relations(query, |name| {
        // Unquoted names fold to lower case, quoted ones keep theirs (as DataFusion does).
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|part| match part.as_ident() {
                Some(i) if i.quote_style.is_some() => i.value.clone(),
                Some(i) => i.value.to_ascii_lowercase(),
                None => part.to_string(),
            })
            .collect();
        names.push(parts.join("."));
        ControlFlow::<()>::Continue(())
    });
    names
}

pub(crate) fn same_window(a: &WindowCall, b: &WindowCall) -> bool {
    (a.function, &a.source, &a.time_column, a.slide, a.size)
        == (b.function, &b.source, &b.time_column, b.slide, b.size)
}

/// The schema a windowed source is planned with (its columns, then `window_start` and
/// `window_end`) and the index of its time column, which must be a TIMESTAMP with a
/// declared watermark.
pub(crate) fn windowed_schema(
    source: &str,
    info: &SourceInfo,
    t: &WindowCall,
) -> Result<(SchemaRef, usize)> {
    let time_column = info.schema.index_of(&t.time_column).map_err(|_| {
        invalid!(
            "{}: source {source} has no column {}",
            t.function,
            t.time_column
        )
    })?;
    if info.schema.field(time_column).data_type() != &TIMESTAMP {
        return Err(invalid!(
            "{}: column {} must be a TIMESTAMP",
            t.function,
            t.time_column
        ));
    }
    if info
        .watermark
        .as_ref()
        .is_none_or(|w| w.column != t.time_column)
    {
        return Err(invalid!(
            "{function} over {source}.{col} needs a watermark on that column: declare \
             WATERMARK FOR {col} AS {col} - INTERVAL '5' SECOND in CREATE SOURCE",
            function = t.function,
            col = t.time_column
        ));
    }
    let mut fields: Vec<Field> = info
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("window_start", TIMESTAMP, false));
    fields.push(Field::new("window_end", TIMESTAMP, false));
    Ok((Arc::new(Schema::new(fields)), time_column))
}
