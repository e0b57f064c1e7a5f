"""The saga natively: ``pytest`` (with the ``evhost`` package installed)."""

from evhost.testing import event, run

from app import EventHandler

CREATED = event(
    "PaymentCreated",
    {"order_id": "o1", "amount": 1200, "currency": "EUR", "items": [{"sku": "book", "quantity": 2}]},
    id="e1",
    subject="p1",
)


def test_a_new_payment_requests_the_inventory():
    result = run(EventHandler, CREATED)
    assert result.outcome == "ok"
    assert result.kv_json("saga:p1")["status"] == "reserving-inventory"
    assert [(e.type, e.subject, e.json()) for e in result.published] == [
        (
            "InventoryReservationRequested",
            "p1",
            {"payment_id": "p1", "order_id": "o1", "items": [{"sku": "book", "quantity": 2}]},
        )
    ]


def test_reserved_inventory_requests_the_shipment_and_failed_inventory_cancels():
    kv = run(EventHandler, CREATED).kv
    reserved = run(EventHandler, event("InventoryReserved", {"reservation_id": "r1"}, subject="p1"), kv=kv)
    assert [e.type for e in reserved.published] == ["ShipmentRequested"]
    failed = run(EventHandler, event("InventoryReservationFailed", {"reason": "none left"}, subject="p1"), kv=kv)
    assert [e.type for e in failed.published] == ["PaymentCancelled"]
    assert failed.kv_json("saga:p1")["status"] == "cancelled"


def test_a_quantity_that_is_not_an_unsigned_integer_is_rejected_naming_it():
    data = {"order_id": "o1", "amount": 5, "currency": "EUR", "items": [{"sku": "a", "quantity": -1}]}
    result = run(EventHandler, event("PaymentCreated", data, subject="p2"))
    assert result.outcome == "reject"
    assert "data.items.quantity: expected an unsigned integer" in result.reason
