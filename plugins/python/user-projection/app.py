"""user-projection, in Python: the same read model as the Rust plugin, byte for byte.

Subscribes to ``UserCreated``, ``UserProfileUpdated``, ``UserContactUpdated`` and
``UserDeleted`` and keeps ``user:{id}`` → the user as compact JSON:
``{"id", "name", "email", "phone", "address", "version", "last_event_id", "updated_at"}``.
The user id is the event's ``subject``, or ``data.id`` when there is no subject (if
both are present they must agree). In an update, an absent field is left alone and
``"phone": null`` / ``"address": null`` clears the value. A redelivered event changes
nothing: each user remembers the id of the last event applied to it.

Fails with ``Reject`` for a payload that does not decode, an update that changes
nothing, a missing or conflicting user id, or an unknown event type; with ``Retry``
for an update to a user not created yet, and when the store fails.

Build it as an ``evhost new --lang python`` plugin is built, with the ``evhost`` package
installed: ``componentize-py -w handler componentize app -o user-projection.wasm``.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import evhost
from evhost import Event, Reject, Retry

#: The default of a field an update may leave out: absent leaves the value alone, while
#: ``null`` clears it.
_MISSING: Any = object()


# The payloads, decoded by `event.json(...)` with the Rust plugin's rules: unknown fields
# are ignored, `null` is an absent optional value, a wrong type or a missing field rejects
# the event naming it.


@dataclass
class Address:
    street: Optional[str] = None
    city: Optional[str] = None
    postal_code: Optional[str] = None
    country: Optional[str] = None


@dataclass
class UserCreated:
    name: str
    email: str
    id: Optional[str] = None
    phone: Optional[str] = None
    address: Optional[Address] = None


@dataclass
class ProfileUpdated:
    id: Optional[str] = None
    name: Optional[str] = None
    address: Optional[Address] = _MISSING


@dataclass
class ContactUpdated:
    id: Optional[str] = None
    email: Optional[str] = None
    phone: Optional[str] = _MISSING


@dataclass
class UserDeleted:
    id: Optional[str] = None


def _address(address: Any) -> Any:
    return dataclasses.asdict(address) if isinstance(address, Address) else address


def _user_id(event: Event, data_id: Optional[str]) -> str:
    subject = event.subject
    if subject is not None and data_id is not None and subject != data_id:
        raise Reject(
            f"{event.type} event `{event.id}`: subject `{subject}` and data.id `{data_id}` name different users"
        )
    user_id = subject if subject is not None else (data_id or "")
    if not user_id.strip():
        raise Reject(f"{event.type} event `{event.id}` names no user: set `subject` or `data.id`")
    return user_id


def _nothing_to_change(event: Event, expected: str) -> Reject:
    return Reject(f"{event.type} event `{event.id}` changes nothing: its data has neither {expected}")


# ANCHOR: handler
class EventHandler(evhost.Plugin):
    name = "user-projection"
    version = "0.1.0"
    subscriptions = ["UserCreated", "UserProfileUpdated", "UserContactUpdated", "UserDeleted"]

    def on_event(self, event: Event) -> None:
        kind = event.type
        if kind == "UserCreated":
            created = event.json(UserCreated)
            change = {
                "name": created.name,
                "email": created.email,
                "phone": created.phone,
                "address": _address(created.address),
            }
            data_id = created.id
        elif kind == "UserProfileUpdated":
            profile = event.json(ProfileUpdated)
            change = {"name": profile.name, "address": _address(profile.address)}
            if change["name"] is None and change["address"] is _MISSING:
                raise _nothing_to_change(event, "`name` or `address`")
            data_id = profile.id
        elif kind == "UserContactUpdated":
            contact = event.json(ContactUpdated)
            change = {"email": contact.email, "phone": contact.phone}
            if change["email"] is None and change["phone"] is _MISSING:
                raise _nothing_to_change(event, "`email` or `phone`")
            data_id = contact.id
        elif kind == "UserDeleted":
            data_id = None if event.data is None else event.json(UserDeleted).id
            change = {}
        else:
            raise Reject(f"user-projection does not handle `{kind}` events")

        user_id = _user_id(event, data_id)
        key = f"user:{user_id}"
        current = evhost.kv.get_json(key)
        if current is not None and current["last_event_id"] == event.id:
            evhost.log.debug(f"{kind} `{event.id}` changes nothing for {key}")
            return
        version = (current["version"] if current is not None else 0) + 1

        if kind == "UserDeleted":
            if current is not None:
                evhost.kv.delete(key)
            else:
                evhost.log.debug(f"{kind} `{event.id}` changes nothing for {key}")
            return
        if kind == "UserCreated":
            # A repeated creation (with a new event id) overwrites: the latest word wins.
            user = {"id": user_id, **change}
        elif current is None:
            # One user's events arrive in order, so its creation is not applied yet (or
            # it was deleted). Retrying gives a late `UserCreated` the chance to land.
            raise Retry(f"user `{user_id}` is not in the read model (no UserCreated applied yet)")
        else:
            user = {field: current[field] for field in ("id", "name", "email", "phone", "address")}
            for field, value in change.items():
                if value is not _MISSING and not (value is None and field in ("name", "email")):
                    user[field] = value
        user["version"] = version
        user["last_event_id"] = event.id
        user["updated_at"] = event.time
        evhost.kv.set_json(key, user)
# ANCHOR_END: handler
