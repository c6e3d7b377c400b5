"""latest_values on SQLite and PostgreSQL: the newest value per sensor and metric stays
right after out-of-order inserts, deletes, retention and a sensor's deletion."""

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.storage import IntegrityError, Storage
from server.storage.migrate import MIGRATIONS_DIR, apply
from server.storage.readings import delete_readings_before, select_latest, store_readings

# Fixtures: the storage tests' database over [sqlite, postgres].
from tests.storage.conftest import (  # noqa: F401
    backend,
    migrated,
    open_db,
    pg_server_url,
    storage,
)

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def sensor(db: Storage) -> int:
    return int(await db.fetchval("INSERT INTO sensors (type) VALUES (?) RETURNING id", "t"))


async def latest(db: Storage, sid: int) -> dict[str, tuple[datetime, float]]:
    return {r["metric"]: (r["ts"], r["value"]) for r in await select_latest(db, sid)}


async def test_an_older_reading_arriving_late_does_not_replace_a_newer_value(migrated: Storage):  # noqa: F811
    sid = await sensor(migrated)
    await store_readings(migrated, [(sid, at(10), {"t": 10.0, "h": 1.0})], [])
    await store_readings(migrated, [(sid, at(5), {"t": 5.0, "h": 2.0, "p": 7.0})], [])

    assert await latest(migrated, sid) == {
        "t": (at(10), 10.0),
        "h": (at(10), 1.0),
        "p": (at(5), 7.0),
    }

    await store_readings(migrated, [(sid, at(11), {"h": 3.0})], [])

    assert await latest(migrated, sid) == {
        "t": (at(10), 10.0),
        "h": (at(11), 3.0),
        "p": (at(5), 7.0),
    }


async def test_within_a_batch_the_newest_wins_and_a_tie_takes_the_higher_value(migrated: Storage):  # noqa: F811
    a, b = await sensor(migrated), await sensor(migrated)
    rows = [
        (a, at(3), {"t": 3.0}),
        (b, at(1), {"t": 1.0}),
        (a, at(9), {"t": 9.0}),
        (a, at(9), {"t": 8.0}),
        (a, at(4), {"t": 4.0}),
    ]
    await store_readings(migrated, rows, [])
    await store_readings(migrated, [(a, at(9), {"t": 8.5})], [])

    assert await latest(migrated, a) == {"t": (at(9), 9.0)}
    assert await latest(migrated, b) == {"t": (at(1), 1.0)}


async def test_a_batch_that_fails_leaves_the_latest_values_as_they_were(migrated: Storage):  # noqa: F811
    sid = await sensor(migrated)
    await store_readings(migrated, [(sid, at(1), {"t": 1.0})], [])

    with pytest.raises(IntegrityError):
        await store_readings(
            migrated, [(sid, at(2), {"t": 2.0}), (sid + 99, at(3), {"t": 3.0})], []
        )

    assert await latest(migrated, sid) == {"t": (at(1), 1.0)}


async def test_deleting_the_newest_reading_brings_back_the_one_before(migrated: Storage):  # noqa: F811
    sid = await sensor(migrated)
    await store_readings(
        migrated,
        [(sid, at(1), {"t": 1.0, "h": 1.0}), (sid, at(2), {"t": 2.0}), (sid, at(3), {"t": 3.0})],
        [],
    )

    await migrated.execute("DELETE FROM readings WHERE sensor_id = ? AND ts = ?", sid, at(3))
    assert await latest(migrated, sid) == {"t": (at(2), 2.0), "h": (at(1), 1.0)}

    await migrated.execute("DELETE FROM readings WHERE sensor_id = ? AND ts = ?", sid, at(1))
    assert await latest(migrated, sid) == {"t": (at(2), 2.0)}


async def test_retention_drops_values_with_no_reading_left_and_keeps_the_rest(migrated: Storage):  # noqa: F811
    sid = await sensor(migrated)
    old = [(sid, at(i), {"t": float(i), "gone": 1.0}) for i in range(7)]
    await store_readings(migrated, [*old, (sid, at(100), {"t": 100.0})], [])

    # Batches of 2: the latest rows are fixed batch by batch, not only at the end.
    assert await delete_readings_before(migrated, at(50), batch=2) == 7

    assert await latest(migrated, sid) == {"t": (at(100), 100.0)}
    assert await migrated.fetchval("SELECT count(*) FROM readings") == 1


async def test_deleting_a_sensor_deletes_its_latest_values(migrated: Storage):  # noqa: F811
    a, b = await sensor(migrated), await sensor(migrated)
    await store_readings(migrated, [(a, at(1), {"t": 1.0}), (b, at(1), {"t": 2.0})], [])

    await migrated.execute("DELETE FROM sensors WHERE id = ?", a)

    assert await migrated.fetch("SELECT sensor_id, metric FROM latest_values") == [
        {"sensor_id": b, "metric": "t"}
    ]


async def test_migration_fills_latest_values_from_existing_readings(
    storage: Storage,  # noqa: F811
    tmp_path: Path,
):
    # Up to 0005 from a copy of the directory, readings, then 0006 and on.
    for path in MIGRATIONS_DIR.glob("000[1-5]_*.sql"):
        shutil.copy(path, tmp_path / path.name)
    await apply(storage, tmp_path)
    sid = await sensor(storage)
    await storage.copy_rows(
        "readings",
        ("sensor_id", "ts", "metrics"),
        [(sid, at(2), {"t": 2.0}), (sid, at(1), {"t": 1.0, "h": 5.0}), (sid, at(2), {"t": 2.5})],
    )

    await apply(storage)

    assert await latest(storage, sid) == {"t": (at(2), 2.5), "h": (at(1), 5.0)}


class NoTransactions:
    """The storage, with each statement recorded and transaction() refused."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self.statements: list[str] = []

    async def fetch(self, sql: str, *args: object) -> list[dict[str, object]]:
        self.statements.append(sql)
        return await self.inner.fetch(sql, *args)

    def transaction(self) -> None:
        raise AssertionError("retention must not hold one transaction over every batch")


async def test_retention_deletes_batch_by_batch_each_on_its_own(migrated: Storage):  # noqa: F811
    sid = await sensor(migrated)
    await store_readings(migrated, [(sid, at(i), {"t": float(i)}) for i in range(7)], [])
    db = NoTransactions(migrated)

    assert await delete_readings_before(db, at(50), batch=2) == 7  # type: ignore[arg-type]

    assert len(db.statements) == 4
    assert all(sql.startswith("DELETE") for sql in db.statements)


async def test_a_reader_gets_the_sqlite_connection_between_retention_batches(
    migrated: Storage,  # noqa: F811
):
    if migrated.dialect != "sqlite":
        pytest.skip("on PostgreSQL a reader has its own pooled connection: nothing to wait for")
    sid = await sensor(migrated)
    await store_readings(migrated, [(sid, at(i), {"t": float(i)}) for i in range(20)], [])

    retention = asyncio.create_task(delete_readings_before(migrated, at(50), batch=1))
    await asyncio.sleep(0)  # a yield, not a wait: the first batch has begun
    seen = await migrated.fetchval("SELECT count(*) FROM readings")
    assert await retention == 20

    # Queued behind the first batch only, not behind the whole pass.
    assert seen == 19
