// user-projection, in JavaScript: the same read model as the Rust plugin
// (plugins/user-projection), byte for byte.
//
// Subscribes to `UserCreated`, `UserProfileUpdated`, `UserContactUpdated` and
// `UserDeleted` and keeps `user:{id}` → the user as compact JSON: `{id, name, email, phone,
// address, version, last_event_id, updated_at}`. The user id is the event's `subject`, or
// `data.id` when there is no subject (if both are present they must agree). In an update,
// an absent field is left alone and `"phone": null` / `"address": null` clears it. A
// redelivered event changes nothing: each user remembers the last event applied to it.
// Fails with `Reject` for a payload that does not decode, an update that changes nothing,
// a missing or conflicting user id, or an unknown type; with `Retry` for an update to a
// user not created yet, and when the store fails.

import { definePlugin, kv, log, Reject, Retry } from "./evhost.js";

const MISSING = Symbol("missing");
const ADDRESS_PARTS = ["street", "city", "postal_code", "country"];

/** Reads a JSON object field by field with the Rust plugin's rules. */
class Data {
  constructor(event, target) {
    this.event = event;
    this.target = target;
    this.data = event.json();
    if (this.data === null || typeof this.data !== "object" || Array.isArray(this.data)) {
      throw this.error("expected a JSON object");
    }
  }

  error(message) {
    return new Reject(
      `${this.event.type} event \`${this.event.id}\`: data does not decode as \`${this.target}\`: ${message}`,
    );
  }

  check(name, value) {
    if (typeof value !== "string") {
      throw this.error(`\`${name}\` must be a string`);
    }
    return value;
  }

  required(name) {
    if (!Object.hasOwn(this.data, name)) {
      throw this.error(`missing field \`${name}\``);
    }
    return this.check(name, this.data[name]);
  }

  /** Absent and `null` are both `null`. */
  optional(name) {
    const value = this.data[name];
    return value === undefined || value === null ? null : this.check(name, value);
  }

  /** `MISSING` when absent, `null` for `null`, the string otherwise. */
  present(name) {
    return Object.hasOwn(this.data, name) ? this.optional(name) : MISSING;
  }

  address(value) {
    if (value === undefined || value === null) {
      return null;
    }
    if (typeof value !== "object" || Array.isArray(value)) {
      throw this.error("`address` must be an object");
    }
    const address = {};
    for (const part of ADDRESS_PARTS) {
      const item = value[part];
      address[part] = item === undefined || item === null ? null : this.check(`address.${part}`, item);
    }
    return address;
  }

  presentAddress() {
    return Object.hasOwn(this.data, "address") ? this.address(this.data.address) : MISSING;
  }
}

function userIdOf(event, dataId) {
  const subject = event.subject;
  if (subject !== undefined && dataId !== null && subject !== dataId) {
    throw new Reject(
      `${event.type} event \`${event.id}\`: subject \`${subject}\` and data.id \`${dataId}\` name different users`,
    );
  }
  const id = subject ?? dataId ?? "";
  if (id.trim() === "") {
    throw new Reject(`${event.type} event \`${event.id}\` names no user: set \`subject\` or \`data.id\``);
  }
  return id;
}

function nothingToChange(event, expected) {
  return new Reject(`${event.type} event \`${event.id}\` changes nothing: its data has neither ${expected}`);
}

function decode(event) {
  switch (event.type) {
    case "UserCreated": {
      const data = new Data(event, "user_projection::UserCreated");
      const change = {
        name: data.required("name"),
        email: data.required("email"),
        phone: data.optional("phone"),
        address: data.address(data.data.address),
      };
      return { change, dataId: data.optional("id") };
    }
    case "UserProfileUpdated": {
      const data = new Data(event, "user_projection::ProfileUpdated");
      const change = { name: data.optional("name") ?? MISSING, address: data.presentAddress() };
      if (change.name === MISSING && change.address === MISSING) {
        throw nothingToChange(event, "`name` or `address`");
      }
      return { change, dataId: data.optional("id") };
    }
    case "UserContactUpdated": {
      const data = new Data(event, "user_projection::ContactUpdated");
      const change = { email: data.optional("email") ?? MISSING, phone: data.present("phone") };
      if (change.email === MISSING && change.phone === MISSING) {
        throw nothingToChange(event, "`email` or `phone`");
      }
      return { change, dataId: data.optional("id") };
    }
    case "UserDeleted": {
      const dataId = event.data === undefined ? null : new Data(event, "user_projection::UserDeleted").optional("id");
      return { change: {}, dataId };
    }
    default:
      throw new Reject(`user-projection does not handle \`${event.type}\` events`);
  }
}

// ANCHOR: handler
export const eventHandler = definePlugin({
  name: "user-projection",
  version: "0.1.0",
  subscriptions: ["UserCreated", "UserProfileUpdated", "UserContactUpdated", "UserDeleted"],
  handle(event) {
    const { change, dataId } = decode(event);
    const userId = userIdOf(event, dataId);
    const key = `user:${userId}`;
    const current = kv.getJson(key);
    if (current !== undefined && current.last_event_id === event.id) {
      log.debug(`${event.type} \`${event.id}\` changes nothing for ${key}`);
      return;
    }
    const version = (current?.version ?? 0) + 1;
    if (event.type === "UserDeleted") {
      if (current !== undefined) {
        kv.delete(key);
      } else {
        log.debug(`${event.type} \`${event.id}\` changes nothing for ${key}`);
      }
      return;
    }
    let user;
    if (event.type === "UserCreated") {
      // A repeated creation (with a new event id) overwrites: the latest word wins.
      user = { id: userId, ...change };
    } else if (current === undefined) {
      // One user's events arrive in order: its creation is not applied yet (or it was
      // deleted). Retrying gives a late `UserCreated` the chance to land first.
      throw new Retry(`user \`${userId}\` is not in the read model (no UserCreated applied yet)`);
    } else {
      user = { id: current.id, name: current.name, email: current.email, phone: current.phone, address: current.address };
      for (const [field, value] of Object.entries(change)) {
        if (value !== MISSING) {
          user[field] = value;
        }
      }
    }
    user.version = version;
    user.last_event_id = event.id;
    user.updated_at = event.time ?? null;
    kv.setJson(key, user);
  },
});
// ANCHOR_END: handler
