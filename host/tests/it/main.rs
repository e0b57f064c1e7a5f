//! Integration tests of the evhost library, one module per area.

mod async_bus;
mod containment;
mod durable;
mod helpers;
mod memory_bus;
mod outbox;
mod retries;
