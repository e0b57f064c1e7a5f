"""payment-saga, in Python: the same state and the same emitted events as the Rust plugin
(plugins/payment-saga), byte for byte.

    PaymentCreated             ──► InventoryReservationRequested
    InventoryReserved          ──► ShipmentRequested
    InventoryReservationFailed ──► PaymentCancelled              (compensation)

The payment id is the event's ``subject``, or ``data.payment_id`` when there is no subject
(if both are present they must agree); every emitted event has it as its subject. The state
is stored under ``saga:{payment_id}``: ``{payment_id, order_id, amount, currency, items,
status}`` with status ``reserving-inventory``, ``shipment-requested`` or ``cancelled``. A
step is taken once: a duplicate, or an inventory event for a payment past that step, emits
nothing. Fails with ``Reject`` for a payload that does not decode, a missing payment or
order id, or contradictory news; with ``Retry`` when the store fails.
"""

from typing import Any, Dict, List, Optional

import evhost
from evhost import Event, Reject

_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class _Data:
    """A JSON object read field by field with the Rust plugin's rules: unknown fields are
    ignored, ``null`` is an absent optional value, a wrong type is refused."""

    def __init__(self, event: Event, target: str) -> None:
        self.event = event
        self.target = target
        data = event.json()
        if not isinstance(data, dict):
            raise self.error("expected a JSON object")
        self.data: Dict[str, Any] = data

    def error(self, message: str) -> Reject:
        return Reject(
            f"{self.event.type} event `{self.event.id}`: data does not decode as `{self.target}`: {message}"
        )

    def string(self, name: str) -> str:
        if name not in self.data:
            raise self.error(f"missing field `{name}`")
        value = self.data[name]
        if not isinstance(value, str):
            raise self.error(f"`{name}` must be a string")
        return value

    def optional_string(self, name: str) -> Optional[str]:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"`{name}` must be a string")
        return value

    def unsigned(self, name: str, value: Any, most: int) -> int:
        # bool is an int in Python, not in JSON.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            raise self.error(f"`{name}` must be an unsigned integer")
        return value

    def items(self) -> List[Dict[str, Any]]:
        if "items" not in self.data:
            raise self.error("missing field `items`")
        items = self.data["items"]
        if not isinstance(items, list):
            raise self.error("`items` must be a sequence")
        decoded = []
        for item in items:
            if not isinstance(item, dict):
                raise self.error("an item must be an object")
            if not isinstance(item.get("sku"), str):
                raise self.error("`items.sku` must be a string")
            decoded.append({"sku": item["sku"], "quantity": self.unsigned("items.quantity", item.get("quantity"), _MAX_U32)})
        return decoded


def _decode(event: Event) -> Dict[str, Any]:
    if event.type == "PaymentCreated":
        data = _Data(event, "payment_saga::PaymentCreated")
        return {
            "payment_id": data.optional_string("payment_id"),
            "order_id": data.string("order_id"),
            "amount": data.unsigned("amount", data.data.get("amount"), _MAX_U64),
            "currency": data.string("currency"),
            "items": data.items(),
        }
    if event.type == "InventoryReserved":
        data = _Data(event, "payment_saga::InventoryReserved")
        return {
            "payment_id": data.optional_string("payment_id"),
            "order_id": data.optional_string("order_id"),
            "reservation_id": data.optional_string("reservation_id"),
        }
    if event.type == "InventoryReservationFailed":
        data = _Data(event, "payment_saga::InventoryReservationFailed")
        return {
            "payment_id": data.optional_string("payment_id"),
            "order_id": data.optional_string("order_id"),
            "reason": data.optional_string("reason"),
        }
    raise Reject(f"payment-saga does not handle `{event.type}` events")


def _payment_id(event: Event, data_id: Optional[str]) -> str:
    subject = event.subject
    if subject is not None and data_id is not None and subject != data_id:
        raise Reject(f"{event.type} event `{event.id}`: subject `{subject}` and data.payment_id `{data_id}` differ")
    payment_id = subject if subject is not None else (data_id or "")
    if not payment_id.strip():
        raise Reject(f"{event.type} event `{event.id}` names no payment: set `subject` or `data.payment_id`")
    return payment_id


def _joined_late(payment_id: str, order_id: Optional[str], event_type: str) -> Dict[str, Any]:
    """A saga for a payment whose ``PaymentCreated`` this plugin never saw."""
    if order_id is None:
        raise Reject(f"{event_type} for unknown payment `{payment_id}` carries no `order_id`")
    return {
        "payment_id": payment_id,
        "order_id": order_id,
        "amount": None,
        "currency": None,
        "items": [],
        "status": "reserving-inventory",
    }


def _step(event: Event, data: Dict[str, Any], payment_id: str, saga: Optional[Dict[str, Any]]):
    """The state machine: ``(saga, type, data)`` to store and emit, or a reason to ignore."""
    status = saga["status"] if saga is not None else None
    if event.type == "PaymentCreated":
        if saga is not None:
            return f"the saga for payment `{payment_id}` has already started"
        saga = {
            "payment_id": payment_id,
            "order_id": data["order_id"],
            "amount": data["amount"],
            "currency": data["currency"],
            "items": data["items"],
            "status": "reserving-inventory",
        }
        emit = {"payment_id": payment_id, "order_id": saga["order_id"], "items": saga["items"]}
        return saga, "InventoryReservationRequested", emit
    if event.type == "InventoryReserved":
        if status == "shipment-requested":
            return f"shipment for payment `{payment_id}` already requested"
        if status == "cancelled":
            raise Reject(
                f"inventory was reserved for payment `{payment_id}`, which is already cancelled; "
                "the reservation needs releasing by hand"
            )
        saga = dict(saga if saga is not None else _joined_late(payment_id, data["order_id"], event.type))
        saga["status"] = "shipment-requested"
        emit = {
            "payment_id": saga["payment_id"],
            "order_id": saga["order_id"],
            "items": saga["items"],
            "reservation_id": data["reservation_id"],
        }
        return saga, "ShipmentRequested", emit
    if status == "cancelled":
        return f"payment `{payment_id}` is already cancelled"
    if status == "shipment-requested":
        raise Reject(
            f"inventory reservation for payment `{payment_id}` failed after it had succeeded "
            "and the shipment was requested"
        )
    saga = dict(saga if saga is not None else _joined_late(payment_id, data["order_id"], event.type))
    saga["status"] = "cancelled"
    emit = {
        "payment_id": saga["payment_id"],
        "order_id": saga["order_id"],
        "amount": saga["amount"],
        "currency": saga["currency"],
        "reason": data["reason"] if data["reason"] is not None else "inventory reservation failed",
    }
    return saga, "PaymentCancelled", emit


# ANCHOR: handler
class EventHandler(evhost.Plugin):
    name = "payment-saga"
    version = "0.1.0"
    subscriptions = ["PaymentCreated", "InventoryReserved", "InventoryReservationFailed"]

    def on_event(self, event: Event) -> None:
        data = _decode(event)
        payment_id = _payment_id(event, data["payment_id"])
        key = f"saga:{payment_id}"
        outcome = _step(event, data, payment_id, evhost.kv.get_json(key))
        if isinstance(outcome, str):
            evhost.log.info(f"{event.type} `{event.id}` ignored: {outcome}")
            return
        saga, event_type, emit = outcome
        evhost.kv.set_json(key, saga)
        emitted = evhost.publish(event_type, emit, subject=payment_id)
        evhost.log.info(f"payment {payment_id}: emitted {event_type} `{emitted}`")
# ANCHOR_END: handler
