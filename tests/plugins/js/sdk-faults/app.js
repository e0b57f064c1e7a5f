// One case of the SDK's failure taxonomy per event type, as the Rust `sdk-faults` has them:
// tests hold the JavaScript SDK to the Rust one's outcome for each. `KvSetBadValue` is
// JavaScript's own: a value `kv.set` cannot take is a programming error.

import { config, definePlugin, kv, publish, Reject } from "evhost";

export const eventHandler = definePlugin({
  name: "sdk-faults",
  version: "0.1.0",
  subscriptions: ["*"],
  handle(event) {
    switch (event.type) {
      case "PublishInvalid":
        publish("");
        return;
      case "CorruptJson":
        kv.set("corrupt", "{not json");
        kv.getJson("corrupt");
        return;
      case "EncodeFailure":
        kv.setJson("unencodable", { n: 1n });
        return;
      case "TextJson":
        kv.setJson("text-json", event.json());
        return;
      case "PublishNoData":
        publish("Empty", null);
        return;
      case "ConfigMissing":
        kv.set("config-missing", config.get("absent") === undefined ? "none" : "some");
        return;
      case "KvSetBadValue":
        kv.set("bad", { a: 1 });
        return;
      default:
        throw new Reject(`sdk-faults does not know \`${event.type}\``);
    }
  },
});
