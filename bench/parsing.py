"""Phase `parse`: the readings body parser against a per-item marshmallow schema.

`parse_readings` (server/api/readings.py) checks a 1,000-reading batch by hand because a
marshmallow schema per item costs several times as much. This was a wall-clock assertion
in the test suite (20 batches < 0.5 s), which a loaded machine can break and a fast one
cannot show; here it is a ratio to a reference in the same process and the same run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from marshmallow import INCLUDE, Schema, fields

from server.api.readings import parse_readings

BATCH = 1000
ROUNDS = 7  # best of: the figure is the machine's, not a scheduler's hiccup
BATCHES_PER_ROUND = 20
TARGET_RATIO = 0.5  # parse_readings at least twice as fast as the schema
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


class _Reading(Schema):
    """What a straightforward schema-per-item parser would check."""

    class Meta:
        unknown = INCLUDE

    sensor_id = fields.Integer(required=True, strict=True)
    timestamp = fields.Float()
    values = fields.Dict(keys=fields.String(), values=fields.Float())


def _batch() -> list[dict[str, Any]]:
    return [
        {"sensor_id": 1 + i % 10, "timestamp": 1714564800 + i, "t": 1.5, "h": 2}
        for i in range(BATCH)
    ]


def _best(run: Any) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(BATCHES_PER_ROUND):
            run()
        best = min(best, time.perf_counter() - started)
    return best / (BATCHES_PER_ROUND * BATCH)


def measure() -> dict[str, Any]:
    batch = _batch()
    readings, is_batch = parse_readings(batch, NOW)
    assert (len(readings), is_batch) == (BATCH, True)
    schema = _Reading(many=True)
    ours = _best(lambda: parse_readings(batch, NOW))
    ref = _best(lambda: schema.load(batch))
    result = {"us_per_reading": ours * 1e6, "reference_us_per_reading": ref * 1e6}
    print(
        f"  [sensorcast] parse: {result['us_per_reading']:.2f} us/reading "
        f"(marshmallow per item {result['reference_us_per_reading']:.2f})",
        flush=True,
    )
    return result


def comparison_rows(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not isinstance(result, dict):
        return []
    a, b = result["us_per_reading"], result["reference_us_per_reading"]
    return [
        {
            "metric": f"readings parse us/reading ({BATCH:,}/batch; ref = marshmallow per item)",
            "sensorcast": a,
            "reference": b,
            "ratio": a / b if b else None,
            "target": f"<= {TARGET_RATIO:.2f}x",
            "ok": (a / b <= TARGET_RATIO) if b else None,
        }
    ]
