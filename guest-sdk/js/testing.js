// Unit-testing evhost plugins under node (`node --test`), without building a component:
//
//     import { test } from "node:test";
//     import assert from "node:assert/strict";
//     import { event, run } from "evhost/testing";
//     import { eventHandler } from "./app.js";
//
//     test("greets a new user", async () => {
//       const result = await run(eventHandler, event("UserCreated", { name: "Ada" }, { subject: "u1" }));
//       assert.equal(result.outcome, "ok");
//       assert.deepEqual(result.kvJson("greeted:u1"), { name: "Ada" });
//     });
//
// `run` plays the host's part in memory: it hands the plugin one event with the key-value
// store and config it is given, and reports the outcome with what the handler wrote,
// emitted and logged. As on the host, writes and emitted events count only when the handler
// succeeds. It is a unit-test tool: `evhost plugins call` runs the built component on the
// real host.

import { host } from "#host";
import { toWitValue } from "./shared.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function toBytes(value) {
  if (value instanceof Uint8Array) {
    return value.slice();
  }
  if (typeof value === "string") {
    return encoder.encode(value);
  }
  return encoder.encode(JSON.stringify(value));
}

let counter = 0;

/**
 * An event as the host delivers it. `data`: a Uint8Array as is, `undefined` or `null` as
 * none, anything else as JSON (`application/json` unless `datacontenttype` says otherwise).
 */
export function event(
  type,
  data,
  { id, source = "test", subject, time, datacontenttype, dataschema, extensions = {} } = {},
) {
  counter += 1;
  let payload;
  if (data instanceof Uint8Array) {
    payload = data;
  } else if (data !== undefined && data !== null) {
    payload = encoder.encode(JSON.stringify(data));
    datacontenttype ??= "application/json";
  }
  return {
    id: id ?? `test-${counter}`,
    source,
    type,
    subject,
    time: time ?? new Date().toISOString(),
    datacontenttype,
    dataschema,
    data: payload,
    extensions: Object.entries(extensions).map(([name, value]) => [name, toWitValue(name, value)]),
  };
}

/**
 * Hands `event` (from `event(...)`) to `plugin` (what `definePlugin` returned) and
 * resolves to the result: `outcome` is `"ok"`, `"retry"`, `"reject"` or `"trap"` (an
 * exception the SDK does not map, which the host records as a trap), `reason` the
 * failure's message. `kv` (key → string, Uint8Array, or any other value as JSON) and
 * `config` (key → string) are what the handler finds; `kvFailure` makes every store call
 * fail with that `wasi:keyvalue` error (e.g. `{ tag: "other", val: "disk full" }`).
 */
export async function run(plugin, event, { kv = {}, config = {}, kvFailure } = {}) {
  host.kv = new Map(Object.entries(kv).map(([key, value]) => [key, toBytes(value)]));
  host.config = new Map(Object.entries(config).map(([key, value]) => [key, String(value)]));
  host.published = [];
  host.logs = [];
  host.kvFailure = kvFailure;
  const before = new Map(host.kv);
  let outcome = "ok";
  let reason;
  host.handling = true;
  try {
    await plugin.handle(event);
  } catch (error) {
    if (error?.tag === "retry" || error?.tag === "reject") {
      outcome = error.tag;
      reason = error.val;
    } else {
      outcome = "trap";
      reason = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    }
  } finally {
    host.handling = false;
  }
  const ok = outcome === "ok";
  const store = ok ? host.kv : before;
  return {
    outcome,
    reason,
    /** The store after the event: the handler's writes if it succeeded, else as it was. */
    kv: Object.fromEntries(store),
    /** The value under `key` as text, or undefined. */
    kvText(key) {
      const value = store.get(key);
      return value === undefined ? undefined : decoder.decode(value);
    },
    /** The value under `key` decoded as JSON, or undefined. */
    kvJson(key) {
      const value = store.get(key);
      return value === undefined ? undefined : JSON.parse(decoder.decode(value));
    },
    /** The events the handler emitted (none if it failed), each with `json()` for its data. */
    published: (ok ? host.published : []).map((outgoing) => ({
      ...outgoing,
      extensions: Object.fromEntries(outgoing.extensions.map(([name, value]) => [name, value.val])),
      json() {
        return outgoing.data === undefined ? undefined : JSON.parse(decoder.decode(outgoing.data));
      },
    })),
    /** What the handler logged, `{ level, message }`. */
    logs: [...host.logs],
  };
}
