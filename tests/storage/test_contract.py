"""The storage contract: every test here runs on SQLite and on PostgreSQL (conftest)."""

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from server.storage import IntegrityError, Storage, StorageError, StorageUnavailable

# DDL is the one place the backends' SQL differs here; queries are written once.
TYPED = {
    "sqlite": "CREATE TABLE typed (id INTEGER PRIMARY KEY, ts TIMESTAMPTZ, doc JSON, "
    "flag BOOLEAN, n DOUBLE PRECISION)",
    "postgres": "CREATE TABLE typed (id INTEGER PRIMARY KEY, ts TIMESTAMPTZ, doc JSONB, "
    "flag BOOLEAN, n DOUBLE PRECISION)",
}


@pytest.fixture
async def items(storage: Storage) -> Storage:
    await storage.executescript(
        """
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                            qty INTEGER CHECK (qty >= 0));
        CREATE TABLE tags (id INTEGER PRIMARY KEY,
                           item_id INTEGER NOT NULL REFERENCES items (id));
        CREATE TABLE counter (n INTEGER NOT NULL);
        INSERT INTO counter (n) VALUES (0);
        """
    )
    return storage


@pytest.fixture
async def typed(storage: Storage) -> Storage:
    await storage.execute(TYPED[storage.dialect])
    return storage


async def count(storage: Storage, table: str = "items") -> int:
    return int(await storage.fetchval(f"SELECT count(*) FROM {table}"))


# -- statements ---------------------------------------------------------------------------------


async def test_execute_and_fetch_round_trip_as_dicts(items: Storage):
    await items.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, "alpha")
    await items.execute("INSERT INTO items (id, name) VALUES (?, ?)", 2, "beta")

    assert await items.fetch("SELECT id, name FROM items ORDER BY id") == [
        {"id": 1, "name": "alpha"},
        {"id": 2, "name": "beta"},
    ]
    assert await items.fetchrow("SELECT id, name FROM items WHERE id = ?", 2) == {
        "id": 2,
        "name": "beta",
    }
    assert await items.fetchval("SELECT name FROM items WHERE id = ?", 1) == "alpha"


async def test_fetchrow_and_fetchval_return_none_without_rows(items: Storage):
    assert await items.fetchrow("SELECT * FROM items WHERE id = ?", 99) is None
    assert await items.fetchval("SELECT name FROM items WHERE id = ?", 99) is None
    assert await items.fetch("SELECT * FROM items") == []


async def test_insert_returning_id(migrated: Storage):
    first = await migrated.fetchval("INSERT INTO locations (name) VALUES (?) RETURNING id", "a")
    second = await migrated.fetchrow(
        "INSERT INTO locations (name) VALUES (?) RETURNING id, name", "b"
    )

    assert isinstance(first, int)
    assert second == {"id": first + 1, "name": "b"}


async def test_question_mark_inside_string_literal_is_not_a_placeholder(items: Storage):
    await items.execute("INSERT INTO items (id, name) VALUES (?, 'what? really?')", 1)
    await items.execute("INSERT INTO items (id, name) VALUES (?, ?)", 2, "it's ?")

    row = await items.fetchrow(
        "SELECT 'a?b' AS lit, name FROM items WHERE name = ? AND id = ? AND 'x?' <> ''",
        "it's ?",
        2,
    )
    assert row == {"lit": "a?b", "name": "it's ?"}
    assert await items.fetchval("SELECT name FROM items WHERE id = ?", 1) == "what? really?"
    # -- a comment with ? in it
    assert await items.fetchval("SELECT id /* ? */ FROM items -- ?\n WHERE id = ?", 2) == 2


async def test_executemany_inserts_every_row(items: Storage):
    await items.executemany(
        "INSERT INTO items (id, name) VALUES (?, ?)", ((i, f"n{i}") for i in range(1, 4))
    )

    assert await items.fetch("SELECT id, name FROM items ORDER BY id") == [
        {"id": 1, "name": "n1"},
        {"id": 2, "name": "n2"},
        {"id": 3, "name": "n3"},
    ]


async def test_executemany_is_one_transaction(items: Storage):
    with pytest.raises(IntegrityError):
        await items.executemany(
            "INSERT INTO items (id, name) VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "a")]
        )

    assert await count(items) == 0


async def test_executescript_runs_statements_with_semicolons_in_literals(storage: Storage):
    await storage.executescript(
        """
        -- a comment; with a semicolon
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO notes (id, body) VALUES (1, 'a;b');
        INSERT INTO notes (id, body) VALUES (2, 'c?d')
        """
    )

    assert await storage.fetch("SELECT body FROM notes ORDER BY id") == [
        {"body": "a;b"},
        {"body": "c?d"},
    ]


async def test_executescript_is_all_or_nothing(items: Storage):
    with pytest.raises(StorageError):
        await items.executescript(
            "INSERT INTO items (id, name) VALUES (1, 'kept?'); INSERT INTO nowhere VALUES (1);"
        )

    assert await count(items) == 0


async def test_sql_error_is_plain_storage_error_keeping_cause(storage: Storage):
    with pytest.raises(StorageError) as caught:
        await storage.fetch("SELECT * FROM missing")

    assert type(caught.value) is StorageError
    assert "missing" in str(caught.value)
    assert caught.value.__cause__ is not None


# -- integrity ----------------------------------------------------------------------------------


async def test_unique_violation_is_integrity_error(items: Storage):
    await items.execute("INSERT INTO items (id, name) VALUES (1, 'a')")

    with pytest.raises(IntegrityError) as caught:
        await items.execute("INSERT INTO items (id, name) VALUES (2, 'a')")

    assert caught.value.__cause__ is not None
    assert await count(items) == 1


async def test_primary_key_violation_is_integrity_error(items: Storage):
    await items.execute("INSERT INTO items (id, name) VALUES (1, 'a')")

    with pytest.raises(IntegrityError):
        await items.execute("INSERT INTO items (id, name) VALUES (1, 'b')")


async def test_foreign_key_is_enforced(items: Storage):
    with pytest.raises(IntegrityError):
        await items.execute("INSERT INTO tags (id, item_id) VALUES (1, 42)")

    assert await count(items, "tags") == 0


async def test_not_null_and_check_violations_are_integrity_errors(items: Storage):
    with pytest.raises(IntegrityError):
        await items.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, None)
    with pytest.raises(IntegrityError):
        await items.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", 2, "b", -1)

    assert await count(items) == 0


# -- transactions -------------------------------------------------------------------------------


async def test_transaction_commits_on_success(items: Storage):
    async with items.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, "kept")
        assert await tx.fetchval("SELECT count(*) FROM items") == 1
        assert await tx.fetchrow("SELECT name FROM items") == {"name": "kept"}
        assert await tx.fetch("SELECT id FROM items") == [{"id": 1}]

    assert await items.fetch("SELECT id, name FROM items") == [{"id": 1, "name": "kept"}]


async def test_exception_in_transaction_leaves_no_rows(items: Storage):
    async def insert_then_fail() -> None:
        async with items.transaction() as tx:
            await tx.executemany("INSERT INTO items (id, name) VALUES (?, ?)", [(1, "a")])
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 2, "b")
            await tx.copy_rows("items", ["id", "name"], [(3, "c")])
            await tx.executescript("INSERT INTO items (id, name) VALUES (4, 'd')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await insert_then_fail()

    assert await count(items) == 0


async def test_failed_statement_ends_the_transaction_even_if_caught(items: Storage):
    # PostgreSQL aborts a transaction at its first error; SQLite is made to behave alike so
    # code written against one does not break on the other.
    async def carry_on_after_an_error() -> None:
        async with items.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            with pytest.raises(IntegrityError):
                await tx.execute("INSERT INTO items (id, name) VALUES (2, 'a')")
            with pytest.raises(StorageError, match="transaction failed"):
                await tx.execute("INSERT INTO items (id, name) VALUES (3, 'c')")

    with pytest.raises(StorageError, match="rolled back: a statement in it failed"):
        await carry_on_after_an_error()

    assert await count(items) == 0


async def test_tx_refuses_work_after_its_block(items: Storage):
    async with items.transaction() as tx:
        pass

    with pytest.raises(StorageError, match="transaction already finished"):
        await tx.execute("INSERT INTO items (id, name) VALUES (1, 'late')")
    with pytest.raises(StorageError, match="transaction already finished"):
        await tx.fetchval("SELECT 1")


async def test_storage_inside_own_transaction_raises_instead_of_hanging(items: Storage):
    async def nested() -> None:
        async with items.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (1, 'x')")
            await items.execute("INSERT INTO items (id, name) VALUES (2, 'y')")

    with pytest.raises(StorageError, match="query through the Tx"):
        await nested()

    assert await count(items) == 0


async def test_statement_outside_a_transaction_is_not_rolled_back_with_it(items: Storage):
    in_tx = asyncio.Event()
    issued = asyncio.Event()

    async def rolled_back() -> None:
        async with items.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (1, 'undone')")
            in_tx.set()
            # The outsider's statement is on its way (waiting for the writer or running)
            # before the rollback, whatever the machine's load: an event, not a timer.
            await issued.wait()
            raise RuntimeError("undo")

    async def outsider() -> None:
        await in_tx.wait()
        issued.set()  # rolled_back resumes only once this task waits inside execute()
        await items.execute("INSERT INTO items (id, name) VALUES (2, 'outsider')")

    outside = asyncio.create_task(outsider())
    with pytest.raises(RuntimeError, match="undo"):
        await rolled_back()
    await outside

    assert await items.fetch("SELECT id, name FROM items") == [{"id": 2, "name": "outsider"}]


async def test_cancelled_transaction_rolls_back_and_frees_storage(items: Storage):
    started = asyncio.Event()

    async def slow() -> None:
        async with items.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (1, 'cancelled')")
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with items.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES (2, 'after')")
    assert await items.fetch("SELECT id, name FROM items") == [{"id": 2, "name": "after"}]


async def test_tasks_may_share_one_tx(items: Storage):
    async with items.transaction() as tx:
        await asyncio.gather(
            *(
                tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", i, f"g{i}")
                for i in range(20)
            )
        )

    assert await count(items) == 20


async def test_fifty_concurrent_writers_lose_nothing(items: Storage):
    async def writer(i: int) -> None:
        async with items.transaction() as tx:
            await tx.execute("UPDATE counter SET n = n + 1")
            await asyncio.sleep(0)
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", i, f"w{i}")

    await asyncio.gather(*(writer(i) for i in range(1, 51)))

    assert await items.fetchval("SELECT n FROM counter") == 50
    ids = await items.fetch("SELECT id FROM items ORDER BY id")
    assert [row["id"] for row in ids] == list(range(1, 51))


# -- values -------------------------------------------------------------------------------------


async def test_datetimes_round_trip_as_aware_utc(typed: Storage):
    moment = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
    elsewhere = datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))

    await typed.execute("INSERT INTO typed (id, ts) VALUES (?, ?)", 1, moment)
    await typed.execute("INSERT INTO typed (id, ts) VALUES (?, ?)", 2, elsewhere)

    rows = await typed.fetch("SELECT id, ts FROM typed ORDER BY ts")
    assert [row["id"] for row in rows] == [2, 1]
    assert rows[1]["ts"] == moment
    assert rows[0]["ts"] == elsewhere
    for row in rows:
        assert row["ts"].utcoffset() == timedelta(0)
    assert rows[0]["ts"] == datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)
    assert await typed.fetchval("SELECT ts FROM typed WHERE id = ?", 1) == moment


async def test_datetime_comparisons_follow_time_not_text(typed: Storage):
    base = datetime(2024, 1, 1, tzinfo=UTC)
    await typed.executemany(
        "INSERT INTO typed (id, ts) VALUES (?, ?)",
        [(i, base + timedelta(seconds=i * 0.5)) for i in range(1, 11)],
    )
    # The bound is given in another offset: only the instant counts.
    bound = (base + timedelta(seconds=2.5)).astimezone(timezone(timedelta(hours=-5)))

    rows = await typed.fetch("SELECT id FROM typed WHERE ts >= ? ORDER BY ts", bound)

    assert [row["id"] for row in rows] == [5, 6, 7, 8, 9, 10]


async def test_naive_datetime_is_refused(typed: Storage):
    with pytest.raises(StorageError, match="naive datetime"):
        await typed.execute("INSERT INTO typed (id, ts) VALUES (?, ?)", 1, datetime(2024, 1, 1))
    with pytest.raises(StorageError, match="naive datetime"):
        await typed.copy_rows("typed", ["id", "ts"], [(1, datetime(2024, 1, 1))])

    assert await count(typed, "typed") == 0


async def test_json_round_trips_as_dicts_and_lists(typed: Storage):
    doc = {"min": -1.5, "max": None, "tags": ["a", "ü", 3], "nested": {"ok": True}}

    await typed.execute("INSERT INTO typed (id, doc) VALUES (?, ?)", 1, doc)
    await typed.execute("INSERT INTO typed (id, doc) VALUES (?, ?)", 2, [1, {"x": "y"}])
    await typed.execute("INSERT INTO typed (id, doc) VALUES (?, ?)", 3, None)
    async with typed.transaction() as tx:
        await tx.execute("INSERT INTO typed (id, doc) VALUES (?, ?)", 4, {})

    rows = await typed.fetch("SELECT id, doc FROM typed ORDER BY id")
    assert [row["doc"] for row in rows] == [doc, [1, {"x": "y"}], None, {}]
    assert await typed.fetchval("SELECT doc FROM typed WHERE id = ?", 1) == doc


async def test_booleans_round_trip_as_bool(typed: Storage):
    await typed.executemany(
        "INSERT INTO typed (id, flag) VALUES (?, ?)", [(1, True), (2, False), (3, None)]
    )

    rows = await typed.fetch("SELECT flag FROM typed ORDER BY id")
    assert [row["flag"] for row in rows] == [True, False, None]
    assert all(type(row["flag"]) is bool for row in rows[:2])
    assert await typed.fetchval("SELECT count(*) FROM typed WHERE flag = ?", True) == 1


# -- copy_rows ----------------------------------------------------------------------------------


async def test_copy_rows_inserts_ten_thousand_rows_with_types(typed: Storage):
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        (i, base + timedelta(milliseconds=i), {"i": i}, i % 2 == 0, i / 4) for i in range(10_000)
    ]

    inserted = await typed.copy_rows("typed", ["id", "ts", "doc", "flag", "n"], iter(rows))

    assert inserted == 10_000
    assert await count(typed, "typed") == 10_000
    assert await typed.fetchrow("SELECT id, ts, doc, flag, n FROM typed WHERE id = ?", 9_999) == {
        "id": 9_999,
        "ts": base + timedelta(milliseconds=9_999),
        "doc": {"i": 9_999},
        "flag": False,
        "n": 9_999 / 4,
    }


async def test_copy_rows_is_all_or_nothing(items: Storage):
    with pytest.raises(IntegrityError):
        await items.copy_rows("items", ["id", "name"], [(1, "a"), (2, "b"), (3, "a")])

    assert await count(items) == 0
    assert await items.copy_rows("items", ["id", "name"], []) == 0


async def test_copy_rows_inside_a_transaction_goes_with_it(items: Storage):
    async with items.transaction() as tx:
        assert await tx.copy_rows("items", ["id", "name"], [(1, "a"), (2, "b")]) == 2
        assert await tx.fetchval("SELECT count(*) FROM items") == 2

    assert await count(items) == 2


async def test_copy_rows_takes_only_plain_identifiers(items: Storage):
    with pytest.raises(StorageError, match="not a plain SQL identifier"):
        await items.copy_rows("items; DROP TABLE items", ["id"], [(1,)])
    with pytest.raises(StorageError, match="not a plain SQL identifier"):
        await items.copy_rows("items", ["id", "name)"], [(1, "a")])

    assert await count(items) == 0


# -- lifecycle ----------------------------------------------------------------------------------


async def test_ping_passes_on_open_and_raises_unavailable_when_closed(storage: Storage):
    await storage.ping()
    await storage.close()

    with pytest.raises(StorageUnavailable, match="storage is closed"):
        await storage.ping()
    with pytest.raises(StorageUnavailable):
        await storage.fetch("SELECT 1")
    with pytest.raises(StorageUnavailable):
        async with storage.transaction():
            pass
    await storage.close()  # a second close is harmless


async def test_unavailable_is_the_503_api_error_with_a_fixed_message():
    from server.errors import ApiError

    exc = StorageUnavailable("connection refused by 10.0.0.5")

    assert isinstance(exc, StorageError)
    assert isinstance(exc, ApiError)
    assert (exc.status, exc.code) == (503, "unavailable")
    assert exc.body() == {"code": "unavailable", "message": "database unavailable", "details": None}
    assert str(exc) == "connection refused by 10.0.0.5"


async def test_waiting_for_a_busy_connection_is_bounded_by_acquire_timeout(open_db):
    db = await open_db(pool_min=1, pool_max=1, acquire_timeout=0.2)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as tx:
            await tx.fetchval("SELECT 1")
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    try:
        with pytest.raises(StorageUnavailable, match="no free database connection"):
            await db.fetchval("SELECT 1")
    finally:
        release.set()
        await holder
    assert await db.fetchval("SELECT 1") == 1
