//! The Wasm host: one wasmtime engine with epoch interruption (a ticker thread drives
//! it), compiled modules cached in the data dir, and instances that each run one batch
//! per call under a memory cap and a time budget.

//!
//! Split by concern: `compile` (checking and caching modules), `limits` (the memory
//! cap), `log` (guest logging), `wasi` (the WASI stubs), `call` (one batch through an
//! instance).

pub(crate) mod call;
mod compile;
mod limits;
mod log;
mod wasi;

pub use call::{CallFailure, PluginInstance};
pub use compile::sha256_hex;

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::{Engine, InstancePre, Linker, Memory, Module, Store};
use weir_sdk::ipc::{Decoder, Encoder};

use super::descriptor::Descriptor;
use crate::config::PluginConfig;
use crate::plugin::PluginError;
use call::classify;
use limits::MemoryCap;
use log::{LogLimit, host_log};
use wasi::wasi_stubs;

/// How often the epoch advances; time budgets are counted in these ticks.
const TICK: Duration = Duration::from_millis(10);
/// Error messages and log lines from a plugin are cut to this length.
const MAX_MESSAGE: usize = 4096;

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
    pub fn new(config: PluginConfig, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        Self::start(config, cache_dir).map_err(PluginError::Host)
    }

    fn start(config: PluginConfig, cache_dir: Option<PathBuf>) -> Result<Self, String> {
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
