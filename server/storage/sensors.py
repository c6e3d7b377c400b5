"""Queries for locations and sensors: SQL written once with `?`, the same on both backends.

Every write is one statement (INSERT/UPDATE/DELETE ... RETURNING *), so a change and the
row it produced come back together with no read-modify-write: a PATCH of one column
cannot overwrite a concurrent PATCH of another. Column names in the generated SET and
WHERE clauses come from the fixed tuples below, never from input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from server.storage import Row, StorageError, Tx

LOCATION_COLUMNS = ("name", "description", "latitude", "longitude", "metadata")
SENSOR_COLUMNS = (
    "name",
    "type",
    "model",
    "unit",
    "location_id",
    "thresholds",
    "metadata",
    "device",
)
# Equality filters a sensor list may carry.
SENSOR_FILTERS = ("location_id", "type")

_COLUMNS = {"locations": LOCATION_COLUMNS, "sensors": SENSOR_COLUMNS}
_FILTERS: dict[str, tuple[str, ...]] = {"locations": (), "sensors": SENSOR_FILTERS}


def _insert_sql(table: str) -> str:
    columns = (*_COLUMNS[table], "created_at", "updated_at")
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) RETURNING *"


_INSERT = {table: _insert_sql(table) for table in _COLUMNS}
_SELECT = {table: f"SELECT * FROM {table} WHERE id = ?" for table in _COLUMNS}
_DELETE = {table: f"DELETE FROM {table} WHERE id = ? RETURNING *" for table in _COLUMNS}


def _checked(table: str, values: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    unknown = set(values) - set(allowed)
    if unknown:
        raise StorageError(f"{table}: not a column here: {sorted(unknown)}")
    return [c for c in allowed if c in values]


async def insert_row(tx: Tx, table: str, values: Mapping[str, Any], now: datetime) -> Row:
    """Insert one location or sensor; columns absent from `values` are stored as NULL."""
    args = [values.get(c) for c in _COLUMNS[table]]
    row = await tx.fetchrow(_INSERT[table], *args, now, now)
    assert row is not None  # INSERT ... RETURNING always yields the row
    return row


async def select_row(tx: Tx, table: str, entity_id: int) -> Row | None:
    return await tx.fetchrow(_SELECT[table], entity_id)


async def update_row(
    tx: Tx, table: str, entity_id: int, values: Mapping[str, Any], now: datetime
) -> Row | None:
    """Set the given columns (and updated_at); None when there is no such row."""
    columns = _checked(table, values, _COLUMNS[table])
    sets = "".join(f"{c} = ?, " for c in columns)
    sql = f"UPDATE {table} SET {sets}updated_at = ? WHERE id = ? RETURNING *"
    return await tx.fetchrow(sql, *[values[c] for c in columns], now, entity_id)


async def delete_row(tx: Tx, table: str, entity_id: int) -> Row | None:
    """Delete and return the last state of the row; None when there was none."""
    return await tx.fetchrow(_DELETE[table], entity_id)


async def select_page(
    tx: Tx, table: str, after: int, limit: int, filters: Mapping[str, Any] | None = None
) -> list[Row]:
    """Rows with id > after, oldest id first, at most `limit`; equality filters ANDed."""
    filters = filters or {}
    columns = _checked(table, filters, _FILTERS[table])
    where = "".join(f" AND {c} = ?" for c in columns)
    sql = f"SELECT * FROM {table} WHERE id > ?{where} ORDER BY id LIMIT ?"
    return await tx.fetch(sql, after, *[filters[c] for c in columns], limit)


async def select_not_of_device(tx: Tx, sensor_ids: Iterable[int], device: str) -> list[int]:
    """Which of these sensors (that exist) do not belong to `device`."""
    ids = sorted(set(sensor_ids))
    marks = ", ".join("?" * len(ids))
    rows = await tx.fetch(
        f"SELECT id FROM sensors WHERE id IN ({marks}) AND (device IS NULL OR device <> ?)",
        *ids,
        device,
    )
    return sorted(r["id"] for r in rows)
