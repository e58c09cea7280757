//! API tokens and roles. `weir token create --role admin|writer|reader` stores a token's
//! SHA-256 in `<data-dir>/tokens.json` and prints the token once. Once a token exists,
//! every API route, `/metrics` and the streams need one: `Authorization: Bearer <token>`,
//! or, for reads only (`GET`: a page's downloads and event streams, which cannot set
//! headers), the `weir_token` cookie the console sets. The console's page and assets
//! (code, no data) and `/healthz` stay open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read views, sources and status; run SELECT, SHOW and EXPLAIN; preview.
    Reader,
    /// Also ingest records.
    Writer,
    /// Also DDL, plugins, checkpoints and connection tests.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => anyhow::bail!("unknown role {other}: use admin, writer or reader"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// One token as stored: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    sha256: String,
    role: Role,
    created_ms: i64,
}

/// The tokens file of a data dir.
fn tokens_file(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.json")
}

/// Make a token of `role`, store its hash in `data_dir`, and return the token.
pub fn create(data_dir: &Path, role: Role) -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!(
        "weir_{}_{}",
        role.name(),
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    std::fs::create_dir_all(data_dir)?;
    let path = tokens_file(data_dir);
    let mut stored = read(&path)?;
    stored.push(StoredToken {
        sha256: hash(&token),
        role,
        created_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    });
    // Whole or not at all: a crash leaves the old file.
    weir_runtime::durable::write_atomically(&path, &serde_json::to_vec_pretty(&stored)?)?;
    Ok(token)
}

fn read(path: &Path) -> anyhow::Result<Vec<StoredToken>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tokens a server accepts: read again when the file changes, so a token created
/// while it runs works at once.
pub struct Tokens {
    path: Option<PathBuf>,
    cached: Mutex<(Option<SystemTime>, Vec<StoredToken>)>,
    /// Once tokens were required they stay required: a tokens file deleted (or emptied)
    /// while the server runs leaves no valid token, not an open server.
    once_required: std::sync::atomic::AtomicBool,
}

impl Tokens {
    /// The tokens of `data_dir`; `None`: no tokens file is looked at (tests).
    pub fn of(data_dir: Option<&Path>) -> Arc<Self> {
        Arc::new(Self {
            path: data_dir.map(tokens_file),
            cached: Mutex::new((None, Vec::new())),
            once_required: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn current(&self) -> Vec<StoredToken> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cached = self.cached.lock();
        if cached.0 != modified {
            match read(path) {
                Ok(tokens) => *cached = (modified, tokens),
                // A damaged file must not open the server: keep what was read before.
                Err(e) => tracing::error!("{e}"),
            }
        }
        cached.1.clone()
    }

    /// Whether any token exists (then every request needs one).
    pub fn required(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.current().is_empty() {
            self.once_required.store(true, Relaxed);
        }
        self.once_required.load(Relaxed)
    }

    /// The role of `token`, if it is one.
    fn role_of(&self, token: &str) -> Option<Role> {
        let hashed = hash(token);
        self.current()
            .into_iter()
            .find(|t| t.sha256 == hashed)
            .map(|t| t.role)
    }
}

/// The role a request needs, from its method and path (SQL statements are checked
/// again by kind in the SQL handler).
fn needed(method: &Method, path: &str) -> Role {
    let read = method == Method::GET || method == Method::HEAD;
    if read {
        return Role::Reader;
    }
    if path.ends_with("/records") && path.contains("/api/v1/sources/") {
        return Role::Writer;
    }
    // POST /api/v1/sql: a reader may SELECT; the handler asks for admin on DDL.
    if path.ends_with("/api/v1/sql") {
        return Role::Reader;
    }
    Role::Admin
}

/// Where a request's token is: the bearer header, or the console's cookie on reads.
fn token_of(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    if request.method() != Method::GET {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("weir_token=").map(str::to_string))
}

/// Open paths: the console's code and liveness.
fn open(path: &str, base: &str) -> bool {
    let path = path.strip_prefix(base).unwrap_or(path);
    path.is_empty() || path == "/" || path == "/healthz" || path.starts_with("/assets/")
}

/// Whether the request names a loopback host (`localhost`, `127.0.0.1`, `[::1]`), or
/// none (HTTP/1.0 and tests without a Host header).
fn loopback_host(request: &Request) -> bool {
    let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request comes from a page of another origin than the server's.
fn cross_site(request: &Request) -> bool {
    let headers = request.headers();
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin == "null" || origin_host != host
}

/// The role a request was let in with, for handlers that check further (SQL).
#[derive(Debug, Clone, Copy)]
pub struct Granted(pub Role);

/// The middleware: no tokens, everyone is admin (the server then listens on loopback
/// only); with tokens, 401 without a known one, 403 for a role below the route's.
pub async fn check(
    State(state): State<crate::app::AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // A write from another site's page (a form or a script posting to this server) is
    // refused whatever the token: browsers name the page's origin.
    if !matches!(*request.method(), Method::GET | Method::HEAD) && cross_site(&request) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a request from another site's page may not change anything here",
        )
        .into_response();
    }
    let tokens = &state.tokens;
    if !tokens.required() {
        // Without tokens the server is loopback's alone: a page of another site whose
        // name was pointed at 127.0.0.1 (DNS rebinding) sends its own Host.
        if !loopback_host(&request) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "without API tokens this server answers requests to a loopback address or \
                 localhost only; make a token with `weir token create` to serve others",
            )
            .into_response();
        }
        request.extensions_mut().insert(Granted(Role::Admin));
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    if open(&path, &state.base_path) {
        return next.run(request).await;
    }
    let Some(role) = token_of(&request).and_then(|t| tokens.role_of(&t)) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs a token: send Authorization: Bearer <token> (make one with \
             `weir token create --role reader|writer|admin --data-dir <dir>`)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let need = needed(request.method(), &path);
    if role < need {
        return forbidden(role, need, &format!("{} {path}", request.method()));
    }
    request.extensions_mut().insert(Granted(role));
    next.run(request).await
}

/// 403: what the role may not do, and which role may.
pub fn forbidden(role: Role, need: Role, what: &str) -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "a {} token may not {what}: that needs a{} {} token",
            role.name(),
            if need == Role::Admin { "n" } else { "" },
            need.name()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_each_has_its_role() {
        let dir = tempfile::tempdir().expect("dir");
        let reader = create(dir.path(), Role::Reader).expect("token");
        let admin = create(dir.path(), Role::Admin).expect("token");
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).expect("file");
        assert!(!file.contains(&reader) && !file.contains(&admin), "{file}");
        let tokens = Tokens::of(Some(dir.path()));
        assert_eq!(tokens.role_of(&reader), Some(Role::Reader));
        assert_eq!(tokens.role_of(&admin), Some(Role::Admin));
        assert_eq!(tokens.role_of("weir_admin_00"), None);
        assert!(tokens.required());
        assert!(!Tokens::of(None).required());
    }

    #[test]
    fn routes_need_the_least_role_that_may_use_them() {
        assert_eq!(needed(&Method::GET, "/api/v1/views"), Role::Reader);
        assert_eq!(needed(&Method::POST, "/api/v1/sql"), Role::Reader);
        assert_eq!(
            needed(&Method::POST, "/api/v1/sources/s/records"),
            Role::Writer
        );
        assert_eq!(needed(&Method::POST, "/api/v1/plugins"), Role::Admin);
        assert_eq!(needed(&Method::DELETE, "/api/v1/plugins/p"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/api/v1/checkpoints"), Role::Admin);
        assert!(open("/weir/assets/console.js", "/weir") && open("/healthz", ""));
        assert!(!open("/api/v1/views", "") && !open("/metrics", ""));
    }

    #[test]
    fn without_tokens_only_loopback_names_are_answered() {
        let with_host = |host: &str| {
            Request::builder()
                .header(header::HOST, host)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "[2001:db8::1]:80",
            "evil.example",
        ] {
            assert!(!loopback_host(&with_host(refused)), "{refused}");
        }
    }

    #[test]
    fn a_deleted_tokens_file_leaves_no_valid_token_not_an_open_server() {
        let dir = tempfile::tempdir().expect("dir");
        let admin = create(dir.path(), Role::Admin).expect("token");
        let tokens = Tokens::of(Some(dir.path()));
        assert!(tokens.required());
        std::fs::remove_file(dir.path().join("tokens.json")).expect("removed");
        assert!(tokens.required(), "tokens stay required");
        assert_eq!(tokens.role_of(&admin), None);
    }
}
