//! The raw ABI on wasm32 (docs/PLUGIN_ABI.md). The [`crate::export!`] macro forwards the
//! module's exports here.
//!
//! Memory: the host asks `weir_alloc` for the input buffer, writes the Arrow IPC
//! stream into it and hands it over with `weir_call`; the guest frees it. The output
//! (or error message) stays owned by the guest until the next `weir_call`.

// Raw pointers from the host are the ABI; the checks are on the lengths.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc as raw_alloc, dealloc};
use std::cell::RefCell;

use crate::{Kind, Plugin, describe_json};

thread_local! {
    /// The last output or error message, kept alive until the next call.
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static PLUGIN: RefCell<Option<Plugin>> = const { RefCell::new(None) };
}

#[link(wasm_import_module = "weir")]
unsafe extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: i32, len: i32);
}

pub fn log(message: &str) {
    // SAFETY: the host reads `len` bytes at `ptr` from our memory, nothing else.
    unsafe { host_log(2, message.as_ptr() as i32, message.len() as i32) }
}

/// Input buffers are byte vectors the host fills; `weir_call` takes them over as an
/// Arrow `Buffer` without copying.
pub fn alloc(size: i32) -> i32 {
    let Ok(layout) = Layout::array::<u8>(size.max(1) as usize) else {
        return 0;
    };
    // SAFETY: the layout has a non-zero size.
    unsafe { raw_alloc(layout) as i32 }
}

pub fn free(ptr: i32, size: i32) {
    if ptr == 0 {
        return;
    }
    if let Ok(layout) = Layout::array::<u8>(size.max(1) as usize) {
        // SAFETY: `ptr` came from `alloc` with this size (the ABI's contract).
        unsafe { dealloc(ptr as *mut u8, layout) }
    }
}

fn with_plugin<R>(build: fn() -> Plugin, f: impl FnOnce(&Plugin) -> R) -> R {
    PLUGIN.with(|p| {
        let mut p = p.borrow_mut();
        f(p.get_or_insert_with(build))
    })
}

/// Keep `bytes` as the current output and pack its place: `ptr << 32 | len`; an error
/// sets the top bit.
fn hand_out(bytes: Vec<u8>, error: bool) -> i64 {
    OUTPUT.with(|o| {
        let mut o = o.borrow_mut();
        *o = bytes;
        let packed = ((o.as_ptr() as u32 as i64) << 32) | o.len() as u32 as i64;
        if error { packed | i64::MIN } else { packed }
    })
}

pub fn describe(build: fn() -> Plugin) -> i64 {
    let json = with_plugin(build, describe_json);
    hand_out(json.into_bytes(), false)
}

pub fn call(build: fn() -> Plugin, kind: i32, index: i32, ptr: i32, len: i32) -> i64 {
    OUTPUT.with(|o| *o.borrow_mut() = Vec::new());
    let kind = match kind {
        0 => Kind::Function,
        1 => Kind::Transform,
        other => return hand_out(format!("unknown call kind {other}").into_bytes(), true),
    };
    if ptr == 0 || len < 0 {
        return hand_out(b"no input buffer".to_vec(), true);
    }
    // SAFETY: the host wrote `len` bytes at `ptr`, which `alloc(len)` allocated with the
    // layout of a `Vec<u8>` of capacity `len.max(1)`; the call hands it over to us.
    let input = unsafe { Vec::from_raw_parts(ptr as *mut u8, len as usize, len.max(1) as usize) };
    let input = arrow_buffer::Buffer::from_vec(input);
    let result = with_plugin(build, |p| p.call_buffer(kind, index as usize, input));
    match result {
        Ok(bytes) => hand_out(bytes, false),
        Err(e) => hand_out(e.0.into_bytes(), true),
    }
}
