//! # user-projection
//!
//! Keeps a read model of users in the plugin's key-value store, so that other parts of the
//! system (or `GET` on the host's key-value endpoint) can look a user up without replaying
//! their events.
//!
//! **Subscribes to** `UserCreated`, `UserProfileUpdated`, `UserContactUpdated`, `UserDeleted`.
//! The user id is the event's `subject`, or `data.id` when there is no subject (if both are
//! present they must agree).
//!
//! **Payloads** (JSON):
//!
//! | type                 | data                                                      |
//! |----------------------|-----------------------------------------------------------|
//! | `UserCreated`        | `{ "id", "name", "email", "phone"?, "address"? }`         |
//! | `UserProfileUpdated` | `{ "name"?, "address"? }`, at least one of them           |
//! | `UserContactUpdated` | `{ "email"?, "phone"? }`, at least one of them            |
//! | `UserDeleted`        | nothing, or `{ "id" }`                                    |
//!
//! An `address` is `{ "street"?, "city"?, "postal_code"?, "country"? }`. In an update, an
//! absent field is left alone and `"phone": null` / `"address": null` clears the value.
//!
//! **Stores** `user:{id}` → the [`User`] as JSON:
//! `{ "id", "name", "email", "phone", "address", "version", "last_event_id", "updated_at" }`.
//! `UserDeleted` removes the key. **Emits** nothing.
//!
//! **Idempotent**: each user remembers the id of the last event applied to it, so a
//! redelivered event changes nothing (not even `version`); updates overwrite fields rather
//! than accumulate, and deleting an absent user is a no-op. The host delivers one user's
//! events in order (they share a subject), so the last event id is enough. There is
//! deliberately no global `users:count`: different users are handled in parallel and the
//! store has no compare-and-swap, so a counter would lose increments.
//!
//! **Fails** with `reject` for a payload that does not decode, an update that changes
//! nothing, a missing or conflicting user id, or an event type it does not know; with
//! `retry` for an update to a user it has not seen created yet, and when the store fails.

use evhost_guest::serde::{Deserialize, Deserializer, Serialize};
use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv, log};

// ANCHOR: handler
/// The plugin.
struct UserProjection;

impl Handler for UserProjection {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .subscribe("UserCreated")
            .subscribe("UserProfileUpdated")
            .subscribe("UserContactUpdated")
            .subscribe("UserDeleted")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let change = Change::from_event(&event)?;
        let key = user_key(&change.user_id);
        let current: Option<User> = kv::get_json(&key)?;
        match apply(current, &change)? {
            Outcome::Put(user) => kv::set_json(&key, &*user)?,
            Outcome::Delete => kv::delete(&key)?,
            Outcome::Unchanged => {
                log::debug!(
                    "{} `{}` changes nothing for {key}",
                    event.event_type(),
                    event.id()
                );
            }
        }
        Ok(())
    }
}

export_handler!(UserProjection);
// ANCHOR_END: handler

/// The key-value key of a user.
fn user_key(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The read model of one user, as stored under `user:{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub address: Option<Address>,
    /// How many events have been applied to this user.
    pub version: u64,
    /// The id of the last event applied: a redelivery of it is a no-op.
    pub last_event_id: String,
    /// The `time` of the last event applied, if it had one.
    pub updated_at: Option<String>,
}

/// A postal address; every part is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
pub struct Address {
    pub street: Option<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

/// `UserCreated` data.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct UserCreated {
    id: Option<String>,
    name: String,
    email: String,
    phone: Option<String>,
    address: Option<Address>,
}

/// `UserProfileUpdated` data. For the optional fields, the outer `Option` says whether the
/// field was present, the inner one whether it was `null` (= clear it).
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct ProfileUpdated {
    id: Option<String>,
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    address: Option<Option<Address>>,
}

/// `UserContactUpdated` data.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct ContactUpdated {
    id: Option<String>,
    email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    phone: Option<Option<String>>,
}

/// `UserDeleted` data, when there is any.
#[derive(Debug, Default, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct UserDeleted {
    id: Option<String>,
}

/// Marks a field that was present in the JSON (`null` included) as `Some`; with
/// `#[serde(default)]` an absent one stays `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// One event, decoded: which user it is about and what it does to them.
#[derive(Debug)]
struct Change {
    user_id: String,
    event_id: String,
    time: Option<String>,
    kind: ChangeKind,
}

#[derive(Debug)]
enum ChangeKind {
    Created(UserCreated),
    ProfileUpdated(ProfileUpdated),
    ContactUpdated(ContactUpdated),
    Deleted,
}

impl Change {
    /// Decodes `event`, rejecting anything this projection cannot apply.
    fn from_event(event: &Event) -> Result<Self, HandlerError> {
        let (data_id, kind) = match event.event_type() {
            "UserCreated" => {
                let data: UserCreated = event.data_json()?;
                (data.id.clone(), ChangeKind::Created(data))
            }
            "UserProfileUpdated" => {
                let data: ProfileUpdated = event.data_json()?;
                if data.name.is_none() && data.address.is_none() {
                    return Err(nothing_to_change(event, "`name` or `address`"));
                }
                (data.id.clone(), ChangeKind::ProfileUpdated(data))
            }
            "UserContactUpdated" => {
                let data: ContactUpdated = event.data_json()?;
                if data.email.is_none() && data.phone.is_none() {
                    return Err(nothing_to_change(event, "`email` or `phone`"));
                }
                (data.id.clone(), ChangeKind::ContactUpdated(data))
            }
            "UserDeleted" => {
                let data: UserDeleted = match event.data() {
                    Some(_) => event.data_json()?,
                    None => UserDeleted::default(),
                };
                (data.id, ChangeKind::Deleted)
            }
            other => {
                return Err(HandlerError::reject(format!(
                    "user-projection does not handle `{other}` events"
                )));
            }
        };
        Ok(Self {
            user_id: user_id(event, data_id)?,
            event_id: event.id().to_owned(),
            time: event.time().map(str::to_owned),
            kind,
        })
    }
}

fn nothing_to_change(event: &Event, expected: &str) -> HandlerError {
    HandlerError::reject(format!(
        "{} event `{}` changes nothing: its data has neither {expected}",
        event.event_type(),
        event.id()
    ))
}

/// The user id: the subject, else `data.id`; if both are there they must agree.
fn user_id(event: &Event, data_id: Option<String>) -> Result<String, HandlerError> {
    let id = match (event.subject(), data_id) {
        (Some(subject), Some(data_id)) if subject != data_id => {
            return Err(HandlerError::reject(format!(
                "{} event `{}`: subject `{subject}` and data.id `{data_id}` name different users",
                event.event_type(),
                event.id()
            )));
        }
        (Some(subject), _) => subject.to_owned(),
        (None, Some(data_id)) => data_id,
        (None, None) => String::new(),
    };
    if id.trim().is_empty() {
        return Err(HandlerError::reject(format!(
            "{} event `{}` names no user: set `subject` or `data.id`",
            event.event_type(),
            event.id()
        )));
    }
    Ok(id)
}

/// What to do with the stored user.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Boxed: a `User` would make every `Outcome` as large as itself.
    Put(Box<User>),
    Delete,
    Unchanged,
}

/// Applies `change` to the stored user: the whole projection, without any I/O.
fn apply(current: Option<User>, change: &Change) -> Result<Outcome, HandlerError> {
    if current
        .as_ref()
        .is_some_and(|user| user.last_event_id == change.event_id)
    {
        return Ok(Outcome::Unchanged);
    }
    let version = current.as_ref().map_or(0, |user| user.version) + 1;

    let mut user = match (&change.kind, current) {
        (ChangeKind::Deleted, Some(_)) => return Ok(Outcome::Delete),
        (ChangeKind::Deleted, None) => return Ok(Outcome::Unchanged),
        // A repeated creation (with a new event id) overwrites: the latest word wins.
        (ChangeKind::Created(data), _) => User {
            id: change.user_id.clone(),
            name: data.name.clone(),
            email: data.email.clone(),
            phone: data.phone.clone(),
            address: data.address.clone(),
            // Stamped below, like every other change.
            version: 0,
            last_event_id: String::new(),
            updated_at: None,
        },
        (ChangeKind::ProfileUpdated(_) | ChangeKind::ContactUpdated(_), None) => {
            // Events of one user arrive in order, so its creation is not applied yet (or it
            // was deleted). Retrying gives a late `UserCreated` the chance to land first.
            return Err(HandlerError::retry(format!(
                "user `{}` is not in the read model (no UserCreated applied yet)",
                change.user_id
            )));
        }
        (ChangeKind::ProfileUpdated(data), Some(mut user)) => {
            if let Some(name) = &data.name {
                user.name = name.clone();
            }
            if let Some(address) = &data.address {
                user.address = address.clone();
            }
            user
        }
        (ChangeKind::ContactUpdated(data), Some(mut user)) => {
            if let Some(email) = &data.email {
                user.email = email.clone();
            }
            if let Some(phone) = &data.phone {
                user.phone = phone.clone();
            }
            user
        }
    };
    user.version = version;
    user.last_event_id = change.event_id.clone();
    user.updated_at = change.time.clone();
    Ok(Outcome::Put(Box::new(user)))
}

#[cfg(test)]
mod tests {
    use evhost_guest::serde_json::{Value, json};

    use super::*;

    fn event(id: &str, event_type: &str, data: Value) -> Event {
        Event::new(id, "users-service", event_type)
            .with_subject("u1")
            .with_time("2025-01-01T00:00:00Z")
            .with_json(&data)
            .unwrap()
    }

    fn created() -> Event {
        event(
            "e1",
            "UserCreated",
            json!({ "id": "u1", "name": "Ada", "email": "ada@example.com" }),
        )
    }

    /// Decodes and applies `event` to `current`, as `handle` does.
    fn step(current: Option<User>, event: &Event) -> Result<Outcome, HandlerError> {
        apply(current, &Change::from_event(event)?)
    }

    fn put(outcome: Outcome) -> User {
        match outcome {
            Outcome::Put(user) => *user,
            other => panic!("expected a put, got {other:?}"),
        }
    }

    #[test]
    fn creation_builds_the_read_model() {
        let user = put(step(None, &created()).unwrap());
        assert_eq!(user.id, "u1");
        assert_eq!(user.name, "Ada");
        assert_eq!(user.phone, None);
        assert_eq!(user.version, 1);
        assert_eq!(user.last_event_id, "e1");
        assert_eq!(user.updated_at.as_deref(), Some("2025-01-01T00:00:00Z"));
    }

    #[test]
    fn a_redelivered_event_changes_nothing() {
        let user = put(step(None, &created()).unwrap());
        assert_eq!(step(Some(user.clone()), &created()).unwrap(), Outcome::Unchanged);

        let update = event("e2", "UserProfileUpdated", json!({ "name": "Ada L." }));
        let updated = put(step(Some(user), &update).unwrap());
        assert_eq!(step(Some(updated), &update).unwrap(), Outcome::Unchanged);
    }

    #[test]
    fn updates_overwrite_only_the_fields_they_carry() {
        let user = put(step(None, &created()).unwrap());
        let profile = event(
            "e2",
            "UserProfileUpdated",
            json!({ "name": "Ada Lovelace", "address": { "city": "London" } }),
        );
        let user = put(step(Some(user), &profile).unwrap());
        assert_eq!(user.name, "Ada Lovelace");
        assert_eq!(user.email, "ada@example.com");
        assert_eq!(
            user.address.as_ref().and_then(|a| a.city.as_deref()),
            Some("London")
        );
        assert_eq!(user.version, 2);

        let contact = event("e3", "UserContactUpdated", json!({ "phone": "+44 20 7946 0000" }));
        let user = put(step(Some(user), &contact).unwrap());
        assert_eq!(user.phone.as_deref(), Some("+44 20 7946 0000"));
        assert_eq!(user.name, "Ada Lovelace");

        let clear = event("e4", "UserContactUpdated", json!({ "phone": null }));
        let user = put(step(Some(user), &clear).unwrap());
        assert_eq!(user.phone, None);
        assert_eq!(user.version, 4);
        assert_eq!(user.last_event_id, "e4");
    }

    #[test]
    fn deletion_removes_the_user_once() {
        let user = put(step(None, &created()).unwrap());
        let deleted = Event::new("e9", "users-service", "UserDeleted").with_subject("u1");
        assert_eq!(step(Some(user), &deleted).unwrap(), Outcome::Delete);
        assert_eq!(step(None, &deleted).unwrap(), Outcome::Unchanged);
    }

    #[test]
    fn the_user_id_falls_back_to_data_id() {
        let without_subject = Event::new("e1", "users-service", "UserCreated")
            .with_json(&json!({ "id": "u7", "name": "Grace", "email": "grace@example.com" }))
            .unwrap();
        assert_eq!(put(step(None, &without_subject).unwrap()).id, "u7");
    }

    #[test]
    fn conflicting_or_missing_ids_are_rejected() {
        let conflict = event(
            "e1",
            "UserCreated",
            json!({ "id": "u2", "name": "A", "email": "a@b" }),
        );
        let error = step(None, &conflict).unwrap_err();
        assert!(!error.is_retry());
        assert!(
            error.reason().contains("subject `u1` and data.id `u2`"),
            "{error}"
        );

        let anonymous = Event::new("e1", "users-service", "UserDeleted");
        assert!(
            step(None, &anonymous)
                .unwrap_err()
                .reason()
                .contains("names no user")
        );
    }

    #[test]
    fn malformed_payloads_are_rejected_with_the_reason() {
        let no_email = event("e1", "UserCreated", json!({ "id": "u1", "name": "Ada" }));
        let error = step(None, &no_email).unwrap_err();
        assert!(!error.is_retry());
        assert!(error.reason().contains("missing field `email`"), "{error}");

        let typo = event("e2", "UserProfileUpdated", json!({ "nmae": "Ada" }));
        let error = step(None, &typo).unwrap_err();
        assert!(error.reason().contains("changes nothing"), "{error}");

        let unknown = event("e3", "UserRenamed", json!({}));
        assert!(
            step(None, &unknown)
                .unwrap_err()
                .reason()
                .contains("does not handle `UserRenamed`")
        );
    }

    #[test]
    fn an_update_before_the_creation_is_retried() {
        let update = event("e2", "UserContactUpdated", json!({ "email": "new@example.com" }));
        assert!(step(None, &update).unwrap_err().is_retry());
    }

    #[test]
    fn the_stored_json_has_the_documented_fields() {
        let user = put(step(None, &created()).unwrap());
        let stored = evhost_guest::serde_json::to_value(&user).unwrap();
        assert_eq!(
            stored,
            json!({
                "id": "u1", "name": "Ada", "email": "ada@example.com", "phone": null,
                "address": null, "version": 1, "last_event_id": "e1",
                "updated_at": "2025-01-01T00:00:00Z",
            })
        );
    }
}
