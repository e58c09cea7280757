//! API tokens and roles through the real binary: `weir token create` for each role, then
//! what each may do (401 without a token, 403 above its role), tokens added while the
//! server runs, the console's cookie for reads only, and no listening beyond loopback
//! without a token.

use anyhow::Result;
use reqwest::StatusCode;
use tokio::process::Command;

use crate::support::{Weir, weir_binary};

async fn create_token(data_dir: &std::path::Path, role: &str) -> Result<String> {
    let out = Command::new(weir_binary())
        .args(["token", "create", "--role", role, "--data-dir"])
        .arg(data_dir)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

#[tokio::test]
async fn each_role_may_do_what_it_should_and_no_more() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let admin = create_token(dir.path(), "admin").await?;
    let reader = create_token(dir.path(), "reader").await?;
    let stored = std::fs::read_to_string(dir.path().join("tokens.json"))?;
    assert!(
        !stored.contains(&admin) && !stored.contains(&reader),
        "tokens are stored hashed"
    );
    let weir = Weir::start_in(dir, &[]).await?;
    let client = &weir.client;
    let url = |path: &str| format!("{}{path}", weir.url);
    let sql = |token: Option<&str>, statement: &str| {
        let mut request = client
            .post(url("/api/v1/sql"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": statement }).to_string());
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };

    // No token, a wrong one: 401 that says how to get one. The console's code is open.
    let none = client.get(url("/api/v1/views")).send().await?;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = none.json().await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("weir token create")),
        "{body}"
    );
    let wrong = client
        .get(url("/metrics"))
        .bearer_auth("weir_admin_00")
        .send()
        .await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(url("/")).send().await?.status(), StatusCode::OK);
    assert_eq!(
        client.get(url("/healthz")).send().await?.status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(url("/assets/console.js")).send().await?.status(),
        StatusCode::OK
    );

    // An admin creates things.
    let made = sql(
        Some(&admin),
        "CREATE SOURCE t (id BIGINT) WITH (connector = 'http')",
    )
    .await?;
    assert_eq!(made.status(), StatusCode::OK);
    let made = sql(
        Some(&admin),
        "CREATE MATERIALIZED VIEW v AS SELECT id FROM t",
    )
    .await?;
    assert_eq!(made.status(), StatusCode::OK);

    // A reader reads and queries, but may not change the catalog, ingest or take checkpoints.
    let views = client
        .get(url("/api/v1/views"))
        .bearer_auth(&reader)
        .send()
        .await?;
    assert_eq!(views.status(), StatusCode::OK);
    assert_eq!(
        sql(Some(&reader), "SELECT count(*) FROM v").await?.status(),
        StatusCode::OK
    );
    assert_eq!(
        sql(Some(&reader), "SHOW VIEWS").await?.status(),
        StatusCode::OK
    );
    let ddl = sql(Some(&reader), "DROP VIEW v").await?;
    assert_eq!(ddl.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = ddl.json().await?;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("admin")),
        "{body}"
    );
    let ingest = client
        .post(url("/api/v1/sources/t/records"))
        .bearer_auth(&reader)
        .body("{\"id\": 1}\n")
        .send()
        .await?;
    assert_eq!(ingest.status(), StatusCode::FORBIDDEN);
    let checkpoint = client
        .post(url("/api/v1/checkpoints"))
        .bearer_auth(&reader)
        .send()
        .await?;
    assert_eq!(checkpoint.status(), StatusCode::FORBIDDEN);

    // A writer, made while the server runs, ingests at once; DDL stays an admin's.
    let writer = create_token(weir.data_dir.path(), "writer").await?;
    let ingest = client
        .post(url("/api/v1/sources/t/records"))
        .bearer_auth(&writer)
        .body("{\"id\": 1}\n")
        .send()
        .await?;
    assert_eq!(ingest.status(), StatusCode::OK);
    assert_eq!(
        sql(Some(&writer), "DROP VIEW v").await?.status(),
        StatusCode::FORBIDDEN
    );
    let upload = client
        .post(url("/api/v1/plugins?name=p"))
        .bearer_auth(&writer)
        .body("not wasm")
        .send()
        .await?;
    assert_eq!(upload.status(), StatusCode::FORBIDDEN);

    // The console's cookie lets a page read (streams, downloads), never write.
    let cookie = format!("weir_token={admin}");
    let stream = client
        .get(url("/api/v1/views/v?format=csv"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(stream.status(), StatusCode::OK);
    let write = client
        .post(url("/api/v1/sql"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(r#"{"sql": "DROP VIEW v"}"#)
        .send()
        .await?;
    assert_eq!(write.status(), StatusCode::UNAUTHORIZED);
    // Streams need a token too; a reader may not delete plugins, test connections, or
    // call plugin functions (a failing call counts towards pausing views).
    let stream = client.get(url("/api/v1/views/v/stream")).send().await?;
    assert_eq!(stream.status(), StatusCode::UNAUTHORIZED);
    let upload = client
        .post(url("/api/v1/plugins?name=currency"))
        .bearer_auth(&admin)
        .body(crate::support::plugin_wasm("weir_plugin_currency"))
        .send()
        .await?;
    assert_eq!(upload.status(), StatusCode::CREATED);
    let calls = sql(Some(&reader), "SELECT to_eur(CAST(100 AS BIGINT)) AS eur").await?;
    assert_eq!(calls.status(), StatusCode::FORBIDDEN);
    let by_admin = sql(Some(&admin), "SELECT to_eur(CAST(100 AS BIGINT)) AS eur").await?;
    assert_eq!(by_admin.status(), StatusCode::OK);
    for (method, path) in [
        (reqwest::Method::DELETE, "/api/v1/plugins/currency"),
        (reqwest::Method::POST, "/api/v1/connectors/source/file/test"),
    ] {
        let r = client
            .request(method, url(path))
            .bearer_auth(&reader)
            .body(r#"{"options": {}}"#)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // A page of another site may not write, whatever it sends.
    let forged = client
        .post(url("/api/v1/sql"))
        .bearer_auth(&admin)
        .header("origin", "http://evil.example")
        .header("content-type", "application/json")
        .body(r#"{"sql": "DROP VIEW v"}"#)
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        sql(Some(&admin), "DROP VIEW v").await?.status(),
        StatusCode::OK
    );
    // Deleting the tokens file leaves no valid token, not an open server.
    std::fs::remove_file(weir.data_dir.path().join("tokens.json"))?;
    let gone = client
        .get(url("/api/v1/views"))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    let anyone = client.get(url("/api/v1/views")).send().await?;
    assert_eq!(anyone.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn without_a_token_only_loopback_is_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(weir_binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .kill_on_drop(true)
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without API tokens")
            && stderr.contains("weir token create --role admin"),
        "{stderr}"
    );
    // On loopback, a request naming another host (a page whose name was pointed at
    // 127.0.0.1) is refused.
    let weir = Weir::start(&[]).await?;
    let rebound = weir
        .client
        .get(format!("{}/api/v1/views", weir.url))
        .header("host", "evil.example")
        .send()
        .await?;
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let local = weir
        .client
        .get(format!("{}/api/v1/views", weir.url))
        .send()
        .await?;
    assert_eq!(local.status(), StatusCode::OK);
    Ok(())
}
