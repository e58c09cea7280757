//! The `postgres` sink: a view's changes into a PostgreSQL table, exactly once. Each
//! durable epoch is written in one transaction that also records the epoch in a
//! progress table (`weir_sink_progress`, per sink and lineage); a transaction that finds
//! its epoch already recorded writes nothing, so an epoch offered again after a crash
//! or a lost COMMIT reply is never written twice. Without `key`, new rows are appended;
//! with `key`, the table holds the view: rows are upserted (`INSERT ... ON CONFLICT`)
//! and a key that left the view is deleted. See docs/CONNECTORS.md.

mod table;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Transaction};

use super::{EpochChanges, Sink, SinkDef};
use crate::aws::block_on;
use crate::config::RuntimeConfig;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::DeadLetterStore;
use crate::{Error, Result};
use table::{Statements, TableName};
use write::{Action, Plan};

/// How long connecting may take before the attempt counts as failed.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long connecting and checking the table may take.
const PREPARE_WAIT: Duration = Duration::from_secs(60);
/// How long one epoch's transaction may take before it is abandoned and retried.
const EPOCH_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSinkOptions {
    url: Option<String>,
    table: Option<String>,
    key: Option<String>,
    create_table: Option<String>,
    progress_table: Option<String>,
}

/// Where and how the sink writes, as its options say.
#[derive(Debug, Clone)]
struct Target {
    /// As tokio-postgres reads it: `postgres://user:password@host:port/db` or
    /// `host=... user=...`.
    url: String,
    table: TableName,
    progress: TableName,
    /// Key column names, and their indexes in the view.
    key: Vec<String>,
    key_index: Vec<usize>,
    create: bool,
}

/// A PostgreSQL sink.
pub struct PostgresSink {
    name: String,
    target: Target,
    schema: SchemaRef,
    /// Known once the table has been checked (or made) on a connection.
    statements: Option<Arc<Statements>>,
    client: Option<Client>,
    dead_letters: Arc<DeadLetterStore>,
    /// The newest epoch whose rows with a null key went to the dead letters.
    refused_epoch: u64,
    view: String,
    source: String,
}

fn options_of(def: &SinkDef) -> Result<Target> {
    let name = def.name;
    let bad = |m: String| Error::BadRequest(format!("sink {name}: {m}"));
    let options: PostgresSinkOptions = super::own_options(def)?;
    let url = options
        .url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| bad("a postgres sink needs url = 'postgres://user@host:port/db'".into()))?;
    url.parse::<Config>()
        .map_err(|e| bad(format!("url is not a PostgreSQL connection string: {e}")))?;
    let table = options
        .table
        .as_deref()
        .ok_or_else(|| bad("a postgres sink needs table = 'name' or 'schema.name'".into()))
        .and_then(|t| TableName::parse(t).map_err(bad))?;
    let progress = TableName::parse(
        options
            .progress_table
            .as_deref()
            .unwrap_or("weir_sink_progress"),
    )
    .map_err(bad)?;
    let create = match options.create_table.as_deref().unwrap_or("true") {
        "true" => true,
        "false" => false,
        other => return Err(bad(format!("create_table {other} is not true or false"))),
    };
    for field in def.schema.fields() {
        table::column_type(field.data_type())
            .map_err(|e| bad(format!("column {:?}: {e}", field.name())))?;
    }
    let key: Vec<String> = options
        .key
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect();
    let key_index = key
        .iter()
        .map(|k| {
            def.schema.index_of(k).map_err(|_| {
                bad(format!(
                    "key column {k} is not a column of view {}",
                    def.view
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Target {
        url,
        table,
        progress,
        key,
        key_index,
        create,
    })
}

pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let target = options_of(def)?;
    let mut sink = PostgresSink {
        name: def.name.to_string(),
        target,
        schema: def.schema.clone(),
        statements: None,
        client: None,
        dead_letters: def.dead_letters.clone(),
        refused_epoch: 0,
        view: def.view.to_string(),
        source: def.source.to_string(),
    };
    // A new sink checks its table now, so a table that does not fit is refused with
    // the statement. One restored after a restart checks at its first delivery: the
    // server may be down now and the view must start all the same.
    if !def.restoring {
        sink.prepare().map_err(|e| match e {
            Failure::Misfit(m) => Error::BadRequest(format!("sink {}: {m}", def.name)),
            Failure::Store(m) => {
                Error::Unavailable(format!("sink {}: cannot reach PostgreSQL: {m}", def.name))
            }
        })?;
    }
    Ok(Box::new(sink))
}

/// Why a step failed: the table does not fit (the user must act), or the server did
/// not answer as it should (retried).
#[derive(Debug)]
enum Failure {
    Misfit(String),
    Store(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Misfit(m) | Self::Store(m) => f.write_str(m),
        }
    }
}

fn store(e: impl std::fmt::Display) -> Failure {
    Failure::Store(e.to_string())
}

async fn connect(url: String) -> std::result::Result<Client, Failure> {
    let mut config: Config = url.parse().map_err(store)?;
    config
        .connect_timeout(CONNECT_WAIT)
        .application_name("weir");
    let (client, connection) = config.connect(NoTls).await.map_err(store)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a postgres sink's connection ended");
        }
    });
    // Timestamps without a zone are UTC, as in weir.
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .map_err(store)?;
    Ok(client)
}

/// The table checked (made when missing and allowed), the progress table made, and
/// the statements that write them.
async fn check(
    client: &Client,
    target: &Target,
    schema: &SchemaRef,
) -> std::result::Result<Statements, Failure> {
    let shown = &target.table.quoted;
    let mut described = table::describe(client, &target.table)
        .await
        .map_err(store)?;
    if described.is_none() {
        if !target.create {
            return Err(Failure::Misfit(format!(
                "table {shown} does not exist (create_table = 'false')"
            )));
        }
        client
            .batch_execute(&table::create_sql(&target.table, schema, &target.key))
            .await
            .map_err(|e| Failure::Misfit(format!("cannot create table {shown}: {e}")))?;
        described = table::describe(client, &target.table)
            .await
            .map_err(store)?;
    }
    let (columns, indexes) =
        described.ok_or_else(|| Failure::Store(format!("table {shown} vanished")))?;
    let fitted =
        table::fit(shown, schema, &columns, &target.key, &indexes).map_err(Failure::Misfit)?;
    client
        .batch_execute(&table::progress_sql(&target.progress))
        .await
        .map_err(|e| {
            Failure::Misfit(format!(
                "cannot create the progress table {}: {e}",
                target.progress.quoted
            ))
        })?;
    Ok(Statements::new(
        &target.table,
        &target.progress,
        schema,
        &fitted,
        &target.key_index,
    ))
}

impl PostgresSink {
    /// Connect (again, if the connection was lost) and check the table once.
    fn prepare(&mut self) -> std::result::Result<(), Failure> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) && self.statements.is_some() {
            return Ok(());
        }
        let (url, target, schema) = (
            self.target.url.clone(),
            self.target.clone(),
            self.schema.clone(),
        );
        let known = self.statements.clone();
        let (client, statements) = block_on(async move {
            let prepared = async {
                let client = connect(url).await?;
                let statements = match known {
                    Some(s) => s,
                    None => Arc::new(check(&client, &target, &schema).await?),
                };
                Ok::<_, Failure>((client, statements))
            };
            // A server that accepts the connection and then stalls must not hold the
            // sink's thread for good.
            tokio::time::timeout(PREPARE_WAIT, prepared)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Store(format!("no answer within {PREPARE_WAIT:?}")))
                })
        })?;
        self.client = Some(client);
        self.statements = Some(statements);
        Ok(())
    }

    /// Rows whose key has a null, and rows the table refused: dead letters, once per
    /// epoch.
    fn refuse(&mut self, epoch: u64, null_keys: &[RecordBatch], refused: &Refused) {
        if epoch <= self.refused_epoch || (null_keys.is_empty() && refused.is_empty()) {
            return;
        }
        self.refused_epoch = epoch;
        let letters = (&*self.dead_letters, &*self.source, &*self.view, &*self.name);
        if !null_keys.is_empty() {
            let reason = format!(
                "a key column ({}) is null; table {} keeps rows by key and a key cannot be null",
                self.target.key.join(", "),
                self.target.table.quoted
            );
            super::dead_letter_rows(letters, epoch, null_keys, &reason);
        }
        // The columns as the statement had them: text.
        let schema = Arc::new(Schema::new(
            self.schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        for (columns, why) in refused {
            let reason = format!("table {} refused the row: {why}", self.target.table.quoted);
            match RecordBatch::try_new(schema.clone(), columns.clone()) {
                Ok(row) => super::dead_letter_rows(letters, epoch, &[row], &reason),
                Err(e) => tracing::error!(sink = %self.name, "cannot keep a refused row: {e}"),
            }
        }
    }
}

/// Rows the table refused: their columns as text, and the server's reason.
type Refused = Vec<(Vec<ArrayRef>, String)>;

/// Write one epoch in one transaction, unless the progress table has it already.
/// Returns the rows written (0 when the epoch was there) and those the table refused.
async fn write_epoch(
    client: &mut Client,
    statements: &Statements,
    (sink, lineage, epoch): (&str, &str, u64),
    plan: &Plan,
) -> std::result::Result<(u64, Refused), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let epoch = epoch as i64;
    tx.execute(&statements.make_progress, &[&sink, &lineage])
        .await?;
    // Locked until the commit: a transaction of the same epoch still committing (one
    // abandoned after a timeout) is waited for, then seen.
    let done: Option<i64> = tx
        .query_opt(&statements.lock_progress, &[&sink, &lineage])
        .await?
        .map(|r| r.get(0));
    if done.is_some_and(|d| d >= epoch) {
        tx.rollback().await?;
        return Ok((0, Vec::new()));
    }
    let mut written = 0;
    let mut refused = Vec::new();
    for step in &plan.steps {
        let sql = match step.action {
            Action::Insert => &statements.insert,
            Action::Upsert => &statements.upsert,
            Action::Delete => {
                execute(&tx, &statements.delete, &step.columns).await?;
                continue;
            }
        };
        written += write_rows(&tx, sql, &step.columns, &mut refused).await?;
    }
    tx.execute(&statements.record_progress, &[&sink, &lineage, &epoch])
        .await?;
    tx.commit().await?;
    Ok((written, refused))
}

/// Run `sql` with one text array per column.
async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    columns: &[ArrayRef],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let texts: Vec<Vec<Option<&str>>> = columns.iter().map(write::strings).collect();
    let params: Vec<&(dyn ToSql + Sync)> = texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
    tx.execute(sql, &params).await
}

/// Insert or upsert the rows of `columns` in one statement; when the table refuses one
/// of them (a CHECK, a NOT NULL, a value too long: a data or integrity error), the rows
/// are tried again in halves, under savepoints, until each refused row stands alone:
/// those go to `refused` and the rest are written, a few statements per refused row.
async fn write_rows(
    tx: &Transaction<'_>,
    sql: &str,
    columns: &[ArrayRef],
    refused: &mut Refused,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let rows = columns.first().map_or(0, |c| c.len());
    let mut written = 0;
    // Ranges of rows to try, the next one last.
    let mut todo = vec![(0, rows)];
    while let Some((offset, len)) = todo.pop() {
        let part: Vec<ArrayRef> = columns.iter().map(|c| c.slice(offset, len)).collect();
        tx.batch_execute("SAVEPOINT weir_rows").await?;
        match execute(tx, sql, &part).await {
            Ok(_) => {
                tx.batch_execute("RELEASE SAVEPOINT weir_rows").await?;
                written += len as u64;
            }
            Err(e) if refuses_rows(&e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT weir_rows").await?;
                if len == 1 {
                    refused.push((part, describe_error(&e)));
                } else {
                    let half = len / 2;
                    todo.push((offset + half, len - half));
                    todo.push((offset, half));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// An error of the rows, not of the server: SQLSTATE class 22 (data exception) or 23
/// (integrity constraint violation).
fn refuses_rows(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

impl Sink for PostgresSink {
    fn deliver(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let epoch = to_write.epoch;
        let mut plan = write::plan(to_write.changes, &self.target.key_index)
            .map_err(|e| format!("cannot turn the view's rows into parameters: {e}"))?;
        self.prepare().map_err(|e| e.to_string())?;
        let null_keys = std::mem::take(&mut plan.null_keys);
        let (Some(mut client), Some(statements)) = (self.client.take(), self.statements.clone())
        else {
            return Err("not connected".into());
        };
        let (sink, lineage) = (self.name.clone(), to_write.lineage.to_string());
        let (client, written) = block_on(async move {
            let written = tokio::time::timeout(
                EPOCH_WAIT,
                write_epoch(&mut client, &statements, (&sink, &lineage, epoch), &plan),
            )
            .await;
            (client, written)
        });
        match written {
            Ok(Ok((written, refused))) => {
                self.client = Some(client);
                self.refuse(epoch, &null_keys, &refused);
                Ok(written)
            }
            // The connection may be broken or mid-transaction: a new one next time.
            Ok(Err(e)) => Err(format!("epoch {epoch}: {}", describe_error(&e))),
            Err(_) => Err(format!(
                "epoch {epoch}: the transaction took over {EPOCH_WAIT:?}"
            )),
        }
    }
}

/// A server error with its detail, not only "db error".
fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// Connect and check the table as the options say, without creating anything.
pub(crate) fn test_postgres(
    options: &BTreeMap<String, String>,
    _: &RuntimeConfig,
) -> Result<String> {
    let url = options
        .get("url")
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("give the url first".into()))?
        .clone();
    let table = options
        .get("table")
        .map(|t| TableName::parse(t).map_err(Error::BadRequest))
        .transpose()?;
    block_on(async move {
        let client = connect(url)
            .await
            .map_err(|e| Error::BadRequest(format!("cannot connect: {e}")))?;
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| Error::BadRequest(e.to_string()))?
            .get(0);
        let Some(table) = table else {
            return Ok(format!("PostgreSQL {version}"));
        };
        let found = table::describe(&client, &table)
            .await
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        Ok(match found {
            Some((columns, _)) => format!(
                "PostgreSQL {version}; table {} has {} columns",
                table.quoted,
                columns.len()
            ),
            None => format!(
                "PostgreSQL {version}; table {} does not exist yet",
                table.quoted
            ),
        })
    })
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "postgres",
        kind: "sink",
        doc: "A view's changes into a PostgreSQL table, exactly once: each epoch in one transaction with its number in a progress table. Appends, or upserts and deletes by key.",
        declares_columns: false,
        passes_through: None,
        options: OPTIONS.to_vec(),
    },
    fields: field_names::<PostgresSinkOptions>,
    test: test_postgres,
};

const OPTIONS: [OptionDoc; 5] = [
    OptionDoc {
        name: "url",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "postgres://user:password@host:port/database (or host=... user=... dbname=...). The password is not shown by the API.",
    },
    OptionDoc {
        name: "table",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The table to write: name or schema.name, folded to lower case unless quoted.",
    },
    OptionDoc {
        name: "key",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "Columns (comma-separated) that name a row: rows are upserted and a key that leaves the view is deleted. The table's primary key or a unique index must be these columns. Without it, rows are appended.",
    },
    OptionDoc {
        name: "create_table",
        kind: "choice",
        choices: &["true", "false"],
        required: false,
        default: Some("true"),
        doc: "Create the table from the view's columns when it does not exist (the key as primary key).",
    },
    OptionDoc {
        name: "progress_table",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("weir_sink_progress"),
        doc: "Where the sink records, in the same transaction as the rows, the newest epoch the table holds.",
    },
];
