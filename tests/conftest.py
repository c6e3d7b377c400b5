"""Real app (create_app), real aiohttp test server, real WebSocket clients."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient
from hypothesis import settings

from server import codec
from server.app import create_app
from server.config import Config, load_config
from server.keys import AUTH

RECEIVE_TIMEOUT = 5.0
# Skip reasons of storage-backed tests without PostgreSQL (tests/storage/conftest.py).
PG_UNREACHABLE = "PostgreSQL not reachable at"
_fences = itertools.count(1)


def is_ci() -> bool:
    """Any truthy CI (`true`, `1`, `yes`, what a CI service sets): skips become failures.

    Only the exact string `true` used to count, so `CI=1` quietly skipped half the suite.
    """
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


# Hypothesis: under CI every run draws the same examples (a red run replays as it was);
# elsewhere a fresh seed per run, printed in the header and the summary, so a failure
# found locally replays with --hypothesis-seed. print_blob: the failing example itself.
settings.register_profile("sensorcast-ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("sensorcast", print_blob=True)
settings.load_profile("sensorcast-ci" if is_ci() else "sensorcast")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before Hypothesis's own pytest_configure reads the option.
    if not is_ci() and config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.randrange(2**32))


def _hypothesis_line(config: pytest.Config) -> str:
    if is_ci():
        return "hypothesis: derandomized (profile sensorcast-ci)"
    seed = config.getoption("hypothesis_seed", None)
    return f"hypothesis: seed {seed} (replay with --hypothesis-seed={seed})"


def pytest_report_header(config: pytest.Config) -> str:
    return _hypothesis_line(config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """At the end of the run, where it is read: which storage-backed tests did not run
    because PostgreSQL was down (an `s` at the top scrolls away), and the Hypothesis seed."""
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if PG_UNREACHABLE in str(r.longrepr)
    ]
    if skipped:
        terminalreporter.write_sep(
            "!", f"{len(skipped)} PostgreSQL storage tests SKIPPED", red=True, bold=True
        )
        reasons = {str(r.longrepr[2]) if isinstance(r.longrepr, tuple) else "" for r in skipped}
        for reason in sorted(reasons - {""}):
            terminalreporter.write_line(reason, red=True, bold=True)
        for report in skipped:
            terminalreporter.write_line(f"  skipped: {report.nodeid}", red=True)
        terminalreporter.write_sep("!", "this run did NOT test PostgreSQL", red=True, bold=True)
    terminalreporter.write_line(_hypothesis_line(config))


def make_config(tmp_path: Path, overrides: dict[str, Any] | None = None) -> Config:
    """A config loaded through the real loader from a YAML file under tmp_path."""
    data: dict[str, Any] = {"database": {"url": "sqlite:///var/test.db"}}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ={})


class WS:
    """A test-side socket: JSON frames in and out, every receive bounded in time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else codec.dumps(frame).decode())

    async def recv(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
        frame = codec.loads(msg.data)
        assert isinstance(frame, dict)
        return frame

    async def recv_type(self, type: str, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be of `type`."""
        frame = await self.recv(timeout)
        assert frame["type"] == type, frame
        return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv()

    async def nothing(self) -> None:
        """Assert no frame is on its way to this socket: a ping round trip is the fence.

        The server reads a socket's frames in order and writes to it in order, so whatever
        it had sent or queued for this socket before it read the ping arrives before the
        pong. A timer ("nothing within 0.2 s") proves less and is slow, and a loaded CPU
        makes it pass when a late frame would have failed it. Callers make sure that what
        might send the frame (a publish, another socket's frame) has been handled first.
        """
        fence = f"fence-{next(_fences)}"
        await self.send({"type": "ping", "id": fence})
        frame = await self.recv()
        assert (frame.get("type"), frame.get("id")) == ("pong", fence), f"unexpected {frame}"

    async def closed(self, timeout: float = RECEIVE_TIMEOUT) -> tuple[int | None, str]:
        """Read until the server closes; returns (close code, reason)."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                # The code the server's close frame carried: the client's own close_code
                # turns 1006 when its reply loses the race with the server closing the TCP
                # connection (aiohttp does not wait for it after a close from another task).
                return msg.data, (msg.extra or "")
            if msg.type is aiohttp.WSMsgType.CLOSED:
                return self.ws.close_code, (msg.extra or "")
            if msg.type is aiohttp.WSMsgType.ERROR:
                return self.ws.close_code, str(msg.data)

    async def close(self) -> None:
        await self.ws.close()


Connect = Callable[..., Awaitable[WS]]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def client(aiohttp_client: Any, config: Config) -> TestClient:
    return await aiohttp_client(create_app(config))


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> Callable[..., Awaitable[TestClient]]:
    """An app with config overrides: `await make_client({"ws": {"rate_limit": 5}})`."""

    async def make(overrides: dict[str, Any] | None = None) -> TestClient:
        return await aiohttp_client(create_app(make_config(tmp_path, overrides)))

    return make


@pytest.fixture
def token(client: TestClient) -> Callable[..., str]:
    def mint(role: str = "service", sub: str = "tester", **kw: Any) -> str:
        return client.app[AUTH].mint(sub, role, **kw)

    return mint


def auth_header(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def open_ws(
    client: TestClient, path: str = "/api/v1/ws", handshake: bool = True, **kw: Any
) -> WS:
    """Connect; with handshake=True, read `connection` and one `subscribed` per channel."""
    ws = WS(await client.ws_connect(path, **kw))
    if handshake:
        hello = await ws.recv_type("connection")
        if path.startswith("/ws/"):
            # The room route greets seed 002's clients before subscribing.
            await ws.recv_type("connected")
        for _ in hello["subscriptions"]:
            await ws.recv_type("subscribed")
    return ws


@pytest.fixture
def connect(client: TestClient) -> Connect:
    async def go(path: str = "/api/v1/ws", **kw: Any) -> WS:
        return await open_ws(client, path, **kw)

    return go


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
