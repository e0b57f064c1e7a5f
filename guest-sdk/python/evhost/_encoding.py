"""JSON as the SDK writes it: compact, UTF-8."""

from __future__ import annotations

import json as _json
import math
from typing import Any, Optional

from evhost._errors import Reject


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity as ``None``: JSON has no form for them, and
    Rust's and JavaScript's encoders write ``null`` there too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def encode_json(value: Any, what: str) -> bytes:
    """``value`` as compact JSON (NaN and infinities as ``null``); :class:`Reject` if JSON
    cannot encode it (the same handler would fail the same way again)."""
    try:
        try:
            text = _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:
            text = _json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise Reject(f"cannot encode {what} as JSON: {error}") from None
    return text.encode("utf-8")


def is_json(media_type: Optional[str]) -> bool:
    """Whether ``media_type`` is JSON: ``application/json``, ``text/json`` or a ``+json``
    type, with or without parameters (absent means JSON, as for evhost's events)."""
    if media_type is None:
        return True
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence in ("application/json", "text/json") or essence.endswith("+json")
