//! A view's change stream (SSE) through the router: readers that fall behind are let
//! go, and groups that leave an updating view are streamed as removed.

use axum::http::StatusCode;
use http_body_util::BodyExt;

use super::tests::{body_bytes, call, exec_all, subscribe, test_app};

#[tokio::test]
async fn a_stream_reader_that_falls_behind_gets_lagged_and_is_let_go() {
    let app = test_app(1 << 20);
    exec_all(
        &app,
        &[
            // One row per batch: each record is a change of the view.
            "CREATE SOURCE s (id BIGINT) WITH (connector = 'http', max_rows = 1)",
            "CREATE MATERIALIZED VIEW v AS SELECT id FROM s",
        ],
    )
    .await;
    // Subscribe, and read nothing while the view changes 600 times.
    let stream = subscribe(&app, "v").await;
    let records: String = (1..=600).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let (status, body) = call(&app, "POST", "/api/v1/sources/s/records", &records).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, views) = call(&app, "GET", "/api/v1/views", "").await;
        if views["views"][0]["rows_emitted"] == 600 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{views}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The reader is told it lagged, and its stream ends (the whole body is read).
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), body_bytes(stream))
        .await
        .expect("the stream of a reader that lagged ends");
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("event: lagged\ndata: "), "{text}");
    let missed: u64 = text
        .trim_start_matches("event: lagged\ndata: ")
        .trim()
        .parse()
        .expect("how many changes were missed");
    assert_eq!(missed, 600 - 256, "the buffer keeps the newest 256 changes");
}

#[tokio::test]
async fn a_group_that_leaves_an_updating_view_is_streamed_as_removed() {
    let app = test_app(1 << 20);
    exec_all(
        &app,
        &[
            "CREATE SOURCE s (k BIGINT, v BIGINT) WITH (connector = 'http', max_rows = 1)",
            "CREATE MATERIALIZED VIEW small AS SELECT k, count(*) AS n FROM s GROUP BY k HAVING count(*) < 2",
        ],
    )
    .await;
    let mut stream = subscribe(&app, "small").await.into_body();
    // Group 1 comes (n = 1), group 2 comes, then group 1 reaches n = 2 and leaves.
    let records = "{\"k\":1,\"v\":1}\n{\"k\":2,\"v\":1}\n{\"k\":1,\"v\":2}\n";
    let (status, body) = call(&app, "POST", "/api/v1/sources/s/records", records).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !text.contains("event: removed") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let frame = tokio::time::timeout(left, stream.frame())
            .await
            .unwrap_or_else(|_| panic!("no removal streamed: {text}"));
        if let Some(Ok(frame)) = frame
            && let Ok(data) = frame.into_data()
        {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let removed = text
        .split("\n\n")
        .find(|e| e.starts_with("event: removed"))
        .and_then(|e| e.split_once("data: "))
        .map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).expect("JSON"))
        .expect("a removed event");
    assert_eq!(removed["rows"], serde_json::json!([[1, 1]]), "{text}");
    // And the view no longer holds it.
    let (_, rows) = call(&app, "GET", "/api/v1/views/small", "").await;
    assert_eq!(rows["rows"], serde_json::json!([[2, 1]]), "{rows}");
}
