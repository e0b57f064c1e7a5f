"""One case of the SDK's failure taxonomy per event type, as the Rust `sdk-faults` has
them: tests hold the Python SDK to the Rust one's outcome for each. `KvSetBadValue` is
Python's own: a value `kv.set` cannot take is a programming error."""

import evhost


class EventHandler(evhost.Plugin):
    name = "sdk-faults"
    version = "0.1.0"
    subscriptions = ["*"]

    def on_event(self, event: evhost.Event) -> None:
        kind = event.type
        if kind == "PublishInvalid":
            evhost.publish("")
        elif kind == "CorruptJson":
            evhost.kv.set("corrupt", b"{not json")
            evhost.kv.get_json("corrupt")
        elif kind == "EncodeFailure":
            evhost.kv.set_json("unencodable", {1, 2})
        elif kind == "TextJson":
            evhost.kv.set_json("text-json", event.json())
        elif kind == "PublishNoData":
            evhost.publish("Empty", None)
        elif kind == "ConfigMissing":
            evhost.kv.set("config-missing", "none" if evhost.config.get("absent") is None else "some")
        elif kind == "KvSetBadValue":
            evhost.kv.set("bad", 5)
        else:
            raise evhost.Reject(f"sdk-faults does not know `{kind}`")
