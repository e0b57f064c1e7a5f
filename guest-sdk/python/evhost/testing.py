"""Unit-testing evhost plugins natively (pytest, unittest), without building a component::

    from evhost.testing import event, run
    from app import EventHandler

    def test_greets_a_new_user():
        result = run(EventHandler, event("UserCreated", {"name": "Ada"}, subject="u1"))
        assert result.outcome == "ok"
        assert result.kv_json("greeted:u1") == {"name": "Ada"}

:func:`run` plays the host's part in memory: it hands the plugin one event with the
key-value store and config it is given, and reports the outcome with what the handler
wrote, emitted and logged. As on the host, writes and emitted events count only when the
handler succeeds. It is a unit-test tool: ``evhost plugins call`` runs the built
component on the real host.
"""

from __future__ import annotations

import datetime
import itertools
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

import evhost
from evhost import _native
from evhost._host import NATIVE, Err

__all__ = ["Published", "Result", "event", "run"]

_ids = itertools.count(1)


def event(
    type: str,
    data: Any = None,
    *,
    id: Optional[str] = None,
    source: str = "test",
    subject: Optional[str] = None,
    time: Optional[str] = None,
    datacontenttype: Optional[str] = None,
    dataschema: Optional[str] = None,
    extensions: Optional[Dict[str, evhost.ExtensionValue]] = None,
) -> evhost.Event:
    """An event as the host delivers it. ``data``: bytes as they are, ``None`` as none,
    anything else as JSON (``application/json`` unless ``datacontenttype`` says
    otherwise)."""
    payload: Optional[bytes]
    if data is None:
        payload = None
    elif isinstance(data, (bytes, bytearray)):
        payload = bytes(data)
    else:
        payload = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
        datacontenttype = datacontenttype or "application/json"
    record = _native.Event(
        id=id or f"test-{next(_ids)}",
        source=source,
        type=type,
        subject=subject,
        time=time or datetime.datetime.now(datetime.timezone.utc).isoformat(),
        datacontenttype=datacontenttype,
        dataschema=dataschema,
        data=payload,
        extensions=[(name, evhost._to_wit_value(name, value)) for name, value in (extensions or {}).items()],
    )
    return evhost.Event(record)


@dataclass
class Published:
    """An event the handler emitted."""

    id: str
    type: str
    subject: Optional[str]
    datacontenttype: Optional[str]
    dataschema: Optional[str]
    data: Optional[bytes]
    extensions: Dict[str, evhost.ExtensionValue]

    def json(self) -> Any:
        """The data decoded as JSON, or ``None``."""
        return None if self.data is None else json.loads(self.data)


@dataclass
class Result:
    """What one event did: ``outcome`` is ``"ok"``, ``"retry"``, ``"reject"`` or
    ``"trap"`` (an exception the SDK does not map, which the host records as a trap);
    ``reason`` the failure's message."""

    outcome: str
    reason: Optional[str]
    #: The store after the event: the handler's writes if it succeeded, else as it was.
    kv: Dict[str, bytes]
    #: The events the handler emitted (none if it failed).
    published: List[Published] = field(default_factory=list)
    #: What the handler logged, ``(level, message)``.
    logs: List[Tuple[str, str]] = field(default_factory=list)

    def kv_text(self, key: str) -> Optional[str]:
        """The value under ``key`` as text, or ``None``."""
        value = self.kv.get(key)
        return None if value is None else value.decode("utf-8")

    def kv_json(self, key: str) -> Any:
        """The value under ``key`` decoded as JSON, or ``None``."""
        value = self.kv.get(key)
        return None if value is None else json.loads(value)


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def run(
    plugin: Union[Type[evhost.Plugin], evhost.Plugin],
    event: evhost.Event,
    *,
    kv: Optional[Mapping[str, Any]] = None,
    config: Optional[Mapping[str, str]] = None,
    kv_failure: Optional[str] = None,
) -> Result:
    """Hands ``event`` (from :func:`event`) to ``plugin`` (the ``EventHandler`` class or
    an instance) and returns the :class:`Result`. ``kv`` (key → bytes, str, or any other
    value as JSON) and ``config`` (key → str) are what the handler finds; ``kv_failure``
    makes every store call fail: ``"denied"`` as a refused store, any other text as a
    failing one."""
    if not NATIVE:
        raise RuntimeError("evhost.testing runs plugins natively, not inside a component")
    host = _native.host
    host.kv = {key: _to_bytes(value) for key, value in (kv or {}).items()}
    host.config = {key: str(value) for key, value in (config or {}).items()}
    host.published = []
    host.logs = []
    host.kv_failure = (
        None
        if kv_failure is None
        else _native.Error_AccessDenied()
        if kv_failure == "denied"
        else _native.Error_Other(kv_failure)
    )
    before = dict(host.kv)
    instance = plugin() if isinstance(plugin, type) else plugin
    outcome, reason = "ok", None
    host.handling = True
    try:
        instance.handle(event._event)
    except Err as error:
        outcome = "retry" if isinstance(error.value, _native.HandlerError_Retry) else "reject"
        reason = error.value.value
    except Exception as error:  # what the host records as a trap
        outcome, reason = "trap", "".join(traceback.format_exception_only(type(error), error)).strip()
    finally:
        host.handling = False
    ok = outcome == "ok"
    published = [
        Published(
            id=id,
            type=outgoing.type,
            subject=outgoing.subject,
            datacontenttype=outgoing.datacontenttype,
            dataschema=outgoing.dataschema,
            data=outgoing.data,
            extensions={name: value.value for name, value in outgoing.extensions},
        )
        for id, outgoing in host.published
    ]
    return Result(
        outcome=outcome,
        reason=reason,
        kv=dict(host.kv) if ok else before,
        published=published if ok else [],
        logs=list(host.logs),
    )
