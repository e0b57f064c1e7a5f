// payment-saga, in JavaScript: the same state and the same emitted events as the Rust
// plugin (plugins/payment-saga), byte for byte.
//
//     PaymentCreated             ──► InventoryReservationRequested
//     InventoryReserved          ──► ShipmentRequested
//     InventoryReservationFailed ──► PaymentCancelled              (compensation)
//
// The payment id is the event's `subject`, or `data.payment_id` when there is no subject
// (if both are present they must agree); every emitted event has it as its subject. The
// state is stored under `saga:{payment_id}`: `{payment_id, order_id, amount, currency,
// items, status}` with status `reserving-inventory`, `shipment-requested` or `cancelled`.
// A step is taken once: a duplicate, or an inventory event for a payment past that step,
// emits nothing. Fails with `Reject` for a payload that does not decode, a missing payment
// or order id, or contradictory news; with `Retry` when the store fails.
//
// Build it as an `evhost new --lang js` plugin is built: esbuild bundles it with the
// `evhost` package, componentize-js makes the bundle a component (tests/build.rs does).

import { arrayOf, DecodeError, definePlugin, fields, kv, log, nullable, publish, Reject, string } from "evhost";

const MAX_U32 = 2 ** 32 - 1;

/** A whole number from 0 to `max`. */
const unsigned = (max) => (value, path) => {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new DecodeError(path, `expected an unsigned integer up to ${max}`);
  }
  return value;
};

// The payloads, checked field by field with the Rust plugin's rules: unknown fields are
// ignored, `null` is an absent optional value, a wrong type or a missing field rejects.
const PaymentCreated = fields({
  payment_id: nullable(string),
  order_id: string,
  amount: unsigned(Number.MAX_SAFE_INTEGER),
  currency: string,
  items: arrayOf(fields({ sku: string, quantity: unsigned(MAX_U32) })),
});
const InventoryReserved = fields({
  payment_id: nullable(string),
  order_id: nullable(string),
  reservation_id: nullable(string),
});
const InventoryReservationFailed = fields({
  payment_id: nullable(string),
  order_id: nullable(string),
  reason: nullable(string),
});

function decode(event) {
  switch (event.type) {
    case "PaymentCreated": {
      const data = event.json(PaymentCreated);
      return {
        paymentId: data.payment_id,
        orderId: data.order_id,
        amount: data.amount,
        currency: data.currency,
        items: data.items,
      };
    }
    case "InventoryReserved": {
      const data = event.json(InventoryReserved);
      return { paymentId: data.payment_id, orderId: data.order_id, reservationId: data.reservation_id };
    }
    case "InventoryReservationFailed": {
      const data = event.json(InventoryReservationFailed);
      return { paymentId: data.payment_id, orderId: data.order_id, reason: data.reason };
    }
    default:
      throw new Reject(`payment-saga does not handle \`${event.type}\` events`);
  }
}

function paymentIdOf(event, dataId) {
  const subject = event.subject;
  if (subject !== undefined && dataId !== null && subject !== dataId) {
    throw new Reject(
      `${event.type} event \`${event.id}\`: subject \`${subject}\` and data.payment_id \`${dataId}\` differ`,
    );
  }
  const id = subject ?? dataId ?? "";
  if (id.trim() === "") {
    throw new Reject(`${event.type} event \`${event.id}\` names no payment: set \`subject\` or \`data.payment_id\``);
  }
  return id;
}

/** A saga for a payment whose `PaymentCreated` this plugin never saw. */
function joinedLate(paymentId, orderId, eventType) {
  if (orderId === null) {
    throw new Reject(`${eventType} for unknown payment \`${paymentId}\` carries no \`order_id\``);
  }
  return {
    payment_id: paymentId,
    order_id: orderId,
    amount: null,
    currency: null,
    items: [],
    status: "reserving-inventory",
  };
}

/** The state machine: `{ saga, type, data }` to store and emit, or `{ ignore }`. */
function step(event, input, paymentId, saga) {
  switch (event.type) {
    case "PaymentCreated": {
      if (saga !== undefined) {
        return { ignore: `the saga for payment \`${paymentId}\` has already started` };
      }
      const next = {
        payment_id: paymentId,
        order_id: input.orderId,
        amount: input.amount,
        currency: input.currency,
        items: input.items,
        status: "reserving-inventory",
      };
      return {
        saga: next,
        type: "InventoryReservationRequested",
        data: { payment_id: next.payment_id, order_id: next.order_id, items: next.items },
      };
    }
    case "InventoryReserved": {
      if (saga?.status === "shipment-requested") {
        return { ignore: `shipment for payment \`${paymentId}\` already requested` };
      }
      if (saga?.status === "cancelled") {
        throw new Reject(
          `inventory was reserved for payment \`${paymentId}\`, which is already cancelled; ` +
            "the reservation needs releasing by hand",
        );
      }
      const current = saga ?? joinedLate(paymentId, input.orderId, event.type);
      const next = { ...current, status: "shipment-requested" };
      return {
        saga: next,
        type: "ShipmentRequested",
        data: {
          payment_id: next.payment_id,
          order_id: next.order_id,
          items: next.items,
          reservation_id: input.reservationId,
        },
      };
    }
    default: {
      if (saga?.status === "cancelled") {
        return { ignore: `payment \`${paymentId}\` is already cancelled` };
      }
      if (saga?.status === "shipment-requested") {
        throw new Reject(
          `inventory reservation for payment \`${paymentId}\` failed after it had succeeded ` +
            "and the shipment was requested",
        );
      }
      const current = saga ?? joinedLate(paymentId, input.orderId, event.type);
      const next = { ...current, status: "cancelled" };
      return {
        saga: next,
        type: "PaymentCancelled",
        data: {
          payment_id: next.payment_id,
          order_id: next.order_id,
          amount: next.amount,
          currency: next.currency,
          reason: input.reason ?? "inventory reservation failed",
        },
      };
    }
  }
}

// ANCHOR: handler
export const eventHandler = definePlugin({
  name: "payment-saga",
  version: "0.1.0",
  subscriptions: ["PaymentCreated", "InventoryReserved", "InventoryReservationFailed"],
  handle(event) {
    const input = decode(event);
    const paymentId = paymentIdOf(event, input.paymentId);
    const key = `saga:${paymentId}`;
    const outcome = step(event, input, paymentId, kv.getJson(key));
    if (outcome.ignore !== undefined) {
      log.info(`${event.type} \`${event.id}\` ignored: ${outcome.ignore}`);
      return;
    }
    kv.setJson(key, outcome.saga);
    const id = publish(outcome.type, outcome.data, { subject: paymentId });
    log.info(`payment ${paymentId}: emitted ${outcome.type} \`${id}\``);
  },
});
// ANCHOR_END: handler
