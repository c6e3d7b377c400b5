"""PostgreSQL-only behaviour: URLs, session settings, lost and killed connections."""

import asyncio
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from server.storage import Storage, StorageError, StorageUnavailable, open_storage
from server.storage.postgres import session_settings
from tests.storage.conftest import PgSchema, run_async, with_params


def test_session_settings_default_but_let_the_url_decide():
    assert session_settings("postgresql://h/db", readonly=False) == {
        "application_name": "sensorcast",
        "timezone": "UTC",
    }
    assert session_settings("postgresql://h/db?application_name=x", readonly=True) == {
        "timezone": "UTC",
        "default_transaction_read_only": "on",
    }


async def test_malformed_url_is_one_line_storage_error_without_password(tmp_path):
    with pytest.raises(StorageError) as caught:
        await open_storage("postgresql://u:secret@localhost:notaport/db", base_dir=tmp_path)

    message = str(caught.value)
    assert message.startswith("database.url ")
    assert "secret" not in message
    assert "\n" not in message
    assert not isinstance(caught.value, StorageUnavailable)


async def test_unreachable_server_is_unavailable_with_password_redacted(tmp_path):
    # A port bound but not listening, held for the whole test: nobody else can take it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(StorageUnavailable) as caught:
            await open_storage(f"postgres://u:secret@127.0.0.1:{port}/db", base_dir=tmp_path)

    message = str(caught.value)
    assert message.startswith(
        f"cannot connect to PostgreSQL at postgres://u:***@127.0.0.1:{port}/db"
    )
    assert "secret" not in message


# -- against the server -------------------------------------------------------------------------


@pytest.fixture
async def pg(pg_schema: PgSchema):
    db = await open_storage(pg_schema.url, base_dir=Path(), pool_min=2, pool_max=4)
    await db.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body JSONB, ts TIMESTAMPTZ)")
    yield db
    await db.close()


async def test_sessions_use_the_urls_schema_name_and_utc(pg: Storage, pg_schema: PgSchema):
    row = await pg.fetchrow(
        "SELECT current_schema() AS schema, current_setting('application_name') AS app, "
        "current_setting('TimeZone') AS tz, date_trunc('day', ?::timestamptz) AS day",
        datetime(2024, 5, 1, 23, 30, tzinfo=UTC),
    )

    assert row == {
        "schema": pg_schema.name,
        "app": pg_schema.name,
        "tz": "UTC",
        "day": datetime(2024, 5, 1, tzinfo=UTC),
    }


async def test_default_application_name_is_sensorcast(pg_schema: PgSchema):
    db = await open_storage(
        with_params(pg_schema.server_url, search_path=pg_schema.name),
        base_dir=Path(),
    )
    try:
        assert await db.fetchval("SELECT current_setting('application_name')") == "sensorcast"
    finally:
        await db.close()


async def test_json_codec_covers_json_and_jsonb(pg: Storage):
    row = await pg.fetchrow("SELECT ?::jsonb AS b, ?::json AS j", {"a": [1]}, [{"b": None}])

    assert row == {"b": {"a": [1]}, "j": [{"b": None}]}


async def test_readonly_storage_refuses_writes(pg_schema: PgSchema):
    db = await open_storage(pg_schema.url, base_dir=Path(), readonly=True)
    try:
        assert await db.fetchval("SELECT 1") == 1
        with pytest.raises(StorageError, match="read-only transaction"):
            await db.execute("CREATE TABLE nope (x INTEGER)")
    finally:
        await db.close()


async def test_killed_idle_connections_are_replaced_without_a_restart(
    pg: Storage, pg_schema: PgSchema
):
    # Three transactions open at once hold three distinct connections, whatever pool_min
    # is and however fast the pool opens them: then they all go back to the pool idle.
    inside, release = asyncio.Semaphore(0), asyncio.Event()

    async def hold() -> None:
        async with pg.transaction() as tx:
            await tx.execute("SELECT 1")
            inside.release()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]
    for _ in holders:
        await inside.acquire()
    release.set()
    await asyncio.gather(*holders)
    opened = await pg_schema.backends()
    assert opened >= 3

    killed = await pg_schema.terminate_backends()
    assert killed == opened

    # The pool may hand out a connection whose death it has not read yet: that statement
    # fails as unavailable (at most once per killed connection); later ones run on fresh
    # connections.
    failures = 0
    for i in range(killed + 3):
        try:
            await pg.execute("INSERT INTO docs (id, body) VALUES (?, ?)", i, {"i": i})
        except StorageUnavailable:
            failures += 1
    assert failures <= killed
    last = killed + 2
    assert (await pg.fetchrow("SELECT body FROM docs WHERE id = ?", last)) == {"body": {"i": last}}


async def test_connection_killed_mid_query_is_unavailable_then_recovers(
    pg: Storage, pg_schema: PgSchema
):
    running = asyncio.create_task(pg.fetchval("SELECT pg_sleep(30)"))
    await pg_schema.until_running("SELECT pg_sleep(30)%")

    await pg_schema.terminate_backends()

    with pytest.raises(StorageUnavailable, match=r"terminat|closed"):
        await running
    await pg.ping()
    now = datetime.now(UTC)
    await pg.execute("INSERT INTO docs (id, body, ts) VALUES (1, ?, ?)", {"ok": True}, now)
    assert await pg.fetchrow("SELECT body, ts FROM docs") == {"body": {"ok": True}, "ts": now}


async def test_connection_killed_inside_a_transaction_is_unavailable_and_rolled_back(
    pg: Storage, pg_schema: PgSchema
):
    async def killed_halfway() -> None:
        async with pg.transaction() as tx:
            await tx.execute("INSERT INTO docs (id) VALUES (1)")
            await pg_schema.terminate_backends()
            await asyncio.sleep(0.1)
            await tx.execute("INSERT INTO docs (id) VALUES (2)")

    with pytest.raises(StorageUnavailable):
        await killed_halfway()

    async with pg.transaction() as tx:
        await tx.execute("INSERT INTO docs (id) VALUES (3)")
    assert await pg.fetch("SELECT id FROM docs") == [{"id": 3}]


async def test_cancel_mid_query_in_a_transaction_returns_at_once_and_rolls_back(
    pg: Storage, pg_schema: PgSchema
):
    started = asyncio.Event()

    async def slow() -> None:
        async with pg.transaction() as tx:
            await tx.execute("INSERT INTO docs (id) VALUES (1)")
            started.set()
            await tx.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await started.wait()
    await pg_schema.until_running("SELECT pg_sleep(30)%")
    task.cancel()
    # "At once": well before the 30 s the statement would take, with room for a slow CPU.
    async with asyncio.timeout(10):
        with pytest.raises(asyncio.CancelledError):
            await task

    await pg.execute("INSERT INTO docs (id) VALUES (2)")
    assert await pg.fetch("SELECT id FROM docs") == [{"id": 2}]


def test_cli_migrate_on_postgres_dry_run_then_apply(pg_schema: PgSchema, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": pg_schema.url}}), encoding="utf-8")

    def migrate(*extra: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "server", "--config", str(config), "migrate", *extra],
            env={k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    pending = migrate("--dry-run")
    assert pending[0] == "pending 0001 sensors"
    assert run_async(_tables(pg_schema)) == []

    assert migrate() == [line.replace("pending", "applied") for line in pending]
    assert "schema_migrations" in run_async(_tables(pg_schema))
    assert migrate("--dry-run") == ["up to date"]


async def _tables(schema: PgSchema) -> list[str]:
    conn = await schema.admin()
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema.name,
        )
    finally:
        await conn.close()
    return sorted(row["table_name"] for row in rows)
