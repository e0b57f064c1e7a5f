"""Write evhost plugins in Python.

A plugin is a module (``app.py``) that defines ``EventHandler``, a subclass of
:class:`Plugin`::

    import evhost

    class EventHandler(evhost.Plugin):
        name = "greeter"
        version = "0.1.0"
        subscriptions = ["UserCreated"]

        def on_event(self, event: evhost.Event) -> None:
            user = event.json()
            evhost.kv.set_json(f"greeted:{event.subject}", {"name": user["name"]})

Build it into a component with ``componentize-py`` (see the book's "Plugins in
Python"). Each event runs in a fresh instance: nothing survives between calls except
what the plugin writes to its key-value store.

Raise :class:`Retry` for a transient failure (the host delivers the event again, up
to the plugin's retry policy) and :class:`Reject` for a permanent one (the event goes
to the dead-letter queue). Any other exception traps the instance, which the host
records as a ``trap``, as it does for a panic in Rust.
"""

from __future__ import annotations

import json as _json
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import logging as _logging
from wit_world.imports import publisher as _publisher
from wit_world.imports import types as _types
from wit_world.imports import wasi_config_store as _config
from wit_world.imports import wasi_keyvalue_store as _store

__all__ = [
    "Event",
    "Plugin",
    "Reject",
    "Retry",
    "config",
    "kv",
    "log",
    "publish",
]

#: The value of a CloudEvents extension attribute.
ExtensionValue = Union[str, bool, int]


class Retry(Exception):
    """A transient failure: the host delivers the event again later."""


class Reject(Exception):
    """A permanent failure: the event goes to the dead-letter queue."""


def _is_json(media_type: Optional[str]) -> bool:
    """Whether ``media_type`` is JSON: ``application/json``, ``text/json`` or a ``+json``
    type, with or without parameters (absent means JSON, as for evhost's events)."""
    if media_type is None:
        return True
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence in ("application/json", "text/json") or essence.endswith("+json")


def _encode_json(value: Any, what: str) -> bytes:
    """``value`` as compact JSON; :class:`Reject` if JSON cannot encode it (the same
    handler would fail the same way again)."""
    try:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise Reject(f"cannot encode {what} as JSON: {error}") from None


def _from_wit_value(value: _types.ExtensionValue) -> ExtensionValue:
    return value.value


def _to_wit_value(name: str, value: ExtensionValue) -> _types.ExtensionValue:
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

    def __init__(self, event: _types.Event) -> None:
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

    def json(self) -> Any:
        """The payload decoded as JSON; :class:`Reject` if it is absent, of a media type
        other than JSON, or not valid JSON."""
        if self._event.data is None:
            raise Reject(f"{self.type} event `{self.id}`: has no data")
        if not _is_json(self.datacontenttype):
            raise Reject(f"{self.type} event `{self.id}`: data has content type `{self.datacontenttype}`, not JSON")
        try:
            return _json.loads(self._event.data)
        except ValueError as error:
            raise Reject(f"{self.type} event `{self.id}`: data is not valid JSON: {error}") from None

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id!r}, source={self.source!r}, subject={self.subject!r})"


class Plugin(exports.EventHandler):
    """The base class of a plugin's ``EventHandler``.

    Set :attr:`name` (the plugin's file name without ``.wasm``), :attr:`version` and
    :attr:`subscriptions` (exact types, prefixes such as ``User*``, or ``*``) and
    override :meth:`on_event`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    subscriptions: ClassVar[List[str]] = []

    def on_event(self, event: Event) -> None:
        """Handles one event. Raise :class:`Retry` or :class:`Reject` to fail it."""
        raise NotImplementedError(f"{type(self).__name__} must override on_event")

    # The `event-handler` export: what the host calls.

    def metadata(self) -> _types.Metadata:
        if not self.name:
            raise ValueError(f"{type(self).__name__}.name must be the plugin's name")
        return _types.Metadata(self.name, self.version, list(self.subscriptions))

    def handle(self, event: _types.Event) -> None:
        try:
            self.on_event(Event(event))
        # `Reject` covers the SDK's own permanent failures too: an outgoing event the host
        # refuses (`PublishError`), a value that is not JSON, a store that is refused.
        except Reject as error:
            raise Err(_types.HandlerError_Reject(str(error))) from None
        except (Retry, kv.Error) as error:
            # A transient failure, or the host's storage failed: worth another attempt.
            raise Err(_types.HandlerError_Retry(str(error))) from None


class kv:
    """The plugin's key-value store. Keys are strings, values bytes (or JSON).

    Writes apply only if the handler succeeds, together with the acknowledgement of
    the event.
    """

    class Error(Exception):
        """The host's storage failed; a handler that lets it propagate is retried."""

    class Refused(Reject):
        """The host has no such store or refuses it to the plugin; retrying cannot help,
        so a handler that lets it propagate is rejected."""

    _bucket: ClassVar[Optional[_store.Bucket]] = None

    @classmethod
    def _open(cls) -> _store.Bucket:
        if cls._bucket is None:
            cls._bucket = cls._call(lambda: _store.open(""))
        return cls._bucket

    @staticmethod
    def _call(operation: Any) -> Any:
        try:
            return operation()
        except Err as error:
            reason = f"the plugin's key-value store: {_describe_store_error(error.value)}"
            if isinstance(error.value, (_store.Error_NoSuchStore, _store.Error_AccessDenied)):
                raise kv.Refused(reason) from None
            raise kv.Error(reason) from None

    @classmethod
    def get(cls, key: str) -> Optional[bytes]:
        """The bytes stored under ``key``, or ``None``."""
        bucket = cls._open()
        return cls._call(lambda: bucket.get(key))

    @classmethod
    def set(cls, key: str, value: Union[bytes, str]) -> None:
        """Stores ``value`` (bytes, or text as UTF-8) under ``key``. Any other value is a
        mistake in the plugin (:func:`set_json` stores the rest) and raises ``TypeError``,
        which traps."""
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise TypeError(
                f"kv.set({key!r}, …) takes bytes or str, not {type(value).__name__}: "
                "use kv.set_json to store other values"
            )
        bucket = cls._open()
        cls._call(lambda: bucket.set(key, data))

    @classmethod
    def delete(cls, key: str) -> None:
        """Removes ``key``; removing an absent key is not an error."""
        bucket = cls._open()
        cls._call(lambda: bucket.delete(key))

    @classmethod
    def exists(cls, key: str) -> bool:
        """Whether ``key`` holds a value."""
        bucket = cls._open()
        return cls._call(lambda: bucket.exists(key))

    @classmethod
    def keys(cls) -> List[str]:
        """Every key, in the store's order."""
        bucket = cls._open()
        keys: List[str] = []
        cursor: Optional[int] = None
        while True:
            page = cls._call(lambda: bucket.list_keys(cursor))
            keys.extend(page.keys)
            if page.cursor is None:
                return keys
            cursor = page.cursor

    @classmethod
    def get_json(cls, key: str) -> Any:
        """The JSON value stored under ``key``, or ``None``; :class:`Reject` if what is
        stored there is not JSON."""
        value = cls.get(key)
        if value is None:
            return None
        try:
            return _json.loads(value)
        except ValueError as error:
            raise Reject(f"the value of key `{key}` is not valid JSON: {error}") from None

    @classmethod
    def set_json(cls, key: str, value: Any) -> None:
        """Stores ``value`` as compact JSON under ``key``; :class:`Reject` if JSON cannot
        encode it."""
        cls.set(key, _encode_json(value, f"the value for key `{key}`"))


def _describe_store_error(error: Any) -> str:
    if isinstance(error, _store.Error_NoSuchStore):
        return "no such store"
    if isinstance(error, _store.Error_AccessDenied):
        return "access denied"
    return getattr(error, "value", repr(error))


class PublishError(Reject):
    """The host refused an event to emit (e.g. an empty type): the same handler would
    build the same event again, so a handler that lets it propagate is rejected."""


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
        payload = _encode_json(data, f"the data of a {type} event")
        datacontenttype = datacontenttype or "application/json"
    attributes: List[Tuple[str, _types.ExtensionValue]] = [
        (name, _to_wit_value(name, value)) for name, value in (extensions or {}).items()
    ]
    outgoing = _publisher.OutgoingEvent(type, subject, datacontenttype, dataschema, payload, attributes)
    try:
        return _publisher.publish(outgoing)
    except Err as error:
        raise PublishError(str(error.value)) from None


class log:
    """Log lines the host writes with the plugin's name (``wasi:logging``)."""

    @staticmethod
    def _write(level: _logging.Level, message: str) -> None:
        _logging.log(level, "", message)

    @classmethod
    def trace(cls, message: str) -> None:
        cls._write(_logging.Level.TRACE, message)

    @classmethod
    def debug(cls, message: str) -> None:
        cls._write(_logging.Level.DEBUG, message)

    @classmethod
    def info(cls, message: str) -> None:
        cls._write(_logging.Level.INFO, message)

    @classmethod
    def warn(cls, message: str) -> None:
        cls._write(_logging.Level.WARN, message)

    @classmethod
    def error(cls, message: str) -> None:
        cls._write(_logging.Level.ERROR, message)


class config:
    """The plugin's settings: the ``[config]`` table of its ``NAME.toml``."""

    @staticmethod
    def get(key: str) -> Optional[str]:
        """One value, or ``None`` when it is not set or cannot be read (which is logged as
        a warning)."""
        try:
            return _config.get(key)
        except Err as error:
            log.warn(f"reading config `{key}`: {error.value}")
            return None

    @staticmethod
    def all() -> Dict[str, str]:
        """Every value."""
        try:
            return dict(_config.get_all())
        except Err as error:
            raise Retry(f"reading the config: {error.value}") from None
