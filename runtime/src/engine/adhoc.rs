//! Ad hoc queries: a SELECT over views' current rows, planned and run by DataFusion.
//! Sources and streams are unbounded and cannot be queried directly; DDL, DML and
//! file or URL tables are refused.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;

use super::{Engine, SqlOutput};
use crate::{Error, Result};

/// The session ad hoc SQL runs in: it reads views only (no file formats, no URL tables).
/// Literals with a decimal point are exact decimals, as in views (and PostgreSQL).
pub(super) fn adhoc_context() -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(false);
    config.options_mut().sql_parser.parse_float_as_decimal = true;
    config.options_mut().sql_parser.collect_spans = true;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_table_factories(Default::default())
        .build();
    SessionContext::new_with_state(state)
}

impl Engine {
    pub(super) async fn query(&self, stmt: ast::Statement) -> Result<SqlOutput> {
        if let ast::Statement::Query(q) = &stmt {
            // The sources inside TUMBLE(...) and HOP(...) count too.
            for name in weir_sql::planner::view_relations(q) {
                if self.inner.sources.contains_key(&name) || self.inner.streams.contains_key(&name)
                {
                    return Err(Error::BadRequest(format!(
                        "{name} is a source or stream (unbounded) and cannot be queried directly: \
                         CREATE MATERIALIZED VIEW over it and query the view"
                    )));
                }
            }
        }
        let state = self.inner.adhoc.state();
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
            .await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        let df = self.inner.adhoc.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(SqlOutput::Rows { schema, batches })
    }
}
