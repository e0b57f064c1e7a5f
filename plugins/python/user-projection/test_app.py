"""The read model natively: ``pytest`` (with the ``evhost`` package installed)."""

from evhost.testing import event, run

from app import EventHandler

CREATED = event(
    "UserCreated",
    {"name": "Ada", "email": "ada@example.com", "address": {"city": "London"}},
    id="e1",
    subject="u1",
    time="2026-01-01T00:00:00Z",
)


def test_a_new_user_is_stored_with_every_field_absent_ones_as_null():
    result = run(EventHandler, CREATED)
    assert result.outcome == "ok"
    assert result.kv_json("user:u1") == {
        "id": "u1",
        "name": "Ada",
        "email": "ada@example.com",
        "phone": None,
        "address": {"street": None, "city": "London", "postal_code": None, "country": None},
        "version": 1,
        "last_event_id": "e1",
        "updated_at": "2026-01-01T00:00:00Z",
    }


def test_an_update_changes_only_what_it_names_and_phone_null_clears():
    created = run(EventHandler, CREATED)
    updated = run(
        EventHandler,
        event("UserContactUpdated", {"email": "ada@new.example", "phone": None}, id="e2", subject="u1"),
        kv=created.kv,
    )
    assert updated.outcome == "ok"
    user = updated.kv_json("user:u1")
    assert (user["email"], user["name"], user["phone"], user["version"]) == ("ada@new.example", "Ada", None, 2)


def test_a_payload_that_does_not_decode_is_rejected_naming_the_field():
    result = run(EventHandler, event("UserCreated", {"name": "Ada"}, id="e3", subject="u1"))
    assert result.outcome == "reject"
    assert "data.email: is missing" in result.reason


def test_an_update_before_the_user_exists_is_retried():
    assert run(EventHandler, event("UserProfileUpdated", {"name": "Bo"}, subject="u9")).outcome == "retry"
