//! Starting the real binary and talking to it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `weir` binary next to this test's build (or `$WEIR_BIN`).
pub fn weir_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WEIR_BIN") {
        return p.into();
    }
    let bin = profile_dir().join("weir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p weir-web` first",
        bin.display()
    );
    bin
}

/// The build's profile dir (`target/debug`): the test executable is in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// A running `weir serve` on a free port with its own data dir; killed on drop.
pub struct Weir {
    /// Held so the server lives as long as the test (killed on drop).
    _child: Child,
    pub url: String,
    pub data_dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Weir {
    pub async fn start(extra_args: &[&str]) -> Result<Self> {
        Self::start_in(tempfile::tempdir()?, extra_args).await
    }

    /// Stop this server (as a crash would) and start another on the same data dir.
    pub async fn restart(self, extra_args: &[&str]) -> Result<Self> {
        let Self {
            mut _child,
            data_dir,
            ..
        } = self;
        _child.kill().await?;
        Self::start_in(data_dir, extra_args).await
    }

    /// Send `signal` (`TERM`, `INT`) and wait for the server to exit; its exit status
    /// and its data dir.
    pub async fn stop_with(
        self,
        signal: &str,
    ) -> Result<(std::process::ExitStatus, tempfile::TempDir)> {
        let Self {
            mut _child,
            data_dir,
            ..
        } = self;
        let pid = _child.id().context("the server has exited already")?;
        let sent = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -s {signal} {pid} failed");
        let status = tokio::time::timeout(Duration::from_secs(60), _child.wait())
            .await
            .context("the server did not stop within 60 s")??;
        Ok((status, data_dir))
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self._child.id()
    }

    /// Kill this server (as a crash would) and keep its data dir.
    pub async fn kill(self) -> Result<tempfile::TempDir> {
        let Self {
            mut _child,
            data_dir,
            ..
        } = self;
        _child.kill().await?;
        Ok(data_dir)
    }

    pub async fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Result<Self> {
        Self::start_with_env(data_dir, extra_args, &[]).await
    }

    /// Start on `data_dir` with these environment variables set (`WEIR_FAILPOINTS`).
    pub async fn start_with_env(
        data_dir: tempfile::TempDir,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.path().join("weir.log"))?;
        let mut child = Command::new(weir_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra_args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting weir")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("weir did not start within 60 s")??
            .context("weir exited before listening")?;
        let url = line
            .strip_prefix("weir listening on ")
            .context("unexpected first line")?
            .trim()
            .to_string();
        Ok(Self {
            _child: child,
            url,
            data_dir,
            client: reqwest::Client::new(),
        })
    }

    pub async fn sql(&self, sql: &str) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}/api/v1/sql", self.url))
            .json(&json!({ "sql": sql }))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await?))
    }

    /// Run a statement that must succeed.
    pub async fn exec(&self, sql: &str) -> Result<Value> {
        let (status, body) = self.sql(sql).await?;
        if status != 200 {
            bail!("{sql}\nanswered {status}: {body}");
        }
        Ok(body)
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Take a checkpoint now (`POST /api/v1/checkpoints`); its answer.
    pub async fn checkpoint_now(&self) -> Result<Value> {
        let r = self
            .client
            .post(format!("{}/api/v1/checkpoints", self.url))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("a checkpoint answered {status}: {body}");
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await?;
        let status = r.status();
        let body = r.json().await?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// `POST /api/v1/plugins?name=NAME` with the module as the body.
    pub async fn upload_plugin(&self, name: &str, wasm: Vec<u8>) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}/api/v1/plugins?name={name}", self.url))
            .body(wasm)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .client
            .delete(format!("{}{path}", self.url))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post_records(&self, source: &str, body: String) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}/api/v1/sources/{source}/records", self.url))
            .body(body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// How many micro-batches source `source` has run its views over (a paused view's
    /// held batches count: the pipeline is done with them).
    pub async fn source_batches(&self, source: &str) -> Result<u64> {
        let s = self.get(&format!("/api/v1/sources/{source}")).await?;
        s["batches"]
            .as_u64()
            .with_context(|| format!("no batch count in {s}"))
    }

    /// Post `body` to http source `source` and wait until its pipeline has run a batch
    /// more than before: the records close a micro-batch of their own.
    pub async fn post_batch(&self, source: &str, body: String) -> Result<()> {
        let before = self.source_batches(source).await?;
        let (code, answer) = self.post_records(source, body).await?;
        if code != 200 {
            bail!("posting to {source} answered {code}: {answer}");
        }
        self.wait_for(
            &format!("source {source} to run the batch"),
            Duration::from_secs(10),
            || async { Ok((self.source_batches(source).await? > before).then_some(())) },
        )
        .await
    }

    /// Wait until source `source` has finished (a finite source after its last row).
    pub async fn wait_finished(&self, source: &str) -> Result<()> {
        self.wait_source(source, "finished", Duration::from_secs(240))
            .await
            .map(|_| ())
    }

    /// Wait until `source`'s status is `status`; its status then.
    pub async fn wait_source(
        &self,
        source: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        self.wait_for(
            &format!("source {source} to be {status}"),
            timeout,
            || async {
                let s = self.get(&format!("/api/v1/sources/{source}")).await?;
                Ok((s["status"] == status).then_some(s))
            },
        )
        .await
    }

    /// Poll `check` until it returns Some, or fail after `timeout` naming `what`.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                let log = std::fs::read_to_string(self.data_dir.path().join("weir.log"))
                    .unwrap_or_default();
                bail!(
                    "timed out waiting for {what}; weir log tail:\n{}",
                    tail(&log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A plugin built by `scripts/build-plugins.sh` (crate name with underscores).
pub fn plugin_wasm(crate_name: &str) -> Vec<u8> {
    plugin_wasm_for("wasm32-unknown-unknown", crate_name)
}

/// A plugin built by `scripts/build-plugins.sh` for `triple`.
pub fn plugin_wasm_for(triple: &str, crate_name: &str) -> Vec<u8> {
    // Beside this test's build, not `$WEIR_BIN`'s (a copy may live anywhere).
    let target = profile_dir()
        .parent()
        .expect("target dir")
        .join(triple)
        .join("plugin")
        .join(format!("{crate_name}.wasm"));
    std::fs::read(&target).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the example plugins with scripts/build-plugins.sh",
            target.display()
        )
    })
}

/// A module from WebAssembly text in plugins/.
pub fn wat_module(path: &str) -> Vec<u8> {
    let path = format!("{}/../plugins/{path}", env!("CARGO_MANIFEST_DIR"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A test's own service process (a store stopped and started again mid-test): stopped
/// by `down`, or when dropped.
#[derive(Default)]
pub struct ServiceProcess(Option<std::process::Child>);

impl ServiceProcess {
    pub fn running(&mut self, child: std::process::Child) {
        self.0 = Some(child);
    }

    pub fn down(&mut self) -> Result<()> {
        if let Some(mut child) = self.0.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.down();
    }
}
