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

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import evhost
from evhost import DecodeError, Event, Reject

_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


def _unsigned(name: str, value: int, most: int) -> None:
    if not 0 <= value <= most:
        raise DecodeError(f"data.{name}", f"expected an unsigned integer up to {most}, got {value}")


# The payloads, decoded by `event.json(...)` with the Rust plugin's rules: unknown fields
# are ignored, `null` is an absent optional value, a wrong type or a missing field rejects
# the event naming it.


@dataclass
class Item:
    sku: str
    quantity: int

    def __post_init__(self) -> None:
        _unsigned("items.quantity", self.quantity, _MAX_U32)


@dataclass
class PaymentCreated:
    order_id: str
    amount: int
    currency: str
    items: List[Item]
    payment_id: Optional[str] = None

    def __post_init__(self) -> None:
        _unsigned("amount", self.amount, _MAX_U64)


@dataclass
class InventoryReserved:
    payment_id: Optional[str] = None
    order_id: Optional[str] = None
    reservation_id: Optional[str] = None


@dataclass
class InventoryReservationFailed:
    payment_id: Optional[str] = None
    order_id: Optional[str] = None
    reason: Optional[str] = None


def _decode(event: Event) -> Dict[str, Any]:
    if event.type == "PaymentCreated":
        created = event.json(PaymentCreated)
        return {
            "payment_id": created.payment_id,
            "order_id": created.order_id,
            "amount": created.amount,
            "currency": created.currency,
            "items": [dataclasses.asdict(item) for item in created.items],
        }
    if event.type == "InventoryReserved":
        return dataclasses.asdict(event.json(InventoryReserved))
    if event.type == "InventoryReservationFailed":
        return dataclasses.asdict(event.json(InventoryReservationFailed))
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
