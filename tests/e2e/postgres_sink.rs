//! The PostgreSQL sink against a real server (Debian's `postgresql`): started once per
//! run by `scripts/test.sh` (`WEIR_TEST_POSTGRES`), or, for the test that restarts it,
//! by the test itself from `WEIR_PG_BIN`. Each test writes tables of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use crate::kafka::{unique, view_rows};
use crate::kafka_sink::wait_delivered;
use crate::sink_runs::{
    checkpointed_ids, count_while_the_store_is_down, counted_in_the_end, counting_into,
    crashing_after_the_first_delivery, every_id, ids, through_three_kill_nines,
};
use crate::support::Weir;

/// The shared server's URL; the test script starts it.
fn url() -> String {
    std::env::var("WEIR_TEST_POSTGRES").expect(
        "WEIR_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts PostgreSQL",
    )
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A table name no other test uses (lower case, as PostgreSQL folds it).
fn table(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// Every row of a query as JSON objects, by column name (numbers as i64 or f64).
async fn rows(client: &Client, sql: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for row in client.query(sql, &[]).await? {
        let mut object = serde_json::Map::new();
        for (i, column) in row.columns().iter().enumerate() {
            let value = match column.type_().name() {
                "int8" => json!(row.get::<_, Option<i64>>(i)),
                "int4" => json!(row.get::<_, Option<i32>>(i)),
                "float8" => json!(row.get::<_, Option<f64>>(i)),
                "text" | "varchar" => json!(row.get::<_, Option<String>>(i)),
                other => bail!("a column of type {other} in {sql}"),
            };
            object.insert(column.name().to_string(), value);
        }
        out.push(Value::Object(object));
    }
    Ok(out)
}

#[tokio::test]
async fn tables_hold_the_views_rows_exactly_once_through_three_kill_nines() -> Result<()> {
    let url = url();
    let (seen, totals) = (table("seen"), table("totals"));
    // Sink names of their own too: the progress table is shared by every test run.
    let (seen_pg, totals_pg) = (table("seen_pg"), table("totals_pg"));
    let run = through_three_kill_nines(&[], &[
        (
            seen_pg.clone(),
            format!(
                "CREATE SINK {seen_pg} FROM seen WITH (connector = 'postgres', url = '{url}', \
                 table = '{seen}')"
            ),
        ),
        (
            totals_pg.clone(),
            format!(
                "CREATE SINK {totals_pg} FROM totals WITH (connector = 'postgres', url = '{url}', \
                 table = '{totals}', key = 'user_id')"
            ),
        ),
    ])
    .await?;
    let client = connect(&url).await?;
    // The appended table: every id once, no gap.
    let ids: Vec<i64> = client
        .query(&format!("SELECT id FROM {seen} ORDER BY id"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        ids == every_id(run.sent),
        "table {seen} holds {} rows, not ids 0..{} once each",
        ids.len(),
        run.sent
    );
    // The keyed table is the view: users 3 to 6 deleted, the others upserted.
    let mut held = BTreeMap::new();
    for row in rows(&client, &format!("SELECT user_id, n, ids FROM {totals}")).await? {
        held.insert(row["user_id"].as_i64().context("user_id")?, row);
    }
    ensure!(
        held == run.totals,
        "table {totals} holds {held:?}, the view {:?}",
        run.totals
    );
    // Each sink's newest epoch is in the progress table, written with the rows.
    for (sink, status) in &run.statuses {
        let recorded: i64 = client
            .query_one(
                "SELECT max(epoch) FROM weir_sink_progress WHERE sink = $1",
                &[sink],
            )
            .await?
            .get(0);
        ensure!(
            Some(recorded as u64) == status["delivered_epoch"].as_u64(),
            "{sink}: progress table {recorded}, status {status}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_table_that_does_not_fit_is_refused_with_the_reason_and_the_view_goes_on() -> Result<()> {
    let url = url();
    let client = connect(&url).await?;
    let (wrong_type, no_unique, missing) = (table("wrong"), table("nounique"), table("missing"));
    client
        .batch_execute(&format!(
            "CREATE TABLE {wrong_type} (id bigint, name jsonb); \
             CREATE TABLE {no_unique} (id bigint, name text)"
        ))
        .await?;
    let weir = Weir::start(&[]).await?;
    weir.exec("CREATE SOURCE s (id BIGINT, name VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, name FROM s")
        .await?;
    weir.post_records("s", r#"{"id": 1, "name": "a"}"#.into())
        .await?;
    let refused = [
        (
            format!("table = '{wrong_type}'"),
            "column \"name\" is Utf8 in the view but jsonb",
        ),
        (
            format!("table = '{no_unique}', key = 'id'"),
            "no primary key or unique index on (id)",
        ),
        (
            format!("table = '{missing}', create_table = 'false'"),
            "does not exist (create_table = 'false')",
        ),
        (
            format!("table = '{missing}', key = 'nope'"),
            "key column nope is not a column of view v",
        ),
    ];
    for (options, reason) in refused {
        let (status, body) = weir
            .sql(&format!(
                "CREATE SINK p FROM v WITH (connector = 'postgres', url = '{url}', {options})"
            ))
            .await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        ensure!(
            status == 400 && detail.contains(reason),
            "{options}: {status} {body}"
        );
    }
    // Nothing was made, and the view serves on.
    let made: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&missing])
        .await?
        .get(0);
    ensure!(made.is_none(), "table {missing} was created");
    weir.post_records("s", r#"{"id": 2, "name": "b"}"#.into())
        .await?;
    weir.wait_for("the view's two rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 2).then_some(()))
    })
    .await?;
    let sinks = weir.get("/api/v1/sinks").await?;
    ensure!(sinks["sinks"] == json!([]), "{sinks}");
    // An unreachable server is the operator's to fix: 503, with where it looked.
    let (status, body) = weir
        .sql(
            "CREATE SINK p FROM v WITH (connector = 'postgres', \
             url = 'postgres://weir:hunter2@127.0.0.1:1/postgres', table = 't')",
        )
        .await?;
    ensure!(
        status == 503 && body.to_string().contains("cannot reach PostgreSQL"),
        "{status} {body}"
    );
    ensure!(!body.to_string().contains("hunter2"), "{body}");
    // A table the sink makes, keyed: a row whose key is null is a dead letter, the
    // others are written.
    let keyed = table("keyed");
    weir.exec(&format!(
        "CREATE SINK p FROM v WITH (connector = 'postgres', url = '{url}', table = '{keyed}', \
         key = 'id')"
    ))
    .await?;
    weir.post_records("s", r#"{"id": null, "name": "keyless"}"#.into())
        .await?;
    weir.wait_for(
        "the keyless row's dead letter",
        Duration::from_secs(30),
        || async {
            let letters = weir.get("/api/v1/dead-letters").await?.to_string();
            Ok((letters.contains("keyless") && letters.contains("is null")).then_some(()))
        },
    )
    .await?;
    wait_delivered(&weir, "p").await?;
    let held = rows(
        &client,
        &format!("SELECT id, name FROM {keyed} ORDER BY id"),
    )
    .await?;
    ensure!(
        held == [json!({"id": 1, "name": "a"}), json!({"id": 2, "name": "b"})],
        "{held:?}"
    );
    Ok(())
}

/// A PostgreSQL server of the test's own, so it can be stopped and started again.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

impl OwnPostgres {
    fn start() -> Result<Self> {
        let bin = PathBuf::from(
            std::env::var("WEIR_PG_BIN").context("WEIR_PG_BIN is not set: run scripts/test.sh")?,
        );
        let dir = tempfile::tempdir()?;
        let me = Self {
            port: crate::kafka::free_port()?,
            dir,
            bin,
        };
        if running_as_root()? {
            run(Command::new("chown").arg("postgres").arg(me.dir.path()))?;
        }
        me.pg(
            "initdb",
            &[
                "-D",
                &me.data().to_string_lossy(),
                "-U",
                "weir",
                "--auth=trust",
            ],
        )?;
        me.up()?;
        Ok(me)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://weir@127.0.0.1:{}/postgres", self.port)
    }

    fn up(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        )
    }

    fn down(&self) -> Result<()> {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    /// Run one of the server's programs, as `postgres` when the tests run as root.
    fn pg(&self, program: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(program);
        let mut command = if running_as_root()? {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args);
        run(&mut command)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

fn running_as_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(command: &mut Command) -> Result<()> {
    let out = command.output()?;
    ensure!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_server_restarted_mid_run_loses_nothing_and_the_sink_catches_up() -> Result<()> {
    let pg = OwnPostgres::start()?;
    let url = pg.url();
    let weir = counting_into(
        &[],
        &format!(
            "CREATE SINK out FROM counts WITH (connector = 'postgres', url = '{url}', \
             table = 'counts', key = 'k')"
        ),
    )
    .await?;
    pg.down()?;
    let status = count_while_the_store_is_down(&weir).await?;
    ensure!(status["lag_seconds"].as_f64() > Some(0.0), "{status}");
    // The lag and the sink being down, in /metrics for alerts.
    let metrics = weir.metrics().await?;
    let gauge = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{sink=\"out\"}} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    ensure!(gauge("weir_sink_up") == Some(0.0), "{metrics}");
    ensure!(gauge("weir_sink_rows_pending") > Some(0.0), "{metrics}");
    ensure!(gauge("weir_sink_lag_seconds") > Some(0.0), "{metrics}");
    pg.up()?;
    let status = wait_delivered(&weir, "out").await?;
    ensure!(
        status["last_error"].is_string() && status["error"].is_null(),
        "the last error is kept after the sink recovers: {status}"
    );
    ensure!(
        weir.metrics()
            .await?
            .contains("weir_sink_up{sink=\"out\"} 1"),
        "up again"
    );
    let held: BTreeMap<i64, i64> = connect(&url)
        .await?
        .query("SELECT k, n FROM counts", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure!(held == counted_in_the_end(), "the table holds {held:?}");
    Ok(())
}

/// weir crashes after an epoch's transaction committed and before weir noted it (the
/// `sink-delivered` failpoint): the restarted sink finds the epoch in the progress table
/// and does not write it again.
#[tokio::test]
async fn an_epoch_committed_just_before_a_crash_is_not_written_again() -> Result<()> {
    let url = url();
    let appended = table("crashed");
    crashing_after_the_first_delivery(&format!(
        "CREATE SINK crashed FROM v WITH (connector = 'postgres', url = '{url}', table = '{appended}')"
    ))
    .await?;
    let ids: Vec<i64> = connect(&url)
        .await?
        .query(&format!("SELECT id FROM {appended} ORDER BY id"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        ids == (0..30).collect::<Vec<_>>(),
        "every row once, not {} rows: {ids:?}",
        ids.len()
    );
    Ok(())
}

/// A sink whose server is down holds no more than its `max_pending_rows` in memory:
/// further epochs spill to files in the data dir, which a `kill -9` keeps (the
/// checkpoints name them), and once the server is back the sink writes every row once
/// and removes the files. The view serves throughout.
#[tokio::test]
async fn a_sink_behind_its_memory_limit_spills_to_disk_through_a_kill_and_catches_up() -> Result<()>
{
    let pg = OwnPostgres::start()?;
    let url = pg.url();
    let (weir, config) = checkpointed_ids(&[]).await?;
    weir.exec(&format!(
        "CREATE SINK out FROM v WITH (connector = 'postgres', url = '{url}', table = 'ids', \
         max_pending_rows = 50)"
    ))
    .await?;
    ensure!(weir.post_records("s", ids(0..100)).await?.0 == 200);
    wait_delivered(&weir, "out").await?;
    pg.down()?;
    // Several epochs' worth, each over the limit.
    for from in (100..700).step_by(100) {
        ensure!(weir.post_records("s", ids(from..from + 100)).await?.0 == 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let spill_dir = weir.data_dir.path().join("sinks").join("out.spill");
    let spilled = weir
        .wait_for("epochs to spill", Duration::from_secs(60), || async {
            let s = weir.get("/api/v1/sinks/out").await?;
            Ok((s["rows_pending"] == 600 && s["spilled_bytes"].as_u64() > Some(0)).then_some(s))
        })
        .await?;
    ensure!(spilled["status"] == "retrying", "not failed: {spilled}");
    let files = std::fs::read_dir(&spill_dir)?.count();
    ensure!(
        files > 1,
        "{files} spilled files for several epochs: {spilled}"
    );
    ensure!(view_rows(&weir, "v").await?.len() == 700, "the view serves");
    ensure!(
        weir.metrics()
            .await?
            .lines()
            .any(|l| l.starts_with("weir_sink_spilled_bytes{sink=\"out\"} ") && !l.ends_with(" 0")),
        "the spilled bytes in /metrics"
    );
    // A checkpoint after the last spill, then a crash with the server still down.
    crate::sink_runs::a_newer_checkpoint(&weir).await?;
    let dir = weir.kill().await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let restored = weir.get("/api/v1/sinks/out").await?;
    ensure!(
        restored["rows_pending"] == 600 && restored["spilled_bytes"].as_u64() > Some(0),
        "the backlog is back from the checkpoint and its files: {restored}"
    );
    pg.up()?;
    let status = wait_delivered(&weir, "out").await?;
    ensure!(status["spilled_bytes"] == 0, "{status}");
    ensure!(
        std::fs::read_dir(&spill_dir)?.count() == 0,
        "delivered epochs' files are removed"
    );
    ensure!(
        weir.metrics().await?.lines().any(|l| l
            .starts_with("weir_sink_delivered_epoch{sink=\"out\"} ")
            && !l.ends_with(" 0")),
        "the delivered epoch in /metrics"
    );
    let written: Vec<i64> = connect(&url)
        .await?
        .query("SELECT id FROM ids ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        written == (0..700).collect::<Vec<i64>>(),
        "every id once: {} rows",
        written.len()
    );
    weir.exec("DROP SINK out").await?;
    ensure!(
        !spill_dir.exists(),
        "a dropped sink's spill directory is removed"
    );
    Ok(())
}

/// Rows a table of the user's refuses (a CHECK, a column too short) are dead letters with
/// the server's reason, once each, and the epoch's other rows are written, appended or
/// upserted.
#[tokio::test]
async fn rows_the_table_refuses_are_dead_letters_and_the_rest_is_written() -> Result<()> {
    let url = url();
    let client = connect(&url).await?;
    let (appended, keyed) = (table("refusing"), table("refusing_keyed"));
    for (name, key) in [(&appended, ""), (&keyed, " PRIMARY KEY")] {
        client
            .batch_execute(&format!(
                "CREATE TABLE {name} (id bigint{key} CHECK (id <> 3), note varchar(5))"
            ))
            .await?;
    }
    let (weir, _) = checkpointed_ids_and_notes().await?;
    let (appended_sink, keyed_sink) = (table("appends"), table("upserts"));
    weir.exec(&format!(
        "CREATE SINK {appended_sink} FROM v WITH (connector = 'postgres', url = '{url}', \
         table = '{appended}')"
    ))
    .await?;
    weir.exec(&format!(
        "CREATE SINK {keyed_sink} FROM v WITH (connector = 'postgres', url = '{url}', \
         table = '{keyed}', key = 'id')"
    ))
    .await?;
    let records: String = (0..10)
        .map(|i| {
            let note = if i == 6 { "far too long" } else { "ok" };
            format!("{{\"id\": {i}, \"note\": \"{note}\"}}\n")
        })
        .collect();
    ensure!(weir.post_records("s", records).await?.0 == 200);
    for sink in [&appended_sink, &keyed_sink] {
        wait_delivered(&weir, sink).await?;
    }
    for name in [&appended, &keyed] {
        let ids: Vec<i64> = client
            .query(&format!("SELECT id FROM {name} ORDER BY id"), &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure!(ids == [0, 1, 2, 4, 5, 7, 8, 9], "{name} holds {ids:?}");
    }
    let letters = weir.get("/api/v1/dead-letters?source=s").await?;
    let letters = letters["dead_letters"].as_array().context("dead letters")?;
    ensure!(letters.len() == 4, "two rows for each sink: {letters:?}");
    for sink in [&appended_sink, &keyed_sink] {
        for (id, why) in [(3, "check constraint"), (6, "value too long")] {
            ensure!(
                letters.iter().any(|l| {
                    let reason = l["reason"].as_str().unwrap_or_default();
                    let raw = l["raw"].as_str().unwrap_or_default();
                    reason.contains(&format!("sink {sink}:"))
                        && reason.contains(why)
                        && raw.contains(&format!("\"id\":\"{id}\""))
                }),
                "{sink}: row {id} ({why}) in {letters:?}"
            );
        }
    }
    Ok(())
}

/// [`checkpointed_ids`] with a `note` column.
async fn checkpointed_ids_and_notes() -> Result<(Weir, String)> {
    let (dir, config) =
        crate::kafka::config_dir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    weir.exec("CREATE SOURCE s (id BIGINT, note VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, note FROM s")
        .await?;
    Ok((weir, config))
}
