//! The Wasm host: one wasmtime engine with epoch interruption (a ticker thread drives
//! it), compiled modules cached in the data dir, and instances that each run one batch
//! per call under a memory cap and a time budget.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::error::ArrowError;
use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Engine, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc,
};
use weir_sdk::Kind;
use weir_sdk::ipc::{Decoder, Encoder};

use super::descriptor::Descriptor;
use crate::config::PluginConfig;
use crate::durable::write_atomically;

/// How often the epoch advances; time budgets are counted in these ticks.
const TICK: Duration = Duration::from_millis(10);
/// Error messages and log lines from a plugin are cut to this length.
const MAX_MESSAGE: usize = 4096;

/// Why a call into a plugin failed. The text is what users see in dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    Timeout(String),
    Memory(String),
    Trap(String),
    BadOutput(String),
    /// The plugin ran and returned an error message.
    Refused(String),
}

impl CallFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Memory(_) => "memory",
            Self::Trap(_) => "trap",
            Self::BadOutput(_) => "bad output",
            Self::Refused(_) => "error",
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(m) | Self::Memory(m) | Self::Trap(m) | Self::BadOutput(m) => {
                f.write_str(m)
            }
            Self::Refused(m) => write!(f, "the plugin returned an error: {m}"),
        }
    }
}

/// The engine and its limits; shared by every plugin.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<StoreState>,
    pub(crate) config: PluginConfig,
    cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.config)
            .finish()
    }
}

/// A compiled, checked module, ready to instantiate.
pub struct Compiled {
    pub module: Module,
    pub pre: InstancePre<StoreState>,
    pub descriptor: Descriptor,
    pub sha256: String,
}

impl PluginHost {
    pub fn new(config: PluginConfig, cache_dir: Option<PathBuf>) -> Result<Self, String> {
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true);
        let engine = Engine::new(&wasm).map_err(|e| format!("cannot start wasmtime: {e}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap("weir", "log", host_log)
            .map_err(|e| e.to_string())?;
        wasi_stubs(&mut linker).map_err(|e| e.to_string())?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(Self {
            engine,
            linker,
            config,
            cache_dir,
        })
    }

    /// Validate and compile a module, check what it imports, instantiate it once and
    /// read its descriptor. Every refusal says why.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, String> {
        if !wasm.starts_with(b"\0asm") {
            return Err(
                "not a WebAssembly module (it does not start with \\0asm); upload the .wasm file that cargo build --target wasm32-unknown-unknown produces".into(),
            );
        }
        let sha256 = hex(&Sha256::digest(wasm));
        let module = self.load_or_compile(wasm, &sha256)?;
        let refused: Vec<String> = module
            .imports()
            .filter(|i| {
                !(i.module() == "weir" && i.name() == "log"
                    || i.module() == WASI && WASI_GRANTED.contains(&i.name()))
            })
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        if !refused.is_empty() {
            return Err(format!(
                "the module imports {} which weir does not grant (plugins get no files, network, environment or clock: only weir::log and, for wasm32-wasip1 builds, WASI's {}). Build for wasm32-unknown-unknown",
                refused.join(", "),
                WASI_GRANTED.join(", ")
            ));
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot link the module: {e}"))?;
        let mut instance = self.instantiate(&pre, "(new upload)")?;
        let descriptor = instance.describe()?;
        Ok(Compiled {
            module,
            pre,
            descriptor,
            sha256,
        })
    }

    /// Compiled code is cached by the module's hash and the engine's settings, so a
    /// restart does not compile again.
    fn load_or_compile(&self, wasm: &[u8], sha256: &str) -> Result<Module, String> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{sha256}-{:016x}.cwasm", h.finish())));
        if let Some(path) = &path
            && path.exists()
        {
            match load_cached(&self.engine, path) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a bad compiled-module cache entry")
                }
            }
        }
        let module = Module::from_binary(&self.engine, wasm)
            .map_err(|e| format!("not a valid WebAssembly module: {}", root_cause(&e)))?;
        if let Some(path) = &path {
            let saved = module
                .serialize()
                .map_err(|e| e.to_string())
                .and_then(|bytes| write_atomically(path, &bytes).map_err(|e| e.to_string()));
            if let Err(e) = saved {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache the compiled module");
            }
        }
        Ok(module)
    }

    /// A fresh instance under this host's limits.
    pub fn instantiate(
        &self,
        pre: &InstancePre<StoreState>,
        tag: &str,
    ) -> Result<PluginInstance, String> {
        let mut store = Store::new(
            &self.engine,
            StoreState {
                memory: MemoryCap {
                    max_bytes: self.config.memory_limit_bytes,
                    denied: None,
                },
                log: LogLimit::new(tag, self.config.log_lines_per_second),
            },
        );
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(self.budget_ticks());
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate the module: {}", classify(&e, &store)))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("the module exports no memory named \"memory\"")?;
        let func = |store: &mut Store<StoreState>, name: &str| {
            instance.get_func(&mut *store, name).ok_or_else(|| {
                format!("not a weir plugin: it does not export {name} (see docs/PLUGIN_ABI.md)")
            })
        };
        let typed = |e: wasmtime::Error, name: &str| format!("{name} has the wrong signature: {e}");
        let abi_version = func(&mut store, "weir_abi_version")?
            .typed::<(), i32>(&store)
            .map_err(|e| typed(e, "weir_abi_version"))?;
        let alloc = func(&mut store, "weir_alloc")?
            .typed::<i32, i32>(&store)
            .map_err(|e| typed(e, "weir_alloc"))?;
        let describe = func(&mut store, "weir_describe")?
            .typed::<(), i64>(&store)
            .map_err(|e| typed(e, "weir_describe"))?;
        let call = func(&mut store, "weir_call")?
            .typed::<(i32, i32, i32, i32), i64>(&store)
            .map_err(|e| typed(e, "weir_call"))?;
        Ok(PluginInstance {
            store,
            memory,
            abi_version,
            alloc,
            describe,
            call,
            budget_ticks: self.budget_ticks(),
            max_output_bytes: self.config.max_output_bytes,
            input: Vec::new(),
            encoder: Encoder::new(),
            decoder: Decoder::new(),
        })
    }

    fn budget_ticks(&self) -> u64 {
        (self.config.time_limit.as_millis() / TICK.as_millis()).max(1) as u64
    }
}

/// Per-instance host state: the memory cap and the log limiter.
pub struct StoreState {
    memory: MemoryCap,
    log: LogLimit,
}

struct MemoryCap {
    max_bytes: usize,
    /// Set when the plugin asked for more than the cap (to explain the trap after).
    denied: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// At most `per_second` log lines per instance; the rest are counted and reported.
struct LogLimit {
    tag: String,
    per_second: u32,
    window: Instant,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    fn new(tag: &str, per_second: u32) -> Self {
        Self {
            tag: tag.to_string(),
            per_second,
            window: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    fn admit(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                tracing::warn!(plugin = %self.tag, dropped = self.dropped, "plugin log lines dropped (rate limit)");
            }
            self.window = Instant::now();
            self.used = 0;
            self.dropped = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

fn host_log(mut caller: Caller<'_, StoreState>, level: i32, ptr: i32, len: i32) {
    if !caller.data_mut().log.admit() {
        return;
    }
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return;
    };
    let text = read_guest(
        &memory,
        &caller,
        ptr as u32,
        (len as u32).min(MAX_MESSAGE as u32),
    )
    .map(|b| String::from_utf8_lossy(b).into_owned())
    .unwrap_or_else(|| "(log line outside the plugin's memory)".into());
    let tag = &caller.data().log.tag;
    match level {
        0 => tracing::error!(plugin = %tag, "{text}"),
        1 => tracing::warn!(plugin = %tag, "{text}"),
        _ => tracing::info!(plugin = %tag, "{text}"),
    }
}

const WASI: &str = "wasi_snapshot_preview1";
/// What a Rust wasm32-wasip1 library imports, answered without granting anything: no
/// environment, output to the plugin log, a fixed pseudo-random sequence, exit as a trap.
const WASI_GRANTED: [&str; 5] = [
    "environ_get",
    "environ_sizes_get",
    "fd_write",
    "proc_exit",
    "random_get",
];
const WASI_OK: i32 = 0;
const WASI_EBADF: i32 = 8;
const WASI_EFAULT: i32 = 21;

fn wasi_stubs(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut caller: Caller<'_, StoreState>, count: i32, size: i32| {
            let zeros = [0u8; 4];
            match caller.get_export("memory").and_then(|e| e.into_memory()) {
                Some(m)
                    if m.write(&mut caller, count as u32 as usize, &zeros).is_ok()
                        && m.write(&mut caller, size as u32 as usize, &zeros).is_ok() =>
                {
                    WASI_OK
                }
                _ => WASI_EFAULT,
            }
        },
    )?;
    linker.func_wrap(WASI, "environ_get", |_: i32, _: i32| WASI_OK)?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| {
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return WASI_EFAULT;
            };
            // Check the range before allocating anything for it.
            let fits =
                len >= 0 && (ptr as u32 as u64) + (len as u64) <= memory.data_size(&caller) as u64;
            if !fits {
                return WASI_EFAULT;
            }
            // Deterministic on purpose: the same input gives the same output.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let bytes: Vec<u8> = (0..len.max(0))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            match memory.write(&mut caller, ptr as u32 as usize, &bytes) {
                Ok(()) => WASI_OK,
                Err(_) => WASI_EFAULT,
            }
        },
    )?;
    linker.func_wrap(WASI, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!(
            "the plugin called proc_exit({code})"
        )))
    })?;
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut caller: Caller<'_, StoreState>, fd: i32, iovs: i32, count: i32, written: i32| {
            if fd != 1 && fd != 2 {
                return WASI_EBADF;
            }
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return WASI_EFAULT;
            };
            let mut text = Vec::new();
            let mut total: u32 = 0;
            for i in 0..count.max(0) as u32 {
                let Some(iov) = read_guest(&memory, &caller, iovs as u32 + i * 8, 8) else {
                    return WASI_EFAULT;
                };
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Some(bytes) = read_guest(&memory, &caller, ptr, len) else {
                    return WASI_EFAULT;
                };
                if text.len() < MAX_MESSAGE {
                    text.extend_from_slice(&bytes[..bytes.len().min(MAX_MESSAGE - text.len())]);
                }
                total = total.saturating_add(len);
            }
            if memory
                .write(&mut caller, written as u32 as usize, &total.to_le_bytes())
                .is_err()
            {
                return WASI_EFAULT;
            }
            let line = String::from_utf8_lossy(&text).trim_end().to_string();
            if !line.is_empty() && caller.data_mut().log.admit() {
                let tag = &caller.data().log.tag;
                tracing::info!(plugin = %tag, fd, "{line}");
            }
            WASI_OK
        },
    )?;
    Ok(())
}

fn read_guest<'a>(
    memory: &Memory,
    store: impl Into<wasmtime::StoreContext<'a, StoreState>>,
    ptr: u32,
    len: u32,
) -> Option<&'a [u8]> {
    let data = memory.data(store);
    let start = ptr as usize;
    data.get(start..start.checked_add(len as usize)?)
}

/// One live instance of a plugin. After any failure it is dropped, never reused:
/// its memory may be corrupt.
pub struct PluginInstance {
    store: Store<StoreState>,
    memory: Memory,
    abi_version: TypedFunc<(), i32>,
    alloc: TypedFunc<i32, i32>,
    describe: TypedFunc<(), i64>,
    call: TypedFunc<(i32, i32, i32, i32), i64>,
    budget_ticks: u64,
    max_output_bytes: usize,
    /// Reused buffer for the Arrow IPC input.
    input: Vec<u8>,
    /// Both keep the last schema, so a call with the same schema skips its encoding.
    encoder: Encoder,
    decoder: Decoder,
}

impl PluginInstance {
    /// Check the ABI version and read the descriptor.
    fn describe(&mut self) -> Result<Descriptor, String> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let version = self
            .abi_version
            .call(&mut self.store, ())
            .map_err(|e| format!("weir_abi_version failed: {}", classify(&e, &self.store)))?;
        if version != weir_sdk::ABI_VERSION as i32 {
            return Err(format!(
                "the plugin speaks plugin ABI {version} but this weir speaks ABI {}; rebuild it with a matching weir-sdk",
                weir_sdk::ABI_VERSION
            ));
        }
        self.store.set_epoch_deadline(self.budget_ticks);
        let packed = self
            .describe
            .call(&mut self.store, ())
            .map_err(|e| format!("weir_describe failed: {}", classify(&e, &self.store)))?;
        let (ptr, len, error) = unpack(packed);
        if error || len as usize > 1 << 20 {
            return Err("weir_describe returned an error or more than 1 MiB".into());
        }
        let json = read_guest(&self.memory, &self.store, ptr, len)
            .ok_or("weir_describe pointed outside the plugin's memory")?;
        Descriptor::parse(json)
    }

    /// Run one batch through export `index` of `kind`.
    pub fn invoke(
        &mut self,
        kind: Kind,
        index: usize,
        batch: &RecordBatch,
    ) -> Result<RecordBatch, CallFailure> {
        self.input.clear();
        self.encoder
            .encode_into(batch, &mut self.input)
            .map_err(|e| CallFailure::BadOutput(format!("cannot encode the input: {e}")))?;
        let len = i32::try_from(self.input.len())
            .map_err(|_| CallFailure::Memory("the input batch is larger than 2 GiB".into()))?;
        // A refused growth is reported only for the call it happened in.
        self.store.data_mut().memory.denied = None;
        self.store.set_epoch_deadline(self.budget_ticks);
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| classify(&e, &self.store))?;
        if ptr == 0 {
            return Err(CallFailure::Memory(format!(
                "the plugin could not allocate {} bytes for the input batch",
                self.input.len()
            )));
        }
        self.memory
            .write(&mut self.store, ptr as u32 as usize, &self.input)
            .map_err(|_| {
                CallFailure::BadOutput("weir_alloc returned a pointer outside memory".into())
            })?;
        self.store.set_epoch_deadline(self.budget_ticks);
        let packed = self
            .call
            .call(&mut self.store, (kind as i32, index as i32, ptr, len))
            .map_err(|e| classify(&e, &self.store))?;
        let (ptr, len, error) = unpack(packed);
        if error {
            let message = read_guest(&self.memory, &self.store, ptr, len.min(MAX_MESSAGE as u32))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "(the error message points outside the plugin's memory)".into());
            return Err(CallFailure::Refused(message));
        }
        if len as usize > self.max_output_bytes {
            return Err(CallFailure::BadOutput(format!(
                "output of {len} bytes is over the limit of {} bytes (plugins.max-output-bytes)",
                self.max_output_bytes
            )));
        }
        let bytes = read_guest(&self.memory, &self.store, ptr, len).ok_or_else(|| {
            CallFailure::BadOutput(format!(
                "the output ({len} bytes at {ptr}) lies outside the plugin's memory"
            ))
        })?;
        // One copy out of guest memory into an aligned buffer; decoding is zero-copy.
        let buffer = Buffer::from(bytes);
        let decoder = &mut self.decoder;
        // arrow-ipc can panic on some malformed flatbuffers; guest output is untrusted.
        // A scalar function returns one row per input row; a transform at most one row
        // per byte it may return.
        let max_rows = if kind == Kind::Function {
            batch.num_rows()
        } else {
            self.max_output_bytes
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoder.decode(buffer, max_rows)
        }))
        .unwrap_or_else(|_| Err(ArrowError::IpcError("the decoder panicked".into())))
        .map_err(|e| CallFailure::BadOutput(format!("the output is not an Arrow IPC stream: {e}")))
    }
}

fn unpack(packed: i64) -> (u32, u32, bool) {
    let error = packed < 0;
    let bits = packed & i64::MAX;
    ((bits >> 32) as u32, bits as u32, error)
}

/// Turn a wasmtime error into the reason users see.
fn classify(e: &wasmtime::Error, store: &Store<StoreState>) -> CallFailure {
    let state = store.data();
    if let Some(asked) = state.memory.denied {
        return CallFailure::Memory(format!(
            "memory limit exceeded: the plugin asked for {} MiB, the limit is {} MiB (plugins.memory-limit-bytes)",
            asked.div_ceil(1 << 20),
            state.memory.max_bytes >> 20
        ));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::Timeout(
            "time limit exceeded: the call ran past its budget (plugins.time-limit) and was stopped"
                .into(),
        ),
        Some(Trap::StackOverflow) => {
            CallFailure::Trap("trap: stack overflow (recursion too deep)".into())
        }
        Some(Trap::UnreachableCodeReached) => CallFailure::Trap(
            "trap: unreachable code reached (a panic or abort inside the plugin)".into(),
        ),
        Some(trap) => CallFailure::Trap(format!("trap: {trap}")),
        None => CallFailure::Trap(root_cause(e)),
    }
}

fn root_cause(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> Result<Module, String> {
    // SAFETY: the file is one this host wrote with Module::serialize into its own data
    // dir; its name carries the engine's compatibility hash and wasmtime rejects
    // blobs from other versions or settings. Whoever can rewrite the data dir can
    // already replace the weir binary.
    unsafe { Module::deserialize_file(engine, path) }.map_err(|e| e.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_rate_limited_per_second() {
        let mut limit = LogLimit::new("p@v1", 2);
        assert!(limit.admit());
        assert!(limit.admit());
        assert!(
            !limit.admit(),
            "the third line in the same second is dropped"
        );
        assert_eq!(limit.dropped, 1);
        limit.window -= Duration::from_secs(2);
        assert!(limit.admit(), "a new second admits again");
        assert_eq!(limit.dropped, 0);
    }

    #[test]
    fn packed_results_carry_pointer_length_and_error_bit() {
        assert_eq!(unpack((1024 << 32) | 109), (1024, 109, false));
        assert_eq!(unpack(i64::MIN | (2048 << 32) | 26), (2048, 26, true));
    }
}
