"""Fails as the event's type says, and probes the sandbox, so tests can check that a
Python plugin's failures are classified and contained as a Rust plugin's are."""

import os

import evhost


def _attempt(action) -> str:
    """What `action` gave, or the exception it raised, as text."""
    try:
        return f"allowed: {action()!r}"
    except BaseException as error:  # noqa: BLE001 — every refusal is an answer here
        return f"denied: {type(error).__name__}"


def _read_file() -> str:
    with open("/etc/hostname", encoding="utf-8") as file:
        return file.read()


def _list_root() -> list:
    return os.listdir("/")


def _connect() -> None:
    import socket

    with socket.create_connection(("127.0.0.1", 4222), timeout=1):
        pass


class EventHandler(evhost.Plugin):
    name = "py-faults"
    version = "0.1.0"
    subscriptions = ["*"]

    def on_event(self, event: evhost.Event) -> None:
        kind = event.type
        if kind == "Retry":
            raise evhost.Retry("not yet")
        if kind == "Reject":
            raise evhost.Reject("never")
        if kind == "Raise":
            raise ValueError("an uncaught exception")
        if kind == "Loop":
            while True:
                pass
        if kind == "Hog":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if kind == "Probe":
            evhost.kv.set_json(
                "probe",
                {
                    "file": _attempt(_read_file),
                    "dir": _attempt(_list_root),
                    "env": sorted(os.environ),
                    "socket": _attempt(_connect),
                },
            )
            return
        raise evhost.Reject(f"py-faults does not know `{kind}`")
