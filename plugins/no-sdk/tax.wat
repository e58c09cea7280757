;; A weir plugin written by hand in WebAssembly text, without weir-sdk: proof that
;; docs/PLUGIN_ABI.md is enough to write a plugin in any language.
;;
;; It exports one scalar function, with_tax(Int64) -> Int64 = price + price / 5 (20%
;; tax, integer arithmetic). Because the result has the argument's type and length, it
;; works in place: it finds the values buffer of the input's record batch by reading
;; the Arrow IPC flatbuffers, rewrites the values, and hands the same bytes back as
;; the output stream (the schema, validity bitmap and row count stay valid).
(module
  (import "weir" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "{\"abi\":1,\"name\":\"tax\",\"version\":\"1.0.0\",\"functions\":[{\"name\":\"with_tax\",\"args\":[\"Int64\"],\"returns\":\"Int64\"}]}")
  (data (i32.const 2048) "with_tax: unexpected input")

  (func (export "weir_abi_version") (result i32) (i32.const 1))

  ;; Inputs live at 64 KiB; memory grows to fit. One call at a time, so one buffer.
  (func (export "weir_alloc") (param $n i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (local.get $n) (i32.const 65536)) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.lt_s (memory.grow (local.get $need)) (i32.const 0)) (then (return (i32.const 0))))))
    (i32.const 65536))

  (func (export "weir_free") (param i32 i32))

  ;; ptr << 32 | len of the descriptor.
  (func (export "weir_describe") (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 109)))

  ;; Flatbuffers: the absolute position of field $i of the table at $table, or 0.
  (func $field (param $table i32) (param $i i32) (result i32)
    (local $vtable i32) (local $slot i32) (local $at i32)
    (local.set $vtable (i32.sub (local.get $table) (i32.load (local.get $table))))
    (local.set $slot (i32.add (i32.const 4) (i32.shl (local.get $i) (i32.const 1))))
    (if (i32.ge_u (local.get $slot) (i32.load16_u (local.get $vtable))) (then (return (i32.const 0))))
    (local.set $at (i32.load16_u (i32.add (local.get $vtable) (local.get $slot))))
    (if (i32.eqz (local.get $at)) (then (return (i32.const 0))))
    (i32.add (local.get $table) (local.get $at)))

  ;; Follow the offset stored at $pos.
  (func $deref (param $pos i32) (result i32)
    (i32.add (local.get $pos) (i32.load (local.get $pos))))

  ;; Skip an encapsulated message's prefix (continuation marker and length) at $p; the
  ;; position of its flatbuffer, with its length stored at 0x100 for the caller.
  (func $message (param $p i32) (result i32)
    (if (i32.eq (i32.load (local.get $p)) (i32.const -1))
      (then (local.set $p (i32.add (local.get $p) (i32.const 4)))))
    (i32.store (i32.const 0x100) (i32.load (local.get $p)))
    (i32.add (local.get $p) (i32.const 4)))

  (func $fail (result i64)
    (call $log (i32.const 0) (i32.const 2048) (i32.const 26))
    ;; Error bit | ptr << 32 | len.
    (i64.or (i64.const 0x8000000000000000)
      (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 26))))

  (func (export "weir_call") (param $kind i32) (param $index i32) (param $ptr i32) (param $len i32) (result i64)
    (local $msg i32) (local $body i32) (local $batch i32) (local $buffers i32)
    (local $values i32) (local $rows i64) (local $end i32) (local $v i64)
    (if (i32.or (local.get $kind) (local.get $index)) (then (return (call $fail))))
    ;; Message 1: the schema. Skip it (its body is empty).
    (local.set $msg (call $message (local.get $ptr)))
    (local.set $msg (i32.add (local.get $msg) (i32.load (i32.const 0x100))))
    ;; Message 2: the record batch; its body follows the flatbuffer.
    (local.set $msg (call $message (local.get $msg)))
    (local.set $body (i32.add (local.get $msg) (i32.load (i32.const 0x100))))
    ;; Message.header (field 2) is the RecordBatch table.
    (local.set $batch (call $deref (call $field (call $deref (local.get $msg)) (i32.const 2))))
    ;; RecordBatch.length (field 0) and RecordBatch.buffers (field 2): [validity, values].
    (local.set $rows (i64.load (call $field (local.get $batch) (i32.const 0))))
    (local.set $buffers (call $deref (call $field (local.get $batch) (i32.const 2))))
    (if (i32.lt_u (i32.load (local.get $buffers)) (i32.const 2)) (then (return (call $fail))))
    ;; Buffer structs are {offset: i64, length: i64} after the vector's length.
    (local.set $values
      (i32.add (local.get $body) (i32.wrap_i64 (i64.load (i32.add (local.get $buffers) (i32.const 20))))))
    (local.set $end (i32.add (local.get $values) (i32.wrap_i64 (i64.mul (local.get $rows) (i64.const 8)))))
    (if (i32.gt_u (local.get $end) (i32.add (local.get $ptr) (local.get $len))) (then (return (call $fail))))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $values) (local.get $end)))
        (local.set $v (i64.load (local.get $values)))
        (i64.store (local.get $values) (i64.add (local.get $v) (i64.div_s (local.get $v) (i64.const 5))))
        (local.set $values (i32.add (local.get $values) (i32.const 8)))
        (br $each)))
    ;; The same bytes are now the output stream.
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
)
