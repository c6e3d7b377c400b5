"""Queries for predictions, and the recent readings a forecast is fitted to: SQL once with `?`.

Predictions have an id and are paged on it, newest first, like anomalies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.storage import Row, Tx, select_newest

PREDICTION_COLUMNS = ("sensor_id", "metric", "horizon", "method", "points", "params")


async def select_recent_values(db: Tx, sensor_id: int, metric: str, limit: int) -> list[Row]:
    """The newest `limit` (ts, value) rows of one sensor's metric, oldest first."""
    rows = await db.fetch(
        "SELECT ts, value FROM reading_values WHERE sensor_id = ? AND metric = ?"
        " ORDER BY ts DESC LIMIT ?",
        sensor_id,
        metric,
        limit,
    )
    rows.reverse()
    return rows


async def insert_prediction(db: Tx, values: Sequence[Any]) -> Row:
    """Store one prediction (PREDICTION_COLUMNS order); returns the stored row."""
    marks = ", ".join("?" * len(PREDICTION_COLUMNS))
    sql = f"INSERT INTO predictions ({', '.join(PREDICTION_COLUMNS)}) VALUES ({marks}) RETURNING *"
    row = await db.fetchrow(sql, *values)
    assert row is not None  # INSERT ... RETURNING always returns the row
    return row


async def select_predictions(
    db: Tx, *, sensor_id: int | None, before: int | None, limit: int
) -> list[Row]:
    """Newest first (highest id); `before` is the id the previous page ended on."""
    return await select_newest(db, "predictions", {"sensor_id": sensor_id}, before, limit)
