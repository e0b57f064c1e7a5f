//! Logging through the host (`wasi:logging`), which forwards to its own log with the plugin's
//! name attached.
//!
//! The macros format like `format!` and pass the calling module's path as the log context:
//!
//! ```no_run
//! use evhost_guest::log;
//!
//! let user_id = "u-1";
//! log::info!("projected user {user_id}");
//! log::warn!("user {} has no email", user_id);
//! log::error("plain functions take a finished message");
//! ```
//!
//! Available macros: `log::trace!`, `log::debug!`, `log::info!`, `log::warn!`, `log::error!`.

use crate::bindings::wasi::logging::logging as wit;

/// How severe a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Values of variables and the flow of control.
    Trace,
    /// Of interest to someone debugging the plugin.
    Debug,
    /// Of interest to someone operating the host.
    Info,
    /// A hazardous situation.
    Warn,
    /// A serious error.
    Error,
    /// A fatal error (the SDK logs panics at this level, with context `panic`).
    Critical,
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
            Level::Critical => Self::Critical,
        }
    }
}

/// Logs `message` at `level`. `context` groups related messages (the macros pass the module
/// path).
pub fn log(level: Level, context: &str, message: &str) {
    wit::log(level.into(), context, message);
}

/// Logs `message` at [`Level::Trace`] with an empty context.
pub fn trace(message: &str) {
    log(Level::Trace, "", message);
}

/// Logs `message` at [`Level::Debug`] with an empty context.
pub fn debug(message: &str) {
    log(Level::Debug, "", message);
}

/// Logs `message` at [`Level::Info`] with an empty context.
pub fn info(message: &str) {
    log(Level::Info, "", message);
}

/// Logs `message` at [`Level::Warn`] with an empty context.
pub fn warn(message: &str) {
    log(Level::Warn, "", message);
}

/// Logs `message` at [`Level::Error`] with an empty context.
pub fn error(message: &str) {
    log(Level::Error, "", message);
}

// `#[macro_export]` puts macros at the crate root; the `pub use`s below give them their
// documented home, `evhost_guest::log::info!` and friends, next to the functions of the
// same name (macros and functions live in different namespaces).

#[doc(hidden)]
#[macro_export]
macro_rules! __evhost_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::log(
            $crate::log::Level::$level,
            ::core::module_path!(),
            &::std::format!($($arg)+),
        )
    };
}

/// Logs a `format!`-style message at [`Level::Trace`](crate::log::Level::Trace).
#[doc(hidden)]
#[macro_export]
macro_rules! __evhost_log_trace {
    ($($arg:tt)+) => { $crate::__evhost_log!(Trace, $($arg)+) };
}

/// Logs a `format!`-style message at [`Level::Debug`](crate::log::Level::Debug).
#[doc(hidden)]
#[macro_export]
macro_rules! __evhost_log_debug {
    ($($arg:tt)+) => { $crate::__evhost_log!(Debug, $($arg)+) };
}

/// Logs a `format!`-style message at [`Level::Info`](crate::log::Level::Info).
#[doc(hidden)]
#[macro_export]
macro_rules! __evhost_log_info {
    ($($arg:tt)+) => { $crate::__evhost_log!(Info, $($arg)+) };
}

/// Logs a `format!`-style message at [`Level::Warn`](crate::log::Level::Warn).
#[doc(hidden)]
#[macro_export]
macro_rules! __evhost_log_warn {
    ($($arg:tt)+) => { $crate::__evhost_log!(Warn, $($arg)+) };
}

/// Logs a `format!`-style message at [`Level::Error`](crate::log::Level::Error).
#[doc(hidden)]
#[macro_export]
macro_rules! __evhost_log_error {
    ($($arg:tt)+) => { $crate::__evhost_log!(Error, $($arg)+) };
}

#[doc(inline)]
pub use crate::{
    __evhost_log_debug as debug, __evhost_log_error as error, __evhost_log_info as info,
    __evhost_log_trace as trace, __evhost_log_warn as warn,
};
