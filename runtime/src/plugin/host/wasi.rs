//! WASI stubs: what a Rust wasm32-wasip1 library imports, answered without granting
//! anything. Every other import is refused when the module is compiled.

use wasmtime::{Caller, Linker};

use super::{MAX_MESSAGE, StoreState, read_guest};

pub(super) const WASI: &str = "wasi_snapshot_preview1";
/// What a Rust wasm32-wasip1 library imports, answered without granting anything: no
/// environment, output to the plugin log, a fixed pseudo-random sequence, exit as a trap.
pub(super) const WASI_GRANTED: [&str; 5] = [
    "environ_get",
    "environ_sizes_get",
    "fd_write",
    "proc_exit",
    "random_get",
];
const WASI_OK: i32 = 0;
const WASI_EBADF: i32 = 8;
const WASI_EFAULT: i32 = 21;

pub(super) fn wasi_stubs(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
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
