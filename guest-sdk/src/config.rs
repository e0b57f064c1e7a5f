//! The plugin's configuration values (`wasi:config/store`), which the host takes from the
//! `[config]` table of the plugin's manifest.
//!
//! ```no_run
//! let endpoint = evhost_guest::config::get("endpoint").unwrap_or_else(|| "https://example.invalid".into());
//! ```

use std::fmt;

use crate::bindings::wasi::config::store as wit;
use crate::error::HandlerError;

/// The value of `key`, or `None` if it is not set.
///
/// A host failure also reads as `None` (and is logged as a warning); use [`try_get`] to tell
/// the two apart.
pub fn get(key: &str) -> Option<String> {
    try_get(key).unwrap_or_else(|error| {
        crate::log::log(
            crate::log::Level::Warn,
            "evhost_guest::config",
            &format!("reading `{key}`: {error}"),
        );
        None
    })
}

/// The value of `key`: `Ok(None)` if it is not set, `Err` if the host failed to answer.
pub fn try_get(key: &str) -> Result<Option<String>, Error> {
    wit::get(key).map_err(Error::from)
}

/// Every configuration key and value.
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    wit::get_all().map_err(Error::from)
}

/// The host could not read the configuration.
///
/// Converts into [`HandlerError::Retry`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The configuration source failed.
    Upstream(String),
    /// An I/O error.
    Io(String),
}

impl From<wit::Error> for Error {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Upstream(message) => Self::Upstream(message),
            wit::Error::Io(message) => Self::Io(message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upstream(message) => write!(f, "configuration source failed: {message}"),
            Self::Io(message) => write!(f, "configuration I/O failed: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        Self::Retry(error.to_string())
    }
}
