//! The Redis sink against a real server (Debian's `redis-server`): started once per run
//! by `scripts/test.sh` (`WEIR_TEST_REDIS`), or, for the test that restarts it, by the
//! test itself from `WEIR_REDIS_SERVER`. Each test writes keys of its own prefix.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::kafka::{free_port, unique};
use crate::kafka_sink::wait_delivered;
use crate::sink_runs::{
    count_while_the_store_is_down, counted_in_the_end, counting_into, every_id,
    through_three_kill_nines,
};
use crate::support::Weir;

fn url() -> String {
    std::env::var("WEIR_TEST_REDIS").expect(
        "WEIR_TEST_REDIS is not set: run the tests with scripts/test.sh, which starts Redis",
    )
}

fn connect(url: &str) -> Result<redis::Connection> {
    Ok(redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?)
}

/// Run `read` on a fresh connection, and again (up to five times) if a signal cut it
/// off: a socket with a read timeout is not restarted after a signal handler runs (here
/// SIGCHLD, as other tests' servers exit), and the reply may have been cut in two.
fn reading<T>(url: &str, read: impl Fn(&mut redis::Connection) -> Result<T>) -> Result<T> {
    let interrupted = |e: &anyhow::Error| {
        e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
        }) || e.to_string().contains("(os error 4)")
    };
    let mut tries = 1;
    loop {
        match connect(url).and_then(|mut c| read(&mut c)) {
            Err(e) if tries < 5 && interrupted(&e) => tries += 1,
            done => return done,
        }
    }
}

/// One command's reply (see [`reading`]).
fn query<T: redis::FromRedisValue>(url: &str, command: &redis::Cmd) -> Result<T> {
    reading(url, |c| Ok(command.query(c)?))
}

/// Every key under `prefix` with its JSON value, by the number after the prefix.
fn json_values(connection: &mut redis::Connection, prefix: &str) -> Result<BTreeMap<i64, Value>> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(connection)?;
    let mut out = BTreeMap::new();
    for key in keys {
        let text: String = redis::cmd("GET").arg(&key).query(connection)?;
        let id = key[prefix.len()..]
            .parse()
            .context("a number after the prefix")?;
        out.insert(id, serde_json::from_str(&text)?);
    }
    Ok(out)
}

/// The newest epoch the progress hash holds for `sink`.
fn recorded_epoch(connection: &mut redis::Connection, sink: &str) -> Result<Option<u64>> {
    let all: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg("weir:sink-progress")
        .query(connection)?;
    Ok(all
        .iter()
        .filter(|(field, _)| field.starts_with(&format!("{sink}/")))
        .map(|(_, epoch)| *epoch)
        .max())
}

#[tokio::test]
async fn keys_hold_the_views_rows_exactly_once_through_three_kill_nines() -> Result<()> {
    let url = url();
    let prefix = format!("{}:", unique("totals"));
    let seen_prefix = format!("{}:", unique("seen"));
    // Sink names of their own: the progress hash is shared by every test run.
    let (totals_sink, seen_sink) = (
        unique("totals_redis").replace('-', "_"),
        unique("seen_redis").replace('-', "_"),
    );
    let run = through_three_kill_nines(&[], &[
        (
            totals_sink.clone(),
            format!(
                "CREATE SINK {totals_sink} FROM totals WITH (connector = 'redis', url = '{url}', \
                 key = '{prefix}{{user_id}}')"
            ),
        ),
        (
            seen_sink.clone(),
            format!(
                "CREATE SINK {seen_sink} FROM seen WITH (connector = 'redis', url = '{url}', \
                 key = '{seen_prefix}{{id}}')"
            ),
        ),
    ])
    .await?;
    let held = reading(&url, |c| json_values(c, &prefix))?;
    ensure!(
        held == run.totals,
        "the keys hold {held:?}, the view {:?}",
        run.totals
    );
    let seen = reading(&url, |c| json_values(c, &seen_prefix))?;
    ensure!(
        seen.keys().copied().collect::<Vec<_>>() == every_id(run.sent),
        "{} keys, not one per id 0..{}",
        seen.len(),
        run.sent
    );
    let status = &run.statuses[&totals_sink];
    ensure!(
        reading(&url, |c| recorded_epoch(c, &totals_sink))? == status["delivered_epoch"].as_u64(),
        "the progress hash and the status disagree: {status}"
    );
    Ok(())
}

#[tokio::test]
async fn hashes_with_a_ttl_and_options_that_cannot_work_are_refused_with_the_reason() -> Result<()>
{
    let url = url();
    let prefix = format!("{}:", unique("hash"));
    let weir = Weir::start(&[]).await?;
    weir.exec("CREATE SOURCE s (id BIGINT, name VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, name FROM s")
        .await?;
    for (options, status, reason) in [
        (
            format!("url = '{url}', key = 'x:{{nope}}'"),
            400,
            "names \"nope\", which is not a column",
        ),
        (format!("url = '{url}'"), 400, "needs key"),
        (
            format!("url = '{url}', key = 'x:{{id}}', value = 'xml'"),
            400,
            "value xml is not json or hash",
        ),
        (
            "url = 'redis://:hunter2@127.0.0.1:1/0', key = 'x:{id}'".to_string(),
            503,
            "cannot reach Redis",
        ),
    ] {
        let (code, body) = weir
            .sql(&format!(
                "CREATE SINK r FROM v WITH (connector = 'redis', {options})"
            ))
            .await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        ensure!(
            code == status && detail.contains(reason) && !body.to_string().contains("hunter2"),
            "{options}: {code} {body}"
        );
    }
    weir.exec(&format!(
        "CREATE SINK r FROM v WITH (connector = 'redis', url = '{url}', key = '{prefix}{{id}}', \
         value = 'hash', ttl = '1h')"
    ))
    .await?;
    weir.exec(&format!(
        "CREATE SINK j FROM v WITH (connector = 'redis', url = '{url}', key = '{prefix}j:{{id}}', \
         ttl = '90s')"
    ))
    .await?;
    weir.post_records(
        "s",
        "{\"id\": 1, \"name\": \"ann\"}\n{\"id\": 2, \"name\": null}\n\
         {\"id\": null, \"name\": \"keyless\"}"
            .into(),
    )
    .await?;
    wait_delivered(&weir, "r").await?;
    wait_delivered(&weir, "j").await?;
    // JSON values with a TTL: SET ... EX.
    let json_value: String = query(&url, redis::cmd("GET").arg(format!("{prefix}j:1")))?;
    ensure!(json_value == r#"{"id":1,"name":"ann"}"#, "{json_value}");
    let json_ttl: i64 = query(&url, redis::cmd("TTL").arg(format!("{prefix}j:1")))?;
    ensure!((30..=90).contains(&json_ttl), "ttl {json_ttl}");
    let first: BTreeMap<String, String> =
        query(&url, redis::cmd("HGETALL").arg(format!("{prefix}1")))?;
    let want: BTreeMap<String, String> = [("id", "1"), ("name", "ann")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ensure!(first == want, "{first:?}");
    let second: BTreeMap<String, String> =
        query(&url, redis::cmd("HGETALL").arg(format!("{prefix}2")))?;
    ensure!(
        second.get("id").map(String::as_str) == Some("2") && !second.contains_key("name"),
        "a null column is no field: {second:?}"
    );
    let ttl: i64 = query(&url, redis::cmd("TTL").arg(format!("{prefix}1")))?;
    ensure!((3_000..=3_600).contains(&ttl), "ttl {ttl}");
    // The row whose key column is null has no key: a dead letter, with the reason.
    let letters = weir.get("/api/v1/dead-letters").await?.to_string();
    ensure!(
        letters.contains("the row has no key") && letters.contains("keyless"),
        "{letters}"
    );
    Ok(())
}

/// A Redis server of the test's own, persisting to an append-only file so a restart
/// keeps its keys.
struct OwnRedis {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Result<Self> {
        let mut me = Self {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            child: None,
        };
        me.up()?;
        Ok(me)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn up(&mut self) -> Result<()> {
        let server = std::env::var("WEIR_REDIS_SERVER")
            .context("WEIR_REDIS_SERVER is not set: run scripts/test.sh")?;
        let child = Command::new(server)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..100 {
            if connect(&self.url()).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("redis-server did not start on port {}", self.port)
    }

    /// Stop the server as an operator would (SIGTERM: it finishes its file and exits).
    fn down(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").arg(child.id().to_string()).status()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn a_server_restarted_mid_run_loses_nothing_and_the_sink_catches_up() -> Result<()> {
    let mut server = OwnRedis::start()?;
    let url = server.url();
    let weir = counting_into(
        &[],
        &format!(
            "CREATE SINK out FROM counts WITH (connector = 'redis', url = '{url}', \
             key = 'count:{{k}}')"
        ),
    )
    .await?;
    server.down()?;
    count_while_the_store_is_down(&weir).await?;
    server.up()?;
    wait_delivered(&weir, "out").await?;
    let held = reading(&url, |c| json_values(c, "count:"))?;
    let want: BTreeMap<i64, Value> = counted_in_the_end()
        .into_iter()
        .map(|(k, n)| (k, json!({"k": k, "n": n})))
        .collect();
    ensure!(held == want, "the keys hold {held:?}");
    Ok(())
}
