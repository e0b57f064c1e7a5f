// Write evhost plugins in JavaScript or TypeScript: the `evhost` package. A plugin
// imports it, a bundler (esbuild) puts both into one module and componentize-js 0.23.0
// builds that into a component (see the book's "Plugins in JavaScript"). `evhost.d.ts`
// declares this module; `evhost/testing` runs a handler under node.
//
//     import { definePlugin, fields, string, kv } from "evhost";
//
//     const UserCreated = fields({ name: string });
//
//     export const eventHandler = definePlugin({
//       name: "greeter",
//       version: "0.1.0",
//       subscriptions: ["UserCreated"],
//       handle(event) {
//         const user = event.json(UserCreated);
//         kv.setJson(`greeted:${event.subject}`, { name: user.name });
//       },
//     });
//
// Each event runs in a fresh instance: only what the plugin writes to its key-value store
// survives. Throw `Retry` for a transient failure and `Reject` for a permanent one; any
// other exception is logged and traps the instance (recorded as `trap`, like a Rust panic).

// In a component `#host` is the WIT imports; under node, the in-memory host of
// `evhost/testing` (package.json's `imports` chooses).
import { log as wasiLog, open, configGet, configGetAll, publish as wasiPublish } from "#host";
import { isJson, toWitValue } from "./shared.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A transient failure: the host delivers the event again later. */
export class Retry extends Error {
  constructor(message) {
    super(message);
    this.name = "Retry";
  }
}

/** A permanent failure: the event goes to the dead-letter queue. */
export class Reject extends Error {
  constructor(message) {
    super(message);
    this.name = "Reject";
  }
}

/** The host's key-value storage failed; a handler that lets it propagate is retried. */
export class KvError extends Error {
  constructor(message) {
    super(message);
    this.name = "KvError";
  }
}

/**
 * The host has no such store or refuses it to the plugin: retrying cannot help, so a
 * handler that lets it propagate is rejected.
 */
export class KvRefused extends Reject {
  constructor(message) {
    super(message);
    this.name = "KvRefused";
  }
}

/**
 * The host refused an event to emit (e.g. an empty type): the same handler would build the
 * same event again, so a handler that lets it propagate is rejected.
 */
export class PublishError extends Reject {
  constructor(message) {
    super(message);
    this.name = "PublishError";
  }
}

/**
 * A value of an event's data that is not what its validator expects; `path` names it
 * (`data.items[2].sku`). `event.json(validator)` turns it into a `Reject`.
 */
export class DecodeError extends Error {
  constructor(path, message) {
    super(`${path}: ${message}`);
    this.name = "DecodeError";
    this.path = path;
  }
}

function kindOf(value) {
  if (value === null) {
    return "null";
  }
  if (Array.isArray(value)) {
    return "an array";
  }
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

function expected(ok, value, path, what) {
  if (!ok) {
    throw new DecodeError(path, `expected ${what}, got ${kindOf(value)}`);
  }
  return value;
}

// Validators: functions `(value, path) => value` that return the value when it has the
// expected shape and throw a `DecodeError` naming `path` when not. `fields`, `arrayOf`,
// `optional` and `oneOf` build larger ones; any function of that form is one.

/** A string. */
export const string = (value, path = "data") => expected(typeof value === "string", value, path, "a string");
/** A finite number. */
export const number = (value, path = "data") =>
  expected(typeof value === "number" && Number.isFinite(value), value, path, "a number");
/** A whole number within JavaScript's safe range. */
export const integer = (value, path = "data") =>
  expected(Number.isSafeInteger(value), value, path, "an integer");
/** `true` or `false`. */
export const boolean = (value, path = "data") => expected(typeof value === "boolean", value, path, "a boolean");
/** Any JSON value, unchecked. */
export const any = (value) => value;

/** `validator`'s value, or `undefined` when the field is absent or `null`. */
export function optional(validator) {
  const check = (value, path = "data") => (value === undefined || value === null ? undefined : validator(value, path));
  check.optional = true;
  return check;
}

/** `validator`'s value, or `null` when the field is absent or `null`. */
export function nullable(validator) {
  const check = (value, path = "data") => (value === undefined || value === null ? null : validator(value, path));
  check.optional = true;
  return check;
}

/** An array whose every item passes `validator`. */
export function arrayOf(validator) {
  return (value, path = "data") => {
    expected(Array.isArray(value), value, path, "an array");
    return value.map((item, index) => validator(item, `${path}[${index}]`));
  };
}

/** One of the given values (compared with `===`), e.g. `oneOf("card", "invoice")`. */
export function oneOf(...values) {
  return (value, path = "data") => {
    if (!values.includes(value)) {
      throw new DecodeError(path, `expected one of ${values.map((v) => JSON.stringify(v)).join(", ")}, got ${JSON.stringify(value) ?? kindOf(value)}`);
    }
    return value;
  };
}

/**
 * An object with the given fields, each checked by its validator; a field that is absent
 * is an error unless its validator is `optional(...)`. Returns an object of the declared
 * fields only (others are ignored, so a producer may add fields).
 */
export function fields(shape) {
  for (const [name, validator] of Object.entries(shape)) {
    if (typeof validator !== "function") {
      throw new TypeError(
        `fields(): \`${name}\` must be a validator (string, integer, fields({...}), …), not ${kindOf(validator)}`,
      );
    }
  }
  return (value, path = "data") => {
    expected(value !== null && typeof value === "object" && !Array.isArray(value), value, path, "an object");
    const result = {};
    for (const [name, validator] of Object.entries(shape)) {
      const at = `${path}.${name}`;
      if (!Object.hasOwn(value, name) && !validator.optional) {
        throw new DecodeError(at, "is missing");
      }
      result[name] = validator(value[name], at);
    }
    return result;
  };
}

/** `value` as JSON; `Reject` if JSON cannot encode it (the same handler would fail again). */
function encodeJson(value, what) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (error) {
    throw new Reject(`cannot encode ${what} as JSON: ${error.message}`);
  }
  if (text === undefined) {
    throw new Reject(`cannot encode ${what} as JSON: ${typeof value} has no JSON form`);
  }
  return text;
}

/** A CloudEvents 1.0 event as the host delivered it. */
export class Event {
  #event;
  #extensions;

  constructor(event) {
    this.#event = event;
    this.#extensions = new Map(event.extensions.map(([name, value]) => [name, value.val]));
  }

  /** Unique within `source`. */
  get id() {
    return this.#event.id;
  }
  /** The context that produced the event. */
  get source() {
    return this.#event.source;
  }
  /** The event type, e.g. `UserCreated`. */
  get type() {
    return this.#event.type;
  }
  /** What the event is about (the ordering key), or undefined. */
  get subject() {
    return this.#event.subject;
  }
  /** When it happened (RFC 3339), or undefined. */
  get time() {
    return this.#event.time;
  }
  get datacontenttype() {
    return this.#event.datacontenttype;
  }
  get dataschema() {
    return this.#event.dataschema;
  }
  /** The payload bytes, or undefined. */
  get data() {
    return this.#event.data;
  }
  /** The extension attributes as a plain object. */
  get extensions() {
    return Object.fromEntries(this.#extensions);
  }
  /** One extension attribute, or undefined. */
  extension(name) {
    return this.#extensions.get(name);
  }
  /** The `correlationid` extension. */
  get correlationId() {
    const value = this.#extensions.get("correlationid");
    return typeof value === "string" ? value : undefined;
  }
  /** The `causationid` extension: the id of the event that caused this one. */
  get causationId() {
    const value = this.#extensions.get("causationid");
    return typeof value === "string" ? value : undefined;
  }

  /** The payload as UTF-8 text; `Reject` if there is none or it is not UTF-8. */
  text() {
    if (this.data === undefined) {
      throw new Reject(`${this.type} event \`${this.id}\`: has no data`);
    }
    try {
      return decoder.decode(this.data);
    } catch (error) {
      throw new Reject(`${this.type} event \`${this.id}\`: data is not UTF-8`);
    }
  }

  /**
   * The payload decoded as JSON, checked by `validator` when one is given (see `fields`);
   * `Reject`, naming what is wrong, if the data is absent, of another media type, invalid
   * JSON or refused by the validator.
   */
  json(validator) {
    if (this.data === undefined) {
      throw new Reject(`${this.type} event \`${this.id}\`: has no data`);
    }
    if (!isJson(this.datacontenttype)) {
      throw new Reject(
        `${this.type} event \`${this.id}\`: data has content type \`${this.datacontenttype}\`, not JSON`,
      );
    }
    const text = this.text();
    let value;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw new Reject(`${this.type} event \`${this.id}\`: data is not valid JSON: ${error.message}`);
    }
    if (validator === undefined) {
      return value;
    }
    try {
      return validator(value, "data");
    } catch (error) {
      // Data that does not fit is the event's fault; any other error is the plugin's (a
      // bug in a validator), which traps like any other exception.
      if (error instanceof DecodeError) {
        throw new Reject(`${this.type} event \`${this.id}\`: ${error.message}`);
      }
      throw error;
    }
  }
}

function describe(error) {
  if (error instanceof Error) {
    return error.stack ? `${error.name}: ${error.message}\n${error.stack}` : `${error.name}: ${error.message}`;
  }
  return String(error);
}

/**
 * What the host receives for an error `handle` threw or its promise rejected with: a
 * `handler-error` for `Retry`, `KvError` and `Reject`; anything else traps, after the
 * log says what it was (the trap itself says only `unreachable`).
 */
function failure(error) {
  if (error instanceof Retry || error instanceof KvError) {
    return { tag: "retry", val: error.message };
  }
  if (error instanceof Reject) {
    return { tag: "reject", val: error.message };
  }
  wasiLog("error", "", `uncaught exception: ${describe(error)}`);
  return error;
}

/**
 * The `eventHandler` export of a plugin: `name` (its file name without `.wasm`), `version`,
 * `subscriptions` (exact types, prefixes such as `User*`, or `*`) and `handle(event)`, which
 * may be `async`: its promise is awaited, and a rejection fails the event exactly as a
 * thrown error does.
 */
export function definePlugin({ name, version = "0.0.0", subscriptions, handle }) {
  if (typeof name !== "string" || name === "") {
    throw new TypeError("definePlugin needs the plugin's name");
  }
  if (!Array.isArray(subscriptions) || !subscriptions.every((s) => typeof s === "string" && s !== "")) {
    throw new TypeError('definePlugin needs subscriptions: an array of event-type patterns, e.g. ["UserCreated"]');
  }
  if (subscriptions.length === 0) {
    throw new TypeError('definePlugin: subscriptions is empty: name the event types to handle, or ["*"]');
  }
  if (typeof handle !== "function") {
    throw new TypeError("definePlugin needs a handle(event) function");
  }
  return {
    metadata() {
      return { name, version, subscriptions: [...subscriptions] };
    },
    handle(event) {
      let result;
      try {
        result = handle(new Event(event));
      } catch (error) {
        throw failure(error);
      }
      // An async handler: componentize-js awaits the promise the export returns, so its
      // outcome, not the call's, is the event's.
      if (typeof result?.then === "function") {
        return result.then(
          () => undefined,
          (error) => {
            throw failure(error);
          },
        );
      }
    },
  };
}

let bucket;

function store(operation) {
  try {
    bucket ??= open("");
    return operation(bucket);
  } catch (error) {
    const tag = error?.payload?.tag;
    if (tag === "no-such-store" || tag === "access-denied") {
      throw new KvRefused(`the plugin's key-value store: ${tag.replace(/-/g, " ")}`);
    }
    const reason = tag === "other" ? error.payload.val : (tag ?? String(error));
    throw new KvError(`the plugin's key-value store: ${reason}`);
  }
}

/** The plugin's key-value store; writes apply only if the handler succeeds. */
export const kv = {
  /** The bytes stored under `key`, or undefined. */
  get(key) {
    return store((b) => b.get(key));
  },
  /**
   * Stores `value` (a Uint8Array, or a string as UTF-8) under `key`. Any other value is a
   * mistake in the plugin (`setJson` stores the rest): a `TypeError`, which traps.
   */
  set(key, value) {
    let bytes;
    if (typeof value === "string") {
      bytes = encoder.encode(value);
    } else if (value instanceof Uint8Array) {
      bytes = value;
    } else {
      const kind = value === null ? "null" : (value?.constructor?.name ?? typeof value);
      throw new TypeError(`kv.set(${JSON.stringify(key)}, …) takes a Uint8Array or a string, not ${kind}: use kv.setJson to store other values`);
    }
    store((b) => b.set(key, bytes));
  },
  /** Removes `key`; removing an absent key is not an error. */
  delete(key) {
    store((b) => b.delete(key));
  },
  /** Whether `key` holds a value. */
  exists(key) {
    return store((b) => b.exists(key));
  },
  /** Every key. */
  keys() {
    const keys = [];
    let cursor;
    do {
      const page = store((b) => b.listKeys(cursor));
      keys.push(...page.keys);
      cursor = page.cursor;
    } while (cursor !== undefined);
    return keys;
  },
  /** The JSON value stored under `key`, or undefined; `Reject` if what is stored there is not JSON. */
  getJson(key) {
    const value = kv.get(key);
    if (value === undefined) {
      return undefined;
    }
    try {
      return JSON.parse(decoder.decode(value));
    } catch (error) {
      throw new Reject(`the value of key \`${key}\` is not valid JSON: ${error.message}`);
    }
  },
  /** Stores `value` as compact JSON under `key`; `Reject` if JSON cannot encode it. */
  setJson(key, value) {
    kv.set(key, encodeJson(value, `the value for key \`${key}\``));
  },
};

/**
 * Emits a follow-up event and returns its id. `data` as a Uint8Array is sent as is, a string
 * as `text/plain`, `undefined` or `null` as no data, anything else as JSON. Published only if
 * the handler succeeds.
 */
export function publish(type, data, { subject, datacontenttype, dataschema, extensions = {} } = {}) {
  let payload;
  if (data instanceof Uint8Array) {
    payload = data;
  } else if (typeof data === "string") {
    payload = encoder.encode(data);
    datacontenttype ??= "text/plain";
  } else if (data !== undefined && data !== null) {
    payload = encoder.encode(encodeJson(data, `the data of a ${type} event`));
    datacontenttype ??= "application/json";
  }
  const attributes = Object.entries(extensions).map(([name, value]) => [name, toWitValue(name, value)]);
  try {
    return wasiPublish({ type, subject, datacontenttype, dataschema, data: payload, extensions: attributes });
  } catch (error) {
    throw new PublishError(String(error?.payload ?? error));
  }
}

/** Log lines the host writes with the plugin's name. */
export const log = {
  trace: (message) => wasiLog("trace", "", message),
  debug: (message) => wasiLog("debug", "", message),
  info: (message) => wasiLog("info", "", message),
  warn: (message) => wasiLog("warn", "", message),
  error: (message) => wasiLog("error", "", message),
};

/** The plugin's settings: the `[config]` table of its `NAME.toml`. */
export const config = {
  /** One value, or undefined when it is not set or cannot be read (logged as a warning). */
  get(key) {
    try {
      return configGet(key);
    } catch (error) {
      wasiLog("warn", "", `reading config \`${key}\`: ${String(error?.payload?.val ?? error)}`);
      return undefined;
    }
  },
  /** Every value as an object. */
  all() {
    try {
      return Object.fromEntries(configGetAll());
    } catch (error) {
      throw new Retry(`reading the config: ${String(error?.payload?.val ?? error)}`);
    }
  },
};
