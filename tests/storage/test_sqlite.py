import asyncio
from pathlib import Path

import pytest

from server.storage import (
    IntegrityError,
    Storage,
    StorageError,
    StorageUnavailable,
    open_storage,
    sqlite_path,
)
from server.storage.sqlite import split_script


@pytest.fixture
async def storage(tmp_path: Path):
    db = await open_storage("sqlite:///data/test.db", base_dir=tmp_path)
    await db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    yield db
    await db.close()


async def test_execute_and_fetch_round_trip_as_dicts(storage: Storage):
    await storage.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, "alpha")
    await storage.execute("INSERT INTO items (id, name) VALUES (?, ?)", 2, "beta")

    assert await storage.fetch("SELECT id, name FROM items ORDER BY id") == [
        {"id": 1, "name": "alpha"},
        {"id": 2, "name": "beta"},
    ]
    assert await storage.fetchrow("SELECT * FROM items WHERE id = ?", 2) == {
        "id": 2,
        "name": "beta",
    }
    assert await storage.fetchval("SELECT name FROM items WHERE id = ?", 1) == "alpha"


async def test_fetchrow_and_fetchval_return_none_without_rows(storage: Storage):
    assert await storage.fetchrow("SELECT * FROM items WHERE id = ?", 99) is None
    assert await storage.fetchval("SELECT name FROM items WHERE id = ?", 99) is None
    assert await storage.fetch("SELECT * FROM items") == []


async def test_executemany_inserts_every_row(storage: Storage):
    await storage.executemany(
        "INSERT INTO items (id, name) VALUES (?, ?)", ((i, f"n{i}") for i in range(1, 4))
    )

    assert await storage.fetch("SELECT id, name FROM items ORDER BY id") == [
        {"id": 1, "name": "n1"},
        {"id": 2, "name": "n2"},
        {"id": 3, "name": "n3"},
    ]


async def test_executemany_is_one_transaction(storage: Storage):
    with pytest.raises(IntegrityError):
        await storage.executemany(
            "INSERT INTO items (id, name) VALUES (?, ?)", [(1, "a"), (2, "b"), (1, "dup")]
        )

    assert await storage.fetchval("SELECT count(*) FROM items") == 0


async def test_transaction_commits_on_success(storage: Storage):
    async with storage.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, "kept")
        assert await tx.fetchval("SELECT count(*) FROM items") == 1

    assert await storage.fetch("SELECT id, name FROM items") == [{"id": 1, "name": "kept"}]


async def test_exception_in_transaction_leaves_no_rows(storage: Storage):
    async def insert_then_fail() -> None:
        async with storage.transaction() as tx:
            await tx.executemany("INSERT INTO items (id, name) VALUES (?, ?)", [(1, "a")])
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 2, "b")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await insert_then_fail()

    assert await storage.fetchval("SELECT count(*) FROM items") == 0


async def test_tx_refuses_work_after_its_block(storage: Storage):
    async with storage.transaction() as tx:
        pass

    with pytest.raises(StorageError, match="transaction already finished"):
        await tx.execute("INSERT INTO items (id, name) VALUES (1, 'late')")


async def test_storage_inside_own_transaction_raises_instead_of_hanging(storage: Storage):
    with pytest.raises(StorageError, match="query through the Tx"):
        async with storage.transaction():
            await storage.execute("INSERT INTO items (id, name) VALUES (1, 'x')")

    assert await storage.fetchval("SELECT count(*) FROM items") == 0


async def test_lone_statement_waits_for_open_transaction(storage: Storage):
    in_tx = asyncio.Event()

    async def rolled_back() -> None:
        async with storage.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (1, 'undone')")
            in_tx.set()
            await asyncio.sleep(0.05)
            raise RuntimeError("undo")

    async def outsider() -> None:
        await in_tx.wait()
        await storage.execute("INSERT INTO items (id, name) VALUES (2, 'outsider')")

    outside = asyncio.create_task(outsider())
    with pytest.raises(RuntimeError, match="undo"):
        await rolled_back()
    await outside

    # Had the outsider's INSERT run inside the open transaction, the rollback took it too.
    assert await storage.fetch("SELECT id, name FROM items") == [{"id": 2, "name": "outsider"}]


async def test_cancelled_transaction_rolls_back_and_frees_storage(storage: Storage):
    started = asyncio.Event()

    async def slow() -> None:
        async with storage.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (1, 'cancelled')")
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with storage.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES (2, 'after')")
    assert await storage.fetch("SELECT id, name FROM items") == [{"id": 2, "name": "after"}]


async def test_cancel_during_begin_leaves_no_open_transaction(storage: Storage):
    async def begin_only() -> None:
        async with storage.transaction():
            await asyncio.sleep(10)

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


async def test_foreign_keys_are_enforced(storage: Storage):
    await storage.execute(
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id))"
    )

    with pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed") as caught:
        await storage.execute("INSERT INTO tags (id, item_id) VALUES (1, 42)")

    assert type(caught.value.__cause__).__name__ == "IntegrityError"
    assert await storage.fetchval("SELECT count(*) FROM tags") == 0


async def test_sql_error_is_storage_error_keeping_cause(storage: Storage):
    with pytest.raises(StorageError, match="no such table: missing") as caught:
        await storage.fetch("SELECT * FROM missing")

    assert type(caught.value) is StorageError
    assert type(caught.value.__cause__).__name__ == "OperationalError"


async def test_fifty_concurrent_writers_lose_nothing(storage: Storage):
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


async def test_ping_passes_on_open_and_raises_unavailable_when_closed(storage: Storage):
    await storage.ping()
    await storage.close()

    with pytest.raises(StorageUnavailable, match="closed"):
        await storage.ping()
    with pytest.raises(StorageUnavailable):
        await storage.fetch("SELECT 1")
    await storage.close()  # a second close is harmless


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
        ("postgresql://u:p@localhost/db", "^PostgreSQL support arrives with the storage issue$"),
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
