//! The library quick start: native handlers on the async bus.
//!
//! Run with `cargo run -p evhost --example quickstart`.

use std::sync::Arc;

use evhost::bus::{Effects, from_fn};
use evhost::{AsyncEventBus, Event, EventBus, EventHandler, HandlerError};
use serde_json::json;

// ANCHOR: handler
/// Sends a welcome mail for every new user; a user without an email is rejected for good.
struct WelcomeMailer;

#[evhost::async_trait]
impl EventHandler for WelcomeMailer {
    fn name(&self) -> &str {
        "welcome-mailer"
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        let email = event
            .json_data()
            .and_then(|data| data["email"].as_str())
            .ok_or_else(|| HandlerError::reject("UserCreated without an email"))?;
        println!("welcome mail to {email}");
        Ok(Effects::none())
    }
}
// ANCHOR_END: handler

#[tokio::main]
async fn main() -> Result<(), evhost::BusError> {
    // ANCHOR: main
    let bus = AsyncEventBus::new();
    // Every failure (error, panic, timeout) is logged; use `bus.errors()` to consume them yourself.
    tracing_subscriber::fmt().init();
    bus.start_error_monitor();

    bus.subscribe("UserCreated", Arc::new(WelcomeMailer))?;
    bus.subscribe(
        "User*",
        from_fn("audit-log", |event| async move {
            println!("audit: {} {} (subject {:?})", event.ty, event.id, event.subject);
            Ok(())
        }),
    )?;
    bus.start().await?;

    let created = Event::new(
        "UserCreated",
        "users-service",
        json!({"id": "u1", "email": "ada@example.com"}),
    )
    .with_subject("u1");
    let renamed = Event::new(
        "UserProfileUpdated",
        "users-service",
        json!({"id": "u1", "name": "Ada"}),
    )
    .with_subject("u1")
    .caused_by(&created);
    // Same subject, so every subscription sees them in this order.
    bus.publish_batch(vec![created, renamed]).await?;
    // This one fails (no email) and reaches the error monitor.
    bus.publish(Event::new("UserCreated", "users-service", json!({"id": "u2"})))
        .await?;

    bus.wait().await;
    let report = bus.stop().await?;
    println!(
        "stopped: {} drained, {} abandoned",
        report.drained, report.abandoned
    );
    for subscription in bus.metrics().subscriptions {
        println!(
            "{}: {} handled, {} failed",
            subscription.name,
            subscription.succeeded,
            subscription.failed_total()
        );
    }
    // ANCHOR_END: main
    Ok(())
}
