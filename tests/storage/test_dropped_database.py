"""A PostgreSQL database dropped under a running server, then recreated empty: requests
answer 503 `unavailable` (never 500), /health is 503 until the schema is back, and the
outage is logged once, not a traceback per attempt.

Each test makes its own throwaway database (CREATE DATABASE sc_drop_<random>) next to
the shared `test` one and drops it at the end; the shared database is never touched.
"""

import logging
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.storage import open_storage
from server.storage.migrate import apply
from server.storage.postgres_log import POOL_LOGGER, SUMMARY_SECONDS, OutageLog
from tests.conftest import make_config
from tests.storage.conftest import CONNECT_TIMEOUT

UNAVAILABLE = {"error": {"code": "unavailable", "message": "database unavailable", "details": None}}


class Throwaway:
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"sc_drop_{secrets.token_hex(6)}"
        self.url = urlunsplit(urlsplit(server_url)._replace(path=f"/{self.name}"))

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server_url, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.name}"')

    async def drop(self) -> None:
        # FORCE (PostgreSQL 13+) ends the server's connections to it, as an operator would.
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture
async def throwaway(pg_server_url: str) -> AsyncIterator[Throwaway]:
    db = Throwaway(pg_server_url)
    await db.create()
    try:
        yield db
    finally:
        await db.drop()


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, throwaway: Throwaway) -> TestClient:
    config = make_config(tmp_path, {"database": {"url": throwaway.url, "pool_max": 2}})
    return await aiohttp_client(create_app(config))


async def answers(client: TestClient, path: str) -> tuple[int, Any]:
    """Status and body; an error's request_id (the X-Request-ID it repeats) is checked
    here and left out, so bodies compare whole."""
    resp = await client.get(path)
    body = await resp.json()
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        assert body["error"].pop("request_id") == resp.headers["X-Request-ID"]
    return resp.status, body


async def test_a_dropped_then_recreated_database_is_503_until_migrated(
    client: TestClient, throwaway: Throwaway, caplog: pytest.LogCaptureFixture
):
    assert (await answers(client, "/api/v1/sensors"))[0] == 200
    assert (await answers(client, "/health"))[0] == 200

    await throwaway.drop()
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            assert await answers(client, "/api/v1/sensors") == (503, UNAVAILABLE)
        status, health = await answers(client, "/health")
        assert status == 503
        assert health["checks"]["database"]["status"] == "down"
    # At most the one traceback of the outage (asyncpg's first failed reconnect), none
    # per request.
    assert len([r for r in caplog.records if r.exc_info]) <= 1

    await throwaway.create()
    status, health = await answers(client, "/health")
    assert status == 503
    assert "schema" in health["checks"]["database"]["error"]
    assert await answers(client, "/api/v1/sensors") == (503, UNAVAILABLE)

    storage = await open_storage(throwaway.url, base_dir=Path("."))
    try:
        await apply(storage)
    finally:
        await storage.close()
    assert (await answers(client, "/health"))[0] == 200
    assert await answers(client, "/api/v1/sensors") == (200, {"items": [], "next_cursor": None})


def test_the_pool_logs_one_traceback_per_outage_then_a_summary_line():
    now = [0.0]
    log = logging.getLogger("test.outage")
    outage = OutageLog(log, "db", clock=lambda: now[0])

    def failure() -> logging.LogRecord:
        try:
            raise OSError("connection refused")
        except OSError:
            info = sys.exc_info()
        return logging.LogRecord(POOL_LOGGER, logging.WARNING, "", 0, "retrying", (), info)

    first = failure()
    assert outage.filter(first)
    assert first.exc_info is not None
    passed = []
    for _ in range(30):
        now[0] += 1.0
        passed += [r for r in [failure()] if outage.filter(r)]
    now[0] += SUMMARY_SECONDS
    passed += [r for r in [failure()] if outage.filter(r)]

    assert len(passed) == 1
    assert passed[0].exc_info is None
    assert passed[0].getMessage() == (
        "PostgreSQL at db still unreachable: 31 more failed reconnects "
        "(last: OSError: connection refused)"
    )
    assert outage.active
    outage.recovered()
    assert not outage.active
    again = failure()
    assert outage.filter(again)
    assert again.exc_info is not None
