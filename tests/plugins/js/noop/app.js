// Accepts every event and does nothing: the cost of a JavaScript invocation itself.

import { definePlugin } from "evhost";

export const eventHandler = definePlugin({
  name: "noop",
  version: "0.1.0",
  subscriptions: ["*"],
  handle() {},
});
