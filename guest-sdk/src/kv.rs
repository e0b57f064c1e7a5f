//! The plugin's own key-value store (`wasi:keyvalue/store`): read models, saga state,
//! idempotency markers.
//!
//! The free functions use the plugin's default store, which the host namespaces by plugin
//! name. Writes become visible to later reads in the same call at once, but are committed
//! only if the call succeeds: a failing or panicking handler leaves the store untouched.
//!
//! ```no_run
//! use evhost_guest::kv;
//!
//! # fn main() -> Result<(), kv::Error> {
//! kv::set_json("user:42", &evhost_guest::serde_json::json!({ "name": "Ada" }))?;
//! let user: Option<evhost_guest::serde_json::Value> = kv::get_json("user:42")?;
//! kv::delete("user:42")?;
//! # Ok(())
//! # }
//! ```

use std::any::type_name;
use std::cell::OnceCell;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::keyvalue::store as wit;
use crate::error::{EncodeError, HandlerError};

/// The identifier of the plugin's own store. The host also accepts `"default"`.
pub const DEFAULT_STORE: &str = "";

/// An open key-value store (a `wasi:keyvalue` bucket).
pub struct Store {
    identifier: String,
    bucket: wit::Bucket,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("identifier", &self.identifier)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store the host knows as `identifier`.
    pub fn open(identifier: &str) -> Result<Self, Error> {
        let bucket = wit::open(identifier).map_err(|error| Error::from_wit(error, identifier))?;
        Ok(Self {
            identifier: identifier.to_owned(),
            bucket,
        })
    }

    /// Opens the plugin's own store.
    pub fn open_default() -> Result<Self, Error> {
        Self::open(DEFAULT_STORE)
    }

    /// The bytes stored under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.bucket.get(key).map_err(|error| self.error(error))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.bucket.set(key, value).map_err(|error| self.error(error))
    }

    /// Removes `key`; removing an absent key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.bucket.delete(key).map_err(|error| self.error(error))
    }

    /// Whether `key` holds a value.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        self.bucket.exists(key).map_err(|error| self.error(error))
    }

    /// Every key in the store, fetched page by page. Can be expensive on a large store.
    pub fn list_keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.bucket.list_keys(cursor).map_err(|error| self.error(error))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The JSON value stored under `key`, decoded as `T`.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Decode {
                key: key.to_owned(),
                target: type_name::<T>(),
                source,
            })
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|source| {
            Error::Encode(EncodeError::new(format!("the value for key `{key}`"), source))
        })?;
        self.set(key, &bytes)
    }

    fn error(&self, error: wit::Error) -> Error {
        Error::from_wit(error, &self.identifier)
    }
}

thread_local! {
    // Every invocation runs in a fresh instance, so this lives for one event at most.
    static DEFAULT: OnceCell<Store> = const { OnceCell::new() };
}

/// Runs `f` with the plugin's default store, opening it on first use.
fn with_default<T>(f: impl FnOnce(&Store) -> Result<T, Error>) -> Result<T, Error> {
    DEFAULT.with(|cell| match cell.get() {
        Some(store) => f(store),
        None => {
            let store = Store::open_default()?;
            f(cell.get_or_init(|| store))
        }
    })
}

/// The bytes stored under `key` in the plugin's store, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    with_default(|store| store.get(key))
}

/// Stores `value` under `key` in the plugin's store.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    with_default(|store| store.set(key, value))
}

/// Removes `key` from the plugin's store; removing an absent key is not an error.
pub fn delete(key: &str) -> Result<(), Error> {
    with_default(|store| store.delete(key))
}

/// Whether `key` holds a value in the plugin's store.
pub fn exists(key: &str) -> Result<bool, Error> {
    with_default(|store| store.exists(key))
}

/// Every key in the plugin's store.
pub fn list_keys() -> Result<Vec<String>, Error> {
    with_default(Store::list_keys)
}

/// The JSON value stored under `key` in the plugin's store, decoded as `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    with_default(|store| store.get_json(key))
}

/// Stores `value` as JSON under `key` in the plugin's store.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    with_default(|store| store.set_json(key, value))
}

/// A key-value operation failed.
///
/// Converts into [`HandlerError::Retry`] when the host's storage failed and into
/// [`HandlerError::Reject`] when retrying cannot help (no such store, access denied, a value
/// that does not decode or encode).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The host has no store with this identifier.
    NoSuchStore {
        /// The identifier passed to [`Store::open`].
        identifier: String,
    },
    /// The plugin may not use this store.
    AccessDenied {
        /// The identifier passed to [`Store::open`].
        identifier: String,
    },
    /// The host's storage failed.
    Host(String),
    /// The stored value is not JSON of the requested type.
    Decode {
        /// The key read.
        key: String,
        /// The type it was decoded as.
        target: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The value could not be encoded as JSON.
    Encode(EncodeError),
}

impl Error {
    fn from_wit(error: wit::Error, identifier: &str) -> Self {
        match error {
            wit::Error::NoSuchStore => Self::NoSuchStore {
                identifier: identifier.to_owned(),
            },
            wit::Error::AccessDenied => Self::AccessDenied {
                identifier: identifier.to_owned(),
            },
            wit::Error::Other(message) => Self::Host(message),
        }
    }
}

/// How an identifier reads in a message: the default one has no name.
struct StoreName<'a>(&'a str);

impl fmt::Display for StoreName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            DEFAULT_STORE => f.write_str("the plugin's key-value store"),
            identifier => write!(f, "key-value store `{identifier}`"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchStore { identifier } => write!(f, "{} does not exist", StoreName(identifier)),
            Self::AccessDenied { identifier } => write!(f, "access to {} denied", StoreName(identifier)),
            Self::Host(message) => write!(f, "key-value store failed: {message}"),
            Self::Decode { key, target, source } => {
                write!(
                    f,
                    "the value at key `{key}` does not decode as `{target}`: {source}"
                )
            }
            Self::Encode(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Decode { source, .. } => Some(source),
            Self::Encode(error) => Some(error),
            Self::NoSuchStore { .. } | Self::AccessDenied { .. } | Self::Host(_) => None,
        }
    }
}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        match error {
            Error::Host(_) => Self::Retry(error.to_string()),
            _ => Self::Reject(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_well_and_pick_the_right_kind() {
        let missing = Error::from_wit(wit::Error::NoSuchStore, DEFAULT_STORE);
        assert_eq!(missing.to_string(), "the plugin's key-value store does not exist");
        assert!(!HandlerError::from(missing).is_retry());

        let denied = Error::from_wit(wit::Error::AccessDenied, "shared");
        assert_eq!(denied.to_string(), "access to key-value store `shared` denied");

        let host = Error::from_wit(wit::Error::Other("disk full".into()), DEFAULT_STORE);
        assert_eq!(
            HandlerError::from(host),
            HandlerError::retry("key-value store failed: disk full")
        );
    }
}
