import asyncio
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from server.storage import (
    Storage,
    StorageError,
    open_storage,
    sqlite_path,
)
from server.storage.migrate import apply, pending
from server.storage.sqlite import parse_timestamp, split_script


@pytest.fixture
async def storage(tmp_path: Path):
    db = await open_storage("sqlite:///data/test.db", base_dir=tmp_path)
    await db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    yield db
    await db.close()


async def test_cancel_during_begin_leaves_no_open_transaction(storage: Storage):
    async def begin_only() -> None:
        async with storage.transaction():
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(begin_only())
    await asyncio.sleep(0)  # the task now waits for BEGIN on the worker thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with storage.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES (1, 'ok')")
    assert await storage.fetchval("SELECT count(*) FROM items") == 1


async def test_wal_journal_mode_is_on(storage: Storage):
    assert await storage.fetchval("PRAGMA journal_mode") == "wal"
    assert await storage.fetchval("PRAGMA synchronous") == 1  # NORMAL
    assert await storage.fetchval("PRAGMA busy_timeout") == 5000


async def test_fifty_concurrent_read_modify_write_transactions_lose_nothing(storage: Storage):
    # SQLite serialises whole transactions, so even a read-modify-write in Python is safe.
    await storage.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    await storage.execute("INSERT INTO counter (n) VALUES (0)")

    async def writer(i: int) -> None:
        async with storage.transaction() as tx:
            # Read-modify-write in Python: any interleaving would lose an increment.
            n = await tx.fetchval("SELECT n FROM counter")
            await asyncio.sleep(0)
            await tx.execute("UPDATE counter SET n = ?", n + 1)
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", i, f"w{i}")

    await asyncio.gather(*(writer(i) for i in range(1, 51)))

    assert await storage.fetchval("SELECT n FROM counter") == 50
    ids = await storage.fetch("SELECT id FROM items ORDER BY id")
    assert [row["id"] for row in ids] == list(range(1, 51))


async def test_two_connections_to_one_file_wait_instead_of_locking(tmp_path: Path):
    # As when `sensorcast user add` runs next to the server.
    first = await open_storage("sqlite:///shared.db", base_dir=tmp_path)
    second = await open_storage("sqlite:///shared.db", base_dir=tmp_path)
    try:
        await first.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")

        async def writer(db: Storage, i: int) -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO items (id) VALUES (?)", i)

        await asyncio.gather(*(writer(first if i % 2 else second, i) for i in range(40)))

        assert await second.fetchval("SELECT count(*) FROM items") == 40
    finally:
        await first.close()
        await second.close()


async def test_relative_url_resolves_against_base_dir_and_creates_parent(tmp_path: Path):
    db = await open_storage("sqlite:///var/nested/app.db", base_dir=tmp_path)
    await db.execute("CREATE TABLE t (x INTEGER)")
    await db.close()

    assert (tmp_path / "var" / "nested" / "app.db").is_file()


async def test_absolute_url_with_four_slashes_is_used_as_is(tmp_path: Path):
    target = tmp_path / "abs" / "app.db"
    db = await open_storage(f"sqlite:///{target}", base_dir=Path("/nonexistent"))
    await db.close()

    assert str(target).startswith("/")
    assert target.is_file()


def test_sqlite_path_parsing():
    base = Path("/srv/sensorcast")
    assert sqlite_path("sqlite:///var/sensorcast.db", base) == "/srv/sensorcast/var/sensorcast.db"
    assert sqlite_path("sqlite:////data/s.db", base) == "/data/s.db"
    assert sqlite_path("sqlite:///:memory:", base) == ":memory:"
    assert sqlite_path("sqlite:///my%20db.db", base) == "/srv/sensorcast/my db.db"


async def test_memory_url_opens_private_database(tmp_path: Path):
    db = await open_storage("sqlite:///:memory:", base_dir=tmp_path)
    await db.execute("CREATE TABLE t (x INTEGER)")
    await db.execute("INSERT INTO t VALUES (7)")
    assert await db.fetchval("SELECT x FROM t") == 7
    await db.close()
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported scheme"),
        ("var/sensorcast.db", "unsupported scheme"),
        ("sqlite://var/x.db", "use three slashes"),
        ("sqlite:///", "no database file"),
        ("sqlite:///x.db?mode=ro", "query parameters"),
    ],
)
async def test_bad_urls_raise_one_clear_storage_error(tmp_path: Path, url: str, message: str):
    with pytest.raises(StorageError, match=message):
        await open_storage(url, base_dir=tmp_path)


def test_split_script_cuts_only_at_statement_ends():
    script = """
    -- leading comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER trg AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'c;d' WHERE rowid = new.rowid;
    END;
    INSERT INTO t (x) VALUES ('e') /* trailing; comment */
    """

    statements = split_script(script)

    assert len(statements) == 3
    assert statements[0].endswith("CREATE TABLE t (x TEXT DEFAULT 'a;b');")
    assert statements[1].startswith("CREATE TRIGGER trg")
    assert statements[1].endswith("END;")
    assert statements[2] == "INSERT INTO t (x) VALUES ('e') /* trailing; comment */"


async def test_timestamps_are_stored_as_fixed_width_utc_text(storage: Storage):
    await storage.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TIMESTAMPTZ NOT NULL "
        "DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')))"
    )
    plus_two = timezone(timedelta(hours=2))
    await storage.execute(
        "INSERT INTO events (id, ts) VALUES (1, ?)", datetime(2024, 5, 1, 14, 0, tzinfo=plus_two)
    )
    await storage.execute(
        "INSERT INTO events (id, ts) VALUES (2, ?)", datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    )
    await storage.execute("INSERT INTO events (id) VALUES (3)")

    raw = await storage.fetch("SELECT typeof(ts) AS type, ts || '' AS text FROM events ORDER BY id")

    assert raw[:2] == [
        {"type": "text", "text": "2024-05-01T12:00:00.000000Z"},
        {"type": "text", "text": "0999-01-02T03:04:05.000006Z"},
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}000Z", raw[2]["text"])
    # Same width everywhere, so ORDER BY the text is ORDER BY time.
    by_text = await storage.fetch("SELECT id FROM events ORDER BY ts")
    assert [row["id"] for row in by_text] == [2, 1, 3]


async def test_expression_over_a_timestamp_comes_back_as_text(storage: Storage):
    await storage.execute("CREATE TABLE events (ts TIMESTAMPTZ)")
    moment = datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC)
    await storage.execute("INSERT INTO events (ts) VALUES (?)", moment)

    latest = await storage.fetchval("SELECT max(ts) FROM events")

    # No declared type on an expression: parse_timestamp() is the documented way back.
    assert latest == "2024-05-01T12:00:00.000005Z"
    assert parse_timestamp(latest) == moment
    assert parse_timestamp("2024-05-01 12:00:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)


async def test_readonly_open_of_a_missing_file_creates_nothing(tmp_path: Path):
    db = await open_storage("sqlite:///var/never.db", base_dir=tmp_path, readonly=True)
    try:
        assert [m.version for m in await pending(db)]
    finally:
        await db.close()

    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_readonly_open_of_an_existing_file_reads_and_refuses_writes(tmp_path: Path):
    writer = await open_storage("sqlite:///app.db", base_dir=tmp_path)
    await apply(writer)
    await writer.close()

    db = await open_storage("sqlite:///app.db", base_dir=tmp_path, readonly=True)
    try:
        assert await pending(db) == []
        with pytest.raises(StorageError, match="readonly"):
            await db.execute("INSERT INTO rooms (name) VALUES ('x')")
    finally:
        await db.close()
