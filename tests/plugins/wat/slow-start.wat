;; A component whose start function never returns: instantiating it must stop at the
;; deadline and be reported as a `timeout`. tests/build.rs makes it a component of the
;; `evhost:plugin/handler` world.
(module
  (memory (export "memory") 1)
  (start $spin)

  (func $spin
    (loop $forever (br $forever)))

  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (i32.const 0x1000))

  (func (export "evhost:plugin/event-handler@0.1.0#metadata") (result i32)
    (i32.const 0x500))

  (func (export "evhost:plugin/event-handler@0.1.0#handle") (param $event i32) (result i32)
    (i32.const 0x600))

  (data (i32.const 0x100) "slow-start")
  (data (i32.const 0x200) "0.1.0")
  (data (i32.const 0x300) "Attack")
  (data (i32.const 0x400) "\00\03\00\00\06\00\00\00")
  (data (i32.const 0x500) "\00\01\00\00\0a\00\00\00\00\02\00\00\05\00\00\00\00\04\00\00\01\00\00\00")
)
