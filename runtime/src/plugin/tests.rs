//! The host against the hostile modules in plugins/hostile/wat: every failure is
//! contained, classified and counted, and a plugin that keeps failing is marked failed.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;

use super::*;
use crate::config::PluginConfig;

fn wat(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../plugins/hostile/wat/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn plugins() -> Plugins {
    let config = PluginConfig {
        memory_limit_bytes: 16 << 20,
        time_limit: Duration::from_millis(200),
        max_consecutive_failures: 2,
        ..PluginConfig::default()
    };
    Plugins::open(PluginHost::new(config, None).expect("host"), None).expect("plugins")
}

fn numbers() -> RecordBatch {
    RecordBatch::try_from_iter([("arg0", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)])
        .expect("batch")
}

fn failure(plugins: &Plugins, module: &str, function: &str) -> String {
    let entry = plugins.install(module, &wat(module)).expect("installs");
    let err = entry
        .call_function(function, numbers(), &DataType::Int64)
        .expect_err("must fail");
    assert_eq!(err.plugin, module);
    assert_eq!(err.version, 1);
    err.to_string()
}

#[test]
fn each_hostile_module_costs_only_its_call() {
    let plugins = plugins();
    let cases = [
        ("infinite_loop", "spin", "time limit exceeded"),
        ("memory_bomb", "bomb", "memory limit exceeded"),
        ("deep_recursion", "recurse", "stack overflow"),
        ("immediate_trap", "crash", "unreachable code"),
        ("garbage_output", "garbage", "not an Arrow IPC stream"),
        ("wild_pointer", "wild", "outside the plugin's memory"),
    ];
    for (module, function, reason) in cases {
        let message = failure(&plugins, module, function);
        assert!(
            message.starts_with(&format!("plugin {module} v1: ")) && message.contains(reason),
            "{module}: {message}"
        );
    }
}

#[test]
fn refuses_modules_it_cannot_trust() {
    let plugins = plugins();
    let e = plugins
        .check(b"This is a text file")
        .expect_err("not wasm")
        .to_string();
    assert!(e.contains("not a WebAssembly module"), "{e}");
    let e = plugins
        .check(&wat("wasi_file"))
        .expect_err("wasi")
        .to_string();
    assert!(
        e.contains("wasi_snapshot_preview1::path_open") && e.contains("does not grant"),
        "{e}"
    );
    let e = plugins
        .check(b"\0asm\x01\0\0\0\x99")
        .expect_err("corrupt")
        .to_string();
    assert!(e.contains("not a valid WebAssembly module"), "{e}");
    let no_abi = wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("wat");
    let e = plugins.check(&no_abi).expect_err("no abi").to_string();
    assert!(e.contains("does not export weir_abi_version"), "{e}");
}

#[test]
fn repeated_failures_mark_the_plugin_failed_until_a_new_upload() {
    let plugins = plugins();
    let entry = plugins
        .install("crashy", &wat("immediate_trap"))
        .expect("installs");
    for _ in 0..2 {
        let _ = entry.call_function("crash", numbers(), &DataType::Int64);
    }
    let reason = entry.failed().expect("marked failed");
    assert!(reason.contains("2 failures in a row"), "{reason}");
    let err = entry
        .call_function("crash", numbers(), &DataType::Int64)
        .expect_err("refused while failed");
    assert!(err.reason.contains("marked failed"), "{err}");
    assert_eq!(entry.status(vec![]).failures, 2, "refusals are not calls");
    // A new version clears the failure.
    plugins
        .install("crashy", &wat("garbage_output"))
        .expect("installs");
    assert!(entry.failed().is_none());
    assert_eq!(entry.current().version, 2);
}

#[test]
fn wasip1_imports_get_stubs_and_nothing_more() {
    // Writes "hello" to stdout (the plugin log), reads an empty environment and random
    // bytes, then exits with code 3: a trap that names the code.
    let source = std::fs::read_to_string(format!(
        "{}/../plugins/hostile/wat/immediate_trap.wat",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("wat");
    let source = source
        .replace(
            "(module\n",
            r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
"#,
        )
        .replace(
            "    (unreachable))\n)",
            r#"    (i32.store (i32.const 512) (i32.const 600))
    (i32.store (i32.const 516) (i32.const 5))
    (i32.store8 (i32.const 600) (i32.const 104))
    (i32.store8 (i32.const 601) (i32.const 101))
    (i32.store8 (i32.const 602) (i32.const 108))
    (i32.store8 (i32.const 603) (i32.const 108))
    (i32.store8 (i32.const 604) (i32.const 111))
    (if (i32.ne (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 520)) (i32.const 0)) (then (unreachable)))
    (if (i32.ne (i32.load (i32.const 520)) (i32.const 5)) (then (unreachable)))
    (if (i32.ne (call $fd_write (i32.const 3) (i32.const 512) (i32.const 1) (i32.const 520)) (i32.const 8)) (then (unreachable)))
    (i32.store (i32.const 524) (i32.const 7))
    (if (i32.ne (call $env (i32.const 524) (i32.const 528)) (i32.const 0)) (then (unreachable)))
    (if (i32.ne (i32.load (i32.const 524)) (i32.const 0)) (then (unreachable)))
    (if (i32.ne (call $random (i32.const 700) (i32.const 16)) (i32.const 0)) (then (unreachable)))
    (if (i32.ne (call $random (i32.const 700) (i32.const 0x7fffffff)) (i32.const 21)) (then (unreachable)))
    (call $exit (i32.const 3))
    (unreachable))
)"#,
        );
    let plugins = plugins();
    let entry = plugins
        .install("wasi", &wat::parse_str(&source).expect("valid wat"))
        .expect("the granted WASI imports are linked");
    let err = entry
        .call_function("crash", numbers(), &DataType::Int64)
        .expect_err("exits");
    assert!(err.reason.contains("proc_exit(3)"), "{err}");
}

/// A transform that answers its input unchanged: the IPC bytes it was given.
fn echo_transform() -> Vec<u8> {
    let descriptor = r#"{"abi":1,"name":"echo","version":"1","functions":[],"transforms":[{"name":"echo","output":"same_as_input"}]}"#;
    let source = format!(
        r#"(module
  (memory (export "memory") 2)
  (data (i32.const 1024) "{data}")
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $n i32) (result i32)
    (local $need i32)
    (local.set $need (i32.sub (i32.shr_u (i32.add (i32.add (local.get $n) (i32.const 65536)) (i32.const 65535)) (i32.const 16)) (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.lt_s (memory.grow (local.get $need)) (i32.const 0)) (then (return (i32.const 0))))))
    (i32.const 65536))
  (func (export "weir_describe") (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const {len})))
  (func (export "weir_call") (param i32 i32 i32 i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get 2)) (i64.const 32)) (i64.extend_i32_u (local.get 3))))
)"#,
        data = descriptor.replace('"', "\\\""),
        len = descriptor.len()
    );
    wat::parse_str(&source).expect("valid wat")
}

#[test]
fn a_stream_transform_runs_once_per_batch_however_many_views_read_it() {
    let plugins = plugins();
    let entry = plugins
        .install("echo", &echo_transform())
        .expect("installs");
    let shared = transform::StreamTransform::new(entry.clone(), "echo".into());
    let batch = numbers();
    for _view in 0..3 {
        assert_eq!(shared.apply(&batch).expect("echoes"), batch);
    }
    assert_eq!(
        entry.status(Vec::new()).calls,
        1,
        "one call for three views"
    );
    // Equal values in other arrays are another batch.
    assert_eq!(shared.apply(&numbers()).expect("echoes"), batch);
    assert_eq!(entry.status(Vec::new()).calls, 2);
    // A new version of the plugin transforms the same batch again.
    plugins
        .install("echo", &echo_transform())
        .expect("version 2");
    assert_eq!(shared.apply(&batch).expect("echoes"), batch);
    assert_eq!(entry.status(Vec::new()).calls, 3);
}
