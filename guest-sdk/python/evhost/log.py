"""Log lines the host writes with the plugin's name (``wasi:logging``)::

    from evhost import log

    log.info("handled")

:class:`Handler` forwards Python's ``logging`` to the same place::

    import logging
    logging.getLogger().addHandler(log.Handler())
"""

from __future__ import annotations

import logging as _logging

from evhost._host import logging as _wasi

__all__ = ["Handler", "debug", "error", "info", "trace", "warn"]


def trace(message: str) -> None:
    _wasi.log(_wasi.Level.TRACE, "", message)


def debug(message: str) -> None:
    _wasi.log(_wasi.Level.DEBUG, "", message)


def info(message: str) -> None:
    _wasi.log(_wasi.Level.INFO, "", message)


def warn(message: str) -> None:
    _wasi.log(_wasi.Level.WARN, "", message)


def error(message: str) -> None:
    _wasi.log(_wasi.Level.ERROR, "", message)


class Handler(_logging.Handler):
    """A ``logging`` handler that writes each record to the host's log at its level
    (``DEBUG`` and below as debug, ``CRITICAL`` as error), formatted by its formatter."""

    def emit(self, record: _logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # as logging.Handler does: a bad record must not fail the event
            self.handleError(record)
            return
        if record.levelno >= _logging.ERROR:
            level = _wasi.Level.ERROR
        elif record.levelno >= _logging.WARNING:
            level = _wasi.Level.WARN
        elif record.levelno >= _logging.INFO:
            level = _wasi.Level.INFO
        else:
            level = _wasi.Level.DEBUG
        _wasi.log(level, "", message)
