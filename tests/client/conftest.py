"""A real server on a real TCP port that a test can stop and start again (same port, same
database): what the client's reconnect and recovery are tested against."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from server.app import create_app
from server.config import Config
from server.keys import AUTH, HUB
from tests.conftest import make_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.starts = 0
        # Set once stop() is done: start() waits for it, so a restart never overlaps it.
        self.stopped = asyncio.Event()
        self.stopped.set()

    async def start(self) -> None:
        await self.stopped.wait()
        self.stopped.clear()
        self.app = create_app(self.config)
        runner = self.runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.starts += 1

    async def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()
        self.stopped.set()

    def token(self, role: str = "service", sub: str = "tester", **kw: Any) -> str:
        assert self.app is not None
        return self.app[AUTH].mint(sub, role, **kw)

    def sockets(self) -> list[Any]:
        assert self.app is not None
        return list(self.app[HUB].clients.values())


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveServer]:
    server = LiveServer(make_config(tmp_path, {"auth": {"jwt_secret": "x" * 32}}))
    await server.start()
    yield server
    await server.stop()
