"""The failures a handler raises, and the SDK's own (kept apart so every module can use
them)."""


class Retry(Exception):
    """A transient failure: the host delivers the event again later."""


class Reject(Exception):
    """A permanent failure: the event goes to the dead-letter queue."""


class PublishError(Reject):
    """The host refused an event to emit (e.g. an empty type): the same handler would
    build the same event again, so a handler that lets it propagate is rejected."""
