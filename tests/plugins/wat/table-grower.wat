;; A handler that grows a table far past any limit: the host must fail it as
;; `resource-limit`. Written as a core module (Rust cannot grow a table); tests/build.rs
;; makes it a component of the `evhost:plugin/handler` world.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 0x1000))
  (table $table 1 funcref)

  ;; A bump allocator for the values the host passes in.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (block $room
      (br_if $room (i32.le_u (local.get $end) (i32.shl (memory.size) (i32.const 16))))
      (br_if $room
        (i32.ne
          (memory.grow
            (i32.add
              (i32.shr_u (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16))) (i32.const 16))
              (i32.const 1)))
          (i32.const -1)))
      unreachable)
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "evhost:plugin/event-handler@0.1.0#metadata") (result i32)
    (i32.const 0x500))

  (func (export "evhost:plugin/event-handler@0.1.0#handle") (param $event i32) (result i32)
    (drop (table.grow $table (ref.null func) (i32.const 10000000)))
    ;; result::ok
    (i32.const 0x600))

  (data (i32.const 0x100) "table-grower")
  (data (i32.const 0x200) "0.1.0")
  (data (i32.const 0x300) "Attack")
  ;; subscriptions: [(0x300, 6)]
  (data (i32.const 0x400) "\00\03\00\00\06\00\00\00")
  ;; metadata: name (0x100, 12), version (0x200, 5), subscriptions (0x400, 1)
  (data (i32.const 0x500) "\00\01\00\00\0c\00\00\00\00\02\00\00\05\00\00\00\00\04\00\00\01\00\00\00")
)
