"""An in-memory host with the shape of the generated bindings, for running the SDK
outside a component: :mod:`evhost.testing` sets it up and reads it back.

It keeps the host's rules that decide an outcome: an outgoing event needs a type, data
declared JSON must parse, extension names are lower-case letters and digits.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple, Union

from evhost._encoding import is_json


class Err(Exception):
    """A WIT ``result`` error, as componentize-py raises it: the error is ``value``."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class _ExtensionValue:
    value: Any


class _Types(SimpleNamespace):
    pass


@dataclass
class Event:
    id: str
    source: str
    type: str
    subject: Optional[str]
    time: Optional[str]
    datacontenttype: Optional[str]
    dataschema: Optional[str]
    data: Optional[bytes]
    extensions: List[Tuple[str, Any]]


@dataclass
class Metadata:
    name: str
    version: str
    subscriptions: List[str]


@dataclass
class HandlerError_Retry:
    value: str


@dataclass
class HandlerError_Reject:
    value: str


class ExtensionValue_String(_ExtensionValue):
    pass


class ExtensionValue_Boolean(_ExtensionValue):
    pass


class ExtensionValue_Integer(_ExtensionValue):
    pass


types = _Types(
    Event=Event,
    Metadata=Metadata,
    HandlerError_Retry=HandlerError_Retry,
    HandlerError_Reject=HandlerError_Reject,
    ExtensionValue=Union[ExtensionValue_String, ExtensionValue_Boolean, ExtensionValue_Integer],
    ExtensionValue_String=ExtensionValue_String,
    ExtensionValue_Boolean=ExtensionValue_Boolean,
    ExtensionValue_Integer=ExtensionValue_Integer,
)


class _EventHandler:
    """The ``event-handler`` export's interface."""


exports = SimpleNamespace(EventHandler=_EventHandler)


@dataclass
class Host:
    """The one in-memory host's state."""

    kv: Dict[str, bytes] = field(default_factory=dict)
    config: Dict[str, str] = field(default_factory=dict)
    published: List[Any] = field(default_factory=list)
    logs: List[Tuple[str, str]] = field(default_factory=list)
    #: A ``wasi:keyvalue`` error every store call fails with, or ``None``.
    kv_failure: Any = None
    handling: bool = False


host = Host()


class Level(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


def _log(level: Level, context: str, message: str) -> None:
    host.logs.append((level.name.lower(), message))


logging = SimpleNamespace(Level=Level, log=_log)


@dataclass
class Error_NoSuchStore:
    pass


@dataclass
class Error_AccessDenied:
    pass


@dataclass
class Error_Other:
    value: str


@dataclass
class KeyResponse:
    keys: List[str]
    cursor: Optional[int]


def _fail() -> None:
    if host.kv_failure is not None:
        raise Err(host.kv_failure)


class Bucket:
    def get(self, key: str) -> Optional[bytes]:
        _fail()
        return host.kv.get(key)

    def set(self, key: str, value: bytes) -> None:
        _fail()
        host.kv[key] = bytes(value)

    def delete(self, key: str) -> None:
        _fail()
        host.kv.pop(key, None)

    def exists(self, key: str) -> bool:
        _fail()
        return key in host.kv

    def list_keys(self, cursor: Optional[int]) -> KeyResponse:
        _fail()
        return KeyResponse(sorted(host.kv), None)


def _open(name: str) -> Bucket:
    _fail()
    return Bucket()


store = SimpleNamespace(
    open=_open,
    Bucket=Bucket,
    Error_NoSuchStore=Error_NoSuchStore,
    Error_AccessDenied=Error_AccessDenied,
    Error_Other=Error_Other,
)


config_store = SimpleNamespace(
    get=lambda key: host.config.get(key),
    get_all=lambda: list(host.config.items()),
)


@dataclass
class OutgoingEvent:
    type: str
    subject: Optional[str]
    datacontenttype: Optional[str]
    dataschema: Optional[str]
    data: Optional[bytes]
    extensions: List[Tuple[str, Any]]


#: Attribute names an extension may not take (``host/src/event.rs``).
_RESERVED = {
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _publish(event: OutgoingEvent) -> str:
    if not host.handling:
        raise Err("events can only be published while handling an event")
    if not event.type:
        raise Err("the event's `type` is empty")
    for name, _ in event.extensions:
        if not re.fullmatch(r"[a-z0-9]+", name) or name in _RESERVED:
            raise Err(
                f"invalid extension attribute name `{name}`: lower-case letters and digits, "
                "and not a CloudEvents attribute"
            )
    if event.data is not None and is_json(event.datacontenttype):
        try:
            json.loads(event.data, parse_constant=_no_constant)
        except ValueError as error:
            raise Err(f"data is declared JSON but does not parse: {error}") from None
    id = f"emitted-{len(host.published)}"
    host.published.append((id, event))
    return id


publisher = SimpleNamespace(OutgoingEvent=OutgoingEvent, publish=_publish)
