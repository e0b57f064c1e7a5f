// What the SDK calls on the host when it runs under node instead of in a component: an
// in-memory host that `evhost/testing` sets up and reads back. It keeps the host's rules
// that decide an outcome (an outgoing event needs a type, JSON data must parse, extension
// names are lower-case letters and digits) and raises errors the way componentize-js
// does (an `Error` whose `payload` is the WIT error).

import { isJson } from "./shared.js";

// Bundled into a component by mistake (esbuild with `--platform=node` picks this file for
// `#host`), the plugin would write to memory and never to the host: refuse at build time.
if (typeof process === "undefined") {
  throw new Error(
    "evhost: the in-memory host for node was bundled into a component; bundle with --platform=neutral (as `evhost new` does)",
  );
}

/** The state of the one in-memory host: reset by `evhost/testing` before each run. */
export const host = {
  /** key → Uint8Array */
  kv: new Map(),
  /** key → string */
  config: new Map(),
  /** The outgoing events, as the SDK handed them to the host. */
  published: [],
  /** `{ level, message }` records. */
  logs: [],
  /** A WIT `error` of `wasi:keyvalue` every store call fails with, or undefined. */
  kvFailure: undefined,
  /** Whether the host is handling an event (publishing is refused otherwise). */
  handling: false,
};

function witError(payload) {
  const error = new Error(typeof payload === "string" ? payload : JSON.stringify(payload));
  error.payload = payload;
  return error;
}

export function log(level, _context, message) {
  host.logs.push({ level, message });
}

const bucket = {
  get(key) {
    fail();
    // A copy, as the host's is: changing it changes nothing stored.
    return host.kv.get(key)?.slice();
  },
  set(key, value) {
    fail();
    host.kv.set(key, Uint8Array.from(value));
  },
  delete(key) {
    fail();
    host.kv.delete(key);
  },
  exists(key) {
    fail();
    return host.kv.has(key);
  },
  listKeys(_cursor) {
    fail();
    return { keys: [...host.kv.keys()].sort(), cursor: undefined };
  },
};

function fail() {
  if (host.kvFailure !== undefined) {
    throw witError(host.kvFailure);
  }
}

export function open(_name) {
  fail();
  return bucket;
}

export function configGet(key) {
  return host.config.get(key);
}

export function configGetAll() {
  return [...host.config.entries()];
}

/** Attribute names an extension may not take (`host/src/event.rs`). */
const RESERVED = new Set([
  "id",
  "source",
  "type",
  "specversion",
  "subject",
  "time",
  "datacontenttype",
  "dataschema",
  "data",
  "data_base64",
]);

export function publish(outgoing) {
  if (!host.handling) {
    throw witError("events can only be published while handling an event");
  }
  if (!outgoing.type) {
    throw witError("the event's `type` is empty");
  }
  for (const [name] of outgoing.extensions) {
    if (!/^[a-z0-9]+$/.test(name) || RESERVED.has(name)) {
      throw witError(
        `invalid extension attribute name \`${name}\`: lower-case letters and digits, and not a CloudEvents attribute`,
      );
    }
  }
  if (outgoing.data !== undefined && isJson(outgoing.datacontenttype)) {
    try {
      JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(outgoing.data));
    } catch (error) {
      throw witError(`data is declared JSON but does not parse: ${error.message}`);
    }
  }
  const id = `emitted-${host.published.length}`;
  host.published.push({ id, ...outgoing });
  return id;
}
