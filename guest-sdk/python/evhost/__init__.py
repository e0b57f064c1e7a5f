"""Write evhost plugins in Python.

A plugin is a module (``app.py``) that defines ``EventHandler``, a subclass of
:class:`Plugin`::

    from dataclasses import dataclass

    import evhost
    from evhost import kv


    @dataclass
    class UserCreated:
        name: str


    class EventHandler(evhost.Plugin):
        name = "greeter"
        version = "0.1.0"
        subscriptions = ["UserCreated"]

        def on_event(self, event: evhost.Event) -> None:
            user = event.json(UserCreated)  # Reject, naming the field, if it does not fit
            kv.set_json(f"greeted:{event.subject}", {"name": user.name})

Build it into a component with ``componentize-py -w handler componentize app -o
greeter.wasm`` in a virtual environment where this package is installed (see the book's
"Plugins in Python"); :mod:`evhost.testing` runs it under pytest without building.

The module's top-level code runs once, when the component is built (componentize-py
snapshots it): do not read the clock or random numbers there. Each event then runs in a
fresh instance, unless the plugin's ``NAME.toml`` sets ``reuse``: nothing survives
between calls except what the plugin writes to its key-value store.

Raise :class:`Retry` for a transient failure (the host delivers the event again, up
to the plugin's retry policy) and :class:`Reject` for a permanent one (the event goes
to the dead-letter queue). Any other exception traps the instance, which the host
records as a ``trap``, as it does for a panic in Rust.
"""

from __future__ import annotations

import json as _json
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar, Union, overload

from evhost import config, kv, log
from evhost._encoding import encode_json, is_json
from evhost._decode import DecodeError, decode as _decode
from evhost._errors import PublishError, Reject, Retry
from evhost._host import Err, exports as _exports, publisher as _publisher, types as _types

__all__ = [
    "DecodeError",
    "Event",
    "ExtensionValue",
    "Plugin",
    "PublishError",
    "Reject",
    "Retry",
    "config",
    "kv",
    "log",
    "publish",
]

T = TypeVar("T")

#: The value of a CloudEvents extension attribute.
ExtensionValue = Union[str, bool, int]


def _from_wit_value(value: Any) -> ExtensionValue:
    return value.value


def _to_wit_value(name: str, value: ExtensionValue) -> Any:
    # bool first: in Python a bool is also an int.
    if isinstance(value, bool):
        return _types.ExtensionValue_Boolean(value)
    if isinstance(value, int):
        return _types.ExtensionValue_Integer(value)
    if isinstance(value, str):
        return _types.ExtensionValue_String(value)
    raise TypeError(f"extension {name!r} must be a str, bool or int, not {type(value).__name__}")


class Event:
    """A CloudEvents 1.0 event as the host delivered it."""

    __slots__ = ("_event", "_extensions")

    def __init__(self, event: Any) -> None:
        self._event = event
        self._extensions = {name: _from_wit_value(value) for name, value in event.extensions}

    @property
    def id(self) -> str:
        """Unique within :attr:`source`."""
        return self._event.id

    @property
    def source(self) -> str:
        """The context that produced the event, e.g. ``users-service``."""
        return self._event.source

    @property
    def type(self) -> str:
        """The event type, e.g. ``UserCreated``."""
        return self._event.type

    @property
    def subject(self) -> Optional[str]:
        """What the event is about (the ordering key)."""
        return self._event.subject

    @property
    def time(self) -> Optional[str]:
        """When it happened, RFC 3339."""
        return self._event.time

    @property
    def datacontenttype(self) -> Optional[str]:
        """The media type of :attr:`data`."""
        return self._event.datacontenttype

    @property
    def dataschema(self) -> Optional[str]:
        """The URI of the schema :attr:`data` follows."""
        return self._event.dataschema

    @property
    def data(self) -> Optional[bytes]:
        """The payload bytes, if any."""
        return self._event.data

    @property
    def extensions(self) -> Dict[str, ExtensionValue]:
        """The extension attributes, e.g. ``correlationid``."""
        return dict(self._extensions)

    def extension(self, name: str) -> Optional[ExtensionValue]:
        """One extension attribute, if present."""
        return self._extensions.get(name)

    @property
    def correlation_id(self) -> Optional[str]:
        """The ``correlationid`` extension: the conversation this event belongs to."""
        value = self._extensions.get("correlationid")
        return value if isinstance(value, str) else None

    @property
    def causation_id(self) -> Optional[str]:
        """The ``causationid`` extension: the id of the event that caused this one."""
        value = self._extensions.get("causationid")
        return value if isinstance(value, str) else None

    def text(self) -> str:
        """The payload as UTF-8 text; :class:`Reject` if there is none or it is not."""
        if self._event.data is None:
            raise Reject(f"{self.type} event `{self.id}`: has no data")
        try:
            return self._event.data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Reject(f"{self.type} event `{self.id}`: data is not UTF-8: {error}") from None

    @overload
    def json(self) -> Any: ...

    @overload
    def json(self, into: Type[T]) -> T: ...

    @overload
    def json(self, into: Any) -> Any: ...

    def json(self, into: Any = None) -> Any:
        """The payload decoded as JSON; with ``into`` (a dataclass, or ``list[...]``,
        ``Optional[...]``, ``str`` …) checked against it and returned as it. Raises
        :class:`Reject`, naming what is wrong, if the data is absent, of a media type other
        than JSON, not valid JSON, or not what ``into`` describes (a missing field, a wrong
        type)."""
        if self._event.data is None:
            raise Reject(f"{self.type} event `{self.id}`: has no data")
        if not is_json(self.datacontenttype):
            raise Reject(f"{self.type} event `{self.id}`: data has content type `{self.datacontenttype}`, not JSON")
        try:
            value = _json.loads(self._event.data)
        except ValueError as error:
            raise Reject(f"{self.type} event `{self.id}`: data is not valid JSON: {error}") from None
        if into is None:
            return value
        try:
            return _decode(into, value)
        except DecodeError as error:
            raise Reject(f"{self.type} event `{self.id}`: {error}") from None

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id!r}, source={self.source!r}, subject={self.subject!r})"


class Plugin(_exports.EventHandler):
    """The base class of a plugin's ``EventHandler``.

    Set :attr:`name` (the plugin's file name without ``.wasm``), :attr:`version` and
    :attr:`subscriptions` (exact types, prefixes such as ``User*``, or ``*``) and
    override :meth:`on_event`. The class is checked when it is defined, which for a
    component is at build time: a missing name or subscriptions, or a ``handle`` or
    ``metadata`` of its own (the names of what the host calls, which would bypass the
    SDK), fail the build with a ``TypeError`` saying so.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    subscriptions: ClassVar[List[str]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for reserved in ("handle", "metadata"):
            if reserved in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} defines `{reserved}`, which the host calls and the SDK "
                    f"provides: handle events in `on_event` instead"
                )
        if not isinstance(cls.name, str) or not cls.name:
            raise TypeError(f"{cls.__name__}.name must be the plugin's name (its file name without .wasm)")
        subscriptions = cls.subscriptions
        if isinstance(subscriptions, str) or not all(isinstance(s, str) and s for s in subscriptions):
            raise TypeError(f"{cls.__name__}.subscriptions must be a list of event-type patterns, e.g. [\"UserCreated\"]")
        if not subscriptions:
            raise TypeError(f"{cls.__name__}.subscriptions is empty: name the event types to handle, or [\"*\"]")

    def on_event(self, event: Event) -> None:
        """Handles one event. Raise :class:`Retry` or :class:`Reject` to fail it."""
        raise NotImplementedError(f"{type(self).__name__} must override on_event")

    # The `event-handler` export: what the host calls.

    def metadata(self) -> Any:
        return _types.Metadata(self.name, self.version, list(self.subscriptions))

    def handle(self, event: Any) -> None:
        try:
            self.on_event(Event(event))
        # `Reject` covers the SDK's own permanent failures too: an outgoing event the host
        # refuses (`PublishError`), a value that is not JSON, a store that is refused.
        except Reject as error:
            raise Err(_types.HandlerError_Reject(str(error))) from None
        except (Retry, kv.Error) as error:
            # A transient failure, or the host's storage failed: worth another attempt.
            raise Err(_types.HandlerError_Retry(str(error))) from None


def publish(
    type: str,
    data: Any = None,
    *,
    subject: Optional[str] = None,
    datacontenttype: Optional[str] = None,
    dataschema: Optional[str] = None,
    extensions: Optional[Dict[str, ExtensionValue]] = None,
) -> str:
    """Emits a follow-up event and returns its id.

    ``data`` as bytes is sent as is (give ``datacontenttype``); a ``str`` as UTF-8
    text (``text/plain`` unless told otherwise); anything else as JSON. The event is
    published only if the current handler succeeds; the host fills in ``id``,
    ``source``, ``time``, the correlation id and the causation id.
    """
    payload: Optional[bytes]
    if data is None:
        payload = None
    elif isinstance(data, (bytes, bytearray)):
        payload = bytes(data)
    elif isinstance(data, str):
        payload = data.encode("utf-8")
        datacontenttype = datacontenttype or "text/plain"
    else:
        payload = encode_json(data, f"the data of a {type} event")
        datacontenttype = datacontenttype or "application/json"
    attributes: List[Tuple[str, Any]] = [
        (name, _to_wit_value(name, value)) for name, value in (extensions or {}).items()
    ]
    outgoing = _publisher.OutgoingEvent(type, subject, datacontenttype, dataschema, payload, attributes)
    try:
        return _publisher.publish(outgoing)
    except Err as error:
        raise PublishError(str(error.value)) from None
