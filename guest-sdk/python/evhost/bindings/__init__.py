"""The bindings of the host's WIT: componentize-py generates this package when it builds a
plugin (``componentize-py.toml`` says so) and the SDK imports them from here. Outside a
component it is empty, and the SDK runs on the in-memory host of ``evhost._native``."""
