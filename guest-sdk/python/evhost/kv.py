"""The plugin's key-value store. Keys are strings, values bytes (or JSON).

Writes apply only if the handler succeeds, together with the acknowledgement of the
event::

    from evhost import kv

    count = kv.get_json("count") or 0
    kv.set_json("count", count + 1)
"""

from __future__ import annotations

import json as _json
from typing import Any, Callable, List, Optional, TypeVar, Union

from evhost._encoding import encode_json
from evhost._errors import Reject
from evhost._host import Err, store as _store

__all__ = ["Error", "Refused", "delete", "exists", "get", "get_json", "keys", "set", "set_json"]

T = TypeVar("T")


class Error(Exception):
    """The host's storage failed; a handler that lets it propagate is retried."""


class Refused(Reject):
    """The host has no such store or refuses it to the plugin; retrying cannot help, so a
    handler that lets it propagate is rejected."""


def _describe(error: Any) -> str:
    if isinstance(error, _store.Error_NoSuchStore):
        return "no such store"
    if isinstance(error, _store.Error_AccessDenied):
        return "access denied"
    return str(getattr(error, "value", repr(error)))


def _call(operation: Callable[[], T]) -> T:
    try:
        return operation()
    except Err as error:
        reason = f"the plugin's key-value store: {_describe(error.value)}"
        if isinstance(error.value, (_store.Error_NoSuchStore, _store.Error_AccessDenied)):
            raise Refused(reason) from None
        raise Error(reason) from None


_bucket: Optional[Any] = None


def _open() -> Any:
    global _bucket
    if _bucket is None:
        _bucket = _call(lambda: _store.open(""))
    return _bucket


def get(key: str) -> Optional[bytes]:
    """The bytes stored under ``key``, or ``None``."""
    bucket = _open()
    return _call(lambda: bucket.get(key))


def set(key: str, value: Union[bytes, str]) -> None:
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
    bucket = _open()
    _call(lambda: bucket.set(key, data))


def delete(key: str) -> None:
    """Removes ``key``; removing an absent key is not an error."""
    bucket = _open()
    _call(lambda: bucket.delete(key))


def exists(key: str) -> bool:
    """Whether ``key`` holds a value."""
    bucket = _open()
    return _call(lambda: bucket.exists(key))


def keys() -> List[str]:
    """Every key, in the store's order."""
    bucket = _open()
    found: List[str] = []
    cursor: Optional[int] = None
    while True:
        page = _call(lambda: bucket.list_keys(cursor))
        found.extend(page.keys)
        if page.cursor is None:
            return found
        cursor = page.cursor


def get_json(key: str) -> Any:
    """The JSON value stored under ``key``, or ``None``; :class:`~evhost.Reject` if what
    is stored there is not JSON."""
    value = get(key)
    if value is None:
        return None
    try:
        return _json.loads(value)
    except ValueError as error:
        raise Reject(f"the value of key `{key}` is not valid JSON: {error}") from None


def set_json(key: str, value: Any) -> None:
    """Stores ``value`` as compact JSON under ``key``; :class:`~evhost.Reject` if JSON
    cannot encode it."""
    set(key, encode_json(value, f"the value for key `{key}`"))
