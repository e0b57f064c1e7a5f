"""Typed decoding of JSON data into dataclasses: what ``Event.json(SomeDataclass)`` does.

A value of the wrong type or a missing field raises :class:`DecodeError` naming where
(``data.items[2].sku``); the SDK turns that into a :class:`~evhost.Reject`.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Dict, List, Type, TypeVar, Union

T = TypeVar("T")

if sys.version_info >= (3, 10):
    from types import UnionType

    _UNIONS: tuple = (Union, UnionType)
else:  # pragma: no cover
    _UNIONS = (Union,)


class DecodeError(ValueError):
    """A value of an event's data that is not what its type expects; ``path`` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target).replace("typing.", "")


def decode(target: Any, value: Any, path: str = "data") -> Any:
    """``value`` (decoded JSON) as ``target``: a dataclass, ``str``, ``int``, ``float``,
    ``bool``, ``list[T]``, ``dict[str, T]``, ``Optional[T]``, ``Literal[...]`` or
    ``Any``."""
    if target is Any or target is object:
        return value
    origin = typing.get_origin(target)
    args = typing.get_args(target)
    if origin in _UNIONS:
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:
            return decode(options[0], value, path)
        for option in options:
            try:
                return decode(option, value, path)
            except DecodeError:
                continue
        raise DecodeError(path, f"expected {' or '.join(_name(o) for o in options)}, got {_kind(value)}")
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            choices = ", ".join(repr(a) for a in args)
            raise DecodeError(path, f"expected one of {choices}, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise DecodeError(path, f"expected an array, got {_kind(value)}")
        item = args[0] if args else Any
        return [decode(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise DecodeError(path, f"expected an object, got {_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: decode(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(target) and isinstance(target, type):
        return _decode_dataclass(target, value, path)
    if target is bool:
        if not isinstance(value, bool):
            raise DecodeError(path, f"expected a boolean, got {_kind(value)}")
        return value
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(path, f"expected an integer, got {_kind(value)}")
        return value
    if target is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(path, f"expected a number, got {_kind(value)}")
        return float(value)
    if target is str:
        if not isinstance(value, str):
            raise DecodeError(path, f"expected a string, got {_kind(value)}")
        return value
    if target is list or target is dict:
        return decode(List[Any] if target is list else Dict[str, Any], value, path)
    raise TypeError(f"evhost cannot decode JSON into {_name(target)}: use a dataclass, str, int, float, bool, list, dict, Optional or Literal")


def _decode_dataclass(target: Type[T], value: Any, path: str) -> T:
    if not isinstance(value, dict):
        raise DecodeError(path, f"expected an object, got {_kind(value)}")
    try:
        hints = typing.get_type_hints(target)
    except NameError as error:
        # String annotations (`from __future__ import annotations`) name types that must be
        # found from the module: those of a function's own classes are not.
        raise TypeError(
            f"evhost cannot read the annotations of {target.__name__}: {error}; "
            "define the dataclasses it uses at module level"
        ) from None
    arguments: Dict[str, Any] = {}
    for field in dataclasses.fields(target):
        if not field.init:
            continue
        at = f"{path}.{field.name}"
        if field.name not in value:
            has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            if has_default:
                continue
            if type(None) in typing.get_args(hints[field.name]):
                arguments[field.name] = None
                continue
            raise DecodeError(at, "is missing")
        arguments[field.name] = decode(hints[field.name], value[field.name], at)
    return target(**arguments)
