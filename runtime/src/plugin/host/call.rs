//! Calls into a plugin: one batch in as Arrow IPC, one batch out, under the instance's
//! time budget and memory cap. A failure is a [`CallFailure`] that says why, in words
//! users see in dead letters; the instance is then dropped.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::error::ArrowError;
use wasmtime::{Memory, Store, Trap, TypedFunc};
use weir_sdk::Kind;
use weir_sdk::ipc::{Decoder, Encoder};

use super::{MAX_MESSAGE, StoreState, read_guest};
use crate::plugin::descriptor::Descriptor;

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

/// One live instance of a plugin. After any failure it is dropped, never reused:
/// its memory may be corrupt.
pub struct PluginInstance {
    pub(super) store: Store<StoreState>,
    pub(super) memory: Memory,
    pub(super) abi_version: TypedFunc<(), i32>,
    pub(super) alloc: TypedFunc<i32, i32>,
    pub(super) describe: TypedFunc<(), i64>,
    pub(super) call: TypedFunc<(i32, i32, i32, i32), i64>,
    pub(super) budget_ticks: u64,
    pub(super) max_output_bytes: usize,
    /// Reused buffer for the Arrow IPC input.
    pub(super) input: Vec<u8>,
    /// Both keep the last schema, so a call with the same schema skips its encoding.
    pub(super) encoder: Encoder,
    pub(super) decoder: Decoder,
}

impl PluginInstance {
    /// Check the ABI version and read the descriptor.
    pub(super) fn describe(&mut self) -> Result<Descriptor, String> {
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
        // A scalar function returns one row per input row; a transform at most one row
        // per byte it may return.
        let max_rows = if kind == Kind::Function {
            batch.num_rows()
        } else {
            self.max_output_bytes
        };
        decode_output(&mut self.decoder, Buffer::from(bytes), max_rows)
    }
}

/// A plugin's output as a batch of at most `max_rows` rows, or why it is not one. The
/// bytes are the guest's, so untrusted: arrow-ipc can panic on some malformed
/// flatbuffers, and that panic is this call's failure, not the pipeline's.
pub(crate) fn decode_output(
    decoder: &mut Decoder,
    buffer: Buffer,
    max_rows: usize,
) -> Result<RecordBatch, CallFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decoder.decode(buffer, max_rows)
    }))
    .unwrap_or_else(|_| Err(ArrowError::IpcError("the decoder panicked".into())))
    .map_err(|e| CallFailure::BadOutput(format!("the output is not an Arrow IPC stream: {e}")))
}

fn unpack(packed: i64) -> (u32, u32, bool) {
    let error = packed < 0;
    let bits = packed & i64::MAX;
    ((bits >> 32) as u32, bits as u32, error)
}

/// Turn a wasmtime error into the reason users see.
pub(super) fn classify(e: &wasmtime::Error, store: &Store<StoreState>) -> CallFailure {
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

pub(super) fn root_cause(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_results_carry_pointer_length_and_error_bit() {
        assert_eq!(unpack((1024 << 32) | 109), (1024, 109, false));
        assert_eq!(unpack(i64::MIN | (2048 << 32) | 26), (2048, 26, true));
    }
}
