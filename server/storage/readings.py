"""Queries for readings and anomalies: SQL once with `?`, per dialect only for time buckets.

A reading is stored as one row (sensor_id, ts, metrics) with its metrics as one JSON
object; every query reads the view `reading_values` (sensor_id, ts, metric, value), one
row per metric, which each dialect's migration defines over its own JSON functions. There
is no surrogate key, so paging is keyset on (ts, sensor_id, metric). Anomalies have an id
and are paged on it.
"""

from __future__ import annotations

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


async def store_readings(
    storage: Storage, rows: Iterable[Sequence[Any]], anomalies: Sequence[Sequence[Any]]
) -> list[Row]:
    """All readings in one copy_rows and their anomalies, in one transaction; returns the
    stored anomaly rows in id order. An unknown sensor_id is an IntegrityError."""
    if not anomalies:
        # One copy_rows is atomic by itself: on PostgreSQL that spares the BEGIN and
        # COMMIT round trips of nearly every batch.
        await storage.copy_rows("readings", READING_COLUMNS, rows)
        return []
    stored: list[Row] = []
    async with storage.transaction() as tx:
        await tx.copy_rows("readings", READING_COLUMNS, rows)
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


async def select_readings(
    db: Tx,
    *,
    sensor_id: int | None,
    metric: str | None,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, int, str, int] | None,
    limit: int,
) -> list[Row]:
    """Oldest first. `after` is the (ts, sensor_id, metric) key the previous page ended on
    and how many rows with exactly that key it has already returned: rows have no id, and
    a device that retries stores the same reading twice, so equal keys are skipped by
    count (ordered by value too, so what is skipped is what was returned)."""
    where: list[str] = []
    args: list[Any] = []
    if sensor_id is not None:
        where.append("sensor_id = ?")
        args.append(sensor_id)
    if metric is not None:
        where.append("metric = ?")
        args.append(metric)
    _range(where, args, start, end)
    if after is not None:
        where.append("(ts, sensor_id, metric) >= (?, ?, ?)")
        args.extend(after[:3])
    sql = "SELECT sensor_id, ts, metric, value FROM reading_values"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts, sensor_id, metric, value LIMIT ? OFFSET ?"
    return await db.fetch(sql, *args, limit, after[3] if after else 0)


async def select_latest(db: Tx, sensor_id: int) -> list[Row]:
    """The newest row per metric of one sensor (metric, value, ts); of two at the same
    instant, the higher value.

    The newest instant per metric by a grouped scan, then its rows by the (sensor_id, ts)
    index: a window over every metric row of the sensor sorts them all, 4-6x slower (with
    50k readings: ~60-90 ms against ~300-600 ms)."""
    rows = await db.fetch(
        "SELECT v.metric, v.value, v.ts FROM ("
        " SELECT metric, max(ts) AS newest FROM reading_values WHERE sensor_id = ?"
        " GROUP BY metric"
        ") AS m JOIN reading_values v"
        " ON v.sensor_id = ? AND v.ts = m.newest AND v.metric = m.metric"
        " ORDER BY v.metric, v.value",
        sensor_id,
        sensor_id,
    )
    # Rows sharing a metric and instant (a retried reading) come in value order: the last.
    return list({row["metric"]: row for row in rows}.values())


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


async def delete_readings_before(storage: Storage, cutoff: datetime) -> int:
    """Delete every reading with ts < cutoff (retention); returns how many. Counted in the
    same transaction, as execute reports no row count on every backend."""
    async with storage.transaction() as tx:
        count = int(await tx.fetchval("SELECT count(*) FROM readings WHERE ts < ?", cutoff))
        if count:
            await tx.execute("DELETE FROM readings WHERE ts < ?", cutoff)
        return count
