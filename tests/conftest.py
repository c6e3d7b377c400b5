"""Real app (create_app), real aiohttp test server, real WebSocket clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient

from server import codec
from server.app import create_app
from server.config import Config, load_config
from server.keys import AUTH

RECEIVE_TIMEOUT = 5.0


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

    async def nothing(self, within: float = 0.2) -> None:
        """Assert no frame arrives within `within` seconds."""
        try:
            # An outer timeout: receive()'s own restarts after each ping it answers.
            async with asyncio.timeout(within):
                msg = await self.ws.receive()
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {msg!r}")

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
