"""Predictions: Holt's linear exponential smoothing fitted to a sensor's recent readings,
stored, listed and published as `prediction_completed`. Pure of HTTP.

The forecast is plain Python: a few hundred points times a 19 x 19 grid of (alpha, beta)
is a few hundred thousand multiply-adds, run in a worker thread so the event loop keeps
serving sockets meanwhile. The pair with the smallest one-step-ahead squared error wins
(ties: the smallest alpha, then beta), and its root mean square is the error estimate.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from server import codec
from server.bus import Bus
from server.errors import NotFound, ValidationFailed
from server.services.paging import decode_id_cursor, encode_cursor
from server.services.timestamps import iso
from server.storage import Row, Storage
from server.storage import predictions as queries
from server.storage.readings import sensor_exists

METHOD = "holt"
# Readings a forecast is fitted to: the newest of the metric.
MAX_SERIES = 500
MIN_SERIES = 3
# 0.05, 0.10, ..., 0.95: strictly inside (0, 1), where Holt's smoothing is defined.
GRID = tuple(round(step / 20, 2) for step in range(1, 20))


@dataclass(frozen=True, slots=True)
class Forecast:
    alpha: float
    beta: float
    rmse: float
    interval: float  # seconds between forecast points
    n: int
    points: list[tuple[datetime, float]]


def holt_sse(values: list[float], alpha: float, beta: float) -> tuple[float, float, float]:
    """(sum of squared one-step-ahead errors, final level, final trend). The level starts
    at the first value and the trend at the first difference."""
    level, trend = values[0], values[1] - values[0]
    sse = 0.0
    for value in values[1:]:
        error = value - (level + trend)
        sse += error * error
        previous = level
        level = alpha * value + (1 - alpha) * (level + trend)
        trend = beta * (level - previous) + (1 - beta) * trend
    return sse, level, trend


def typical_interval(times: list[datetime]) -> float:
    """The median spacing in seconds between distinct consecutive timestamps (0: none)."""
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    positive = [gap for gap in gaps if gap > 0]
    return float(statistics.median(positive)) if positive else 0.0


def forecast(times: list[datetime], values: list[float], horizon: int) -> Forecast:
    """Fit (alpha, beta) on the grid and forecast `horizon` steps after the last reading.
    ValueError when the series cannot be forecast (too short, no spacing, overflow)."""
    if len(values) < MIN_SERIES:
        raise ValueError(f"need at least {MIN_SERIES} readings, have {len(values)}")
    interval = typical_interval(times)
    if interval <= 0:
        raise ValueError("every reading has the same timestamp: no interval to forecast at")
    best: tuple[float, float, float, float, float] | None = None
    for alpha in GRID:
        for beta in GRID:
            sse, level, trend = holt_sse(values, alpha, beta)
            if best is None or sse < best[0]:
                best = (sse, alpha, beta, level, trend)
    assert best is not None
    sse, alpha, beta, level, trend = best
    rmse = math.sqrt(sse / (len(values) - 1))
    last = times[-1]
    points = [
        (last + timedelta(seconds=interval * step), level + trend * step)
        for step in range(1, horizon + 1)
    ]
    if not math.isfinite(rmse) or not all(math.isfinite(v) for _, v in points):
        raise ValueError("the values are too large to forecast")
    return Forecast(alpha, beta, rmse, interval, len(values), points)


def prediction_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "sensor_id": row["sensor_id"],
        "metric": row["metric"],
        "horizon": row["horizon"],
        "method": row["method"],
        "points": row["points"],
        "params": row["params"],
        "created_at": codec.isotime(row["created_at"]),
    }


class PredictionService:
    def __init__(self, storage: Storage, bus: Bus) -> None:
        self.storage = storage
        self.bus = bus

    async def predict(self, sensor_id: int, metric: str, horizon: int) -> dict[str, Any]:
        """Fit, store, then publish on `predictions` and `sensors:{id}`; 404 unknown
        sensor, 422 when the metric's readings cannot be forecast."""
        if not await sensor_exists(self.storage, sensor_id):
            raise NotFound(f"sensor {sensor_id} not found")
        rows = await queries.select_recent_values(self.storage, sensor_id, metric, MAX_SERIES)
        if len(rows) < MIN_SERIES:
            message = f"need at least {MIN_SERIES} readings of metric {metric}, have {len(rows)}"
            raise ValidationFailed(message, {"metric": [message]})
        times = [r["ts"] for r in rows]
        values = [float(r["value"]) for r in rows]
        try:
            result = await asyncio.to_thread(forecast, times, values, horizon)
        except ValueError as exc:
            message = f"cannot forecast metric {metric}: {exc}"
            raise ValidationFailed(message, {"metric": [message]}) from None
        points = [{"timestamp": iso(ts), "value": value} for ts, value in result.points]
        params = {
            "alpha": result.alpha,
            "beta": result.beta,
            "rmse": result.rmse,
            "interval_seconds": result.interval,
            "n": result.n,
        }
        row = await queries.insert_prediction(
            self.storage, (sensor_id, metric, horizon, METHOD, points, params)
        )
        prediction = prediction_object(row)
        await self.bus.publish(
            ("predictions", f"sensors:{sensor_id}"),
            "entity_event",
            {
                "entity_type": "prediction",
                "event_type": "prediction_completed",
                "entity_id": prediction["id"],
                "data": prediction,
                "metadata": {"action": "prediction_completed"},
            },
        )
        return prediction

    async def list(self, args: dict[str, Any]) -> dict[str, Any]:
        """Newest first."""
        limit = args["limit"]
        rows = await queries.select_predictions(
            self.storage,
            sensor_id=args.get("sensor_id"),
            before=decode_id_cursor(args.get("cursor")),
            limit=limit + 1,
        )
        cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
        return {"items": [prediction_object(r) for r in rows[:limit]], "next_cursor": cursor}
