"""The query plans of the hot queries, on SQLite (EXPLAIN QUERY PLAN) and PostgreSQL
(EXPLAIN): each one searches an index, none scans or sorts the whole readings table.

The statements are the ones the storage functions really send (recorded through a thin
wrapper), planned over 20,000 readings of 20 sensors (ANALYZEd on PostgreSQL). On
PostgreSQL sequential scans are discouraged for the session, so the small tables here
still show whether an index *can* serve the query: without one the plan is a Seq Scan
whatever the setting.
"""

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.storage import Row, Storage
from server.storage import chat as chat_queries
from server.storage import readings as queries

# Fixtures: the storage tests' database over [sqlite, postgres].
from tests.storage.conftest import (  # noqa: F401
    backend,
    migrated,
    open_db,
    pg_server_url,
    storage,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)
SENSORS = 20
READINGS = 20_000

FILL = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)"
        " INSERT INTO readings (sensor_id, ts, metrics) SELECT 1 + i % ?,"
        " strftime('%Y-%m-%dT%H:%M:%f000Z', '2024-05-01', '+' || i || ' seconds'),"
        " json_object('t', i * 0.5, 'h', 40) FROM n"
    ),
    "postgres": (
        "INSERT INTO readings (sensor_id, ts, metrics) SELECT 1 + i % ?,"
        " timestamptz '2024-05-01 00:00:00+00' + i * interval '1 second',"
        " jsonb_build_object('t', i * 0.5, 'h', 40) FROM generate_series(0, ? - 1) AS i"
    ),
}


_SORT_NODE = re.compile(r"\s*(->\s+)?Sort\s+\(cost=\S+ rows=(?P<rows>\d+)")
MAX_PAGE = 1000


class Recorder:
    """Storage that records the statements it is given, then runs them."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        self.statements.append((sql, args))
        return await self.inner.fetch(sql, *args)


async def plan(db: Storage, sql: str, args: tuple[Any, ...]) -> list[str]:
    if db.dialect == "sqlite":
        return [r["detail"] for r in await db.fetch("EXPLAIN QUERY PLAN " + sql, *args)]
    async with db.transaction() as tx:
        await tx.execute("SET LOCAL enable_seqscan = off")
        return [r["QUERY PLAN"] for r in await tx.fetch("EXPLAIN " + sql, *args)]


def whole_table_work(dialect: str, lines: list[str]) -> list[str]:
    """The plan lines that read or sort a table in full."""
    if dialect == "sqlite":
        # SCAN x without an index, or a sort of the whole result (RIGHT PART is a sort
        # of rows sharing the index's prefix, fine). json_each is the row's own JSON.
        return [
            line
            for line in lines
            if (line.startswith("SCAN ") and "USING" not in line and "VIRTUAL TABLE" not in line)
            or line == "USE TEMP B-TREE FOR ORDER BY"
        ]
    # Incremental Sort sorts rows sharing the index's order, fine. A plain Sort is fine
    # only over what an index range already bounds (a narrow from/to window: at most a
    # page's worth of rows by the planner's estimate), never over a table or a history.
    return [
        line
        for line in lines
        if "Seq Scan" in line or ((sort := _SORT_NODE.match(line)) and int(sort["rows"]) > MAX_PAGE)
    ]


@pytest.fixture
async def filled(migrated: Storage) -> Storage:  # noqa: F811
    for _ in range(SENSORS):
        await migrated.execute("INSERT INTO sensors (type) VALUES ('t')")
    if migrated.dialect == "sqlite":
        await migrated.execute(FILL["sqlite"], READINGS, SENSORS)
    else:
        await migrated.execute(FILL["postgres"], SENSORS, READINGS)
    rows = await migrated.fetch("SELECT sensor_id, ts, metrics FROM readings")
    await migrated.executemany(
        queries.UPSERT_LATEST,
        queries.newest_values([(r["sensor_id"], r["ts"], r["metrics"]) for r in rows]),
    )
    await migrated.execute(
        "INSERT INTO anomalies (sensor_id, metric, value, ts) VALUES (?, ?, ?, ?)",
        3,
        "t",
        99.0,
        T0,
    )
    await migrated.execute("INSERT INTO rooms (name) VALUES ('lobby')")
    await migrated.execute("ANALYZE")
    return migrated


AFTER = (T0 + timedelta(seconds=5000), 1, 4000, "h")
HOT: dict[str, Callable[[Any], Awaitable[Any]]] = {
    "readings, first page": lambda db: queries.select_readings(
        db, sensor_id=None, metric=None, start=None, end=None, after=None, limit=51
    ),
    "readings, next page": lambda db: queries.select_readings(
        db, sensor_id=None, metric=None, start=None, end=None, after=AFTER, limit=51
    ),
    "readings of a sensor, next page": lambda db: queries.select_readings(
        db, sensor_id=1, metric=None, start=None, end=None, after=AFTER, limit=51
    ),
    "readings of a sensor's metric in a window": lambda db: queries.select_readings(
        db,
        sensor_id=2,
        metric="t",
        start=T0 + timedelta(hours=1),
        end=T0 + timedelta(hours=2),
        after=None,
        limit=51,
    ),
    "latest values": lambda db: queries.select_latest(db, 1),
    "retention batch": lambda db: queries.delete_readings_before(db, T0, batch=100),
    "anomalies of a sensor": lambda db: queries.select_anomalies(
        db, sensor_id=3, resolved=None, before=None, limit=51
    ),
    "room history": lambda db: chat_queries.select_messages(db, "lobby", None, 51),
}


@pytest.mark.parametrize("name", list(HOT))
async def test_hot_query_searches_an_index(filled: Storage, name: str):
    recorder = Recorder(filled)

    await HOT[name](recorder)

    assert recorder.statements
    for sql, args in recorder.statements:
        lines = await plan(filled, sql, args)
        assert any(re.search("INDEX|PRIMARY KEY", line.upper()) for line in lines), (sql, lines)
        assert whole_table_work(filled.dialect, lines) == [], (sql, lines)
