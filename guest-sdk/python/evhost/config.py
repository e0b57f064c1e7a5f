"""The plugin's settings: the ``[config]`` table of its ``NAME.toml``::

    from evhost import config

    greeting = config.get("greeting") or "Hello"
"""

from __future__ import annotations

from typing import Dict, Optional

from evhost import log
from evhost._errors import Retry
from evhost._host import Err, config_store as _config

__all__ = ["all", "get"]


def get(key: str) -> Optional[str]:
    """One value, or ``None`` when it is not set or cannot be read (which is logged as a
    warning)."""
    try:
        return _config.get(key)
    except Err as error:
        log.warn(f"reading config `{key}`: {getattr(error.value, 'value', error.value)}")
        return None


def all() -> Dict[str, str]:
    """Every value; :class:`~evhost.Retry` if the host cannot read them."""
    try:
        return dict(_config.get_all())
    except Err as error:
        raise Retry(f"reading the config: {getattr(error.value, 'value', error.value)}") from None
