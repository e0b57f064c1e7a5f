"""JSON as the SDK writes it: compact, UTF-8."""

from __future__ import annotations

import json as _json
from typing import Any

from evhost._errors import Reject


def encode_json(value: Any, what: str) -> bytes:
    """``value`` as compact JSON; :class:`~evhost.Reject` if JSON cannot encode it (the
    same handler would fail the same way again)."""
    try:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise Reject(f"cannot encode {what} as JSON: {error}") from None
