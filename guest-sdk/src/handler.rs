//! What a plugin implements, and the glue that exports it as the `event-handler` interface.

use std::marker::PhantomData;
use std::sync::Once;

use crate::bindings::evhost::plugin::types as wit;
use crate::bindings::exports::evhost::plugin::event_handler::Guest;
use crate::error::HandlerError;
use crate::event::Event;
use crate::log::{self, Level};

/// An event handler: what a plugin implements. Export it with
/// [`export_handler!`](crate::export_handler).
///
/// Both functions are associated functions, not methods, because the host gives every call
/// a fresh instance: there is no `self` that would outlive an event.
pub trait Handler {
    /// The plugin's name, version and subscriptions. Called once when the plugin loads.
    fn metadata() -> Metadata;

    /// Handles one event. `Ok` commits everything the call did (key-value writes, published
    /// events); an `Err` or a panic discards it all.
    fn handle(event: Event) -> Result<(), HandlerError>;
}

/// What a plugin says about itself.
///
/// ```
/// # use evhost_guest::Metadata;
/// let metadata = Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
///     .subscribe("UserCreated")
///     .subscribe("Payment*");
/// assert_eq!(metadata.subscriptions, ["UserCreated", "Payment*"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The plugin's name, e.g. `user-projection`; the host keys logs and the key-value
    /// store by it.
    pub name: String,
    /// The plugin author's version, e.g. `1.2.0`.
    pub version: String,
    /// Event-type patterns: an exact type (`UserCreated`), a prefix (`User*`) or `*`.
    /// A manifest next to the `.wasm` file may override them.
    pub subscriptions: Vec<String>,
}

impl Metadata {
    /// Metadata with no subscriptions yet; add them with [`subscribe`](Self::subscribe).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            subscriptions: Vec::new(),
        }
    }

    /// Adds an event-type pattern.
    pub fn subscribe(mut self, pattern: impl Into<String>) -> Self {
        self.subscriptions.push(pattern.into());
        self
    }
}

impl From<Metadata> for wit::Metadata {
    fn from(metadata: Metadata) -> Self {
        Self {
            name: metadata.name,
            version: metadata.version,
            subscriptions: metadata.subscriptions,
        }
    }
}

/// Exports a [`Handler`] as the plugin's `evhost:plugin/event-handler` interface.
///
/// Invoke it once, at the top level of the plugin crate:
///
/// ```
/// # use evhost_guest::{Event, Handler, HandlerError, Metadata};
/// struct MyPlugin;
///
/// impl Handler for MyPlugin {
///     fn metadata() -> Metadata {
///         Metadata::new("my-plugin", "0.1.0").subscribe("*")
///     }
///     fn handle(_event: Event) -> Result<(), HandlerError> {
///         Ok(())
///     }
/// }
///
/// evhost_guest::export_handler!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            // wit-bindgen's export macro takes an identifier, so name the adapter type.
            type EvhostGuestExport = $crate::__private::Adapter<$handler>;
            $crate::bindings::__export_handler_world!(
                EvhostGuestExport with_types_in $crate::bindings
            );
        };
    };
}

/// Implements the generated `Guest` trait for any [`Handler`], converting between the SDK's
/// types and the generated ones.
#[doc(hidden)]
#[derive(Debug)]
pub struct Adapter<H>(PhantomData<H>);

impl<H: Handler> Guest for Adapter<H> {
    fn metadata() -> wit::Metadata {
        log_panics();
        H::metadata().into()
    }

    fn handle(event: wit::Event) -> Result<(), wit::HandlerError> {
        log_panics();
        H::handle(event.into()).map_err(Into::into)
    }
}

/// A panic traps the instance; before it does, send the message to the host's log so the
/// failure report says more than "unreachable executed".
fn log_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log::log(Level::Critical, "panic", &info.to_string())
        }));
    });
}
