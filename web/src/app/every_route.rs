//! Every route of the router, read from its source so that a new route is covered the
//! day it is added: with tokens, nothing but the console's code and `/healthz` answers
//! without one, and no route lets a reader do what only a writer or admin may.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use tower::ServiceExt;
use weir_runtime::{Engine, RuntimeConfig};

use super::*;
use crate::auth::{Role, Tokens, create};

/// Each route's path (parameters filled in) and the methods it declares.
fn routes() -> Vec<(String, Vec<Method>)> {
    let source = include_str!("../app.rs");
    let body = &source[source.find("fn routes(").expect("fn routes")..];
    let body = &body[..body.find(".fallback(").expect("fallback")];
    body.split(".route(")
        .skip(1)
        .map(|route| {
            let path = route.split('"').nth(1).expect("a path").to_string();
            let path = path
                .split('/')
                .map(|part| if part.starts_with('{') { "x" } else { part })
                .collect::<Vec<_>>()
                .join("/");
            let methods = [
                ("get(", Method::GET),
                ("post(", Method::POST),
                ("delete(", Method::DELETE),
            ]
            .into_iter()
            .filter(|(call, _)| route.contains(call))
            .map(|(_, m)| m)
            .collect();
            (path, methods)
        })
        .collect()
}

async fn status(app: &Router, method: &Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = Request::builder().method(method.clone()).uri(path);
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"sql": "SHOW VIEWS"}"#))
        .expect("request");
    app.clone()
        .oneshot(request)
        .await
        .expect("response")
        .status()
}

#[tokio::test]
async fn with_tokens_every_route_needs_one_and_keeps_to_its_role() {
    let dir = tempfile::tempdir().expect("dir");
    let reader = create(dir.path(), Role::Reader).expect("token");
    let writer = create(dir.path(), Role::Writer).expect("token");
    let admin = create(dir.path(), Role::Admin).expect("token");
    let state = AppState::new(Engine::in_memory(RuntimeConfig::default()))
        .with_tokens(Tokens::of(Some(dir.path())));
    let app = app(state);
    let routes = routes();
    assert!(routes.len() >= 20, "the routes were not found: {routes:?}");
    for (path, methods) in routes {
        assert!(!methods.is_empty(), "{path}: no method found");
        let open = path == "/" || path == "/healthz" || path.starts_with("/assets/");
        for method in methods {
            let without = status(&app, &method, &path, None).await;
            // An admin is never refused, anywhere.
            let as_admin = status(&app, &method, &path, Some(&admin)).await;
            assert!(
                ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&as_admin),
                "{method} {path} as an admin: {as_admin}"
            );
            if open {
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&without),
                    "{method} {path} is open: {without}"
                );
                continue;
            }
            assert_eq!(
                without,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token"
            );
            let unknown = status(&app, &method, &path, Some("weir_admin_00")).await;
            assert_eq!(
                unknown,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with an unknown token"
            );
            // A reader may read, and POST SQL (the handler refuses it DDL); a writer may
            // also ingest. Everything else is an admin's.
            let as_reader = status(&app, &method, &path, Some(&reader)).await;
            let as_writer = status(&app, &method, &path, Some(&writer)).await;
            let reads = method == Method::GET || path == "/api/v1/sql";
            let ingests = path.ends_with("/records");
            assert_eq!(
                as_reader == StatusCode::FORBIDDEN,
                !reads,
                "{method} {path} as a reader: {as_reader}"
            );
            assert_eq!(
                as_writer == StatusCode::FORBIDDEN,
                !(reads || ingests),
                "{method} {path} as a writer: {as_writer}"
            );
        }
    }
}
