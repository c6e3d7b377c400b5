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
from tests.redis_util import delete_prefix, new_prefix, private_redis, require_redis  # noqa: F401

Instance = Callable[..., Awaitable[TestClient]]
DEADLINE = 10.0


@pytest.fixture
async def instance(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Instance]:
    """`await instance(url=None, presence_ttl=30, **sections)`: an app on the shared SQLite
    file under tmp_path, with `bus.backend: redis` and this test's key prefix."""
    prefix = new_prefix()
    urls: set[str] = set()

    async def make(url: str | None = None, presence_ttl: float = 30, **sections: Any) -> TestClient:
        url = url or require_redis()
        urls.add(url)
        overrides = {
            "bus": {"backend": "redis"},
            "redis": {"url": url, "prefix": prefix, "presence_ttl": presence_ttl},
            "ws": {"heartbeat": 5},
            **sections,
        }
        return await aiohttp_client(create_app(make_config(tmp_path, overrides)))

    yield make
    for url in urls:
        delete_prefix(url, prefix)


def service_token(client: TestClient, sub: str = "svc") -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[AUTH].mint(sub, 'service')}"}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = DEADLINE) -> None:
    """Poll an async condition until it holds, or fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
