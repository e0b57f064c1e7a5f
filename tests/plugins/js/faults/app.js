// Fails as the event's type says, and probes the sandbox, so tests can check that a
// JavaScript plugin's failures are classified and contained as a Rust plugin's are.

import { definePlugin, kv, Reject, Retry } from "evhost";

function attempt(action) {
  try {
    return `allowed: ${String(action())}`;
  } catch (error) {
    return `denied: ${error?.name ?? typeof error}`;
  }
}

// The same failures from an async handler, after an `await`: the promise's outcome is the
// event's.
async function later(event) {
  await Promise.resolve();
  switch (event.type) {
    case "LaterRetry":
      throw new Retry("not yet, after an await");
    case "LaterReject":
      throw new Reject("never, after an await");
    case "LaterRaise":
      throw new TypeError("an uncaught exception after an await");
    case "LaterWrite":
      kv.set("later", "written after an await");
      return;
    default:
      throw new Reject(`js-faults does not know \`${event.type}\``);
  }
}

export const eventHandler = definePlugin({
  name: "js-faults",
  version: "0.1.0",
  subscriptions: ["*"],
  handle(event) {
    if (event.type.startsWith("Later")) {
      return later(event);
    }
    switch (event.type) {
      case "Retry":
        throw new Retry("not yet");
      case "Reject":
        throw new Reject("never");
      case "Raise":
        throw new TypeError("an uncaught exception");
      case "Loop":
        for (;;) {}
      case "Hog": {
        const hoard = [];
        for (;;) {
          hoard.push(new Uint8Array(1 << 20).fill(1));
        }
      }
      case "Console": {
        // What the build keeps: console output goes to the plugin's log, randomness
        // differs between calls, the clock tells the time.
        console.log("console.log reached the host");
        console.error("console.error reached the host");
        const random = crypto.getRandomValues(new Uint32Array(4));
        kv.setJson("console", {
          random: random.some((n) => n !== random[0]) && Math.random() !== Math.random(),
          year: new Date().getFullYear(),
        });
        return;
      }
      case "Probe":
        kv.setJson("probe", {
          fetch: typeof fetch,
          process: typeof process,
          // The bundler's stand-in for `require` (a name it cannot resolve stays a call),
          // which loads nothing.
          require: attempt(() => {
            const module = "fs";
            return typeof require(module);
          }),
          eval: attempt(() => eval("1 + 1")),
        });
        return;
      default:
        throw new Reject(`js-faults does not know \`${event.type}\``);
    }
  },
});
