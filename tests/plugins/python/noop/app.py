"""Accepts every event and does nothing: the cost of a Python invocation itself."""

import evhost


class EventHandler(evhost.Plugin):
    name = "noop"
    version = "0.1.0"
    subscriptions = ["*"]

    def on_event(self, event: evhost.Event) -> None:
        pass
