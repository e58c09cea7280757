;; Hostile plugin wasi_file: Imports WASI file functions: refused at upload, never run.
(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "{\"abi\":1,\"name\":\"wasi_file\",\"version\":\"1\",\"functions\":[{\"name\":\"peek\",\"args\":[\"Int64\"],\"returns\":\"Int64\"}]}")
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  ;; One input buffer at 64 KiB, grown as needed; nothing is ever freed.
  (func (export "weir_alloc") (param $n i32) (result i32)
    (local $need i32)
    (local.set $need (i32.sub (i32.shr_u (i32.add (i32.add (local.get $n) (i32.const 65536)) (i32.const 65535)) (i32.const 16)) (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.lt_s (memory.grow (local.get $need)) (i32.const 0)) (then (return (i32.const 0))))))
    (i32.const 65536))
  (func (export "weir_free") (param i32 i32))
  ;; The descriptor: pointer 1024 in the high half, its length in the low half.
  (func (export "weir_describe") (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 107)))
  (func (export "weir_call") (param i32 i32 i32 i32) (result i64)
    (unreachable))
)
