"""The SDK natively, through evhost.testing: what a plugin author relies on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Literal, Optional

import pytest

import evhost
from evhost import config, kv, log
from evhost.testing import event, run


def plugin(on_event):
    class EventHandler(evhost.Plugin):
        name = "t"
        subscriptions = ["*"]

        def on_event(self, e: evhost.Event) -> None:
            on_event(e)

    return EventHandler


def test_a_handler_that_returns_is_ok_with_its_writes_emitted_events_and_logs():
    def handle(e):
        n = kv.get_json("count") or 0
        kv.set_json("count", n + 1)
        kv.set("last", e.id)
        evhost.publish("Counted", {"n": n + 1}, subject=e.subject, extensions={"tenant": "acme"})
        log.info(f"counted {e.id}")

    result = run(plugin(handle), event("Tick", {}, id="e1", subject="s"), kv={"count": 41})
    assert result.outcome == "ok"
    assert result.kv_json("count") == 42
    assert result.kv_text("last") == "e1"
    [emitted] = result.published
    assert (emitted.type, emitted.subject, emitted.datacontenttype) == ("Counted", "s", "application/json")
    assert emitted.json() == {"n": 42}
    assert emitted.extensions == {"tenant": "acme"}
    assert result.logs == [("info", "counted e1")]


@pytest.mark.parametrize("error, outcome", [(evhost.Retry("later"), "retry"), (evhost.Reject("never"), "reject")])
def test_retry_and_reject_decide_the_outcome(error, outcome):
    def handle(e):
        raise error

    result = run(plugin(handle), event("T", {}))
    assert (result.outcome, result.reason) == (outcome, str(error))


def test_a_failed_handler_leaves_the_store_as_it_was_and_emits_nothing():
    def handle(e):
        kv.set("written", "yes")
        evhost.publish("Emitted", {"a": 1})
        raise evhost.Retry("flaky")

    result = run(plugin(handle), event("T", {}), kv={"kept": "before"})
    assert result.outcome == "retry"
    assert result.kv == {"kept": b"before"}
    assert result.published == []


def test_any_other_exception_traps():
    result = run(plugin(lambda e: {}["missing"]), event("T", {}))
    assert result.outcome == "trap"
    assert "KeyError" in result.reason


@dataclass
class Item:
    sku: str
    quantity: int


@dataclass
class Order:
    id: str
    quantity: int
    method: Literal["card", "invoice"]
    items: List[Item]
    note: Optional[str] = None
    tags: List[str] = field(default_factory=list)


GOOD = {"id": "o1", "quantity": 2, "method": "card", "items": [{"sku": "a", "quantity": 1, "extra": 1}], "more": True}


def test_event_json_into_a_dataclass():
    seen = []
    result = run(plugin(lambda e: seen.append(e.json(Order))), event("OrderPlaced", GOOD))
    assert result.outcome == "ok"
    assert seen == [Order(id="o1", quantity=2, method="card", items=[Item("a", 1)])]


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"id": None}, "data.id: expected a string, got null"),
        ({"quantity": "2"}, "data.quantity: expected an integer, got a string"),
        ({"quantity": True}, "data.quantity: expected an integer, got a boolean"),
        ({"method": "cash"}, "data.method: expected one of 'card', 'invoice', got 'cash'"),
        ({"items": [{"sku": 7, "quantity": 1}]}, "data.items[0].sku: expected a string, got an integer"),
        ({"items": [{"sku": "a"}]}, "data.items[0].quantity: is missing"),
        ({"items": {}}, "data.items: expected an array, got an object"),
    ],
)
def test_event_json_rejects_naming_the_missing_or_mistyped_field(change, reason):
    result = run(plugin(lambda e: e.json(Order)), event("OrderPlaced", {**GOOD, **change}, id="x"))
    assert result.outcome == "reject"
    assert result.reason == f"OrderPlaced event `x`: {reason}"


def test_a_missing_required_field_is_named():
    data = {k: v for k, v in GOOD.items() if k != "quantity"}
    result = run(plugin(lambda e: e.json(Order)), event("OrderPlaced", data, id="x"))
    assert result.reason == "OrderPlaced event `x`: data.quantity: is missing"


@pytest.mark.parametrize("media_type", ["text/json", "application/cloudevents+json", "application/json; charset=utf-8"])
def test_json_media_types(media_type):
    result = run(plugin(lambda e: e.json()), event("T", b'{"a":1}', datacontenttype=media_type))
    assert result.outcome == "ok"


def test_another_media_type_is_rejected():
    result = run(plugin(lambda e: e.json()), event("T", b"a", datacontenttype="text/plain"))
    assert result.outcome == "reject"


def test_kv_set_takes_text_or_bytes_and_another_value_traps():
    result = run(plugin(lambda e: kv.set("k", 5)), event("T", {}))
    assert result.outcome == "trap"
    assert "kv.set('k', …) takes bytes or str, not int" in result.reason


def test_a_failing_store_is_retried_and_a_refused_one_rejected():
    handler = plugin(lambda e: kv.get("k"))
    failed = run(handler, event("T", {}), kv_failure="disk full")
    assert failed.outcome == "retry"
    assert "disk full" in failed.reason
    assert run(handler, event("T", {}), kv_failure="denied").outcome == "reject"


def test_publish_without_data_sends_none_and_a_refused_event_rejects():
    result = run(plugin(lambda e: evhost.publish("A")), event("T", {}))
    assert [p.data for p in result.published] == [None]
    assert run(plugin(lambda e: evhost.publish("", {"a": 1})), event("T", {})).outcome == "reject"


def test_config_is_what_the_run_was_given():
    seen = []
    run(
        plugin(lambda e: seen.append((config.get("greeting"), config.get("absent"), config.all()))),
        event("T", {}),
        config={"greeting": "hello"},
    )
    assert seen == [("hello", None, {"greeting": "hello"})]


def test_logging_records_reach_the_host_log():
    logger = logging.getLogger("evhost-test")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log.Handler())
    result = run(plugin(lambda e: (logger.warning("careful: %s", e.id), logger.debug("detail"))), event("T", {}, id="e9"))
    assert result.logs == [("warn", "careful: e9"), ("debug", "detail")]


def test_a_plugin_class_is_checked_when_it_is_defined():
    with pytest.raises(TypeError, match="defines `handle`"):

        class Handles(evhost.Plugin):
            name = "n"
            subscriptions = ["*"]

            def handle(self, event):
                pass

    with pytest.raises(TypeError, match="name must be the plugin's name"):

        class Nameless(evhost.Plugin):
            subscriptions = ["*"]

    with pytest.raises(TypeError, match="subscriptions is empty"):

        class Deaf(evhost.Plugin):
            name = "n"


def test_metadata_is_what_the_class_says():
    class EventHandler(evhost.Plugin):
        name = "n"
        version = "1.2.3"
        subscriptions = ["User*"]

    metadata = EventHandler().metadata()
    assert (metadata.name, metadata.version, metadata.subscriptions) == ("n", "1.2.3", ["User*"])


def test_an_extension_named_like_a_cloudevents_attribute_is_refused_as_the_host_refuses_it():
    result = run(plugin(lambda e: evhost.publish("Y", {"a": 1}, extensions={"subject": "s"})), event("T", {}))
    assert result.outcome == "reject"
    assert "subject" in result.reason


def test_nan_and_infinity_are_stored_as_null_as_rust_and_javascript_write_them():
    result = run(plugin(lambda e: kv.set_json("k", {"a": float("nan"), "b": [float("inf"), 1.5]})), event("T", {}))
    assert result.outcome == "ok"
    assert result.kv["k"] == b'{"a":null,"b":[null,1.5]}'


def test_a_dataclass_whose_annotations_cannot_be_resolved_is_a_clear_mistake():
    def handle(e):
        @dataclass
        class Local:
            items: "List[Unresolvable]"  # noqa: F821

        e.json(Local)

    result = run(plugin(handle), event("T", {"items": []}))
    assert result.outcome == "trap"
    assert "define the dataclasses it uses at module level" in result.reason
