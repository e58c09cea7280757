//! The DynamoDB sink against dynalite: the endpoint `scripts/test.sh` starts once per run
//! (`WEIR_TEST_DYNAMODB`), or, for the test that restarts it, one of the test's own
//! that keeps its tables on disk. Each test writes tables of its own.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use serde_json::{Value, json};

use crate::kafka::{config_dir, free_port, unique};
use crate::kafka_sink::wait_delivered;
use crate::sink_runs::{
    count_while_the_store_is_down, counted_in_the_end, counting_into, every_id,
    through_three_kill_nines,
};
use crate::support::Weir;

fn shared_endpoint() -> String {
    std::env::var("WEIR_TEST_DYNAMODB").expect(
        "WEIR_TEST_DYNAMODB is not set: run the tests with scripts/test.sh, which starts dynalite",
    )
}

/// weir reaches dynalite with any credentials.
const AWS_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "weir"),
    ("AWS_SECRET_ACCESS_KEY", "weir"),
];

async fn start_weir(config: &str) -> Result<Weir> {
    let (dir, path) = config_dir(config).await?;
    Weir::start_with_env(dir, &["--config", &path], &AWS_ENV).await
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "weir", "weir", None, None, "test",
        ))
        .build();
    Client::from_conf(config)
}

/// A table keyed by `partition` (and `sort`), each `(name, S|N)`.
async fn create_table(
    client: &Client,
    table: &str,
    partition: (&str, ScalarAttributeType),
    sort: Option<(&str, ScalarAttributeType)>,
) -> Result<()> {
    let mut request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (key, kind) in [
        Some((partition, KeyType::Hash)),
        sort.map(|s| (s, KeyType::Range)),
    ]
    .into_iter()
    .flatten()
    {
        request = request
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key.0)
                    .key_type(kind)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key.0)
                    .attribute_type(key.1)
                    .build()?,
            );
    }
    request.send().await?;
    for _ in 0..100 {
        let d = client.describe_table().table_name(table).send().await?;
        if d.table().and_then(|t| t.table_status()).map(|s| s.as_str()) == Some("ACTIVE") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("table {table} did not become active")
}

/// Every item of a table as JSON (numbers as i64), by the number attribute `key`.
async fn items(client: &Client, table: &str, key: &str) -> Result<BTreeMap<i64, Value>> {
    let mut out = BTreeMap::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in page.items() {
            let mut object = serde_json::Map::new();
            for (name, value) in item {
                let value = match value {
                    AttributeValue::N(n) => json!(n.parse::<i64>()?),
                    AttributeValue::S(s) => json!(s),
                    other => json!(format!("{other:?}")),
                };
                object.insert(name.clone(), value);
            }
            let id = object
                .get(key)
                .and_then(Value::as_i64)
                .context("the key attribute")?;
            out.insert(id, Value::Object(object));
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(out);
        }
    }
}

fn sink_sql(name: &str, view: &str, endpoint: &str, options: &str) -> String {
    format!(
        "CREATE SINK {name} FROM {view} WITH (connector = 'dynamodb', endpoint = '{endpoint}', \
         region = 'us-east-1', {options})"
    )
}

#[tokio::test]
async fn a_table_holds_the_views_rows_through_three_kill_nines() -> Result<()> {
    let endpoint = shared_endpoint();
    let dynamo = client(&endpoint);
    let (totals, seen) = (unique("totals"), unique("seen"));
    create_table(&dynamo, &totals, ("user_id", ScalarAttributeType::N), None).await?;
    create_table(&dynamo, &seen, ("id", ScalarAttributeType::N), None).await?;
    let run = through_three_kill_nines(
        &AWS_ENV,
        &[
            (
                "totals_ddb".to_string(),
                sink_sql(
                    "totals_ddb",
                    "totals",
                    &endpoint,
                    &format!("table = '{totals}', partition_key = 'user_id'"),
                ),
            ),
            (
                "seen_ddb".to_string(),
                sink_sql(
                    "seen_ddb",
                    "seen",
                    &endpoint,
                    &format!("table = '{seen}', partition_key = 'id'"),
                ),
            ),
        ],
    )
    .await?;
    let held = items(&dynamo, &totals, "user_id").await?;
    ensure!(
        held == run.totals,
        "table {totals} holds {held:?}, the view {:?}",
        run.totals
    );
    let seen_items = items(&dynamo, &seen, "id").await?;
    ensure!(
        seen_items.keys().copied().collect::<Vec<_>>() == every_id(run.sent),
        "{} items, not one per id 0..{}",
        seen_items.len(),
        run.sent
    );
    Ok(())
}

#[tokio::test]
async fn a_table_that_does_not_fit_is_refused_and_a_hot_partition_is_a_warning() -> Result<()> {
    let endpoint = shared_endpoint();
    let dynamo = client(&endpoint);
    let (keyed, by_text) = (unique("keyed"), unique("bytext"));
    create_table(
        &dynamo,
        &keyed,
        ("k", ScalarAttributeType::S),
        Some(("id", ScalarAttributeType::N)),
    )
    .await?;
    create_table(&dynamo, &by_text, ("id", ScalarAttributeType::S), None).await?;
    let weir = start_weir("").await?;
    weir.exec("CREATE SOURCE s (id BIGINT, k VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, k FROM s")
        .await?;
    let missing = unique("missing");
    for (options, status, reason) in [
        (
            format!("table = '{missing}', partition_key = 'id'"),
            400,
            "does not exist".to_string(),
        ),
        (
            format!("table = '{keyed}', partition_key = 'k'"),
            400,
            "has partition key k, sort key id; the sink was given partition key k, sort key (none)"
                .into(),
        ),
        (
            format!("table = '{by_text}', partition_key = 'id'"),
            400,
            "key attribute id is S".into(),
        ),
        (
            format!("table = '{keyed}', partition_key = 'nope'"),
            400,
            "partition_key nope is not a column".into(),
        ),
    ] {
        let (code, body) = weir.sql(&sink_sql("d", "v", &endpoint, &options)).await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        ensure!(
            code == status && detail.contains(&reason),
            "{options}: {code} {body}"
        );
    }
    let (code, body) = weir
        .sql(&sink_sql(
            "d",
            "v",
            "http://127.0.0.1:1",
            &format!("table = '{keyed}', partition_key = 'k', sort_key = 'id'"),
        ))
        .await?;
    ensure!(code == 503, "an unreachable endpoint: {code} {body}");

    // Most rows under one partition key: a warning in the sink's status.
    weir.exec(&sink_sql(
        "d",
        "v",
        &endpoint,
        &format!("table = '{keyed}', partition_key = 'k', sort_key = 'id'"),
    ))
    .await?;
    let rows: Vec<String> = (0..300)
        .map(|i| {
            let k = if i % 10 == 0 {
                format!("cold-{i}")
            } else {
                "hot".to_string()
            };
            json!({"id": i, "k": k}).to_string()
        })
        .collect();
    weir.post_records("s", rows.join("\n")).await?;
    let status = wait_delivered(&weir, "d").await?;
    ensure!(
        status["warning"]
            .as_str()
            .is_some_and(|w| w.contains("hot partition") && w.contains("\"hot\"")),
        "{status}"
    );
    let written = dynamo.scan().table_name(&keyed).send().await?;
    ensure!(written.count() == 300, "{} items", written.count());
    Ok(())
}

/// Rows DynamoDB can never take (an item over 400 KB, a partition key over 2048 bytes)
/// are dead letters with the reason, and the rest of the epoch is written.
#[tokio::test]
async fn items_dynamodb_cannot_take_are_dead_letters_and_the_rest_is_written() -> Result<()> {
    let endpoint = shared_endpoint();
    let dynamo = client(&endpoint);
    let (by_id, by_name) = (unique("notes"), unique("names"));
    create_table(&dynamo, &by_id, ("id", ScalarAttributeType::N), None).await?;
    create_table(&dynamo, &by_name, ("name", ScalarAttributeType::S), None).await?;
    let weir = start_weir("").await?;
    weir.exec("CREATE SOURCE s (id BIGINT, name VARCHAR, note VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, name, note FROM s")
        .await?;
    for (sink, options) in [
        ("by_id", format!("table = '{by_id}', partition_key = 'id'")),
        (
            "by_name",
            format!("table = '{by_name}', partition_key = 'name'"),
        ),
    ] {
        weir.exec(&sink_sql(sink, "v", &endpoint, &options)).await?;
    }
    let rows: Vec<String> = (0..10)
        .map(|i| {
            let note = if i == 3 {
                "x".repeat(450_000)
            } else {
                "n".into()
            };
            let name = if i == 6 {
                "y".repeat(3000)
            } else {
                format!("name-{i}")
            };
            json!({"id": i, "name": name, "note": note}).to_string()
        })
        .collect();
    ensure!(weir.post_records("s", rows.join("\n")).await?.0 == 200);
    wait_delivered(&weir, "by_id").await?;
    wait_delivered(&weir, "by_name").await?;
    let ids: Vec<i64> = items(&dynamo, &by_id, "id").await?.into_keys().collect();
    ensure!(ids == [0, 1, 2, 4, 5, 6, 7, 8, 9], "items {ids:?}");
    let names = dynamo.scan().table_name(&by_name).send().await?;
    ensure!(names.count() == 8, "{} items by name", names.count());
    let letters = weir.get("/api/v1/dead-letters?source=s").await?;
    let reasons: Vec<String> = letters["dead_letters"]
        .as_array()
        .context("dead letters")?
        .iter()
        .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(reasons.len() == 3, "{reasons:?}");
    for (sink, reason) in [
        ("by_id", "larger than DynamoDB's 400 KB"),
        ("by_name", "larger than DynamoDB's 400 KB"),
        ("by_name", "longer than a DynamoDB key may be"),
    ] {
        ensure!(
            reasons
                .iter()
                .any(|r| r.contains(&format!("sink {sink}:")) && r.contains(reason)),
            "{sink}: {reason} in {reasons:?}"
        );
    }
    Ok(())
}

/// A dynalite of the test's own that keeps its tables on disk, so it can be stopped
/// and started again.
struct OwnDynamo {
    dir: tempfile::TempDir,
    port: u16,
    child: crate::support::ServiceProcess,
}

impl OwnDynamo {
    async fn start() -> Result<Self> {
        let mut me = Self {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            child: Default::default(),
        };
        me.up().await?;
        Ok(me)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) -> Result<()> {
        let modules = std::env::var("WEIR_AWS_MODULES")
            .context("WEIR_AWS_MODULES is not set: run scripts/test.sh")?;
        let child = Command::new("node")
            .arg(format!("{modules}/dynalite/cli.js"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--createTableMs", "50"])
            .arg("--path")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()?;
        self.child.running(child);
        let probe = client(&self.endpoint());
        for _ in 0..100 {
            if probe.list_tables().send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("dynalite did not start on port {}", self.port)
    }

    fn down(&mut self) -> Result<()> {
        self.child.down()
    }
}

#[tokio::test]
async fn an_endpoint_restarted_mid_run_loses_nothing_and_the_sink_catches_up() -> Result<()> {
    let mut server = OwnDynamo::start().await?;
    let endpoint = server.endpoint();
    create_table(
        &client(&endpoint),
        "counts",
        ("k", ScalarAttributeType::N),
        None,
    )
    .await?;
    let weir = counting_into(
        &AWS_ENV,
        &sink_sql(
            "out",
            "counts",
            &endpoint,
            "table = 'counts', partition_key = 'k'",
        ),
    )
    .await?;
    server.down()?;
    count_while_the_store_is_down(&weir).await?;
    server.up().await?;
    wait_delivered(&weir, "out").await?;
    let held = items(&client(&endpoint), "counts", "k").await?;
    let want: BTreeMap<i64, Value> = counted_in_the_end()
        .into_iter()
        .map(|(k, n)| (k, json!({"k": k, "n": n})))
        .collect();
    ensure!(held == want, "the table holds {held:?}");
    Ok(())
}
