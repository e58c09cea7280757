//! Runtime configuration with every default in one place. The same structs are read
//! from the `[runtime]` part of `weir.toml`; per-source `WITH (...)` options override
//! the batching defaults (see [`crate::options`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Where weir keeps its files (dead letters). Default `./weir-data`.
    pub data_dir: PathBuf,
    /// Default micro-batch policy of every source.
    pub batch: BatchConfig,
    /// HTTP ingest limits.
    pub http: HttpIngestConfig,
    /// Rows a view keeps (newest first); older rows are released. Default 1,000,000.
    pub view_max_rows: usize,
    /// Dead letters kept in memory for the API (all are appended to the data dir). Default 10,000.
    pub dead_letters_in_memory: usize,
    /// Limits of Wasm plugins.
    pub plugins: PluginConfig,
    /// When checkpoints are taken and how many are kept.
    pub checkpoints: CheckpointConfig,
    /// Where `file` sources find their files (paths may not leave it). Default
    /// `<data-dir>/files`.
    pub files_dir: Option<PathBuf>,
    /// A source that sends nothing for this long stops holding back the windows of the
    /// joins it feeds (its watermark is left out of their minimum). Default 10s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Cores the work of sources and views is spread over: file sources decode this
    /// many blocks at once (a generator makes as many chunks, Kafka decodes partitions
    /// side by side), keyed operators (updating and windowed aggregates, joins by their
    /// equality key, sessions) run in this many parallel instances, and stateless views
    /// in as many slices, unless a view says otherwise (`WITH (parallelism = n)`).
    /// Default: the number of cores.
    pub parallelism: usize,
    /// Limits of ad hoc queries (`POST /api/v1/sql` SELECTs), so that none can take the
    /// server down.
    pub queries: QueryLimits,
}

/// Limits of ad hoc queries. Each runs on threads of its own, apart from ingest, the
/// pipelines and the API.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Memory one query may hold (DataFusion's memory pool); over it, a 400 that names
    /// the limit. Default 1 GiB.
    pub memory_bytes: usize,
    /// A query running longer is cancelled (a 400 that names the limit). Default 30s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Rows one answer carries; more are cut (the `weir-result-cut` header says so).
    /// Default 100,000.
    pub max_rows: usize,
    /// Bytes of Arrow arrays one answer carries; more are cut. Default 64 MiB.
    pub max_bytes: usize,
    /// Queries running at once; beyond, 429 with `Retry-After`. Default 4.
    pub max_concurrent: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            max_bytes: 64 << 20,
            max_concurrent: 4,
        }
    }
}

/// The number of cores this process may use (1 when it cannot be told).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl RuntimeConfig {
    /// Where `file` sources read from.
    pub fn files_dir(&self) -> PathBuf {
        self.files_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("files"))
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("weir-data"),
            batch: BatchConfig::default(),
            http: HttpIngestConfig::default(),
            view_max_rows: 1_000_000,
            dead_letters_in_memory: 10_000,
            plugins: PluginConfig::default(),
            checkpoints: CheckpointConfig::default(),
            files_dir: None,
            idle_timeout: Duration::from_secs(10),
            parallelism: cores(),
            queries: QueryLimits::default(),
        }
    }
}

/// When a micro-batch closes: at `max_rows` rows or `max_delay` after its first row.
/// With a `max_delay` of zero (the default) a batch closes as soon as its source has
/// nothing more queued: no wait when nothing else is coming, and under load the queue
/// fills while a batch is processed, so batches grow by themselves.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Close a batch at this many rows. Default 8192.
    pub max_rows: usize,
    /// Close a batch this long after its first row arrived. Default 0: as soon as
    /// nothing more is queued.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 8192,
            max_delay: Duration::ZERO,
        }
    }
}

/// Limits of `POST /api/v1/sources/{name}/records`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpIngestConfig {
    /// Largest accepted request body in bytes (413 above). Default 8 MiB.
    pub max_body_bytes: usize,
    /// Decoded request chunks a source buffers before answering 429. Default 64.
    pub buffer_chunks: usize,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            buffer_chunks: 64,
        }
    }
}

/// Checkpoints of sources' positions and views' state (see docs/RECOVERY.md).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Time between checkpoints. Default 10s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Checkpoints kept on disk, newest first. Default 3.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            keep: 3,
        }
    }
}

/// Limits every plugin call runs under.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PluginConfig {
    /// Linear memory one plugin instance may use. Default 64 MiB.
    pub memory_limit_bytes: usize,
    /// Time one call (one batch) may take. Default 1s.
    #[serde(with = "humantime_serde")]
    pub time_limit: Duration,
    /// Largest output one call may return. Default 32 MiB.
    pub max_output_bytes: usize,
    /// Failures in a row after which a plugin is marked failed and its views pause. Default 3.
    pub max_consecutive_failures: u32,
    /// Log lines per second one instance may write; the rest are dropped and counted. Default 20.
    pub log_lines_per_second: u32,
    /// Largest accepted upload. Default 32 MiB.
    pub max_upload_bytes: usize,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 64 << 20,
            time_limit: Duration::from_secs(1),
            max_output_bytes: 32 << 20,
            max_consecutive_failures: 3,
            log_lines_per_second: 20,
            max_upload_bytes: 32 << 20,
        }
    }
}
