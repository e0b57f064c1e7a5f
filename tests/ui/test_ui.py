"""The operator UI in a real browser against the real binary: each test drives the page as
an operator would and checks it against the API."""

import http.server
import json
import os
import threading
import time

from playwright.sync_api import expect

from conftest import WAIT_MS, event, free_port

VIEWER = "viewer-secret-0123456789"
OPS = "ops-secret-0123456789abc"


def open_ui(watched, host, route="/overview"):
    page = watched.page
    page.goto(f"{host.url}/ui/#{route}")
    name = route.strip("/").split("/")[0].split("?")[0] or "overview"
    expect(page.get_by_test_id(f"page-{name}")).to_be_visible()
    return page


def stream_open(page):
    """Waits until the page's `GET /stream` is connected."""
    expect(page.locator("html[data-stream=open]")).to_have_count(1)


def go(page, route):
    page.evaluate("route => { location.hash = route }", route)
    name = route.strip("/#").split("/")[0].split("?")[0]
    expect(page.get_by_test_id(f"page-{name}")).to_be_visible()


def users(n, start=0):
    return [event("UserCreated", f"u{i}", {"id": f"u{i}", "name": f"User {i}", "email": f"u{i}@example.com"},
                  subject=f"u{i}") for i in range(start, start + n)]


def test_a_the_plugins_table_matches_the_api(start_host, watched):
    host = start_host({"user-projection": "user-projection", "payment-saga": "payment-saga",
                       "returns-reject": "returns-reject"})
    host.publish(users(3))
    plugins = host.get("/plugins")
    page = open_ui(watched, host, "/plugins")
    rows = page.get_by_test_id("plugin-row")
    expect(rows).to_have_count(len(plugins))
    for plugin in plugins:
        row = page.locator(f'[data-testid=plugin-row][data-name="{plugin["name"]}"]')
        expect(row).to_have_attribute("data-hash", plugin["hash"])
        expect(row).to_have_attribute("data-version", plugin["version"])
        expect(row.get_by_test_id("plugin-handled")).to_have_text(f'{plugin["counters"]["succeeded"]:,}')
        failed = sum(plugin["counters"]["failed"].values())
        expect(row.get_by_test_id("plugin-failed")).to_have_text(f"{failed:,}")
    assert page.locator('[data-name="user-projection"] [data-testid=plugin-handled]').inner_text() == "3"
    watched.shoot("plugins")
    page.get_by_role("link", name="user-projection").click()
    expect(page.get_by_test_id("plugin-hash")).to_have_text(
        next(p["hash"] for p in plugins if p["name"] == "user-projection"))
    expect(page.get_by_test_id("history-row")).to_have_count(1)
    watched.shoot("plugin")


def test_b_the_overview_charts_what_was_handled(start_host, watched):
    host = start_host({"user-projection": "user-projection"})
    page = open_ui(watched, host, "/overview")
    expect(page.get_by_test_id("health-ready")).to_have_text("ready")
    expect(page.get_by_test_id("health-store")).to_have_text("embedded SQLite")
    stream_open(page)
    for start in range(0, 500, 100):
        host.publish(users(100, start))
    chart = page.get_by_test_id("chart-handled")
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=chart-handled]').dataset.max) > 0",
        timeout=WAIT_MS)
    expect(chart).to_have_attribute("data-plugins", "user-projection")
    # The plugin's load is on the chart as a marker.
    assert int(chart.get_attribute("data-markers")) >= 1
    # The host's samples count every event once the last second is sampled, and the chart
    # plots what they say.
    deadline = time.monotonic() + 20
    while True:
        samples = host.get("/metrics/history")["samples"]
        handled = sum(s["plugins"].get("user-projection", {}).get("handled", 0) for s in samples)
        if handled == 500 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert handled == 500, handled
    peak = max(s["plugins"].get("user-projection", {}).get("handled", 0) for s in samples)
    page.wait_for_function(
        "peak => Number(document.querySelector('[data-testid=chart-handled]').dataset.max) === peak", arg=peak)
    watched.shoot("overview")


def test_c_a_failure_shows_in_errors_within_two_seconds_and_as_a_dead_letter(start_host, watched):
    host = start_host({"returns-reject": "returns-reject"})
    page = open_ui(watched, host, "/errors")
    expect(page.get_by_test_id("errors-state")).to_have_text("live")
    stream_open(page)
    host.publish([event("OrderPlaced", "o1", {"n": 1})], wait=False)
    published = time.monotonic()
    row = page.get_by_test_id("error-row")
    expect(row).to_have_count(1, timeout=2000)
    assert time.monotonic() - published < 2.0
    expect(row).to_have_attribute("data-plugin", "returns-reject")
    expect(row).to_have_attribute("data-kind", "reject")
    expect(row.get_by_test_id("error-message")).to_have_text("malformed payload")
    watched.shoot("errors")
    go(page, "#/dlq")
    letter = page.get_by_test_id("dlq-row")
    expect(letter).to_have_count(1)
    expect(letter).to_have_attribute("data-plugin", "returns-reject")
    expect(letter.get_by_test_id("dlq-message")).to_have_text("malformed payload")
    watched.shoot("dlq")
    # Paused, the list holds still and says how many wait.
    go(page, "#/errors")
    page.get_by_test_id("errors-pause").click()
    host.publish([event("OrderPlaced", "o2", {"n": 2})])
    expect(page.get_by_test_id("errors-state")).to_have_text("paused: 1 new held back")
    expect(page.get_by_test_id("error-row")).to_have_count(1)
    page.get_by_test_id("errors-pause").click()
    expect(page.get_by_test_id("error-row")).to_have_count(2)


def replace_atomically(source, target):
    temporary = target.with_suffix(".partial")
    temporary.write_bytes(open(source, "rb").read())
    os.replace(temporary, target)


def test_d_a_fixed_version_is_flagged_and_a_previewed_replay_drains_the_queue(start_host, watched):
    from conftest import PLUGINS
    host = start_host({"returns-retry": "returns-retry"}, {"returns-retry": "[retry]\nmax_attempts = 1\n"})
    host.publish([event("OrderPlaced", "d1", {}), event("OrderPlaced", "d2", {}, subject="s2")])
    assert len(host.get("/dlq")) == 2
    page = open_ui(watched, host, "/dlq")
    expect(page.get_by_test_id("dlq-row")).to_have_count(2)
    expect(page.get_by_test_id("badge-same")).to_have_count(2)
    go(page, "#/plugins/returns-retry")
    expect(page.get_by_test_id("history-row")).to_have_count(1)

    replace_atomically(PLUGINS["returns-retry-fixed"], host.plugins / "returns-retry.wasm")
    expect(page.locator("[data-testid=history-row][data-change=swapped]")).to_have_count(1)
    watched.shoot("history")
    go(page, "#/dlq")
    expect(page.get_by_test_id("badge-fixed")).to_have_count(2)
    watched.shoot("dlq-fixed")
    page.get_by_test_id("dlq-replay-all").click()
    preview = page.get_by_test_id("replay-preview")
    expect(preview.get_by_test_id("preview-row")).to_have_count(2)
    expect(preview.get_by_test_id("badge-fixed")).to_have_count(2)
    watched.shoot("replay-preview")
    page.get_by_test_id("dlq-confirm-replay").click()
    expect(page.get_by_test_id("dlq-empty")).to_be_visible()
    assert host.get("/dlq") == []
    # A replay queues the deliveries again; the read model shows them once handled.
    deadline = time.monotonic() + 20
    while len(host.get("/plugins/returns-retry/kv?prefix=handled:")["entries"]) < 2:
        assert time.monotonic() < deadline, "the replayed letters were not handled"
        time.sleep(0.05)
    go(page, "#/kv/returns-retry")
    expect(page.locator('[data-testid=kv-row][data-key="handled:d1"]')).to_be_visible()
    expect(page.locator('[data-testid=kv-row][data-key="handled:d2"]')).to_be_visible()
    watched.shoot("read-model")


def test_e_a_purge_happens_only_once_the_plugins_name_is_typed(start_host, watched):
    host = start_host({"returns-reject": "returns-reject"})
    host.publish([event("OrderPlaced", "p1", {}), event("OrderPlaced", "p2", {}, subject="s2")])
    page = open_ui(watched, host, "/dlq?plugin=returns-reject")
    expect(page.get_by_test_id("dlq-row")).to_have_count(2)
    page.get_by_test_id("dlq-purge").click()
    confirm = page.get_by_test_id("dlq-confirm-purge")
    expect(confirm).to_be_disabled()
    page.get_by_test_id("purge-name").fill("returns-rejec")
    expect(confirm).to_be_disabled()
    watched.shoot("purge-dialog")
    page.get_by_test_id("dialog-cancel").click()
    expect(page.get_by_text("Purge cancelled: nothing was dropped.")).to_be_visible()
    expect(page.get_by_test_id("dlq-row")).to_have_count(2)
    assert len(host.get("/dlq")) == 2

    page.get_by_test_id("dlq-purge").click()
    page.get_by_test_id("purge-name").fill("returns-reject")
    expect(confirm).to_be_enabled()
    confirm.click()
    expect(page.get_by_test_id("dlq-empty")).to_be_visible()
    assert host.get("/dlq") == []


def parent_type(page, ty):
    return page.evaluate(
        """ty => {
            const node = document.querySelector(`[data-testid=trace-node][data-type="${ty}"]`);
            const parent = node.parentElement.closest('[data-testid=trace-node]');
            return parent ? parent.dataset.type : null;
        }""", ty)


def test_f_the_payment_sagas_trace_shows_each_event_under_its_cause(start_host, watched):
    host = start_host({"payment-saga": "payment-saga"})
    host.publish([{"specversion": "1.0", "id": "pay-1", "source": "payments", "type": "PaymentCreated",
                   "subject": "p1", "data": {"payment_id": "p1", "order_id": "o1", "amount": 4200,
                                             "currency": "EUR", "items": [{"sku": "book", "quantity": 2}]}}])
    requested = host.get("/events?type=InventoryReservationRequested")["events"][0]["event"]["id"]
    host.publish([{"specversion": "1.0", "id": "inv-1", "source": "inventory", "type": "InventoryReserved",
                   "subject": "p1", "correlationid": "pay-1", "causationid": requested,
                   "data": {"payment_id": "p1", "reservation_id": "r1"}}])
    page = open_ui(watched, host, "/events/pay-1")
    expect(page.get_by_test_id("trace-node")).to_have_count(4)
    assert parent_type(page, "PaymentCreated") is None
    assert parent_type(page, "InventoryReservationRequested") == "PaymentCreated"
    assert parent_type(page, "InventoryReserved") == "InventoryReservationRequested"
    assert parent_type(page, "ShipmentRequested") == "InventoryReserved"
    shipment = page.locator("[data-testid=trace-node][data-type=ShipmentRequested]")
    expect(shipment.get_by_test_id("trace-label").first).to_contain_text("emitted by payment-saga")
    expect(page.locator("[data-testid=delivery-row][data-plugin=payment-saga]")).to_have_attribute("data-state", "handled")
    watched.shoot("trace")
    # A node navigates to its event.
    shipment.get_by_test_id("trace-label").first.get_by_role("link", name="ShipmentRequested").click()
    expect(page.get_by_test_id("event-attributes")).to_contain_text("ShipmentRequested")
    assert "#/events/" in page.url
    expect(page.locator("[data-testid=trace-node][data-type=ShipmentRequested] .node.current")).to_be_visible()


HOSTILE_DATA = "<img src=x onerror=alert(1)>"
HOSTILE_REASON = "<img src=x onerror=alert(2)><b>bold</b>"
HOSTILE_ID = "<b>id</b>\"'><img src=x onerror=alert(3)>"
HOSTILE_USER = "<b>u</b><img src=x onerror=alert(4)>"


def no_markup(page):
    """Nothing the host sent became an element: the page itself has no img or b."""
    assert page.locator("body img, body b").count() == 0, "untrusted text became HTML"


def test_g_hostile_data_is_text_and_a_cross_site_post_is_refused(start_host, watched):
    host = start_host({"returns-reject": "returns-reject", "user-projection": "user-projection"},
                      {"returns-reject": f"[config]\nreason = {json.dumps(HOSTILE_REASON)}\n"})
    host.publish([event("OrderPlaced", HOSTILE_ID, {"note": HOSTILE_DATA}, subject=HOSTILE_ID),
                  event("UserCreated", "h2", {"id": HOSTILE_USER, "name": HOSTILE_DATA, "email": "h@example.com"},
                        subject=HOSTILE_USER)])
    letters = host.get("/dlq")
    page = open_ui(watched, host, "/events")
    expect(page.get_by_test_id("event-row")).to_have_count(2)
    expect(page.get_by_role("link", name=HOSTILE_ID)).to_be_visible()
    no_markup(page)
    # The inspector, reached by the link built from the hostile id.
    page.get_by_role("link", name=HOSTILE_ID).click()
    expect(page.get_by_test_id("event-data")).to_contain_text(HOSTILE_DATA)
    expect(page.get_by_test_id("event-attributes")).to_contain_text(HOSTILE_ID)
    expect(page.get_by_test_id("trace-node")).to_have_count(1)
    no_markup(page)
    go(page, "#/errors")
    expect(page.get_by_test_id("error-message")).to_have_count(2)
    expect(page.get_by_test_id("error-message").first).to_have_text(HOSTILE_REASON)
    no_markup(page)
    go(page, "#/dlq")
    expect(page.get_by_test_id("dlq-message").first).to_have_text(HOSTILE_REASON)
    no_markup(page)
    go(page, f"#/dlq/{letters[0]['id']}")
    expect(page.get_by_test_id("attempt-row")).to_contain_text(HOSTILE_REASON)
    no_markup(page)
    go(page, "#/kv/user-projection")
    expect(page.locator("[data-testid=kv-row]")).to_have_attribute("data-key", f"user:{HOSTILE_USER}")
    expect(page.get_by_test_id("kv-value")).to_contain_text(HOSTILE_DATA)
    no_markup(page)
    # The replay preview is a dialog outside `main`.
    go(page, "#/dlq")
    page.get_by_test_id("dlq-replay-all").click()
    expect(page.get_by_test_id("preview-row")).to_have_count(2)
    no_markup(page)
    watched.shoot("hostile")
    page.get_by_test_id("dialog-cancel").click()

    # A page of another origin (another port on the same address) posts a replay.
    served = threading.Event()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title><p>elsewhere</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            served.set()

        def log_message(self, *args):
            pass

    watched.expect_console(r"status of 403")
    attacker = http.server.HTTPServer(("127.0.0.1", free_port()), Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{attacker.server_port}/")
        assert served.is_set()
        page.evaluate("""url => fetch(url, {method: 'POST', mode: 'no-cors', body: 'x'})
                               .then(() => 'sent', () => 'blocked')""",
                      f"{host.url}/dlq/replay?all=true")
    finally:
        attacker.shutdown()
    deadline = time.monotonic() + 10
    while not any("request refused" in line and "/dlq/replay" in line for line in host.log):
        assert time.monotonic() < deadline, "the cross-site replay was not refused"
        time.sleep(0.05)
    assert len(host.get("/dlq")) == 2, "the letters were replayed by a foreign page"


AUTH_CONFIG = f"""
[auth]
[[auth.tokens]]
name = "viewer"
secret = "{VIEWER}"
scopes = ["read"]
[[auth.tokens]]
name = "ops"
secret = "{OPS}"
scopes = ["publish", "read", "admin"]
"""


def sign_in(page, secret):
    expect(page.get_by_test_id("signin")).to_be_visible()
    page.get_by_test_id("signin-token").fill(secret)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("sign-out")).to_be_visible()


def test_g_a_read_only_session_cannot_replay_and_signing_out_ends_it(start_host, watched):
    host = start_host({"returns-reject": "returns-reject"}, config=AUTH_CONFIG)
    host.publish([event("OrderPlaced", "r1", {})], headers={"Authorization": f"Bearer {OPS}"})
    watched.expect_console(r"status of (401|403)")
    page = watched.page
    page.goto(f"{host.url}/ui/#/dlq")
    page.get_by_test_id("signin-token").fill("not-the-right-token-at-all")
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_text("the token is not one this host accepts")).to_be_visible()
    watched.shoot("signin")
    sign_in(page, VIEWER)
    expect(page.get_by_test_id("who")).to_have_text("viewer (read)")
    expect(page.get_by_test_id("dlq-row")).to_have_count(1)
    expect(page.get_by_test_id("dlq-read-only")).to_be_visible()
    expect(page.get_by_test_id("dlq-replay-all")).to_have_count(0)
    expect(page.get_by_test_id("dlq-purge")).to_have_count(0)
    watched.shoot("read-only")
    # The cookie is the session's only carrier, out of the page's reach.
    cookies = {c["name"]: c for c in watched.context.cookies()}
    assert cookies["evhost_session"]["httpOnly"] and cookies["evhost_session"]["sameSite"] == "Strict"
    assert "evhost_session" not in page.evaluate("document.cookie")
    # The server refuses what the page hides.
    status, body = page.evaluate("""() => fetch('/dlq/replay', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-Evhost-CSRF': '1'},
            body: JSON.stringify({ids: [1]})}).then(async r => [r.status, await r.json()])""")
    assert status == 403 and "lacks the `admin` scope" in body["error"], body
    assert len(host.get("/dlq", headers={"Authorization": f"Bearer {OPS}"})) == 1

    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("signin")).to_be_visible()
    assert page.evaluate("() => fetch('/dlq').then(r => r.status)") == 401

    sign_in(page, OPS)
    go(page, "#/dlq")
    expect(page.get_by_test_id("dlq-replay-all")).to_be_visible()
    # Without the page's header, the cookie alone cannot act.
    status, body = page.evaluate(
        "() => fetch('/dlq/replay?all=true', {method: 'POST'}).then(async r => [r.status, await r.json()])")
    assert status == 403 and "x-evhost-csrf" in body["error"], body
    assert len(host.get("/dlq", headers={"Authorization": f"Bearer {OPS}"})) == 1
    page.get_by_test_id("dlq-replay-all").click()
    page.get_by_test_id("dlq-confirm-replay").click()
    expect(page.get_by_text("Replayed 1 dead letter(s).")).to_be_visible()
    # The audit log names the token behind the session, the action and how many letters
    # (its lines come through a pipe: wait for them).
    def audit_lines():
        return [json.loads(line) for line in list(host.log) if line.startswith("{")]
    deadline = time.monotonic() + 10
    while not any(line.get("message") == "admin action" for line in audit_lines()) and time.monotonic() < deadline:
        time.sleep(0.05)
    audit = audit_lines()
    assert any(line.get("message") == "UI session opened" and line.get("token") == "ops" for line in audit)
    replays = [line for line in audit if line.get("message") == "admin action" and "/dlq/replay" in line.get("action", "")]
    assert [(line["token"], line["status"], line.get("count")) for line in replays] == [("ops", 200, 1)], replays


def test_h_a_stopped_host_shows_a_banner_until_it_is_back(start_host, watched):
    host = start_host({"user-projection": "user-projection"})
    page = open_ui(watched, host, "/overview")
    banner = page.get_by_test_id("banner-disconnected")
    expect(page.get_by_test_id("health-ready")).to_have_text("ready")
    expect(banner).to_be_hidden()
    watched.expect_console(r"ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET|ERR_INCOMPLETE_CHUNKED_ENCODING")
    host.stop()
    expect(banner).to_be_visible()
    watched.shoot("disconnected")
    host.start()
    expect(banner).to_be_hidden()
    expect(page.get_by_test_id("health-ready")).to_have_text("ready")


def test_i_every_page_renders_offline_without_a_console_error(start_host, watched):
    host = start_host({"user-projection": "user-projection", "payment-saga": "payment-saga",
                       "returns-reject": "returns-reject"})
    host.publish(users(5))
    letter = host.get("/dlq")[0]["id"]
    page = open_ui(watched, host, "/overview")
    # Each page, and what shows it rendered its data.
    routes = {"#/overview": "chart-handled", "#/plugins": "plugins-table",
              "#/plugins/user-projection": "history-table", "#/errors": "errors-table", "#/dlq": "dlq-table",
              f"#/dlq/{letter}": "attempt-row", "#/events": "event-row", "#/events/u1": "trace-tree",
              "#/kv/user-projection": "kv-table", "#/config": "config-table"}
    for route, testid in routes.items():
        go(page, route)
        expect(page.get_by_test_id(testid).first).to_be_visible()
        watched.shoot(route.strip("#/").replace("/", "-"))
    go(page, "#/kv")
    expect(page.get_by_role("link", name="payment-saga")).to_be_visible()
    go(page, "#/kv/user-projection")
    expect(page.get_by_test_id("kv-row")).to_have_count(5)
    go(page, "#/config")
    expect(page.locator("[data-testid=config-row][data-key='bus.capacity']")).to_have_count(1)
    # The theme toggle overrides the system's scheme, and keeps it.
    page.emulate_media(color_scheme="light")
    page.get_by_test_id("theme-toggle").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.reload()
    expect(page.get_by_test_id("page-config")).to_be_visible()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    # The keyboard reaches every page: the skip link, then the navigation.
    go(page, "#/overview")
    page.reload()
    expect(page.get_by_test_id("page-overview")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("page-plugins")).to_be_visible()
    # A narrow window, in the system's scheme again.
    page.evaluate("localStorage.removeItem('evhost-theme')")
    page.reload()
    expect(page.get_by_test_id("page-plugins")).to_be_visible()
    assert page.evaluate("document.documentElement.dataset.theme") is None
    page.set_viewport_size({"width": 420, "height": 800})
    go(page, "#/dlq")
    expect(page.get_by_test_id("dlq-row")).to_have_count(5)
    watched.shoot("narrow-dlq")
    # The security headers of the page itself.
    response = page.request.get(f"{host.url}/ui/")
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
