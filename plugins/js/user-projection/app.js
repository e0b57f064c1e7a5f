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

import { definePlugin, fields, kv, log, nullable, Reject, Retry, string } from "evhost";

const MISSING = Symbol("missing");

/** A field an update may leave out: `MISSING` when absent, `null` for `null`, else the value. */
function presence(validator) {
  const check = (value, path) => (value === undefined ? MISSING : value === null ? null : validator(value, path));
  check.optional = true;
  return check;
}

const Address = fields({
  street: nullable(string),
  city: nullable(string),
  postal_code: nullable(string),
  country: nullable(string),
});

// The payloads, checked field by field with the Rust plugin's rules: a missing required
// field or a wrong type rejects the event, naming the field; unknown fields are ignored.
const UserCreated = fields({
  id: nullable(string),
  name: string,
  email: string,
  phone: nullable(string),
  address: nullable(Address),
});
const ProfileUpdated = fields({ id: nullable(string), name: presence(string), address: presence(Address) });
const ContactUpdated = fields({ id: nullable(string), email: presence(string), phone: presence(string) });
const UserDeleted = fields({ id: nullable(string) });

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
      const { id, ...change } = event.json(UserCreated);
      return { change, dataId: id };
    }
    case "UserProfileUpdated": {
      const { id, ...change } = event.json(ProfileUpdated);
      // A `"name": null` leaves the name alone, as an absent one does.
      change.name ??= MISSING;
      if (change.name === MISSING && change.address === MISSING) {
        throw nothingToChange(event, "`name` or `address`");
      }
      return { change, dataId: id };
    }
    case "UserContactUpdated": {
      const { id, ...change } = event.json(ContactUpdated);
      change.email ??= MISSING;
      if (change.email === MISSING && change.phone === MISSING) {
        throw nothingToChange(event, "`email` or `phone`");
      }
      return { change, dataId: id };
    }
    case "UserDeleted": {
      const dataId = event.data === undefined ? null : event.json(UserDeleted).id;
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
