//! The HTTP API through the router, without a socket.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use weir_runtime::{Engine, RuntimeConfig};

use super::*;

pub(super) fn test_app(max_body_bytes: usize) -> Router {
    let mut config = RuntimeConfig::default();
    config.http.max_body_bytes = max_body_bytes;
    app(AppState::new(Engine::in_memory(config)))
}

/// A response's whole body.
pub(super) async fn body_bytes(response: axum::response::Response) -> bytes::Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

pub(super) async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = body_bytes(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Run each statement; each must succeed.
pub(super) async fn exec_all(app: &Router, statements: &[&str]) {
    for sql in statements {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, body) = call(app, "POST", "/api/v1/sql", &body).await;
        assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    }
}

/// Subscribe to a view's change stream (nothing is read until the caller reads).
pub(super) async fn subscribe(app: &Router, view: &str) -> axum::response::Response {
    let request = Request::builder()
        .uri(format!("/api/v1/views/{view}/stream"))
        .body(Body::empty())
        .expect("request");
    let stream = app.clone().oneshot(request).await.expect("response");
    assert_eq!(stream.status(), StatusCode::OK);
    stream
}

#[tokio::test]
async fn plugin_uploads_are_named_and_bounded() {
    let mut config = RuntimeConfig::default();
    config.plugins.max_upload_bytes = 100;
    let app = app(AppState::new(Engine::in_memory(config)));
    let (status, body) = call(&app, "POST", "/api/v1/plugins?name=p", &"x".repeat(101)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = call(&app, "POST", "/api/v1/plugins", "\0asm").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("?name="))
    );
    let (status, body) = call(&app, "POST", "/api/v1/plugins?name=p", "hello").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not a WebAssembly module"))
    );
    let (status, _) = call(&app, "DELETE", "/api/v1/plugins/p", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&app, "GET", "/api/v1/plugins", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["plugins"], serde_json::json!([]));
}

#[tokio::test]
async fn errors_have_a_status_and_a_json_body() {
    let app = test_app(64);
    let (status, body) = call(&app, "POST", "/api/v1/sql", r#"{"sql": "SELEC 1"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("SELEC")),
        "{body}"
    );
    let (status, _) = call(&app, "POST", "/api/v1/sql", "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(&app, "GET", "/api/v1/views/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not found");
    let (status, _) = call(&app, "POST", "/api/v1/sources/nope/records", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let create = r#"{"sql": "CREATE SOURCE s (id BIGINT) WITH (connector = 'http')"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", create).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", create).await.0,
        StatusCode::CONFLICT
    );
    let (status, body) = call(
        &app,
        "POST",
        "/api/v1/sources/s/records",
        &"{\"id\":1}\n".repeat(20),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = call(
        &app,
        "POST",
        "/api/v1/sources/s/records",
        "{\"id\":1}\n{\"id\":true}",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!({"accepted": 1, "dead_lettered": 1}));
}

#[tokio::test]
async fn what_the_operator_must_fix_answers_503_with_a_retry_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = RuntimeConfig {
        data_dir: dir.path().to_path_buf(),
        ..RuntimeConfig::default()
    };
    let app = app(AppState::new(Engine::new(config).expect("engine")));
    // The catalog cannot be written: its name is taken by a directory.
    let catalog = dir.path().join("catalog.json");
    let _ = std::fs::remove_file(&catalog);
    std::fs::create_dir_all(catalog.join("in-the-way")).expect("dir");
    let request = Request::builder()
        .method("POST")
        .uri("/api/v1/sql")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"sql": "CREATE SOURCE s (id BIGINT) WITH (connector = 'http')"}"#,
        ))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    let body = body_bytes(response).await;
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cannot record the catalog")),
        "{body}"
    );
    // Undone: nothing half-created is left behind.
    let (status, _) = call(&app, "GET", "/api/v1/sources/s", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_view_says_when_it_released_rows_and_may_keep_more() {
    let app = test_app(1 << 20);
    for sql in [
        "CREATE SOURCE s (id BIGINT) WITH (connector = 'http')",
        "CREATE MATERIALIZED VIEW newest WITH (max_rows = 5) AS SELECT id FROM s",
        "CREATE MATERIALIZED VIEW every WITH (max_rows = 'unbounded') AS SELECT id FROM s",
    ] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, body) = call(&app, "POST", "/api/v1/sql", &body).await;
        assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    }
    let explain =
        r#"{"sql": "EXPLAIN CREATE MATERIALIZED VIEW x WITH (max_rows = 5) AS SELECT id FROM s"}"#;
    let (status, body) = call(&app, "POST", "/api/v1/sql", explain).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bad =
        r#"{"sql": "CREATE MATERIALIZED VIEW x WITH (max_rows = 'lots') AS SELECT id FROM s"}"#;
    let (status, body) = call(&app, "POST", "/api/v1/sql", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_rows")),
        "{body}"
    );

    let records: String = (1..=30).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let (status, body) = call(&app, "POST", "/api/v1/sources/s/records", &records).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status_of = |views: &serde_json::Value, name: &str| {
        views["views"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name).cloned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let views = loop {
        let (_, views) = call(&app, "GET", "/api/v1/views", "").await;
        if ["newest", "every"]
            .iter()
            .all(|n| status_of(&views, n)["rows_emitted"] == 30)
        {
            break views;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not processed: {views}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let newest = status_of(&views, "newest");
    assert_eq!(newest["rows"], 5, "{newest}");
    assert_eq!(newest["rows_released"], 25, "{newest}");
    assert_eq!(newest["max_rows"], 5, "{newest}");
    assert!(
        newest["warning"]
            .as_str()
            .is_some_and(|w| w.contains("25 older rows were released")),
        "{newest}"
    );
    let every = status_of(&views, "every");
    assert_eq!(every["rows"], 30, "{every}");
    assert_eq!(every["rows_released"], 0, "{every}");
    assert!(every["warning"].is_null(), "{every}");

    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/v1/views/newest")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.headers()["weir-rows-released"], "25");
    assert!(response.headers().contains_key("weir-rows-cut"));
    let body = body_bytes(response).await;
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        body["rows"],
        serde_json::json!([[26], [27], [28], [29], [30]]),
        "the newest rows are kept"
    );
    let (status, _) = call(&app, "GET", "/api/v1/views/every", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn decimal_literals_are_exact_in_ad_hoc_queries() {
    let app = test_app(64);
    let (status, body) = call(
        &app,
        "POST",
        "/api/v1/sql",
        r#"{"sql": "SELECT 0.908 * 1589 AS euros, 0.1 + 0.2 = 0.3 AS exact"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0][1], true, "{body}");
    assert_eq!(
        body["rows"][0][0].to_string().trim_matches('"'),
        "1442.812",
        "{body}"
    );
    assert!(
        body["types"][0]
            .as_str()
            .is_some_and(|t| t.starts_with("Decimal128")),
        "{body}"
    );
}

#[tokio::test]
async fn repeated_column_names_keep_their_values_and_views_over_views_are_refused() {
    let app = test_app(1024);
    let sql = r#"{"sql": "SELECT * FROM (SELECT 1 AS x) a JOIN (SELECT 2 AS x) b ON true"}"#;
    let (status, body) = call(&app, "POST", "/api/v1/sql", sql).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["columns"], serde_json::json!(["x", "x"]));
    assert_eq!(body["rows"], serde_json::json!([[1, 2]]));

    for sql in [
        r#"{"sql": "CREATE SOURCE s (id BIGINT) WITH (connector = 'http')"}"#,
        r#"{"sql": "CREATE MATERIALIZED VIEW v AS SELECT id FROM s"}"#,
    ] {
        assert_eq!(
            call(&app, "POST", "/api/v1/sql", sql).await.0,
            StatusCode::OK
        );
    }
    let sql = r#"{"sql": "CREATE MATERIALIZED VIEW w AS SELECT id FROM v"}"#;
    let (status, body) = call(&app, "POST", "/api/v1/sql", sql).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("views over views")),
        "{body}"
    );
    // A source in use cannot be dropped; after its view is gone it can.
    let (status, body) = call(&app, "POST", "/api/v1/sql", r#"{"sql": "DROP SOURCE s"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", r#"{"sql": "DROP VIEW v"}"#)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", r#"{"sql": "DROP SOURCE s"}"#)
            .await
            .0,
        StatusCode::OK
    );
    let (_, shown) = call(&app, "POST", "/api/v1/sql", r#"{"sql": "SHOW SOURCES"}"#).await;
    assert_eq!(shown["rows"], serde_json::json!([]));
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", r#"{"sql": "DROP VIEW v"}"#)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/v1/sql",
            r#"{"sql": "DROP VIEW IF EXISTS v"}"#
        )
        .await
        .0,
        StatusCode::OK
    );
    let sql = r#"{"sql": "CREATE SOURCE t (id BIGINT, ts BIGINT, WATERMARK FOR ts AS ts) WITH (connector = 'http')"}"#;
    let (status, body) = call(&app, "POST", "/api/v1/sql", sql).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[test]
fn backpressure_is_429_with_retry_after() {
    use axum::response::IntoResponse;
    let e = crate::error::ApiError::from(weir_runtime::Error::Backpressure {
        message: "busy".into(),
        retry_after_secs: 1,
    });
    let r = e.into_response();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
}

async fn get_text(app: &Router, uri: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = body_bytes(response).await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn health_metrics_and_console() {
    let app = test_app(1024);
    for (uri, needle) in [
        ("/healthz", "ok"),
        ("/metrics", ""),
        ("/api/v1/health", "\"uptime_s\""),
        ("/", "<base href=\"/\">"),
        ("/assets/console.js", "followEvents"),
        ("/assets/vendor/vendor.js", "WeirVendor"),
        ("/assets/vendor/uplot.css", ".uplot"),
    ] {
        let (status, text) = get_text(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            text.contains(needle),
            "{uri}: {}",
            &text[..text.len().min(200)]
        );
    }
    let (status, _) = get_text(&app, "/assets/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn everything_moves_under_a_base_path() {
    let engine = Engine::in_memory(RuntimeConfig::default());
    let app = app(AppState::new(engine).with_base_path("/weir/"));
    for uri in ["/weir", "/weir/"] {
        let (status, text) = get_text(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(text.contains("<base href=\"/weir/\">"), "{uri}");
    }
    for uri in [
        "/weir/assets/console.js",
        "/weir/api/v1/views",
        "/weir/healthz",
    ] {
        assert_eq!(get_text(&app, uri).await.0, StatusCode::OK, "{uri}");
    }
    for uri in ["/", "/api/v1/views", "/assets/console.js"] {
        assert_eq!(get_text(&app, uri).await.0, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn sql_errors_say_where_they_are() {
    let app = test_app(1024);
    let ddl = r#"{"sql": "CREATE SOURCE t (id BIGINT, name VARCHAR) WITH (connector = 'http')"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", ddl).await.0,
        StatusCode::OK
    );
    let view = r#"{"sql": "CREATE MATERIALIZED VIEW v AS SELECT id FROM t"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", view).await.0,
        StatusCode::OK
    );
    // (statement, line, column, end column) of the underlined part.
    for (sql, line, column, end) in [
        ("SELECT nope FROM v", 1, 8, 12),
        ("SELECT id\nFROM nowhere", 2, 6, 13),
        ("SELEC id FROM v", 1, 1, 2),
        (
            "CREATE MATERIALIZED VIEW w AS SELECT id, nope FROM t",
            1,
            42,
            46,
        ),
    ] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, body) = call(&app, "POST", "/api/v1/sql", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        let p = &body["position"];
        assert_eq!(
            (
                p["line"].as_u64(),
                p["column"].as_u64(),
                p["end_column"].as_u64()
            ),
            (Some(line), Some(column), Some(end)),
            "{sql}: {body}"
        );
    }
    // Where nobody knows, no position is invented.
    let body = serde_json::json!({ "sql": "SELECT id FROM v WHERE" }).to_string();
    let (_, body) = call(&app, "POST", "/api/v1/sql", &body).await;
    assert!(body.get("position").is_none(), "{body}");
    // The parser puts an unterminated string past the end: the answer keeps it inside.
    for (sql, end) in [("SELECT $$open", 14), ("SELECT 1 /* open", 17)] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (_, body) = call(&app, "POST", "/api/v1/sql", &body).await;
        let p = &body["position"];
        assert_eq!(
            (p["line"].as_u64(), p["end_column"].as_u64()),
            (Some(1), Some(end)),
            "{sql}: {body}"
        );
        assert!(p["column"].as_u64() <= Some(end), "{sql}: {body}");
    }
}

#[tokio::test]
async fn view_rows_sort_and_page() {
    let app = test_app(1 << 20);
    let ddl = r#"{"sql": "CREATE SOURCE t (id BIGINT, name VARCHAR) WITH (connector = 'http')"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", ddl).await.0,
        StatusCode::OK
    );
    let view = r#"{"sql": "CREATE MATERIALIZED VIEW v AS SELECT id, name FROM t"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", view).await.0,
        StatusCode::OK
    );
    let records: String = [5, 3, 9, 1, 7]
        .iter()
        .map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"))
        .collect();
    let (status, body) = call(&app, "POST", "/api/v1/sources/t/records", &records).await;
    assert!(status.is_success(), "{body}");
    let mut ids = Vec::new();
    for _ in 0..200 {
        let (_, body) = call(
            &app,
            "GET",
            "/api/v1/views/v?sort=id&desc=true&offset=1&limit=2",
            "",
        )
        .await;
        ids = body["rows"]
            .as_array()
            .map(|rows| rows.iter().map(|r| r[0].as_i64().unwrap_or(-1)).collect())
            .unwrap_or_default();
        if !ids.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ids, vec![7, 5], "the second and third largest");
    let request = Request::get("/api/v1/views/v?offset=4")
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    assert_eq!(response.headers()["weir-total-rows"], "5");
    let (status, body) = call(&app, "GET", "/api/v1/views/v?sort=nope", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("id, name")),
        "{body}"
    );
    let (status, text) = get_text(&app, "/api/v1/views/v?format=csv&sort=id").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.starts_with("id,name\n1,n1\n3,n3"), "{text}");
    let (status, _) = get_text(&app, "/api/v1/views/v?format=xml").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn each_operator_counts_its_rows_and_time() {
    let app = test_app(1 << 20);
    let ddl = r#"{"sql": "CREATE SOURCE t (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http')"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", ddl).await.0,
        StatusCode::OK
    );
    let view = r#"{"sql": "CREATE MATERIALIZED VIEW v WITH (parallelism = 1) AS SELECT window_start, count(*) AS n FROM TUMBLE(t, ts, INTERVAL '1' SECOND) WHERE id > 2 GROUP BY window_start, window_end"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", view).await.0,
        StatusCode::OK
    );
    // Ten rows, seven pass the filter, all in the first second; the last row's time
    // closes that window.
    let records: String = (0..10)
        .map(|i| format!("{{\"id\": {i}, \"ts\": {}}}\n", 1000 + i))
        .chain(["{\"id\": 100, \"ts\": 5000}\n".to_string()])
        .collect();
    let (status, body) = call(&app, "POST", "/api/v1/sources/t/records", &records).await;
    assert!(status.is_success(), "{body}");
    let mut ops = serde_json::Value::Null;
    for _ in 0..200 {
        let (_, body) = call(&app, "GET", "/api/v1/views", "").await;
        ops = body["views"][0]["operators"].clone();
        let aggregate = ops
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == "aggregate"));
        if aggregate.is_some_and(|a| a["rows_out"].as_u64() == Some(1)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let op = |name: &str| {
        ops.as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let names: Vec<&str> = ops
        .as_array()
        .map(|o| o.iter().filter_map(|o| o["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        [
            "source",
            "filter",
            "project",
            "window",
            "aggregate",
            "project"
        ],
        "{ops}"
    );
    assert_eq!(op("source")["rows_out"], 11, "{ops}");
    assert_eq!(
        (
            op("filter")["rows_in"].as_u64(),
            op("filter")["rows_out"].as_u64()
        ),
        (Some(11), Some(8)),
        "{ops}"
    );
    assert!(
        op("filter")["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{ops}"
    );
    assert_eq!(op("window")["rows_in"], 8, "{ops}");
    assert!(op("window")["open_windows"].as_u64().is_some(), "{ops}");
    let aggregate = op("aggregate");
    assert_eq!(
        (
            aggregate["rows_in"].as_u64(),
            aggregate["rows_out"].as_u64()
        ),
        (Some(8), Some(1)),
        "{ops}"
    );
    assert!(
        aggregate["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{ops}"
    );
    assert!(aggregate["state_bytes"].as_u64().is_some(), "{ops}");
    let (_, metrics) = get_text(&app, "/metrics").await;
    assert!(
        metrics.contains("weir_operator_rows_out_total{view=\"v\",operator=\"1:filter\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_operator_seconds_total{view=\"v\",operator=\"4:aggregate\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_operator_state_bytes{view=\"v\",operator=\"4:aggregate\"}")
            && metrics.contains("# TYPE weir_operator_state_bytes gauge")
            && metrics
                .contains("weir_operator_late_rows_total{view=\"v\",operator=\"4:aggregate\"} 0")
    );
}

#[tokio::test]
async fn sources_carry_their_recent_rates() {
    let state = AppState::new(Engine::in_memory(RuntimeConfig::default()));
    let app = app(state.clone());
    let ddl = r#"{"sql": "CREATE SOURCE t (id BIGINT) WITH (connector = 'http')"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", ddl).await.0,
        StatusCode::OK
    );
    state.rates.sample(&state.engine, 10_000);
    let records: String = (0..10).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    let (status, body) = call(&app, "POST", "/api/v1/sources/t/records", &records).await;
    assert!(status.is_success(), "{body}");
    state.rates.sample(&state.engine, 12_000);
    let (_, body) = call(&app, "GET", "/api/v1/sources", "").await;
    assert_eq!(
        body["sources"][0]["rate_history"],
        serde_json::json!([[12_000, 5.0]]),
        "ten records in two seconds: {body}"
    );
}

#[tokio::test]
async fn a_view_says_which_views_join_it() {
    let app = test_app(1 << 20);
    for sql in [
        "CREATE SOURCE person (id BIGINT, name VARCHAR) WITH (connector = 'http')",
        "CREATE SOURCE auction (id BIGINT, seller BIGINT) WITH (connector = 'http')",
        "CREATE MATERIALIZED VIEW people AS SELECT id, max(name) AS name FROM person GROUP BY id",
        "CREATE MATERIALIZED VIEW sold_by AS SELECT A.id, P.name FROM auction AS A JOIN people AS P ON A.seller = P.id",
    ] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, body) = call(&app, "POST", "/api/v1/sql", &body).await;
        assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    }
    let (_, body) = call(&app, "GET", "/api/v1/views", "").await;
    let read_by = |name: &str| {
        body["views"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .map(|v| v["read_by"].clone())
    };
    assert_eq!(
        read_by("people"),
        Some(serde_json::json!(["sold_by"])),
        "{body}"
    );
    assert_eq!(read_by("sold_by"), Some(serde_json::json!([])), "{body}");
    // Text sorts as well as numbers do.
    let (status, body) = call(&app, "GET", "/api/v1/views/people?sort=name", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_ad_hoc_query_over_a_windowed_source_is_refused_by_weir() {
    let app = test_app(1024);
    let ddl = r#"{"sql": "CREATE SOURCE t (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http')"}"#;
    assert_eq!(
        call(&app, "POST", "/api/v1/sql", ddl).await.0,
        StatusCode::OK
    );
    let q = r#"{"sql": "SELECT count(*) FROM TUMBLE(t, ts, INTERVAL '1' SECOND) GROUP BY window_start"}"#;
    let (status, body) = call(&app, "POST", "/api/v1/sql", q).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cannot be queried directly")),
        "{body}"
    );
}

#[tokio::test]
async fn statements_that_reach_files_or_settings_are_refused() {
    let app = test_app(1024);
    let dir = tempfile::tempdir().expect("dir");
    let outside = dir.path().join("out.csv");
    std::fs::write(dir.path().join("in.csv"), "a\n1\n").expect("file");
    for sql in [
        format!(
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{}'",
            dir.path().join("in.csv").display()
        ),
        format!("COPY (SELECT 1 AS a) TO '{}'", outside.display()),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "CREATE SCHEMA s".to_string(),
        "CREATE TABLE t AS SELECT 1 AS a".to_string(),
        "CREATE VIEW w AS SELECT 1 AS a".to_string(),
        "DROP TABLE leak".to_string(),
        "INSERT INTO leak VALUES (1)".to_string(),
        format!("SELECT * FROM '{}'", dir.path().join("in.csv").display()),
    ] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, body) = call(&app, "POST", "/api/v1/sql", &body).await;
        assert!(status.is_client_error(), "{sql}: {status} {body}");
    }
    assert!(!outside.exists(), "COPY wrote a file");
    let (_, body) = call(&app, "GET", "/api/v1/views", "").await;
    assert_eq!(body["views"], serde_json::json!([]), "{body}");
}
