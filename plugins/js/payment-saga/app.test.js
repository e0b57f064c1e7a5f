// The saga under node: `node --test` (with the `evhost` package installed).

import { test } from "node:test";
import assert from "node:assert/strict";
import { event, run } from "evhost/testing";
import { eventHandler } from "./app.js";

const created = event(
  "PaymentCreated",
  { order_id: "o1", amount: 1200, currency: "EUR", items: [{ sku: "book", quantity: 2 }] },
  { id: "e1", subject: "p1" },
);

test("a new payment requests the inventory", async () => {
  const result = await run(eventHandler, created);
  assert.equal(result.outcome, "ok");
  assert.equal(result.kvJson("saga:p1").status, "reserving-inventory");
  assert.deepEqual(
    result.published.map((e) => [e.type, e.subject, e.json()]),
    [["InventoryReservationRequested", "p1", { payment_id: "p1", order_id: "o1", items: [{ sku: "book", quantity: 2 }] }]],
  );
});

test("reserved inventory requests the shipment; failed inventory cancels the payment", async () => {
  const { kv } = await run(eventHandler, created);
  const reserved = await run(eventHandler, event("InventoryReserved", { reservation_id: "r1" }, { subject: "p1" }), { kv });
  assert.deepEqual(reserved.published.map((e) => e.type), ["ShipmentRequested"]);
  const failed = await run(eventHandler, event("InventoryReservationFailed", { reason: "none left" }, { subject: "p1" }), { kv });
  assert.deepEqual(failed.published.map((e) => e.type), ["PaymentCancelled"]);
  assert.equal(failed.kvJson("saga:p1").status, "cancelled");
});

test("a quantity that is not an unsigned integer is rejected naming it", async () => {
  const result = await run(
    eventHandler,
    event("PaymentCreated", { order_id: "o1", amount: 5, currency: "EUR", items: [{ sku: "a", quantity: -1 }] }, { subject: "p2" }),
  );
  assert.equal(result.outcome, "reject");
  assert.match(result.reason, /data\.items\[0\]\.quantity: expected an unsigned integer/);
});
