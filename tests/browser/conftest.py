"""Browser tests: the `playwright` package driving Debian's Chromium (never a downloaded
browser) against `python -m server serve` on the shipped config.yaml, in a child process a
test may stop and start again. One browser per module; a fresh context per test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from server import codec
from server.auth import Authenticator
from server.config import load_config
from tests.client.conftest import free_port
from tests.conftest import is_ci

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
START_TIMEOUT = 20.0
# Generous: the machine is shared, the page polls the DOM rather than sleeping.
EXPECT_TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    if is_ci():  # the suite's one reading of CI (tests/conftest.py)
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")


class DashboardServer:
    """The real server on the shipped config, with only its port (and var/) moved."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "config.yaml"
        shutil.copy(SHIPPED_CONFIG, self.config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "server.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
        env.update(SENSORCAST_SERVER_PORT=str(self.port), SENSORCAST_SERVER_SHUTDOWN_TIMEOUT="2")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--config", str(self.config), "serve"],
                cwd=self.dir,
                env=env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server not up within {START_TIMEOUT}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def token(self, role: str = "service", sub: str = "ops") -> str:
        config = load_config(self.config, environ={})
        return Authenticator(config.auth, config.var_dir, config.base_dir).mint(sub, role, 3600)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """REST as a device or service would: JSON in, JSON out; raises on >= 400."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else codec.dumps(body)
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return codec.loads(raw) if raw else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    srv = DashboardServer(tmp_path_factory.mktemp("dashboard"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page plus what it did: console errors, page errors and every URL it asked for."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("websocket", lambda ws: self.requests.append(ws.url))

    def off_machine(self) -> list[str]:
        return [u for u in self.requests if urlsplit(u).hostname != "127.0.0.1"]


@pytest.fixture
def open_page(browser: Any, server: DashboardServer) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_(query: str = "") -> Page:
        context = browser.new_context(viewport={"width": 1400, "height": 850})
        contexts.append(context)
        page = Page(context)

        def record(route: Any) -> None:
            url = route.request.url
            page.requests.append(url)
            # Nothing may leave the machine: anything else is refused (and recorded).
            if urlsplit(url).hostname == "127.0.0.1":
                route.continue_()
            else:
                route.abort()

        context.route("**/*", record)
        page.page.goto(f"{server.url}/{query}")
        return page

    yield open_
    for context in contexts:
        context.close()
