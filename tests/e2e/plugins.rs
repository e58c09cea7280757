//! Wasm plugins through the real server: upload, SQL functions that must equal native
//! SQL, hostile modules contained with the right status and reason, a plugin that
//! keeps failing pauses its views without losing rows, and plugins survive a restart.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::support::{Weir, plugin_wasm, wat_module};

const LIMITS: &str = "[runtime.batch]\nmax-delay = '20ms'\n\
[runtime.plugins]\ntime-limit = '300ms'\nmemory-limit-bytes = 33554432\n\
max-output-bytes = 4194304\nmax-consecutive-failures = 3\n";

async fn start_with_limits() -> Result<Weir> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, LIMITS)?;
    let config = config.to_string_lossy().to_string();
    Weir::start_in(dir, &["--config", &config]).await
}

async fn dead_letters_for(weir: &Weir, view: &str) -> Result<Vec<Value>> {
    let all = weir.get("/api/v1/dead-letters?limit=10000").await?["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(all.into_iter().filter(|l| l["view"] == view).collect())
}

#[tokio::test]
async fn currency_function_equals_native_sql_and_survives_a_restart() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    let (status, body) = weir
        .upload_plugin("currency", plugin_wasm("weir_plugin_currency"))
        .await?;
    ensure!(status == 201, "upload answered {status}: {body}");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["functions"],
        json!([{ "name": "to_eur", "args": ["Int64"], "returns": "Float64" }])
    );

    // Each view reads a source of its own with the same events: a generator starts with
    // the first view that reads it, so a second view over it could miss its first rows.
    for name in ["bid", "bid_native"] {
        weir.exec(&format!(
            "CREATE SOURCE {name} WITH (connector = 'nexmark', table = 'bid', events = 50000, seed = 7)"
        ))
        .await?;
    }
    weir.exec(
        "CREATE MATERIALIZED VIEW by_plugin AS SELECT auction, to_eur(price) AS eur FROM bid",
    )
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW native AS SELECT auction, 0.908 * CAST(price AS DOUBLE) AS eur FROM bid_native")
        .await?;
    for name in ["bid", "bid_native"] {
        weir.wait_finished(name).await?;
    }
    let plugin_rows = weir.get("/api/v1/views/by_plugin").await?["rows"].clone();
    let native_rows = weir.get("/api/v1/views/native").await?["rows"].clone();
    assert_eq!(plugin_rows.as_array().map(Vec::len), Some(46_000));
    assert_eq!(
        plugin_rows, native_rows,
        "the plugin must equal 0.908 * price"
    );

    let status = weir.get("/api/v1/plugins/currency").await?;
    assert_eq!(status["used_by"], json!(["by_plugin"]));
    assert_eq!(status["rows"], 46_000);
    assert_eq!(status["failures"], 0);
    let (code, body) = weir.delete("/api/v1/plugins/currency").await?;
    assert_eq!(code, 409, "{body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("by_plugin"));

    // Ad hoc SQL sees plugin functions too, and so does the next process.
    let weir = weir.restart(&[]).await?;
    let listed = weir.get("/api/v1/plugins").await?;
    assert_eq!(listed["plugins"][0]["name"], "currency");
    assert_eq!(listed["plugins"][0]["version"], 1);
    let one = weir
        .exec("SELECT to_eur(CAST(1000 AS BIGINT)) AS eur")
        .await?;
    assert_eq!(one["rows"], json!([[908.0]]));
    // The views came back with the catalog, so the plugin is still in use.
    let (code, _) = weir.delete("/api/v1/plugins/currency").await?;
    assert_eq!(code, 409);
    weir.exec("DROP VIEW by_plugin").await?;
    let (code, _) = weir.delete("/api/v1/plugins/currency").await?;
    assert_eq!(code, 200);
    let (code, body) = weir.sql("SELECT to_eur(CAST(1000 AS BIGINT))").await?;
    assert_eq!(code, 400, "{body}");
    Ok(())
}

#[tokio::test]
async fn hostile_plugins_cost_only_their_batches() -> Result<()> {
    let weir = start_with_limits().await?;
    weir.exec("CREATE SOURCE nums (n BIGINT) WITH (connector = 'http')")
        .await?;

    // Refused at upload, with the reason.
    let refusals = [
        (
            wat_module("hostile/wat/wasi_file.wat"),
            "wasi_snapshot_preview1::path_open",
        ),
        (
            std::fs::read(format!(
                "{}/../plugins/hostile/not-wasm.txt",
                env!("CARGO_MANIFEST_DIR")
            ))?,
            "not a WebAssembly module",
        ),
    ];
    for (wasm, reason) in refusals {
        let (code, body) = weir.upload_plugin("refused", wasm).await?;
        assert_eq!(code, 400, "{body}");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(reason), "{detail}");
    }
    let (code, body) = weir.upload_plugin("Bad Name", vec![0]).await?;
    assert_eq!(code, 400, "{body}");

    // Accepted, then each call fails and only that batch is dead-lettered.
    let hostile = plugin_wasm("weir_plugin_hostile");
    let cases: [(&str, Vec<u8>, &str, &str); 8] = [
        (
            "infinite_loop",
            wat_module("hostile/wat/infinite_loop.wat"),
            "spin",
            "time limit exceeded",
        ),
        (
            "memory_bomb",
            wat_module("hostile/wat/memory_bomb.wat"),
            "bomb",
            "memory limit exceeded",
        ),
        (
            "deep_recursion",
            wat_module("hostile/wat/deep_recursion.wat"),
            "recurse",
            "stack overflow",
        ),
        (
            "immediate_trap",
            wat_module("hostile/wat/immediate_trap.wat"),
            "crash",
            "unreachable code",
        ),
        (
            "garbage_output",
            wat_module("hostile/wat/garbage_output.wat"),
            "garbage",
            "not an Arrow IPC stream",
        ),
        (
            "wild_pointer",
            wat_module("hostile/wat/wild_pointer.wat"),
            "wild",
            "outside the plugin's memory",
        ),
        ("hostile", hostile.clone(), "wrong_type", "bad output"),
        ("hostile", hostile, "enormous", "over the limit"),
    ];
    for (i, (plugin, wasm, function, reason)) in cases.into_iter().enumerate() {
        let (code, body) = weir.upload_plugin(plugin, wasm).await?;
        ensure!(code == 201, "{plugin}: {code} {body}");
        let view = format!("v{i}");
        weir.exec(&format!(
            "CREATE MATERIALIZED VIEW {view} AS SELECT n, {function}(n) AS r FROM nums"
        ))
        .await?;
        let (code, body) = weir
            .post_records("nums", json!([{ "n": 1 }, { "n": 2 }]).to_string())
            .await?;
        assert_eq!(code, 200, "{body}");
        let letters = weir
            .wait_for(
                &format!("{plugin} dead letters"),
                Duration::from_secs(30),
                || async {
                    let l = dead_letters_for(&weir, &view).await?;
                    Ok((l.len() == 2).then_some(l))
                },
            )
            .await?;
        let text = letters[0]["reason"].as_str().unwrap_or("").to_string();
        assert!(
            text.contains(&format!("plugin {plugin} v")) && text.contains(reason),
            "{plugin}: {text}"
        );
        assert_eq!(letters[0]["raw"], json!({ "n": 1 }).to_string());
        let health = weir
            .client
            .get(format!("{}/healthz", weir.url))
            .send()
            .await?;
        assert_eq!(health.status(), 200, "the server keeps answering");
        weir.exec(&format!("DROP VIEW {view}")).await?;
    }
    Ok(())
}

/// The immediate-trap module, and the same plugin with its bug fixed: it returns its
/// input (a valid Int64 column).
fn flaky_modules() -> Result<(Vec<u8>, Vec<u8>)> {
    let broken = std::fs::read_to_string(format!(
        "{}/../plugins/hostile/wat/immediate_trap.wat",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let fixed = broken.replace(
        "(unreachable))\n)",
        "(i64.or (i64.shl (i64.extend_i32_u (local.get 2)) (i64.const 32)) (i64.extend_i32_u (local.get 3))))\n)",
    );
    ensure!(broken != fixed, "the fix must change the module");
    Ok((wat::parse_str(&broken)?, wat::parse_str(&fixed)?))
}

/// Upload `broken` as plugin flaky, make view `checked` call it over http source `nums`,
/// and fail three batches in a row: dead-lettered, and the plugin is marked failed.
async fn fail_three_batches(weir: &Weir, broken: &[u8]) -> Result<()> {
    let (code, body) = weir.upload_plugin("flaky", broken.to_vec()).await?;
    ensure!(code == 201, "{body}");
    weir.exec("CREATE SOURCE nums (n BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW checked AS SELECT n, crash(n) AS m FROM nums")
        .await?;
    for n in 1..=3 {
        weir.post_records("nums", json!([{ "n": n }]).to_string())
            .await?;
        weir.wait_for("a dead letter", Duration::from_secs(10), || async {
            Ok((dead_letters_for(weir, "checked").await?.len() == n).then_some(()))
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_plugin_pauses_its_view_until_a_fixed_upload() -> Result<()> {
    let weir = start_with_limits().await?;
    let (broken, fixed) = flaky_modules()?;
    fail_three_batches(&weir, &broken).await?;
    let plugin = weir.get("/api/v1/plugins/flaky").await?;
    assert_eq!(plugin["status"], "failed", "{plugin}");
    assert!(
        plugin["reason"]
            .as_str()
            .unwrap_or("")
            .contains("3 failures in a row")
    );
    let view = weir.get("/api/v1/views").await?["views"][0].clone();
    assert_eq!(view["status"], "paused", "{view}");

    // While paused, new rows are held, not dead-lettered.
    weir.post_batch("nums", json!([{ "n": 10 }, { "n": 11 }]).to_string())
        .await?;
    assert_eq!(dead_letters_for(&weir, "checked").await?.len(), 3);
    assert_eq!(weir.get("/api/v1/views/checked").await?["rows"], json!([]));

    // The fixed version resumes the view, which processes what it held.
    let (code, body) = weir.upload_plugin("flaky", fixed.clone()).await?;
    ensure!(code == 201, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["status"], "active");
    let rows = weir
        .wait_for("the held rows", Duration::from_secs(10), || async {
            let rows = weir.get("/api/v1/views/checked").await?["rows"].clone();
            Ok((rows.as_array().map(Vec::len) == Some(2)).then_some(rows))
        })
        .await?;
    assert_eq!(rows, json!([[10, 10], [11, 11]]));
    let view = weir.get("/api/v1/views").await?["views"][0].clone();
    assert_eq!(
        view["status"], "degraded",
        "running again, last error kept: {view}"
    );
    assert_eq!(dead_letters_for(&weir, "checked").await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn transforms_make_streams_that_views_read() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    for (name, module) in [
        ("redact", "weir_plugin_redact"),
        ("enrich", "weir_plugin_enrich"),
    ] {
        let (code, body) = weir.upload_plugin(name, plugin_wasm(module)).await?;
        ensure!(code == 201, "{name}: {body}");
    }

    // Redaction: the stream has the source's shape, with PII masked.
    weir.exec("CREATE SOURCE msgs (id BIGINT, note VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE STREAM clean AS TRANSFORM msgs USING PLUGIN 'redact'")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW notes AS SELECT id, note FROM clean")
        .await?;
    let records = json!([
        { "id": 1, "note": "write to ann@example.com" },
        { "id": 2, "note": "login from 192.168.10.4" },
        { "id": 3, "note": "paid with 4111 1111 1111 1111" },
        { "id": 4, "note": null },
    ]);
    weir.post_records("msgs", records.to_string()).await?;
    let rows = weir
        .wait_for("redacted rows", Duration::from_secs(10), || async {
            let rows = weir.get("/api/v1/views/notes").await?["rows"].clone();
            Ok((rows.as_array().map(Vec::len) == Some(4)).then_some(rows))
        })
        .await?;
    assert_eq!(
        rows,
        json!([
            [1, "write to [email]"],
            [2, "login from [ip]"],
            [3, "paid with [card]"],
            [4, null]
        ])
    );
    let streams = weir.exec("SHOW STREAMS").await?["rows"].clone();
    assert_eq!(streams, json!([["clean", "msgs", "redact", "redact"]]));
    let (code, body) = weir.sql("DROP STREAM clean").await?;
    assert_eq!(code, 409, "{body}");
    let (code, body) = weir.delete("/api/v1/plugins/redact").await?;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("clean"),
        "{body}"
    );

    // Enrichment over Nexmark, windowed on the source's watermark, against the same
    // categories written as SQL.
    // by_sql reads the same events from a source of its own (see above).
    for name in ["bid", "bid_sql"] {
        weir.exec(&format!(
            "CREATE SOURCE {name} WITH (connector = 'nexmark', table = 'bid', events = 60000, seed = 3)"
        ))
        .await?;
    }
    weir.exec("CREATE STREAM bid_sites AS TRANSFORM bid USING PLUGIN 'enrich.categorize'")
        .await?;
    let (code, body) = weir
        .sql("CREATE STREAM x AS TRANSFORM bid USING PLUGIN 'enrich.nope'")
        .await?;
    assert_eq!(code, 400, "{body}");
    weir.exec(
        "CREATE MATERIALIZED VIEW by_plugin AS SELECT window_start, site_category, count(*) AS n \
         FROM TUMBLE(bid_sites, date_time, INTERVAL '1' SECOND) GROUP BY window_start, window_end, site_category",
    )
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW by_sql AS SELECT window_start, \
         CASE split_part(url, '/', 4) WHEN 'googl' THEN 'search' WHEN 'baidu' THEN 'search' \
         WHEN 'faceb' THEN 'social' WHEN 'apple' THEN 'technology' END AS site_category, count(*) AS n \
         FROM TUMBLE(bid_sql, date_time, INTERVAL '1' SECOND) GROUP BY window_start, window_end, 2",
    )
    .await?;
    for name in ["bid", "bid_sql"] {
        weir.wait_finished(name).await?;
    }
    let sorted = |v: Value| {
        let mut rows = v.as_array().cloned().unwrap_or_default();
        rows.sort_by_key(|r| r.to_string());
        rows
    };
    let by_plugin = sorted(weir.get("/api/v1/views/by_plugin").await?["rows"].clone());
    let by_sql = sorted(weir.get("/api/v1/views/by_sql").await?["rows"].clone());
    assert!(by_plugin.len() >= 8, "several windows: {by_plugin:?}");
    assert_eq!(by_plugin, by_sql);
    let explain = weir.exec("EXPLAIN VIEW by_plugin").await?["rows"].to_string();
    assert!(explain.contains("plugin enrich.categorize"), "{explain}");
    Ok(())
}

#[tokio::test]
async fn a_plugin_written_without_the_sdk_follows_the_abi() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    let (code, body) = weir
        .upload_plugin("tax", wat_module("no-sdk/tax.wat"))
        .await?;
    ensure!(code == 201, "{body}");
    assert_eq!(body["functions"][0]["name"], "with_tax");
    weir.exec("CREATE SOURCE prices (price BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW taxed AS SELECT with_tax(price) AS by_plugin, \
         price + price / 5 AS by_sql FROM prices",
    )
    .await?;
    let mut records: Vec<Value> = (0..20_000)
        .map(|i| json!({ "price": i * 7 - 5_000 }))
        .collect();
    records.push(json!({ "price": null }));
    let (code, body) = weir
        .post_records("prices", Value::Array(records).to_string())
        .await?;
    assert_eq!(code, 200, "{body}");
    let rows = weir
        .wait_for("taxed rows", Duration::from_secs(20), || async {
            let rows = weir.get("/api/v1/views/taxed").await?["rows"].clone();
            Ok((rows.as_array().map(Vec::len) == Some(20_001)).then_some(rows))
        })
        .await?;
    for row in rows.as_array().into_iter().flatten() {
        assert_eq!(row[0], row[1], "{row}");
    }
    assert!(
        rows.as_array()
            .is_some_and(|r| r.iter().any(|row| row[0].is_null()))
    );
    Ok(())
}

/// A view that calls a plugin's function runs its batches in slices side by side (a
/// guest call per slice), with the serial result, and a batch whose slices fail counts
/// as one failure towards marking the plugin failed, however many slices failed and
/// whichever ended first.
#[tokio::test]
async fn a_plugin_function_runs_in_slices_and_fails_once_per_batch() -> Result<()> {
    let weir = start_with_limits().await?;
    let (code, body) = weir.upload_plugin("tax", strict_tax()?).await?;
    ensure!(code == 201, "{body}");
    weir.exec("CREATE SOURCE prices (price BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW taxed WITH (parallelism = 2) AS \
         SELECT price, with_tax(price) AS by_plugin, price + price / 5 AS by_sql FROM prices",
    )
    .await?;
    let explain = weir.exec("EXPLAIN VIEW taxed").await?;
    ensure!(
        explain.to_string().contains("in up to 2 slices"),
        "{explain}"
    );

    // 4,096 rows in one batch: two slices of 2,048, a guest call each.
    const ROWS: i64 = 4_096;
    let prices = |negative: &[i64]| {
        let records: Vec<Value> = (0..ROWS)
            .map(|i| json!({ "price": if negative.contains(&i) { -i } else { i * 7 } }))
            .collect();
        Value::Array(records).to_string()
    };
    weir.post_batch("prices", prices(&[])).await?;
    let rows = weir.get("/api/v1/views/taxed").await?["rows"].clone();
    assert_eq!(rows.as_array().map(Vec::len), Some(ROWS as usize));
    for row in rows.as_array().into_iter().flatten() {
        assert_eq!(row[1], row[2], "{row}");
    }
    let plugin = weir.get("/api/v1/plugins/tax").await?;
    assert_eq!(plugin["calls"], 2, "a call per slice: {plugin}");
    assert_eq!(plugin["rows"], ROWS, "{plugin}");

    // Each failing batch counts once: a trap in the second slice only (the first
    // succeeds), in both, in the first only. The third marks the plugin failed.
    for (n, negative) in [&[3_000][..], &[1, 3_000], &[1]].into_iter().enumerate() {
        weir.post_batch("prices", prices(negative)).await?;
        let plugin = weir.get("/api/v1/plugins/tax").await?;
        let n = n as u64 + 1;
        assert_eq!(plugin["failures"], n, "batch {n}: {plugin}");
        assert_eq!(plugin["consecutive_failures"], n, "batch {n}: {plugin}");
        let status = if n < 3 { "active" } else { "failed" };
        assert_eq!(plugin["status"], status, "batch {n}: {plugin}");
    }
    let letters = weir.get("/api/v1/dead-letters?view=taxed&limit=1").await?;
    assert_eq!(
        letters["total"],
        3 * ROWS,
        "every row of the failed batches"
    );
    let reason = letters["dead_letters"][0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("plugin tax v1"), "{reason}");
    Ok(())
}

/// plugins/no-sdk/tax.wat, made to trap on a negative price.
fn strict_tax() -> Result<Vec<u8>> {
    let tax = std::fs::read_to_string(format!(
        "{}/../plugins/no-sdk/tax.wat",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let load = "(local.set $v (i64.load (local.get $values)))";
    let strict = tax.replace(
        load,
        &format!(
            "{load}\n        (if (i64.lt_s (local.get $v) (i64.const 0)) (then (unreachable)))"
        ),
    );
    ensure!(strict != tax, "the check must go in");
    Ok(wat::parse_str(&strict)?)
}

/// A batch whose one call of a function succeeds and another fails is one failing
/// batch: three such in a row mark the plugin failed (the success does not clear the
/// count, as it did when each call counted alone).
#[tokio::test]
async fn a_batch_with_one_failing_call_of_two_counts_as_failing() -> Result<()> {
    let weir = start_with_limits().await?;
    let (code, body) = weir.upload_plugin("tax", strict_tax()?).await?;
    ensure!(code == 201, "{body}");
    weir.exec("CREATE SOURCE prices (price BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW both_ways AS \
         SELECT with_tax(price) AS up, with_tax(0 - price) AS down FROM prices",
    )
    .await?;
    for n in 1..=3u64 {
        weir.post_batch("prices", json!([{ "price": 100 }]).to_string())
            .await?;
        let plugin = weir.get("/api/v1/plugins/tax").await?;
        assert_eq!(plugin["consecutive_failures"], n, "batch {n}: {plugin}");
    }
    let plugin = weir.get("/api/v1/plugins/tax").await?;
    assert_eq!(plugin["status"], "failed", "{plugin}");
    assert_eq!(plugin["failures"], 3, "{plugin}");
    Ok(())
}

/// A batch held while a plugin is failed, and dead-lettered when its replay fails too,
/// keeps every column its source decoded (here for another view), as a batch that fails
/// at once does.
#[tokio::test]
async fn a_held_batch_that_fails_on_replay_keeps_every_decoded_column() -> Result<()> {
    let weir = start_with_limits().await?;
    let (broken, _) = flaky_modules()?;
    let (code, body) = weir.upload_plugin("flaky", broken.clone()).await?;
    ensure!(code == 201, "{body}");
    weir.exec("CREATE SOURCE pairs (n BIGINT, label TEXT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW labels AS SELECT label FROM pairs")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW checked AS SELECT n, crash(n) AS m FROM pairs")
        .await?;
    let raws = |letters: Vec<Value>| -> Vec<Value> {
        letters
            .iter()
            .map(|l| serde_json::from_str(l["raw"].as_str().unwrap_or("null")).unwrap_or_default())
            .collect()
    };
    for n in 1..=3 {
        weir.post_batch(
            "pairs",
            json!([{ "n": n, "label": format!("at once {n}") }]).to_string(),
        )
        .await?;
    }
    let plugin = weir.get("/api/v1/plugins/flaky").await?;
    assert_eq!(plugin["status"], "failed", "{plugin}");
    let at_once = raws(dead_letters_for(&weir, "checked").await?);
    assert_eq!(at_once[0], json!({ "n": 1, "label": "at once 1" }));
    // Held, then replayed into the same bug.
    weir.post_batch("pairs", json!([{ "n": 10, "label": "held" }]).to_string())
        .await?;
    assert_eq!(dead_letters_for(&weir, "checked").await?.len(), 3);
    weir.upload_plugin("flaky", broken).await?;
    let replayed = weir
        .wait_for(
            "the replayed batch's dead letter",
            Duration::from_secs(10),
            || async {
                let letters = dead_letters_for(&weir, "checked").await?;
                Ok((letters.len() == 4).then_some(letters))
            },
        )
        .await?;
    assert_eq!(raws(replayed)[3], json!({ "n": 10, "label": "held" }));
    Ok(())
}

/// `weir plugin new` makes a crate that builds for wasm32 as is and works in the server.
#[tokio::test]
async fn a_scaffolded_plugin_builds_and_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = tokio::process::Command::new(crate::support::weir_binary())
        .args(["plugin", "new", "scaffolded", "--dir"])
        .arg(dir.path())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join("scaffolded");
    // Same dependency versions as this workspace (already in the local registry).
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"),
        root.join("Cargo.lock"),
    )?;
    let target = std::env::var("HOME").map_or_else(
        |_| dir.path().join("target"),
        |h| std::path::PathBuf::from(h).join(".cache/weir-scaffold-target"),
    );
    let build = tokio::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .await?;
    ensure!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = std::fs::read(target.join("wasm32-unknown-unknown/release/scaffolded.wasm"))?;

    let weir = Weir::start(&[]).await?;
    let (code, body) = weir.upload_plugin("scaffolded", wasm).await?;
    ensure!(code == 201, "{body}");
    assert_eq!(body["functions"][0]["name"], "double_it");
    assert_eq!(body["transforms"][0]["name"], "shout");
    let rows = weir
        .exec("SELECT double_it(CAST(21 AS BIGINT)) AS x")
        .await?["rows"]
        .clone();
    assert_eq!(rows, json!([[42]]));
    Ok(())
}

/// A wasm32-wasip1 build imports WASI; the host answers the few imports Rust's standard
/// library needs with stubs that grant nothing, so it runs like the unknown-unknown build.
#[tokio::test]
async fn a_wasip1_build_runs_on_the_granted_stubs() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    let wasm = crate::support::plugin_wasm_for("wasm32-wasip1", "weir_plugin_currency");
    let (code, body) = weir.upload_plugin("currency", wasm).await?;
    ensure!(code == 201, "{body}");
    let rows = weir
        .exec("SELECT to_eur(CAST(2000 AS BIGINT)) AS eur")
        .await?["rows"]
        .clone();
    assert_eq!(rows, json!([[1816.0]]));
    Ok(())
}

/// DDL is durable when it answers: sources, streams and views come back after a kill.
#[tokio::test]
async fn the_catalog_survives_a_kill() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    let (code, body) = weir
        .upload_plugin("redact", plugin_wasm("weir_plugin_redact"))
        .await?;
    ensure!(code == 201, "{body}");
    weir.exec("CREATE SOURCE msgs (id BIGINT, note VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE STREAM clean AS TRANSFORM msgs USING PLUGIN 'redact'")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW notes AS SELECT id, note FROM clean")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW gone AS SELECT id FROM msgs")
        .await?;
    weir.exec("DROP VIEW gone").await?;

    let weir = weir.restart(&[]).await?;
    assert_eq!(
        weir.exec("SHOW STREAMS").await?["rows"],
        json!([["clean", "msgs", "redact", "redact"]])
    );
    let views: Vec<Value> = weir.exec("SHOW VIEWS").await?["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(views[0][0], "notes");
    weir.post_records(
        "msgs",
        json!([{ "id": 1, "note": "mail me at a@b.org" }]).to_string(),
    )
    .await?;
    let rows = weir
        .wait_for(
            "rows after the restart",
            Duration::from_secs(10),
            || async {
                let rows = weir.get("/api/v1/views/notes").await?["rows"].clone();
                Ok((rows.as_array().map(Vec::len) == Some(1)).then_some(rows))
            },
        )
        .await?;
    assert_eq!(rows, json!([[1, "mail me at [email]"]]));
    Ok(())
}

/// Function names are global in SQL: no two plugins may export the same one, and none
/// may shadow a built-in function.
#[tokio::test]
async fn function_names_cannot_clash() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    let trap = std::fs::read_to_string(format!(
        "{}/../plugins/hostile/wat/immediate_trap.wat",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let (code, body) = weir.upload_plugin("first", wat::parse_str(&trap)?).await?;
    ensure!(code == 201, "{body}");
    let (code, body) = weir.upload_plugin("second", wat::parse_str(&trap)?).await?;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("plugin first already exports"),
        "{body}"
    );
    // Same length as "crash", so the descriptor's length stays right.
    let shadow = trap.replace(r#"\"name\":\"crash\""#, r#"\"name\":\"upper\""#);
    assert_ne!(shadow, trap);
    let (code, body) = weir
        .upload_plugin("third", wat::parse_str(&shadow)?)
        .await?;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("built-in SQL function"),
        "{body}"
    );
    // A new version of the same plugin may keep its names.
    let (code, body) = weir.upload_plugin("first", wat::parse_str(&trap)?).await?;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["version"], 2);
    Ok(())
}

/// A replay whose plugin fails again stops after the failures that mark it failed and
/// keeps the rest of what the view held, for the next fixed version.
#[tokio::test]
async fn a_replay_that_fails_again_keeps_the_rest_held() -> Result<()> {
    let weir = start_with_limits().await?;
    let (broken, fixed) = flaky_modules()?;
    fail_three_batches(&weir, &broken).await?;
    // Five batches held while the plugin is failed.
    for n in 10..15 {
        weir.post_batch("nums", json!([{ "n": n }]).to_string())
            .await?;
    }
    assert_eq!(dead_letters_for(&weir, "checked").await?.len(), 3);
    // Still broken: three replayed batches fail and mark it failed again; two stay held.
    weir.upload_plugin("flaky", broken.clone()).await?;
    weir.wait_for("the second failure", Duration::from_secs(10), || async {
        let p = weir.get("/api/v1/plugins/flaky").await?;
        Ok((p["status"] == "failed" && p["version"] == 2).then_some(()))
    })
    .await?;
    let dead = weir
        .wait_for(
            "the replayed batches' dead letters",
            Duration::from_secs(10),
            || async {
                let n = dead_letters_for(&weir, "checked").await?.len();
                Ok((n >= 6).then_some(n))
            },
        )
        .await?;
    assert_eq!(dead, 6);
    assert_eq!(weir.get("/api/v1/views/checked").await?["rows"], json!([]));
    // Fixed: the two batches still held are processed.
    weir.upload_plugin("flaky", fixed.clone()).await?;
    let rows = weir
        .wait_for("the held rows", Duration::from_secs(10), || async {
            let rows = weir.get("/api/v1/views/checked").await?["rows"].clone();
            Ok((rows.as_array().map(Vec::len) == Some(2)).then_some(rows))
        })
        .await?;
    assert_eq!(rows, json!([[13, 13], [14, 14]]));
    assert_eq!(dead_letters_for(&weir, "checked").await?.len(), 6);
    Ok(())
}

/// A plugin failing one batch is failed.
const ONE_FAILURE_FAILS: &str = "[runtime.plugins]\nmax-consecutive-failures = 1\n";

/// View `checked` over source `bids`, calling the broken version of plugin flaky: the
/// fixed version, for later.
async fn checked_by_a_broken_plugin(weir: &Weir) -> Result<Vec<u8>> {
    let (broken, fixed) = flaky_modules()?;
    let (code, body) = weir.upload_plugin("flaky", broken).await?;
    ensure!(code == 201, "{body}");
    weir.exec("CREATE MATERIALIZED VIEW checked AS SELECT auction, crash(auction) AS m FROM bids")
        .await?;
    Ok(fixed)
}

/// A source that fails while a view over it is paused (its plugin failed) shows
/// `failed` at once; what the view held is still processed once a fixed version is
/// uploaded, and only then does the source leave its final snapshot.
#[tokio::test]
async fn a_source_that_fails_while_its_view_is_paused_shows_it_and_loses_nothing() -> Result<()> {
    // Chunks of 500 events, a batch each: the first fails and marks the plugin failed,
    // the view holds the next two, and the fourth chunk panics.
    let (weir, _) =
        crate::nexmark::failing_generator(ONE_FAILURE_FAILS, ", max_rows = 500").await?;
    let fixed = checked_by_a_broken_plugin(&weir).await?;
    let status = weir
        .wait_source("bids", "failed", Duration::from_secs(30))
        .await?;
    let read = status["records_in"].as_u64().unwrap_or(0);
    let view = weir.get("/api/v1/views").await?["views"][0].clone();
    assert_eq!(
        view["status"], "paused",
        "still holding its batches: {view}"
    );
    // The first batch's rows (up to 500) are dead letters; the rest is held.
    let dead = dead_letters_for(&weir, "checked").await?.len() as u64;
    assert!(dead > 0 && dead <= 500 && dead < read, "{dead} of {read}");
    let (code, body) = weir.upload_plugin("flaky", fixed).await?;
    ensure!(code == 201, "{body}");
    let rows = weir
        .wait_for("the held rows", Duration::from_secs(20), || async {
            let rows = weir.get("/api/v1/views/checked").await?["rows"].clone();
            let n = rows.as_array().map_or(0, Vec::len) as u64;
            Ok((n + dead == read).then_some(n))
        })
        .await?;
    assert_eq!(
        rows + dead,
        read,
        "every row read: in the view or a dead letter"
    );
    Ok(())
}

/// A finite source whose view is paused waits at its end for the view to resume (its
/// windows are to close); dropping the view instead lets the source finish.
#[tokio::test]
async fn a_source_waiting_for_a_paused_view_finishes_once_the_view_is_dropped() -> Result<()> {
    let (dir, config) = crate::kafka::config_dir(ONE_FAILURE_FAILS).await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    weir.exec(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 2000, \
         seed = 1, max_rows = 500)",
    )
    .await?;
    checked_by_a_broken_plugin(&weir).await?;
    weir.wait_for("the view to pause", Duration::from_secs(20), || async {
        let view = weir.get("/api/v1/views").await?["views"][0].clone();
        Ok((view["status"] == "paused").then_some(()))
    })
    .await?;
    // All read, and waiting for the paused view.
    let source = weir
        .wait_for("every bid read", Duration::from_secs(20), || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            Ok((s["records_in"] == 1_840).then_some(s))
        })
        .await?;
    assert_eq!(source["status"], "running", "{source}");
    weir.exec("DROP VIEW checked").await?;
    weir.wait_source("bids", "finished", Duration::from_secs(20))
        .await?;
    Ok(())
}
