//! The `redis` sink: each row of a view under a key made from its columns
//! (`key = 'top:{auction}'`), as a JSON string or a hash, with an optional TTL. A key
//! whose row left the view is deleted. Each durable epoch is one MULTI/EXEC
//! transaction; once it has held whole, the epoch is recorded in a progress hash
//! (`weir:sink-progress`, field `<sink>/<lineage>`), and an epoch the hash holds is not
//! written again. Every write sets a key to its row, so an epoch written twice (a crash
//! before the record) leaves the same keys: the keys end as the view's rows. See
//! docs/CONNECTORS.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::LineDelimitedWriter;
use serde::Deserialize;

use super::feed::ChangeKind;
use super::{EpochChanges, Sink, SinkDef};
use crate::config::RuntimeConfig;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::DeadLetterStore;
use crate::{Error, Result};

/// How long connecting, and each reply, may take.
const WAIT: Duration = Duration::from_secs(30);
/// Where each sink records the newest epoch the keys hold.
const PROGRESS_KEY: &str = "weir:sink-progress";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSinkOptions {
    url: Option<String>,
    key: Option<String>,
    value: Option<String>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

/// How a row is stored under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// The row as a JSON object (`SET`).
    Json,
    /// The row's non-null columns as a hash's fields (`HSET`).
    Hash,
}

/// A key template: literal text and columns (`top:{auction}`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Column(usize),
}

fn parse_template(template: &str, schema: &SchemaRef) -> std::result::Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("key {template:?} has a {{ without its }}"))?;
        let name = rest[open + 1..open + close].trim();
        let index = schema.index_of(name).map_err(|_| {
            format!(
                "key {template:?} names {name:?}, which is not a column of the view (its \
                 columns: {})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        parts.push(Part::Column(index));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
        return Err(format!(
            "key {template:?} names no column: every row would share one key (write \
             'prefix:{{column}}')"
        ));
    }
    Ok(parts)
}

/// A Redis sink.
pub struct RedisSink {
    name: String,
    view: String,
    source: String,
    dead_letters: Arc<DeadLetterStore>,
    /// The newest epoch whose rows with a null in their key went to the dead letters.
    refused_epoch: u64,
    client: redis::Client,
    connection: Option<redis::Connection>,
    template: Vec<Part>,
    value: ValueKind,
    ttl: Option<u64>,
}

pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let name = def.name;
    let bad = |m: String| Error::BadRequest(format!("sink {name}: {m}"));
    let options: RedisSinkOptions = super::own_options(def)?;
    let url = options
        .url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| bad("a redis sink needs url = 'redis://host:port/db'".into()))?;
    let client = redis::Client::open(url.as_str())
        .map_err(|e| bad(format!("url is not a Redis URL: {e}")))?;
    let template = options
        .key
        .as_deref()
        .ok_or_else(|| bad("a redis sink needs key = 'prefix:{column}'".into()))
        .and_then(|k| parse_template(k, def.schema).map_err(bad))?;
    let value = match options.value.as_deref().unwrap_or("json") {
        "json" => ValueKind::Json,
        "hash" => ValueKind::Hash,
        other => return Err(bad(format!("value {other} is not json or hash"))),
    };
    let ttl = match options.ttl {
        Some(t) if t.as_secs() == 0 => return Err(bad("ttl must be at least 1s".into())),
        t => t.map(|t| t.as_secs()),
    };
    let mut sink = RedisSink {
        name: name.to_string(),
        view: def.view.to_string(),
        source: def.source.to_string(),
        dead_letters: def.dead_letters.clone(),
        refused_epoch: 0,
        client,
        connection: None,
        template,
        value,
        ttl,
    };
    // A new sink reaches its server before it answers; one restored after a restart
    // waits for its first delivery, so a server that is down does not hold up views.
    if !def.restoring {
        sink.connect()
            .map_err(|e| Error::Unavailable(format!("sink {name}: cannot reach Redis: {e}")))?;
    }
    Ok(Box::new(sink))
}

impl RedisSink {
    fn connect(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(WAIT)?;
            connection.set_read_timeout(Some(WAIT))?;
            connection.set_write_timeout(Some(WAIT))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("just set"))
    }

    /// The keys of `rows`, one per row (`None`: a column of the key is null).
    fn keys(&self, rows: &RecordBatch) -> std::result::Result<Vec<Option<String>>, ArrowError> {
        let columns: Vec<Option<ArrayRef>> = self
            .template
            .iter()
            .map(|p| match p {
                Part::Column(i) => cast(rows.column(*i), &DataType::Utf8).map(Some),
                Part::Text(_) => Ok(None),
            })
            .collect::<std::result::Result<_, _>>()?;
        let strings: Vec<Option<&StringArray>> = columns
            .iter()
            .map(|c| c.as_ref().and_then(|c| c.as_any().downcast_ref()))
            .collect();
        Ok((0..rows.num_rows())
            .map(|row| {
                let mut key = String::new();
                for (part, column) in self.template.iter().zip(&strings) {
                    match (part, column) {
                        (Part::Text(t), _) => key.push_str(t),
                        (Part::Column(_), Some(c)) if c.is_valid(row) => key.push_str(c.value(row)),
                        _ => return None,
                    }
                }
                Some(key)
            })
            .collect())
    }

    /// Add the commands that store `rows` under their keys.
    fn store(
        &self,
        pipe: &mut redis::Pipeline,
        rows: &RecordBatch,
        keys: &[Option<&str>],
    ) -> std::result::Result<u64, ArrowError> {
        let mut written = 0;
        match self.value {
            ValueKind::Json => {
                let mut writer = LineDelimitedWriter::new(Vec::new());
                writer.write(rows)?;
                writer.finish()?;
                let lines = writer.into_inner();
                for (key, json) in keys.iter().zip(lines.split(|b| *b == b'\n')) {
                    let Some(key) = key else { continue };
                    let set = pipe.cmd("SET").arg(key).arg(json);
                    if let Some(ttl) = self.ttl {
                        set.arg("EX").arg(ttl);
                    }
                    set.ignore();
                    written += 1;
                }
            }
            ValueKind::Hash => {
                let columns: Vec<ArrayRef> = rows
                    .columns()
                    .iter()
                    .map(|c| cast(c, &DataType::Utf8))
                    .collect::<std::result::Result<_, _>>()?;
                let strings: Vec<&StringArray> = columns
                    .iter()
                    .filter_map(|c| c.as_any().downcast_ref())
                    .collect();
                let schema = rows.schema();
                for (row, key) in keys.iter().enumerate() {
                    let Some(key) = key else { continue };
                    // The row replaces the hash whole: a column now null loses its field.
                    pipe.cmd("DEL").arg(key).ignore();
                    let hset = pipe.cmd("HSET").arg(key);
                    let mut fields = 0;
                    for (field, column) in schema.fields().iter().zip(&strings) {
                        if column.is_valid(row) {
                            hset.arg(field.name()).arg(column.value(row));
                            fields += 1;
                        }
                    }
                    if fields == 0 {
                        // HSET needs a field: a row of nulls is an empty hash, none.
                        hset.arg("_").arg("");
                    }
                    hset.ignore();
                    if let Some(ttl) = self.ttl {
                        pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
                    }
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// The epoch's commands, the rows they store, and the rows that have no key (a
    /// column of it is null). An epoch with updates is folded by key first: each key's
    /// last change wins, so a key is stored once with its newest row, or deleted once
    /// when its last change removed it, however often the epoch changed it. Appends are
    /// written in order (a later row of a key replaces an earlier one all the same).
    fn commands(
        &self,
        to_write: &EpochChanges<'_>,
    ) -> std::result::Result<(redis::Pipeline, u64, Vec<RecordBatch>), ArrowError> {
        let changes = to_write.changes;
        let mut keyless = Vec::new();
        let keys_of: Vec<Vec<Option<String>>> = changes
            .iter()
            .map(|c| self.keys(&c.rows))
            .collect::<std::result::Result<_, _>>()?;
        for (change, keys) in changes.iter().zip(&keys_of) {
            if keys.iter().any(Option::is_none) {
                let none: BooleanArray = keys.iter().map(|k| Some(k.is_none())).collect();
                keyless.push(filter_record_batch(&change.rows, &none)?);
            }
        }
        // Keys whose rows left the view: replaced, and no new row of the change has them.
        let mut gone_of: Vec<Vec<String>> = Vec::with_capacity(changes.len());
        for (change, keys) in changes.iter().zip(&keys_of) {
            let mut gone = Vec::new();
            if let (Some(replaced), ChangeKind::Update) = (&change.replaced, change.kind) {
                let kept: HashSet<&str> = keys.iter().flatten().map(String::as_str).collect();
                gone = self.keys(replaced)?.into_iter().flatten().collect();
                gone.retain(|k| !kept.contains(k.as_str()));
            }
            gone_of.push(gone);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut written = 0;
        if !changes.iter().any(|c| c.kind == ChangeKind::Update) {
            for (change, keys) in changes.iter().zip(&keys_of) {
                let keys: Vec<Option<&str>> = keys.iter().map(Option::as_deref).collect();
                written += self.store(&mut pipe, &change.rows, &keys)?;
            }
            return Ok((pipe, written, keyless));
        }
        // Each key's last change: (the change, its row; none when it left).
        let mut last: HashMap<&str, (usize, Option<usize>)> = HashMap::new();
        for (c, (keys, gone)) in keys_of.iter().zip(&gone_of).enumerate() {
            for key in gone {
                last.insert(key, (c, None));
            }
            for (r, key) in keys.iter().enumerate() {
                if let Some(key) = key {
                    last.insert(key, (c, Some(r)));
                }
            }
        }
        for (key, (_, row)) in &last {
            if row.is_none() {
                pipe.cmd("DEL").arg(*key).ignore();
            }
        }
        for (c, (change, keys)) in changes.iter().zip(&keys_of).enumerate() {
            // Only the rows that are their key's last change.
            let keys: Vec<Option<&str>> = keys
                .iter()
                .enumerate()
                .map(|(r, k)| k.as_deref().filter(|k| last.get(k) == Some(&(c, Some(r)))))
                .collect();
            if keys.iter().any(Option::is_some) {
                written += self.store(&mut pipe, &change.rows, &keys)?;
            }
        }
        Ok((pipe, written, keyless))
    }
}

impl Sink for RedisSink {
    fn deliver(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let epoch = to_write.epoch;
        let field = format!("{}/{}", self.name, to_write.lineage);
        let (pipe, written, keyless) = self
            .commands(to_write)
            .map_err(|e| format!("cannot turn the view's rows into commands: {e}"))?;
        if epoch > self.refused_epoch && !keyless.is_empty() {
            self.refused_epoch = epoch;
            super::dead_letter_rows(
                (&self.dead_letters, &self.source, &self.view, &self.name),
                epoch,
                &keyless,
                "a column of the key is null, so the row has no key",
            );
        }
        let outcome = (|| -> redis::RedisResult<u64> {
            let connection = self.connect()?;
            // One writer per sink: the epoch recorded cannot change between this read
            // and the transaction.
            let done: Option<u64> = redis::cmd("HGET")
                .arg(PROGRESS_KEY)
                .arg(&field)
                .query(connection)?;
            if done.is_some_and(|d| d >= epoch) {
                return Ok(0);
            }
            // A command that fails inside EXEC (a key of another type) does not undo the
            // others, and fails the query: the epoch is recorded only when all held, and
            // written whole again otherwise (every write sets a key to its row).
            pipe.query::<()>(connection)?;
            redis::cmd("HSET")
                .arg(PROGRESS_KEY)
                .arg(&field)
                .arg(epoch)
                .query::<()>(connection)?;
            Ok(written)
        })();
        outcome.map_err(|e| {
            // A new connection next time: this one may be broken.
            self.connection = None;
            format!("epoch {epoch}: {e}")
        })
    }
}

/// Connect and PING.
pub(crate) fn test_redis(options: &BTreeMap<String, String>, _: &RuntimeConfig) -> Result<String> {
    let url = options
        .get("url")
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("give the url first".into()))?;
    let client = redis::Client::open(url.as_str())
        .map_err(|e| Error::BadRequest(format!("url is not a Redis URL: {e}")))?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| Error::BadRequest(format!("cannot connect: {e}")))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?");
    Ok(format!("Redis {}", version.trim()))
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "redis",
        kind: "sink",
        doc: "Each row of a view under a key made from its columns, as JSON or a hash; keys whose rows left the view are deleted. Each epoch is one MULTI/EXEC with its number recorded, exactly once.",
        declares_columns: false,
        passes_through: None,
        options: OPTIONS.to_vec(),
    },
    fields: field_names::<RedisSinkOptions>,
    test: test_redis,
};

const OPTIONS: [OptionDoc; 4] = [
    OptionDoc {
        name: "url",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "redis://[user:password@]host:port/db. The password is not shown by the API.",
    },
    OptionDoc {
        name: "key",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "The key of each row, with columns in braces: 'top:{auction}'. The columns should name one row of the view.",
    },
    OptionDoc {
        name: "value",
        kind: "choice",
        choices: &["json", "hash"],
        required: false,
        default: Some("json"),
        doc: "json: the row as a JSON string (SET); hash: its non-null columns as fields (HSET).",
    },
    OptionDoc {
        name: "ttl",
        kind: "duration",
        choices: &[],
        required: false,
        default: None,
        doc: "Keys expire this long after their row was last written ('1h'); default: never.",
    },
];

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::sink::feed::Change;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    /// A sink of JSON values keyed by `template`, never connected.
    fn sink_with_keys(template: &str) -> RedisSink {
        RedisSink {
            name: "r".into(),
            view: "v".into(),
            source: "s".into(),
            dead_letters: Arc::new(DeadLetterStore::open(None, 10).expect("store")),
            refused_epoch: 0,
            client: redis::Client::open("redis://127.0.0.1:1/").expect("client"),
            connection: None,
            template: parse_template(template, &schema()).expect("template"),
            value: ValueKind::Json,
            ttl: None,
        }
    }

    #[test]
    fn a_key_template_names_columns_of_the_view() {
        assert_eq!(
            parse_template("top:{auction}:n", &schema()),
            Ok(vec![
                Part::Text("top:".into()),
                Part::Column(0),
                Part::Text(":n".into()),
            ])
        );
        let err = |t: &str| parse_template(t, &schema()).expect_err(t);
        assert!(err("top:{bidder}").contains("not a column of the view"));
        assert!(err("top:{auction").contains("without its }"));
        assert!(err("top").contains("names no column"));
    }

    #[test]
    fn each_row_gets_its_key_and_a_null_in_it_gets_none() {
        let sink = sink_with_keys("a:{auction}/{n}");
        let rows = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(Int64Array::from(vec![7, 8, 9])),
            ],
        )
        .expect("batch");
        assert_eq!(
            sink.keys(&rows).expect("keys"),
            vec![Some("a:1/7".to_string()), None, Some("a:3/9".to_string()),]
        );
    }

    #[test]
    fn an_epoch_is_folded_to_one_write_of_each_key_it_changed() {
        let sink = sink_with_keys("a:{auction}");
        let rows = |auctions: &[i64], n: &[i64]| {
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from(auctions.to_vec())),
                    Arc::new(Int64Array::from(n.to_vec())),
                ],
            )
            .expect("batch")
        };
        let changes = [
            Change::new(rows(&[1, 2], &[1, 1]), ChangeKind::Snapshot),
            // Auction 1 leaves, 2 changes.
            Change {
                replaced: Some(rows(&[1, 2], &[1, 1])),
                ..Change::new(rows(&[2], &[2]), ChangeKind::Update)
            },
            // 2 changes again, 3 comes.
            Change::new(rows(&[2, 3], &[3, 1]), ChangeKind::Update),
            // 3 leaves and comes back.
            Change {
                replaced: Some(rows(&[3], &[1])),
                ..Change::new(rows(&[], &[]), ChangeKind::Update)
            },
            Change::new(rows(&[3], &[2]), ChangeKind::Update),
        ];
        let epoch = EpochChanges {
            epoch: 1,
            first_epoch: 1,
            lineage: "l",
            changes: &changes,
        };
        let (pipe, written, keyless) = sink.commands(&epoch).expect("commands");
        assert!(keyless.is_empty());
        assert_eq!(written, 2, "auctions 2 and 3, once each");
        let mut commands: Vec<String> = pipe
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                        redis::Arg::Cursor => "?".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        commands.sort();
        assert_eq!(
            commands,
            [
                "DEL a:1",
                r#"SET a:2 {"auction":2,"n":3}"#,
                r#"SET a:3 {"auction":3,"n":2}"#,
            ]
        );
    }
}
