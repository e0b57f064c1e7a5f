//! One plugin must never hurt the host or the other plugins.
//!
//! Each test runs the real `evhost run` with an adversarial plugin beside `healthy` (which
//! subscribes to everything and records `seen:{event id}`), starts the attack and, while it
//! runs, checks what a user relies on: the host's resident memory stays within 300 MB of
//! what it was before, `/healthz` answers within 100 ms, the healthy plugin handles every
//! event it shares with the attacker within a second, and the attacker's failure has the
//! right kind, a bounded message and no effect.
//!
//! These assertions are about time and memory, so this is a test binary of its own and its
//! tests run one at a time (`SERIAL`): other tests beside them on a two-core machine would
//! measure the machine rather than the host.

#[allow(dead_code, reason = "not every test uses every plugin")]
mod wasm {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

#[path = "../support/mod.rs"]
#[allow(dead_code, reason = "each test binary uses some of the helpers")]
mod support;

mod attacks;
mod siege;

/// One attack at a time: see the module documentation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
