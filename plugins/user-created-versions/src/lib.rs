//! # user-created-versions
//!
//! Shows how a handler copes with an event whose payload changed shape: it reads both
//! versions of `UserCreated`, upcasts the old one to the new one, and works with the new one
//! only.
//!
//! ```text
//! v1: { "id", "name", "email" }                       e.g. "name": "Ada King Lovelace"
//! v2: { "id", "first_name", "last_name", "email" }    "first_name": "Ada", "last_name": "King Lovelace"
//! ```
//!
//! **Subscribes to** `UserCreated`.
//!
//! **Versions** are told apart by the event's `dataschema`, whose last path segment names the
//! version (`https://schemas.example.com/user-created/v2`, also `…/v2.json`), or else by a
//! `version` field in the data (`2`, `"2"` or `"v2"`). If both are present they must agree.
//! An event with neither is v1: the events published before anyone versioned them.
//! Upcasting splits `name` at its first space (`"Plato"` → first name `Plato`, empty last
//! name).
//!
//! **Stores** `user:{id}` → the v2 form as JSON, `{ "id", "first_name", "last_name", "email" }`.
//! A redelivery writes the same value again, so handling is idempotent. **Emits** nothing.
//!
//! **Fails** with `reject` for an unknown version (the reason names it), a payload that does
//! not decode as its version, or a `subject` that names another user; with `retry` when the
//! store fails.

use evhost_guest::serde::{Deserialize, Serialize};
use evhost_guest::serde_json::Value;
use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv, log};

// ANCHOR: handler
/// The plugin.
struct UserCreatedVersions;

impl Handler for UserCreatedVersions {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("UserCreated")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let (version, user) = decode(&event)?;
        kv::set_json(&format!("user:{}", user.id), &user)?;
        log::debug!("stored user {} from a {version} UserCreated", user.id);
        Ok(())
    }
}

export_handler!(UserCreatedVersions);
// ANCHOR_END: handler

/// `UserCreated` v1 data.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct UserCreatedV1 {
    id: String,
    name: String,
    email: String,
}

/// `UserCreated` v2 data, and what the plugin stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
pub struct UserCreatedV2 {
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

/// The payload versions this plugin reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// Just the `version` field of the data, if any.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct VersionField {
    version: Option<Value>,
}

/// Decodes a `UserCreated` of any supported version into the v2 form.
fn decode(event: &Event) -> Result<(Version, UserCreatedV2), HandlerError> {
    let version = version(event)?;
    let user = match version {
        Version::V1 => upcast(event.data_json()?),
        Version::V2 => event.data_json()?,
    };
    if let Some(subject) = event.subject()
        && subject != user.id
    {
        return Err(HandlerError::reject(format!(
            "UserCreated event `{}`: subject `{subject}` and data.id `{}` name different users",
            event.id(),
            user.id
        )));
    }
    Ok((version, user))
}

/// v1 → v2: the single `name` becomes first and last name.
fn upcast(v1: UserCreatedV1) -> UserCreatedV2 {
    let name = v1.name.trim();
    let (first_name, last_name) = match name.split_once(char::is_whitespace) {
        Some((first, rest)) => (first, rest.trim_start()),
        None => (name, ""),
    };
    UserCreatedV2 {
        id: v1.id,
        first_name: first_name.to_owned(),
        last_name: last_name.to_owned(),
        email: v1.email,
    }
}

/// Which version `event` carries, from its `dataschema` or its data's `version` field.
fn version(event: &Event) -> Result<Version, HandlerError> {
    let from_schema = event.dataschema().and_then(schema_version);
    let from_data = match event.data() {
        Some(_) => event
            .data_json::<VersionField>()?
            .version
            .map(|v| data_version(&v)),
        None => None,
    };
    let label = match (from_schema, from_data) {
        (Some(schema), Some(data)) if schema != data => {
            return Err(HandlerError::reject(format!(
                "UserCreated event `{}`: dataschema says version `{schema}` but data.version says `{data}`",
                event.id()
            )));
        }
        (Some(label), _) | (None, Some(label)) => label,
        (None, None) => return Ok(Version::V1),
    };
    match label.as_str() {
        "v1" => Ok(Version::V1),
        "v2" => Ok(Version::V2),
        _ => Err(HandlerError::reject(format!(
            "UserCreated event `{}` has version `{label}`, which this plugin does not know \
             (it reads v1 and v2)",
            event.id()
        ))),
    }
}

/// `https://…/user-created/v2` or `…/v2.json` → `v2`; `None` if the last path segment is not
/// a version.
fn schema_version(dataschema: &str) -> Option<String> {
    let segment = dataschema.trim_end_matches('/').rsplit('/').next()?;
    let segment = segment
        .strip_suffix(".json")
        .unwrap_or(segment)
        .to_ascii_lowercase();
    let digits = segment.strip_prefix('v')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(segment)
}

/// A `version` field as a label: `2`, `"2"` and `"v2"` all read `v2`; anything else reads as
/// itself, so the rejection can quote it.
fn data_version(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.trim().to_ascii_lowercase(),
        other => other.to_string(),
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        format!("v{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use evhost_guest::serde_json::json;

    use super::*;

    fn user_created(data: Value) -> Event {
        Event::new("e1", "users-service", "UserCreated")
            .with_json(&data)
            .unwrap()
    }

    fn v1() -> Value {
        json!({ "id": "u1", "name": "Ada King Lovelace", "email": "ada@example.com" })
    }

    fn v2() -> Value {
        json!({ "id": "u1", "first_name": "Ada", "last_name": "King Lovelace", "email": "ada@example.com" })
    }

    fn ada() -> UserCreatedV2 {
        UserCreatedV2 {
            id: "u1".into(),
            first_name: "Ada".into(),
            last_name: "King Lovelace".into(),
            email: "ada@example.com".into(),
        }
    }

    #[test]
    fn v1_is_upcast_to_v2() {
        let event = user_created(v1()).with_dataschema("https://schemas.example.com/user-created/v1");
        assert_eq!(decode(&event).unwrap(), (Version::V1, ada()));
    }

    #[test]
    fn v2_is_taken_as_is() {
        let event = user_created(v2()).with_dataschema("https://schemas.example.com/user-created/v2.json");
        assert_eq!(decode(&event).unwrap(), (Version::V2, ada()));
    }

    #[test]
    fn the_version_field_works_without_a_schema() {
        for version in [json!(2), json!("2"), json!("v2"), json!("V2")] {
            let mut data = v2();
            data["version"] = version.clone();
            assert_eq!(decode(&user_created(data)).unwrap().0, Version::V2, "{version}");
        }
        let mut data = v1();
        data["version"] = json!(1);
        assert_eq!(decode(&user_created(data)).unwrap(), (Version::V1, ada()));
    }

    #[test]
    fn unversioned_events_are_v1() {
        assert_eq!(decode(&user_created(v1())).unwrap(), (Version::V1, ada()));
        // A schema URI without a version segment says nothing about the version.
        let event = user_created(v1()).with_dataschema("https://schemas.example.com/user-created");
        assert_eq!(decode(&event).unwrap().0, Version::V1);
    }

    #[test]
    fn unknown_versions_are_rejected_by_name() {
        let event = user_created(v2()).with_dataschema("https://schemas.example.com/user-created/v3");
        let error = decode(&event).unwrap_err();
        assert!(!error.is_retry());
        assert!(error.reason().contains("version `v3`"), "{error}");

        let mut data = v2();
        data["version"] = json!("beta");
        assert!(
            decode(&user_created(data))
                .unwrap_err()
                .reason()
                .contains("version `beta`")
        );
    }

    #[test]
    fn conflicting_versions_are_rejected() {
        let mut data = v2();
        data["version"] = json!(2);
        let event = user_created(data).with_dataschema("https://schemas.example.com/user-created/v1");
        let error = decode(&event).unwrap_err();
        assert!(
            error
                .reason()
                .contains("dataschema says version `v1` but data.version says `v2`"),
            "{error}"
        );
    }

    #[test]
    fn a_payload_that_does_not_match_its_version_is_rejected() {
        let event = user_created(v1()).with_dataschema("https://schemas.example.com/user-created/v2");
        let error = decode(&event).unwrap_err();
        assert!(!error.is_retry());
        assert!(error.reason().contains("missing field `first_name`"), "{error}");
    }

    #[test]
    fn the_subject_must_name_the_same_user() {
        let event = user_created(v1()).with_subject("u2");
        assert!(decode(&event).unwrap_err().reason().contains("subject `u2`"));
    }

    #[test]
    fn names_split_at_the_first_space() {
        let split = |name: &str| {
            let v2 = upcast(UserCreatedV1 {
                id: "u".into(),
                name: name.into(),
                email: "e".into(),
            });
            (v2.first_name, v2.last_name)
        };
        assert_eq!(split("Ada Lovelace"), ("Ada".into(), "Lovelace".into()));
        assert_eq!(
            split("Ludwig van Beethoven"),
            ("Ludwig".into(), "van Beethoven".into())
        );
        assert_eq!(split("  Plato "), ("Plato".into(), String::new()));
    }
}
