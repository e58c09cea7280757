//! The memory cap of one plugin instance: growth past `plugins.memory-limit-bytes` is
//! refused (and remembered, so the trap that follows can say why), tables and
//! instances are capped too.

use wasmtime::ResourceLimiter;

pub(super) struct MemoryCap {
    pub(super) max_bytes: usize,
    /// Set when the plugin asked for more than the cap (to explain the trap after).
    pub(super) denied: Option<usize>,
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
