"""The browser tests' fixtures: the real evhost binary on a free port with real plugins,
and Debian's Chromium driven by Playwright, with every request that would leave
127.0.0.1 aborted and every console error, page error and dialog recorded as a failure.

tests/it/ui.rs runs this suite (inside `cargo test --workspace`) and passes it the binary,
the built plugins and where to save screenshots through the environment."""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

BIN = os.environ["UI_EVHOST_BIN"]
PLUGINS = json.loads(os.environ["UI_PLUGINS"])
SCREENS = Path(os.environ["UI_SCREENS"])
CHROMIUM = os.environ.get("UI_CHROMIUM", "/usr/bin/chromium")

# How long a wait for an element may take: generous, since the tests share two cores with
# the rest of the suite; every wait ends as soon as its condition holds.
WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """`evhost run` on a plugins folder and a data directory of its own."""

    def __init__(self, plugins, manifests=None, config=None, port=None):
        self.dir = Path(tempfile.mkdtemp(prefix="evhost-ui-"))
        self.plugins = self.dir / "plugins"
        self.plugins.mkdir()
        for name, built in plugins.items():
            shutil.copy(PLUGINS[built], self.plugins / f"{name}.wasm")
        for name, text in (manifests or {}).items():
            (self.plugins / f"{name}.toml").write_text(text)
        self.config = None
        if config:
            self.config = self.dir / "evhost.toml"
            self.config.write_text(config)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.log = []
        self.start()

    def start(self):
        args = [BIN, "run", "--listen", f"127.0.0.1:{self.port}", "--log-format", "json",
                "--plugins", str(self.plugins), "--data-dir", str(self.dir / "data")]
        if self.config:
            args += ["--config", str(self.config)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "RUST_LOG": "info"})
        ready = threading.Event()

        def read(stream):
            for line in stream:
                self.log.append(line)
                if '"evhost is ready"' in line:
                    ready.set()

        threading.Thread(target=read, args=(self.process.stderr,), daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("evhost did not start:\n" + "".join(self.log[-50:]))

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def restart(self):
        self.stop()
        self.start()

    def request(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                return response.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            return error.code, (json.loads(text) if text else None)

    def get(self, path, headers=None):
        status, body = self.request("GET", path, headers=headers)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def publish(self, events, wait=True, headers=None):
        """Publishes CloudEvents (a list, structured JSON) and waits for every outcome."""
        data = json.dumps(events).encode()
        request = urllib.request.Request(
            self.url + ("/events?wait=true" if wait else "/events"), data=data, method="POST",
            headers={"Content-Type": "application/cloudevents-batch+json", **(headers or {})})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status in (200, 202), response.status
            return json.loads(response.read().decode())

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def event(ty, id, data, subject="s1", **extra):
    return {"specversion": "1.0", "id": id, "source": "ui-tests", "type": ty, "subject": subject,
            "data": data, **extra}


@pytest.fixture
def start_host():
    hosts = []

    def start(plugins, manifests=None, config=None):
        host = Host(plugins, manifests, config)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.close()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, uncaught errors, dialogs and requests off 127.0.0.1
    are recorded; the test fails at its end if any happened (unless it expected them)."""

    def __init__(self, browser, request):
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.console_errors = []
        self.dialogs = []
        self.left = []
        self.name = request.node.name
        self.expected_console = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.console_errors.append(f"uncaught: {error}"))
        self.page.on("dialog", self._dialog)
        self.context.route(re.compile(r".*"), self._route)

    def _console(self, message):
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _route(self, route):
        url = route.request.url
        if re.match(r"^https?://127\.0\.0\.1(:\d+)?/", url):
            route.continue_()
        else:
            self.left.append(url)
            route.abort()

    def expect_console(self, pattern):
        """Tolerates console errors matching `pattern` (a refused request the test makes on
        purpose, or the host going away)."""
        self.expected_console.append(re.compile(pattern))

    def shoot(self, label):
        """Full-page screenshots, light and dark, under target/ui-screens/."""
        SCREENS.mkdir(parents=True, exist_ok=True)
        for scheme in ("light", "dark"):
            self.page.emulate_media(color_scheme=scheme)
            self.page.wait_for_timeout(50)  # one frame for the repaint, not a wait for state
            self.page.screenshot(path=str(SCREENS / f"{self.name}-{label}-{scheme}.png"), full_page=True)
        self.page.emulate_media(color_scheme="light")

    def check(self):
        unexpected = [e for e in self.console_errors if not any(p.search(e) for p in self.expected_console)]
        assert not self.left, f"requests left 127.0.0.1: {self.left}"
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"
        assert not unexpected, f"console errors: {unexpected}"


@pytest.fixture
def watched(browser, request):
    watched = Watched(browser, request)
    yield watched
    try:
        watched.check()
    finally:
        watched.context.close()
