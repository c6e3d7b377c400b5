"""The read side of readings: values (keyset pages), latest per metric, a dashboard's
snapshot, time-bucket aggregates. ReadingService (services/readings.py) is these plus
ingest. Pure of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from server.errors import NotFound, ValidationFailed
from server.services.paging import decode_cursor, encode_cursor, not_ours
from server.services.timestamps import iso, parse_time
from server.storage import Row, Storage
from server.storage import readings as queries

MAX_BUCKETS = 10_000


def reading_event(
    sensor_id: int, ts: datetime, values: dict[str, float], **metadata: Any
) -> dict[str, Any]:
    """The entity_event body of one reading (SPEC §4)."""
    return {
        "entity_type": "sensor",
        "event_type": "reading",
        "entity_id": sensor_id,
        "data": {"sensor_id": sensor_id, "timestamp": iso(ts), "values": values},
        "metadata": {"action": "reading", **metadata},
    }


# A metric name in a cursor is one we returned; the bound keeps a forged one small.
_MAX_CURSOR_METRIC = 200


def _decode_reading_key(cursor: str | None) -> queries.ReadingKey | None:
    """A readings cursor: the key (ts, sensor_id, reading_id, metric) of the value the
    previous page ended on. Anything else is 422: a cursor only positions a keyset
    search, so even a forged one that passes costs one index seek (no OFFSET)."""
    key = decode_cursor(cursor)
    if key is None:
        return None
    try:
        if (
            [type(k) for k in key] == [str, int, int, str]
            and 0 < key[1] < 2**63
            and 0 <= key[2] < 2**63
            and 0 < len(key[3]) <= _MAX_CURSOR_METRIC
        ):
            return parse_time(key[0]), key[1], key[2], key[3]
    except (ValueError, TypeError):
        pass
    raise not_ours()


def _next_key(rows: list[Row], limit: int) -> str | None:
    """The readings cursor: the key of the page's last value, when there is more."""
    if len(rows) <= limit:
        return None
    ts, sensor_id, reading_id, metric = queries.reading_key(rows[limit - 1])
    moment = ts.astimezone(UTC).isoformat(timespec="microseconds")
    return encode_cursor([moment, sensor_id, reading_id, metric])


class ReadingQueries:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def query(self, args: dict[str, Any]) -> dict[str, Any]:
        limit = args["limit"]
        rows = await queries.select_readings(
            self.storage,
            sensor_id=args.get("sensor_id"),
            metric=args.get("metric"),
            start=args.get("start"),
            end=args.get("end"),
            after=_decode_reading_key(args.get("cursor")),
            limit=limit + 1,
        )
        items = [
            {
                "sensor_id": r["sensor_id"],
                "timestamp": iso(r["ts"]),
                "metric": r["metric"],
                "value": r["value"],
            }
            for r in rows[:limit]
        ]
        return {"items": items, "next_cursor": _next_key(rows, limit)}

    async def _known(self, sensor_id: int) -> None:
        if not await queries.sensor_exists(self.storage, sensor_id):
            raise NotFound(f"sensor {sensor_id} not found")

    async def latest(self, sensor_id: int) -> dict[str, Any]:
        """The newest value per metric; empty maps for a sensor with no readings yet."""
        await self._known(sensor_id)
        rows = await queries.select_latest(self.storage, sensor_id)
        return {
            "sensor_id": sensor_id,
            "values": {r["metric"]: r["value"] for r in rows},
            "timestamps": {r["metric"]: iso(r["ts"]) for r in rows},
        }

    async def snapshot(
        self, sensor_id: int
    ) -> tuple[list[dict[str, Any]], Callable[[str, dict[str, Any]], bool]]:
        """A dashboard's starting point: the newest reading per metric as reading events
        (metadata.snapshot), and a test telling whether a live event is already covered
        by them. Nothing for a sensor that does not exist (yet): subscribing never checks."""
        rows = await queries.select_latest(self.storage, sensor_id)
        newest = {r["metric"]: r["ts"] for r in rows}
        events = [
            reading_event(sensor_id, r["ts"], {r["metric"]: r["value"]}, snapshot=True)
            for r in rows
        ]

        def covers(kind: str, body: dict[str, Any]) -> bool:
            if kind != "entity_event" or body.get("event_type") != "reading":
                return False
            data = body.get("data") or {}
            if data.get("sensor_id") != sensor_id:
                return False
            ts = parse_time(data["timestamp"])
            return all(m in newest and ts <= newest[m] for m in data.get("values", {}))

        return events, covers

    async def aggregate(self, args: dict[str, Any]) -> dict[str, Any]:
        sensor_id, metric, bucket = args["sensor_id"], args["metric"], args["bucket"]
        await self._known(sensor_id)
        rows = await queries.select_buckets(
            self.storage,
            sensor_id,
            metric,
            bucket,
            args.get("start"),
            args.get("end"),
            MAX_BUCKETS + 1,
        )
        if len(rows) > MAX_BUCKETS:
            raise ValidationFailed(
                details={
                    "bucket": [
                        f"More than {MAX_BUCKETS} buckets: widen the bucket or narrow from/to."
                    ]
                }
            )
        items = [
            {
                "start": iso(datetime.fromtimestamp(int(r["start"]), UTC)),
                "avg": float(r["avg"]),
                "min": r["min"],
                "max": r["max"],
                "count": r["count"],
            }
            for r in rows
        ]
        # Every bucket fits in one answer (past MAX_BUCKETS the query is refused): the list
        # shape still carries next_cursor, null, as every list does (SPEC §5).
        return {
            "sensor_id": sensor_id,
            "metric": metric,
            "bucket": bucket,
            "items": items,
            "next_cursor": None,
        }
