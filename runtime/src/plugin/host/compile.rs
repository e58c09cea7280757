//! Compiling an uploaded module: checked (magic, imports, ABI version, descriptor)
//! before it is accepted, and its compiled code cached in the data dir by the module's
//! hash and the engine's settings, so a restart does not compile again.

use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

use super::call::root_cause;
use super::wasi::{WASI, WASI_GRANTED};
use super::{Compiled, PluginHost};
use crate::durable::write_atomically;
use crate::plugin::PluginError;

impl PluginHost {
    /// Validate and compile a module, check what it imports, instantiate it once and
    /// read its descriptor. Every refusal says why.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, PluginError> {
        self.check_module(wasm).map_err(PluginError::Rejected)
    }

    fn check_module(&self, wasm: &[u8]) -> Result<Compiled, String> {
        if !wasm.starts_with(b"\0asm") {
            return Err(
                "not a WebAssembly module (it does not start with \\0asm); upload the .wasm file that cargo build --target wasm32-unknown-unknown produces".into(),
            );
        }
        let sha256 = sha256_hex(wasm);
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

/// A module's SHA-256 as lower-case hex, as the API shows it.
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}
