"""`storage` over [sqlite, postgres]: the same tests run on both backends.

SQLite is a temp file. PostgreSQL is the real server at SENSORCAST_TEST_POSTGRES_URL
(default postgresql://postgres@127.0.0.1:5432/test); every test gets its own schema,
reached through search_path and dropped (CASCADE) afterwards, and its own
application_name, so runs and tests never see each other. Without a reachable server the
postgres variants skip with a loud reason (listed again at the end of the run, see
tests/conftest.py); with CI set (any truthy value) they fail instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from server.storage import Storage, open_storage, redact_url
from server.storage.migrate import apply
from tests.conftest import PG_UNREACHABLE, is_ci

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT = 3.0
# Unique per pytest process: schema and application names start with it.
RUN_PREFIX = f"sc_test_{uuid.uuid4().hex[:8]}"
_numbers = itertools.count(1)


def postgres_url() -> str:
    return os.environ.get("SENSORCAST_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def with_params(url: str, **params: str) -> str:
    """The URL with query parameters added (asyncpg makes them session settings)."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion on a private loop in another thread.

    For session-scoped setup: the test's own loop (pytest-asyncio) must stay untouched.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    await conn.close()


async def _drop_run_schemas(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
            f"{RUN_PREFIX}%",
        )
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"{RUN_PREFIX}%"
        )
        for row in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The PostgreSQL URL, checked once per session; skip (or fail under CI) when down."""
    url = postgres_url()
    try:
        run_async(_probe(url))
    except Exception as exc:
        message = f"{PG_UNREACHABLE} {redact_url(url)}: {type(exc).__name__}: {exc}"
        if is_ci():
            pytest.fail(f"{message} (CI is set: the PostgreSQL tests must run)", pytrace=False)
        pytest.skip(f"{message}; set SENSORCAST_TEST_POSTGRES_URL")
    yield url
    # Whatever a failed teardown left behind.
    run_async(_drop_run_schemas(url))


class PgSchema:
    """One test's schema: `url` reaches it (search_path) under its own application_name."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"{RUN_PREFIX}_{next(_numbers)}"
        self.url = with_params(server_url, search_path=self.name, application_name=self.name)

    async def admin(self) -> asyncpg.Connection:
        """A connection outside the schema's pools (to kill them, say); caller closes it."""
        return await asyncpg.connect(self.server_url, timeout=CONNECT_TIMEOUT)

    async def terminate_backends(self, application_name: str | None = None) -> int:
        """pg_terminate_backend on every connection opened with that application_name."""
        conn = await self.admin()
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = $1",
                application_name or self.name,
            )
            return len(rows)
        finally:
            await conn.close()

    async def backends(self, state: str | None = None, query_like: str = "%") -> int:
        """Connections open under this schema's application_name (in `state`, running a
        query LIKE `query_like`), as pg_stat_activity sees them."""
        conn = await self.admin()
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = $1 "
                    "AND ($2::text IS NULL OR state = $2) AND query LIKE $3",
                    self.name,
                    state,
                    query_like,
                )
            )
        finally:
            await conn.close()

    async def until_running(self, query_like: str, timeout: float = 10.0) -> None:
        """Poll pg_stat_activity until a statement LIKE `query_like` is active on the server:
        "the query is running" as a fact, not as a sleep."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.backends("active", query_like):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no active query like {query_like!r} within {timeout}s")
            await asyncio.sleep(0.02)

    async def create(self) -> None:
        conn = await self.admin()
        try:
            await conn.execute(f'CREATE SCHEMA "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        await self.terminate_backends()
        conn = await self.admin()
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def pg_schema(pg_server_url: str) -> AsyncIterator[PgSchema]:
    schema = PgSchema(pg_server_url)
    await schema.create()
    yield schema
    await schema.drop()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        # Skips (or fails) here, before any async setup, when PostgreSQL is down.
        request.getfixturevalue("pg_server_url")
    return str(request.param)


class Opener:
    """Opens storages on this test's database: the same SQLite file or PostgreSQL schema."""

    def __init__(self, url: str, base_dir: Path, schema: PgSchema | None) -> None:
        self.url = url
        self.base_dir = base_dir
        self.schema = schema
        self._opened: list[Storage] = []

    async def __call__(self, **kw: Any) -> Storage:
        kw.setdefault("pool_max", 4)
        storage = await open_storage(self.url, base_dir=self.base_dir, **kw)
        self._opened.append(storage)
        return storage

    async def close_all(self) -> None:
        for storage in self._opened:
            await storage.close()


@pytest.fixture
async def open_db(backend: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """`await open_db()` opens another handle on the test's database (closed after)."""
    schema = None
    url = "sqlite:///data/test.db"
    if backend == "postgres":
        schema = PgSchema(postgres_url())
        await schema.create()
        url = schema.url
    opener = Opener(url, tmp_path, schema)
    try:
        yield opener
    finally:
        await opener.close_all()
        if schema is not None:
            await schema.drop()


@pytest.fixture
async def storage(open_db: Opener) -> Storage:
    return await open_db()


@pytest.fixture
async def migrated(storage: Storage) -> Storage:
    """`storage` with the repository's migrations applied."""
    await apply(storage)
    return storage
