"""Queries for readings and anomalies: SQL once with `?`, per dialect only for time buckets.

A reading is stored as one row (sensor_id, ts, metrics) with its metrics as one JSON
object; every query reads the view `reading_values` (sensor_id, ts, metric, value), one
row per metric, which each dialect's migration defines over its own JSON functions. There
is no surrogate key, so paging is keyset on (ts, sensor_id, metric). Anomalies have an id
and are paged on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from server.storage import Row, Storage, Tx, select_newest

# A row of `readings`: metrics is a dict {metric: float}.
READING_COLUMNS = ("sensor_id", "ts", "metrics")
ANOMALY_COLUMNS = ("sensor_id", "metric", "value", "min", "max", "ts")
# Well under both backends' limit on parameters per statement (SQLite 32766, PG 32767).
_IDS_PER_QUERY = 1000
_ANOMALIES_PER_INSERT = 500

# Bucket starts in epoch seconds, floored (also before 1970). SQLite: ts is fixed-width
# UTC text whose first 19 characters are the whole seconds (strftime on the full text
# rounds .9995 up to the next second); the floor is e - ((e % b) + b) % b, as SQLite's %
# truncates. PostgreSQL: the epoch of the timestamptz.
_SQLITE_EPOCH = "CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER)"
_SQLITE_BUCKET = "e - ((e % ?) + ?) % ?"
_POSTGRES_BUCKET = "(floor(extract(epoch FROM ts) / ?::bigint) * ?::bigint)::bigint"
_AGGREGATES = "avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count"


async def sensor_thresholds(db: Tx, sensor_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """sensor id -> its thresholds, for the ids that name a sensor."""
    ids = sorted(set(sensor_ids))
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT id, thresholds FROM sensors WHERE id IN ({marks})"
        for row in await db.fetch(sql, *chunk):
            thresholds = row["thresholds"]
            found[row["id"]] = thresholds if isinstance(thresholds, dict) else {}
    return found


async def sensor_exists(db: Tx, sensor_id: int) -> bool:
    return await db.fetchval("SELECT 1 FROM sensors WHERE id = ?", sensor_id) is not None


# Of two values at one instant the higher wins, so every order of arrival agrees.
UPSERT_LATEST = (
    "INSERT INTO latest_values (sensor_id, metric, ts, value) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (sensor_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value"
    " WHERE (excluded.ts, excluded.value) > (latest_values.ts, latest_values.value)"
)


def newest_values(rows: Iterable[Sequence[Any]]) -> list[tuple[int, str, datetime, float]]:
    """(sensor_id, metric, ts, value): the newest value of each metric of each sensor in
    `rows` (readings rows), in key order, so that two transactions upserting the same
    latest_values rows lock them in the same order and never deadlock."""
    newest: dict[tuple[int, str], tuple[datetime, float]] = {}
    for sensor_id, ts, metrics in rows:
        for metric, value in metrics.items():
            key = (sensor_id, metric)
            seen = newest.get(key)
            if seen is None or (ts, value) > seen:
                newest[key] = (ts, value)
    return sorted([(k[0], k[1], v[0], v[1]) for k, v in newest.items()])


async def store_readings(
    storage: Storage, rows: Iterable[Sequence[Any]], anomalies: Sequence[Sequence[Any]]
) -> list[Row]:
    """All readings in one copy_rows, the newest value per metric into latest_values, and
    the anomalies, in one transaction; returns the stored anomaly rows in id order. An
    unknown sensor_id is an IntegrityError.

    The latest values go after the readings: their row locks (a concurrent batch of the
    same sensors waits on them) are held only for the upsert and the COMMIT. An older
    reading arriving late does not replace a newer value (the upsert's WHERE)."""
    batch = rows if isinstance(rows, list) else list(rows)
    stored: list[Row] = []
    async with storage.transaction() as tx:
        await tx.copy_rows("readings", READING_COLUMNS, batch)
        await tx.executemany(UPSERT_LATEST, newest_values(batch))
        for start in range(0, len(anomalies), _ANOMALIES_PER_INSERT):
            chunk = anomalies[start : start + _ANOMALIES_PER_INSERT]
            marks = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
            sql = f"INSERT INTO anomalies ({', '.join(ANOMALY_COLUMNS)}) VALUES {marks} RETURNING *"
            stored += await tx.fetch(sql, *[value for row in chunk for value in row])
    stored.sort(key=lambda row: row["id"])
    return stored


def _range(where: list[str], args: list[Any], start: datetime | None, end: datetime | None) -> None:
    """`from` is inclusive, `to` exclusive: adjacent windows never count a row twice."""
    if start is not None:
        where.append("ts >= ?")
        args.append(start)
    if end is not None:
        where.append("ts < ?")
        args.append(end)


# The readings row key, which tells apart two readings of one sensor at one instant (a
# device that retried): SQLite's rowid, PostgreSQL's identity (migration 0006).
_READING_ID = {"sqlite": "rowid", "postgres": "id"}
# "The reading has this metric", without PostgreSQL's `?` operator (a placeholder here).
_HAS_METRIC = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(metrics) WHERE key = ?)",
    "postgres": "jsonb_exists(metrics, ?)",
}

# (ts, sensor_id, reading_id, metric): where a readings page ends, and the next begins.
ReadingKey = tuple[datetime, int, int, str]


async def select_readings(
    storage: Storage,
    *,
    sensor_id: int | None,
    metric: str | None,
    start: datetime | None,
    end: datetime | None,
    after: ReadingKey | None,
    limit: int,
) -> list[Row]:
    """Up to `limit` values (sensor_id, ts, metric, value, reading_id) oldest first, in
    (ts, sensor_id, reading_id, metric) order, after the key `after`.

    Keyset on the readings table itself, whose order an index gives: readings_ts, or
    readings_sensor_ts for one sensor (EXPLAIN in tests/storage/test_query_plans.py). A
    reading's metrics are one JSON object, expanded here in metric order: sorting the
    view's rows by metric would sort every row the filter matches before the LIMIT.
    Each reading gives at least one value (with `metric`: exactly one), so `limit`
    readings nearly always fill the page in one query."""
    rid = _READING_ID[storage.dialect]
    where: list[str] = []
    args: list[Any] = []
    if sensor_id is not None:
        where.append("sensor_id = ?")
        args.append(sensor_id)
    if metric is not None:
        where.append(_HAS_METRIC[storage.dialect])
        args.append(metric)
    _range(where, args, start, end)
    rows: list[Row] = []
    # The last reading the page has seen, and the metric it ended on in that reading
    # (None: all of its metrics are done).
    resume: tuple[datetime, int, int] | None = after[:3] if after else None
    done_upto = after[3] if after else None
    while len(rows) < limit:
        clauses, params = list(where), list(args)
        if resume is not None:
            clauses.append(f"(ts, sensor_id, {rid}) {'>=' if done_upto else '>'} (?, ?, ?)")
            params.extend(resume)
        sql = f"SELECT {rid} AS reading_id, sensor_id, ts, metrics FROM readings"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY ts, sensor_id, {rid} LIMIT ?"
        readings = await storage.fetch(sql, *params, limit)
        for reading in readings:
            ts, sid, reading_id = key = reading["ts"], reading["sensor_id"], reading["reading_id"]
            metrics = reading["metrics"]
            for name in sorted(metrics) if metric is None else [metric]:
                if done_upto is not None and key == resume and name <= done_upto:
                    continue
                rows.append(
                    {
                        "sensor_id": sid,
                        "ts": ts,
                        "metric": name,
                        "value": float(metrics[name]),
                        "reading_id": reading_id,
                    }
                )
        if len(readings) < limit:
            break
        # Rare: readings without (new) values left the page short. Go on after them.
        resume, done_upto = key, None
    return rows[:limit]


def reading_key(row: Row) -> ReadingKey:
    return row["ts"], row["sensor_id"], row["reading_id"], row["metric"]


async def select_latest(db: Tx, sensor_id: int) -> list[Row]:
    """The newest value per metric of one sensor (metric, value, ts): one row per metric
    from latest_values, which the readings triggers keep current (migration 0006)."""
    return await db.fetch(
        "SELECT metric, value, ts FROM latest_values WHERE sensor_id = ? ORDER BY metric",
        sensor_id,
    )


async def select_buckets(
    storage: Storage,
    sensor_id: int,
    metric: str,
    bucket: int,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[Row]:
    """avg/min/max/count per `bucket` seconds, oldest first; a row's `start` is in epoch
    seconds. The one query whose SQL differs per dialect."""
    where = ["sensor_id = ?", "metric = ?"]
    args: list[Any] = [sensor_id, metric]
    _range(where, args, start, end)
    condition = " AND ".join(where)
    if storage.dialect == "postgres":
        sql = (
            f"SELECT {_POSTGRES_BUCKET} AS start, {_AGGREGATES} FROM reading_values"
            f" WHERE {condition} GROUP BY 1 ORDER BY 1 LIMIT ?"
        )
        return await storage.fetch(sql, bucket, bucket, *args, limit)
    sql = (
        f"SELECT {_SQLITE_BUCKET} AS start, {_AGGREGATES} FROM"
        f" (SELECT {_SQLITE_EPOCH} AS e, value FROM reading_values WHERE {condition})"
        " GROUP BY 1 ORDER BY 1 LIMIT ?"
    )
    return await storage.fetch(sql, bucket, bucket, bucket, *args, limit)


async def select_anomalies(
    db: Tx, *, sensor_id: int | None, resolved: bool | None, before: int | None, limit: int
) -> list[Row]:
    """Newest first (highest id); `before` is the id the previous page ended on."""
    return await select_newest(
        db, "anomalies", {"sensor_id": sensor_id, "resolved": resolved}, before, limit
    )


async def resolve_anomaly(
    storage: Storage, anomaly_id: int, now: datetime
) -> tuple[Row | None, bool]:
    """(row, changed): the resolved row and True, the already resolved row and False, or
    (None, False) when there is no such anomaly."""
    async with storage.transaction() as tx:
        row = await tx.fetchrow(
            "UPDATE anomalies SET resolved = ?, resolved_at = ?"
            " WHERE id = ? AND resolved = ? RETURNING *",
            True,
            now,
            anomaly_id,
            False,
        )
        if row is not None:
            return row, True
        return await tx.fetchrow("SELECT * FROM anomalies WHERE id = ?", anomaly_id), False


# Retention deletes this many readings per transaction: on SQLite each batch holds the
# one connection (and the write lock) for milliseconds, and /health, chat and ingest get
# their turn between batches.
RETENTION_BATCH = 2000
# Oldest first through readings_ts, a batch at a time; PostgreSQL by ctid (a TID scan),
# as readings has no index on id.
_DELETE_BATCH = {
    "sqlite": "DELETE FROM readings WHERE rowid IN"
    " (SELECT rowid FROM readings WHERE ts < ? ORDER BY ts LIMIT ?) RETURNING 1 AS n",
    "postgres": "DELETE FROM readings WHERE ctid = ANY (ARRAY("
    "SELECT ctid FROM readings WHERE ts < ? ORDER BY ts LIMIT ?)) RETURNING 1 AS n",
}


async def delete_readings_before(
    storage: Storage, cutoff: datetime, batch: int = RETENTION_BATCH
) -> int:
    """Delete every reading with ts < cutoff (retention), `batch` rows per transaction,
    yielding to the loop between batches; returns how many. The latest_values triggers
    fix the latest value of each metric whose reading went."""
    sql = _DELETE_BATCH[storage.dialect]
    total = 0
    while True:
        deleted = len(await storage.fetch(sql, cutoff, batch))
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)
