"""Two (or more) app instances in one test process, sharing one Redis and one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.keys import AUTH
from tests.conftest import make_config
from tests.redis_util import (  # noqa: F401  (private_redis: a fixture)
    UNREACHABLE,
    delete_prefix,
    new_prefix,
    private_redis,
    require_redis,
)

DEADLINE = 10.0


class Instance:
    """`await instance(url=None, presence_ttl=30, **sections)`: an app on the shared SQLite
    file under tmp_path, with `bus.backend: redis` and this test's key `prefix`."""

    def __init__(self, aiohttp_client: Any, tmp_path: Path) -> None:
        self.aiohttp_client = aiohttp_client
        self.tmp_path = tmp_path
        self.prefix = new_prefix()
        self.urls: set[str] = set()

    def overrides(self, url: str, presence_ttl: float, **sections: Any) -> dict[str, Any]:
        self.urls.add(url)
        return {
            "bus": {"backend": "redis"},
            "redis": {"url": url, "prefix": self.prefix, "presence_ttl": presence_ttl},
            "ws": {"heartbeat": 5},
            **sections,
        }

    async def __call__(
        self, url: str | None = None, presence_ttl: float = 30, **sections: Any
    ) -> TestClient:
        config = make_config(
            self.tmp_path, self.overrides(url or require_redis(), presence_ttl, **sections)
        )
        client: TestClient = await self.aiohttp_client(create_app(config))
        return client


@pytest.fixture
async def instance(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Instance]:
    made = Instance(aiohttp_client, tmp_path)
    yield made
    for url in made.urls:
        delete_prefix(url, made.prefix)


def service_token(client: TestClient, sub: str = "svc") -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[AUTH].mint(sub, 'service')}"}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = DEADLINE) -> None:
    """Poll an async condition until it holds, or fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say it at the end, not only as an `s`: the Redis half of the suite did not run."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = {str(r.longrepr[2]) for r in skipped if UNREACHABLE in str(r.longrepr)}
    if reasons:
        terminalreporter.write_sep("!", "Redis tests SKIPPED", red=True, bold=True)
        for reason in sorted(reasons):
            terminalreporter.write_line(reason, red=True)
