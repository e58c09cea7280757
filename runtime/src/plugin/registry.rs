//! The plugins weir knows: each name has a current version (older versions stay on
//! disk), a pool of instances, health and counters. Calls go through here so that every
//! failure is counted and a plugin that keeps failing is marked failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use wasmtime::InstancePre;
use weir_sdk::Kind;

use super::PluginError;
use super::descriptor::{Descriptor, OutputSpec};
use super::host::{CallFailure, PluginHost, PluginInstance, StoreState};
use crate::durable::write_atomically;

/// A failed call, with the plugin and version it happened in.
#[derive(Debug, Clone)]
pub struct PluginCallError {
    pub plugin: String,
    pub version: u32,
    pub reason: String,
}

impl std::fmt::Display for PluginCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {} v{}: {}",
            self.plugin, self.version, self.reason
        )
    }
}

impl std::error::Error for PluginCallError {}

/// One uploaded version of a plugin.
pub struct LoadedPlugin {
    pub version: u32,
    pub descriptor: Descriptor,
    pub sha256: String,
    pub size_bytes: usize,
    pre: InstancePre<StoreState>,
    pool: Mutex<Vec<PluginInstance>>,
}

/// A plugin by name: its current version, health and counters.
pub struct PluginEntry {
    pub name: String,
    current: RwLock<Arc<LoadedPlugin>>,
    /// `Some(reason)` once the plugin failed too often in a row; cleared by an upload.
    failed: Mutex<Option<String>>,
    consecutive_failures: AtomicU32,
    calls: AtomicU64,
    failures: AtomicU64,
    rows: AtomicU64,
    last_failure: Mutex<Option<String>>,
    /// Every version stored, newest first (read again at each upload).
    versions: Mutex<Vec<VersionInfo>>,
    host: Arc<PluginHost>,
}

/// What the API shows of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: u32,
    pub plugin_version: String,
    pub sha256: String,
    pub size_bytes: usize,
    pub status: &'static str,
    pub reason: Option<String>,
    pub functions: Vec<FunctionInfo>,
    pub transforms: Vec<TransformInfo>,
    pub calls: u64,
    pub rows: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_failure: Option<String>,
    pub used_by: Vec<String>,
    /// Every version uploaded (older ones stay on disk), newest first.
    pub versions: Vec<VersionInfo>,
}

/// One uploaded version of a plugin, as kept on disk.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub sha256: String,
    pub size_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub args: Vec<String>,
    pub returns: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransformInfo {
    pub name: String,
    pub output: String,
}

impl PluginEntry {
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.current.read().clone()
    }

    /// Why the plugin is failed, if it is.
    pub fn failed(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    pub fn status(&self, used_by: Vec<String>) -> PluginStatus {
        let current = self.current();
        let failed = self.failed();
        PluginStatus {
            name: self.name.clone(),
            version: current.version,
            plugin_version: current.descriptor.version.clone(),
            sha256: current.sha256.clone(),
            size_bytes: current.size_bytes,
            status: if failed.is_some() { "failed" } else { "active" },
            reason: failed,
            functions: current
                .descriptor
                .functions
                .iter()
                .map(|f| FunctionInfo {
                    name: f.name.clone(),
                    args: f.args.iter().map(|t| t.to_string()).collect(),
                    returns: f.returns.to_string(),
                })
                .collect(),
            transforms: current
                .descriptor
                .transforms
                .iter()
                .map(|t| TransformInfo {
                    name: t.name.clone(),
                    output: match &t.output {
                        OutputSpec::SameAsInput => "same as input".into(),
                        OutputSpec::Append(f) => format!("input + {}", field_list(f)),
                        OutputSpec::Fields(f) => field_list(f),
                    },
                })
                .collect(),
            calls: self.calls.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            last_failure: self.last_failure.lock().clone(),
            used_by,
            versions: self.versions.lock().clone(),
        }
    }

    /// Call scalar function `name` on `args`; the result must be one array of
    /// `returns` with one value per row.
    pub fn call_function(
        self: &Arc<Self>,
        name: &str,
        args: RecordBatch,
        returns: &DataType,
    ) -> Result<ArrayRef, PluginCallError> {
        let rows = args.num_rows();
        self.call(Kind::Function, name, &args, |plugin, out| {
            let f = plugin
                .descriptor
                .functions
                .iter()
                .find(|f| f.name == name)
                .ok_or("gone")?;
            if &f.returns != returns {
                return Err(format!(
                    "this version declares {name} returning {} but the query was planned for {returns}; recreate the view",
                    f.returns
                ));
            }
            match out.columns() {
                [column] if column.data_type() == returns && column.len() == rows => Ok(column.clone()),
                [column] => Err(format!(
                    "bad output: {name} returned {} values of type {} for {rows} rows of declared type {returns}",
                    column.len(),
                    column.data_type()
                )),
                columns => Err(format!(
                    "bad output: {name} returned {} columns, not one",
                    columns.len()
                )),
            }
        })
    }

    /// Run transform `name` on `batch`; the output must have the declared schema.
    pub fn call_transform(
        self: &Arc<Self>,
        name: &str,
        batch: &RecordBatch,
    ) -> Result<RecordBatch, PluginCallError> {
        self.call(Kind::Transform, name, batch, |plugin, out| {
            let t = plugin
                .descriptor
                .transforms
                .iter()
                .find(|t| t.name == name)
                .ok_or("gone")?;
            let expected = t.output_schema(&batch.schema());
            check_schema(&expected, &out.schema())?;
            // Field metadata and nullability flags may differ; the data must not.
            RecordBatch::try_new(expected, out.columns().to_vec())
                .map_err(|e| format!("bad output: {e}"))
        })
    }

    fn call<T>(
        self: &Arc<Self>,
        kind: Kind,
        name: &str,
        input: &RecordBatch,
        check: impl FnOnce(&LoadedPlugin, RecordBatch) -> Result<T, String>,
    ) -> Result<T, PluginCallError> {
        let plugin = self.current();
        let fail = |reason: String| PluginCallError {
            plugin: self.name.clone(),
            version: plugin.version,
            reason,
        };
        if let Some(reason) = self.failed() {
            return Err(fail(format!(
                "the plugin is marked failed ({reason}); upload a fixed version to resume"
            )));
        }
        let index = match kind {
            Kind::Function => plugin
                .descriptor
                .functions
                .iter()
                .position(|f| f.name == name),
            Kind::Transform => plugin
                .descriptor
                .transforms
                .iter()
                .position(|t| t.name == name),
        }
        .ok_or_else(|| fail(format!("this version no longer exports {name}")))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let pooled = plugin.pool.lock().pop();
        let instance = match pooled {
            Some(instance) => Ok(instance),
            None => {
                let tag = format!("{}@v{}", self.name, plugin.version);
                self.host.instantiate(&plugin.pre, &tag)
            }
        };
        let (result, instance) = match instance {
            Ok(mut instance) => {
                let result = instance
                    .invoke(kind, index, input)
                    .map_err(|e: CallFailure| e.to_string())
                    .and_then(|out| check(&plugin, out));
                (result, Some(instance))
            }
            Err(e) => (Err(e), None),
        };
        if let (Ok(_), Some(instance)) = (&result, instance) {
            // Only an instance that finished cleanly goes back to the pool.
            plugin.pool.lock().push(instance);
            self.rows
                .fetch_add(input.num_rows() as u64, Ordering::Relaxed);
        }
        let failure = result.as_ref().err().cloned();
        let version = plugin.version;
        // The calls made while a view processes a batch (one per slice, one per
        // expression that calls the function) count once for the batch.
        let entry = self.clone();
        let key = (Arc::as_ptr(self) as usize, u64::from(version));
        if !weir_sql::settle::defer(key, failure.clone(), move |outcome| {
            entry.settle(version, outcome)
        }) {
            self.settle(version, failure);
        }
        result.map_err(fail)
    }

    /// Count the outcome of a batch's calls to `version`: a failure towards the failures
    /// in a row that mark the plugin failed, a success clears them. A call still running
    /// on a version that was just replaced does not count for or against the new one.
    fn settle(&self, version: u32, failure: Option<String>) {
        if self.current().version != version {
            return;
        }
        match failure {
            None => self.consecutive_failures.store(0, Ordering::Relaxed),
            Some(reason) => self.record_failure(reason),
        }
    }

    fn record_failure(&self, reason: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock() = Some(reason.clone());
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let max = self.host.config.max_consecutive_failures;
        if n >= max {
            let mut failed = self.failed.lock();
            if failed.is_none() {
                tracing::error!(plugin = %self.name, failures = n, %reason, "plugin marked failed; its views pause until a fixed version is uploaded");
                *failed = Some(format!("{n} failures in a row, the last: {reason}"));
            }
        }
    }
}

fn field_list(fields: &datafusion::arrow::datatypes::Fields) -> String {
    let items: Vec<String> = fields
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", items.join(", "))
}

fn check_schema(expected: &SchemaRef, got: &SchemaRef) -> Result<(), String> {
    let same = expected.fields().len() == got.fields().len()
        && expected
            .fields()
            .iter()
            .zip(got.fields())
            .all(|(e, g)| e.name() == g.name() && e.data_type() == g.data_type());
    if same {
        Ok(())
    } else {
        let show = |s: &SchemaRef| field_list(s.fields());
        Err(format!(
            "bad output: wrong schema {}, declared {}",
            show(got),
            show(expected)
        ))
    }
}

/// A compiled and checked module, not yet installed.
pub struct Prepared {
    plugin: LoadedPlugin,
    wasm: Vec<u8>,
}

impl Prepared {
    pub fn descriptor(&self) -> &Descriptor {
        &self.plugin.descriptor
    }
}

/// Every plugin, persisted under `<data-dir>/plugins/<name>/<version>.wasm`.
pub struct Plugins {
    host: Arc<PluginHost>,
    dir: Option<PathBuf>,
    entries: DashMap<String, Arc<PluginEntry>>,
}

impl Plugins {
    /// Open the plugin store and load the newest version of every plugin in it.
    pub fn open(host: PluginHost, data_dir: Option<&Path>) -> Result<Self, PluginError> {
        let dir = data_dir.map(|d| d.join("plugins"));
        let plugins = Self {
            host: Arc::new(host),
            dir,
            entries: DashMap::new(),
        };
        plugins.load_all();
        Ok(plugins)
    }

    fn load_all(&self) {
        let Some(dir) = &self.dir else { return };
        let Ok(names) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in names.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            if !path.is_dir() {
                continue;
            }
            let Some(version) = newest_version(&path) else {
                continue;
            };
            let file = path.join(format!("{version}.wasm"));
            let loaded = std::fs::read(&file)
                .map_err(PluginError::Storage)
                .and_then(|wasm| self.compile(&wasm, version));
            match loaded {
                Ok(plugin) => {
                    tracing::info!(plugin = %name, version, "plugin loaded");
                    let versions = self.versions_of(&name, &plugin);
                    let entry = self.entry(name.clone(), plugin);
                    *entry.versions.lock() = versions;
                    self.entries.insert(name, Arc::new(entry));
                }
                Err(e) => tracing::warn!(plugin = %name, version, error = %e, "cannot load plugin"),
            }
        }
    }

    fn compile(&self, wasm: &[u8], version: u32) -> Result<LoadedPlugin, PluginError> {
        let compiled = self.host.compile(wasm)?;
        Ok(LoadedPlugin {
            version,
            descriptor: compiled.descriptor,
            sha256: compiled.sha256,
            size_bytes: wasm.len(),
            pre: compiled.pre,
            pool: Mutex::new(Vec::new()),
        })
    }

    fn entry(&self, name: String, plugin: LoadedPlugin) -> PluginEntry {
        PluginEntry {
            name,
            current: RwLock::new(Arc::new(plugin)),
            failed: Mutex::new(None),
            consecutive_failures: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            versions: Mutex::new(Vec::new()),
            host: self.host.clone(),
        }
    }

    /// The versions of `name` in the store, newest first (hashed here: uploads and
    /// starts are rare); without a store, the current one only.
    fn versions_of(&self, name: &str, current: &LoadedPlugin) -> Vec<VersionInfo> {
        let only_current = || {
            vec![VersionInfo {
                version: current.version,
                sha256: current.sha256.clone(),
                size_bytes: current.size_bytes,
            }]
        };
        let Some(Ok(files)) = self.dir.as_ref().map(|d| std::fs::read_dir(d.join(name))) else {
            return only_current();
        };
        let mut versions: Vec<VersionInfo> = files
            .flatten()
            .filter_map(|f| {
                let version = f
                    .file_name()
                    .to_str()?
                    .strip_suffix(".wasm")?
                    .parse()
                    .ok()?;
                let wasm = std::fs::read(f.path()).ok()?;
                Some(VersionInfo {
                    version,
                    sha256: crate::plugin::host::sha256_hex(&wasm),
                    size_bytes: wasm.len(),
                })
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        if versions.is_empty() {
            return only_current();
        }
        versions
    }

    pub fn config(&self) -> &crate::config::PluginConfig {
        &self.host.config
    }

    /// Compile and check `wasm` without keeping it (the refusal says why).
    pub fn check(&self, wasm: &[u8]) -> Result<Descriptor, PluginError> {
        self.host.compile(wasm).map(|c| c.descriptor)
    }

    /// Compile and check `wasm` (the slow part, done before any lock is taken).
    pub fn prepare(&self, wasm: Vec<u8>) -> Result<Prepared, PluginError> {
        let plugin = self.compile(&wasm, 0)?;
        Ok(Prepared { plugin, wasm })
    }

    /// Store a prepared module as the next version of `name` and make it current:
    /// calls switch to it at their next batch, and a failed plugin resumes.
    pub fn commit(&self, name: &str, prepared: Prepared) -> Result<Arc<PluginEntry>, PluginError> {
        let Prepared { mut plugin, wasm } = prepared;
        let existing = self.entries.get(name).map(|e| e.clone());
        let version = existing.as_ref().map_or(0, |e| e.current().version).max(
            self.dir
                .as_ref()
                .and_then(|d| newest_version(&d.join(name)))
                .unwrap_or(0),
        ) + 1;
        plugin.version = version;
        if let Some(dir) = &self.dir {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir)
                .and_then(|_| write_atomically(&dir.join(format!("{version}.wasm")), &wasm))
                .map_err(|e| {
                    PluginError::Storage(std::io::Error::new(
                        e.kind(),
                        format!("cannot store the plugin in {}: {e}", dir.display()),
                    ))
                })?;
        }
        let entry = match existing {
            Some(entry) => {
                *entry.current.write() = Arc::new(plugin);
                *entry.failed.lock() = None;
                entry.consecutive_failures.store(0, Ordering::Relaxed);
                entry
            }
            None => {
                let entry = Arc::new(self.entry(name.to_string(), plugin));
                self.entries.insert(name.to_string(), entry.clone());
                entry
            }
        };
        *entry.versions.lock() = self.versions_of(name, &entry.current());
        tracing::info!(plugin = %name, version, "plugin installed");
        Ok(entry)
    }

    /// `prepare` then `commit`.
    pub fn install(&self, name: &str, wasm: &[u8]) -> Result<Arc<PluginEntry>, PluginError> {
        let prepared = self.prepare(wasm.to_vec())?;
        self.commit(name, prepared)
    }

    pub fn get(&self, name: &str) -> Option<Arc<PluginEntry>> {
        self.entries.get(name).map(|e| e.clone())
    }

    pub fn all(&self) -> Vec<Arc<PluginEntry>> {
        let mut all: Vec<_> = self.entries.iter().map(|e| e.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Forget `name` and delete its files.
    pub fn remove(&self, name: &str) -> Option<Arc<PluginEntry>> {
        let removed = self.entries.remove(name).map(|(_, e)| e);
        if removed.is_some()
            && let Some(dir) = &self.dir
        {
            let _ = std::fs::remove_dir_all(dir.join(name));
        }
        removed
    }
}

fn newest_version(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|f| {
            f.file_name()
                .to_str()?
                .strip_suffix(".wasm")?
                .parse::<u32>()
                .ok()
        })
        .max()
}
