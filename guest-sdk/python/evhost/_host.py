"""What the SDK calls on the host.

Inside a component these are the bindings componentize-py generates into
``evhost.bindings`` from the host's WIT (``componentize-py.toml`` says where). Anywhere
else (pytest, a REPL, a type checker) they do not exist, and the SDK runs on the
in-memory host of :mod:`evhost._native`, which :mod:`evhost.testing` drives.
"""

from __future__ import annotations

try:
    from componentize_py_types import Err
    from evhost.bindings import exports
    from evhost.bindings.imports import logging, publisher, types
    from evhost.bindings.imports import wasi_config_store as config_store
    from evhost.bindings.imports import wasi_keyvalue_store as store

    NATIVE = False
except ImportError:
    from evhost._native import Err, config_store, exports, logging, publisher, store, types

    NATIVE = True

__all__ = ["NATIVE", "Err", "config_store", "exports", "logging", "publisher", "store", "types"]
