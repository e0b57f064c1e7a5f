// The read model under node: `node --test` (with the `evhost` package installed).

import { test } from "node:test";
import assert from "node:assert/strict";
import { event, run } from "evhost/testing";
import { eventHandler } from "./app.js";

const created = event(
  "UserCreated",
  { name: "Ada", email: "ada@example.com", address: { city: "London" } },
  { id: "e1", subject: "u1", time: "2026-01-01T00:00:00Z" },
);

test("a new user is stored with every field, absent ones as null", async () => {
  const result = await run(eventHandler, created);
  assert.equal(result.outcome, "ok");
  assert.deepEqual(result.kvJson("user:u1"), {
    id: "u1",
    name: "Ada",
    email: "ada@example.com",
    phone: null,
    address: { street: null, city: "London", postal_code: null, country: null },
    version: 1,
    last_event_id: "e1",
    updated_at: "2026-01-01T00:00:00Z",
  });
});

test("an update changes only what it names; `phone: null` clears", async () => {
  const { kv } = await run(eventHandler, created);
  const result = await run(
    eventHandler,
    event("UserContactUpdated", { email: "ada@new.example", phone: null }, { id: "e2", subject: "u1" }),
    { kv },
  );
  assert.equal(result.outcome, "ok");
  const user = result.kvJson("user:u1");
  assert.equal(user.email, "ada@new.example");
  assert.equal(user.name, "Ada");
  assert.equal(user.version, 2);
});

test("a payload that does not decode is rejected naming the field", async () => {
  const result = await run(eventHandler, event("UserCreated", { name: "Ada" }, { id: "e3", subject: "u1" }));
  assert.equal(result.outcome, "reject");
  assert.match(result.reason, /data\.email: is missing/);
});

test("an update before the user exists is retried", async () => {
  const result = await run(eventHandler, event("UserProfileUpdated", { name: "Bo" }, { subject: "u9" }));
  assert.equal(result.outcome, "retry");
});
