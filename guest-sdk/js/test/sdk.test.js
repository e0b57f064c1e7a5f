// The SDK under node, through `evhost/testing`: what a plugin author relies on.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Reject,
  Retry,
  arrayOf,
  config,
  definePlugin,
  fields,
  integer,
  kv,
  log,
  oneOf,
  optional,
  publish,
  string,
} from "evhost";
import { event, run } from "evhost/testing";

const plugin = (handle) => definePlugin({ name: "t", subscriptions: ["*"], handle });

test("a handler that returns is ok, with its writes, emitted events and logs", async () => {
  const result = await run(
    plugin((e) => {
      const n = kv.getJson("count") ?? 0;
      kv.setJson("count", n + 1);
      kv.set("last", e.id);
      publish("Counted", { n: n + 1 }, { subject: e.subject, extensions: { tenant: "acme" } });
      log.info(`counted ${e.id}`);
    }),
    event("Tick", {}, { id: "e1", subject: "s" }),
    { kv: { count: 41 } },
  );
  assert.equal(result.outcome, "ok");
  assert.equal(result.kvJson("count"), 42);
  assert.equal(result.kvText("last"), "e1");
  assert.equal(result.published.length, 1);
  assert.equal(result.published[0].type, "Counted");
  assert.equal(result.published[0].subject, "s");
  assert.equal(result.published[0].datacontenttype, "application/json");
  assert.deepEqual(result.published[0].json(), { n: 42 });
  assert.deepEqual(result.published[0].extensions, { tenant: "acme" });
  assert.deepEqual(result.logs, [{ level: "info", message: "counted e1" }]);
});

test("Retry and Reject decide the outcome, thrown or from an async handler after an await", async () => {
  for (const [error, outcome] of [
    [new Retry("later"), "retry"],
    [new Reject("never"), "reject"],
  ]) {
    const sync = await run(plugin(() => { throw error; }), event("T", {}));
    assert.equal(sync.outcome, outcome);
    assert.equal(sync.reason, error.message);
    const later = await run(
      plugin(async () => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        throw error;
      }),
      event("T", {}),
    );
    assert.equal(later.outcome, outcome, "after an await");
  }
});

test("a failed handler leaves the store as it was and emits nothing", async () => {
  const result = await run(
    plugin(() => {
      kv.set("written", "yes");
      publish("Emitted", { a: 1 });
      throw new Retry("flaky");
    }),
    event("T", {}),
    { kv: { kept: "before" } },
  );
  assert.equal(result.outcome, "retry");
  assert.equal(result.kvText("written"), undefined);
  assert.equal(result.kvText("kept"), "before");
  assert.deepEqual(result.published, []);
});

test("any other exception traps, and says what it was", async () => {
  const result = await run(plugin(() => { null.boom; }), event("T", {}));
  assert.equal(result.outcome, "trap");
  assert.match(result.reason, /TypeError/);
  assert.match(result.logs[0].message, /uncaught exception: TypeError/);
});

test("event.json(validator) rejects naming the missing or mistyped field", async () => {
  const Order = fields({
    id: string,
    quantity: integer,
    note: optional(string),
    method: oneOf("card", "invoice"),
    items: arrayOf(fields({ sku: string })),
  });
  let seen;
  const handler = plugin((e) => {
    seen = e.json(Order);
  });
  const good = { id: "o1", quantity: 2, method: "card", items: [{ sku: "a", extra: 1 }], more: true };
  assert.equal((await run(handler, event("OrderPlaced", good))).outcome, "ok");
  assert.deepEqual(seen, { id: "o1", quantity: 2, note: undefined, method: "card", items: [{ sku: "a" }] });

  const cases = [
    [{ ...good, id: null }, "data.id: expected a string, got null"],
    [(({ quantity, ...rest }) => rest)(good), "data.quantity: is missing"],
    [{ ...good, quantity: "2" }, "data.quantity: expected an integer, got a string"],
    [{ ...good, method: "cash" }, 'data.method: expected one of "card", "invoice", got "cash"'],
    [{ ...good, items: [{ sku: 7 }] }, "data.items[0].sku: expected a string, got a number"],
  ];
  for (const [data, reason] of cases) {
    const result = await run(handler, event("OrderPlaced", data, { id: "x" }));
    assert.equal(result.outcome, "reject", reason);
    assert.equal(result.reason, `OrderPlaced event \`x\`: ${reason}`);
  }
});

test("text/json and +json data are JSON; other media types are rejected", async () => {
  const handler = plugin((e) => e.json());
  const bytes = new TextEncoder().encode('{"a":1}');
  for (const type of ["text/json", "application/cloudevents+json", "application/json; charset=utf-8"]) {
    assert.equal((await run(handler, event("T", bytes, { datacontenttype: type }))).outcome, "ok", type);
  }
  assert.equal((await run(handler, event("T", bytes, { datacontenttype: "text/plain" }))).outcome, "reject");
});

test("kv.set takes text or bytes; another value is a mistake in the plugin, a trap", async () => {
  const result = await run(plugin(() => kv.set("k", { a: 1 })), event("T", {}));
  assert.equal(result.outcome, "trap");
  assert.match(result.reason, /kv\.set\("k", …\) takes a Uint8Array or a string, not Object/);
});

test("a failing store is retried; a refused one is rejected", async () => {
  const handler = plugin(() => kv.get("k"));
  const failed = await run(handler, event("T", {}), { kvFailure: { tag: "other", val: "disk full" } });
  assert.equal(failed.outcome, "retry");
  assert.match(failed.reason, /disk full/);
  const refused = await run(handler, event("T", {}), { kvFailure: { tag: "access-denied" } });
  assert.equal(refused.outcome, "reject");
});

test("publish: null and undefined send no data; a refused event rejects", async () => {
  const result = await run(
    plugin(() => {
      publish("A", null);
      publish("B");
    }),
    event("T", {}),
  );
  assert.deepEqual(result.published.map((p) => p.data), [undefined, undefined]);
  const refused = await run(plugin(() => publish("", { a: 1 })), event("T", {}));
  assert.equal(refused.outcome, "reject");
});

test("config: the values the run was given", async () => {
  let seen;
  await run(plugin(() => (seen = [config.get("greeting"), config.get("absent"), config.all()])), event("T", {}), {
    config: { greeting: "hello" },
  });
  assert.deepEqual(seen, ["hello", undefined, { greeting: "hello" }]);
});

test("metadata is what definePlugin was given", () => {
  const handler = definePlugin({ name: "n", version: "1.2.3", subscriptions: ["User*"], handle() {} });
  assert.deepEqual(handler.metadata(), { name: "n", version: "1.2.3", subscriptions: ["User*"] });
  assert.throws(() => definePlugin({ subscriptions: [], handle() {} }), /name/);
});

test("a validator that fails for another reason than the data is a bug in the plugin: a trap", async () => {
  const buggy = (value) => value.missing.field;
  const result = await run(plugin((e) => e.json(buggy)), event("T", {}));
  assert.equal(result.outcome, "trap");
  assert.match(result.reason, /TypeError/);
  assert.throws(() => fields({ address: { city: string } }), /`address` must be a validator/);
});

test("an extension named like a CloudEvents attribute is refused, as the host refuses it", async () => {
  const result = await run(plugin(() => publish("Y", { a: 1 }, { extensions: { subject: "s" } })), event("T", {}));
  assert.equal(result.outcome, "reject");
  assert.match(result.reason, /subject/);
});

test("changing bytes read from the store changes nothing stored", async () => {
  const result = await run(
    plugin(() => {
      kv.get("k")[0] = 65;
      throw new Reject("no");
    }),
    event("T", {}),
    { kv: { k: "zz" } },
  );
  assert.equal(result.kvText("k"), "zz");
});

test("subscriptions must name event types", () => {
  assert.throws(() => definePlugin({ name: "n", subscriptions: [], handle() {} }), /subscriptions is empty/);
  assert.throws(() => definePlugin({ name: "n", subscriptions: [7], handle() {} }), /event-type patterns/);
});

test("an event built with null data has no data", () => {
  assert.equal(event("T", null).data, undefined);
});
