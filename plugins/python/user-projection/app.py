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

Build: ``componentize-py -d ../../../wit -w handler componentize app
-p . -p ../../../guest-sdk/python -o user-projection.wasm``.
"""

from typing import Any, Dict, Optional

import evhost
from evhost import Event, Reject, Retry

#: What a payload field must be, by the name the Rust plugin gives its type.
_MISSING = object()


def _decode_error(event: Event, target: str, message: str) -> Reject:
    return Reject(f"{event.type} event `{event.id}`: data does not decode as `{target}`: {message}")


class _Data:
    """A JSON object read field by field with the Rust plugin's rules: unknown fields
    are ignored, `null` is an absent optional value, a wrong type is refused."""

    def __init__(self, event: Event, target: str) -> None:
        self.event = event
        self.target = target
        data = event.json()
        if not isinstance(data, dict):
            raise _decode_error(event, target, f"expected a JSON object, got {type(data).__name__}")
        self.data: Dict[str, Any] = data

    def error(self, message: str) -> Reject:
        return _decode_error(self.event, self.target, message)

    def string(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(f"`{name}` must be a string")
        return value

    def required(self, name: str) -> str:
        if name not in self.data:
            raise self.error(f"missing field `{name}`")
        return self.string(name, self.data[name])

    def optional(self, name: str) -> Optional[str]:
        """Absent and `null` are both `None`."""
        value = self.data.get(name)
        return None if value is None else self.string(name, value)

    def present(self, name: str) -> Any:
        """`_MISSING` when absent; `None` for `null`; the string otherwise."""
        if name not in self.data:
            return _MISSING
        return self.optional(name)

    def address(self, value: Any) -> Optional[Dict[str, Optional[str]]]:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error("`address` must be an object")
        address: Dict[str, Optional[str]] = {}
        for part in ("street", "city", "postal_code", "country"):
            item = value.get(part)
            address[part] = None if item is None else self.string(f"address.{part}", item)
        return address

    def present_address(self) -> Any:
        if "address" not in self.data:
            return _MISSING
        return self.address(self.data["address"])


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
            data = _Data(event, "user_projection::UserCreated")
            change = {
                "name": data.required("name"),
                "email": data.required("email"),
                "phone": data.optional("phone"),
                "address": data.address(data.data.get("address")),
            }
            data_id = data.optional("id")
        elif kind == "UserProfileUpdated":
            data = _Data(event, "user_projection::ProfileUpdated")
            change = {"name": data.optional("name"), "address": data.present_address()}
            if change["name"] is None and change["address"] is _MISSING:
                raise _nothing_to_change(event, "`name` or `address`")
            data_id = data.optional("id")
        elif kind == "UserContactUpdated":
            data = _Data(event, "user_projection::ContactUpdated")
            change = {"email": data.optional("email"), "phone": data.present("phone")}
            if change["email"] is None and change["phone"] is _MISSING:
                raise _nothing_to_change(event, "`email` or `phone`")
            data_id = data.optional("id")
        elif kind == "UserDeleted":
            data_id = None
            if event.data is not None:
                data_id = _Data(event, "user_projection::UserDeleted").optional("id")
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
