"""Readings: ingest (with anomaly detection), query, latest per metric, time-bucket aggregates;
anomalies: list and resolve. Pure of HTTP.

Ingest takes readings api/readings.py has already parsed (shape, numbers, timestamps),
checks the sensors and their thresholds, stores the readings (a row each, metrics as JSON)
in one copy_rows and the anomalies in the same transaction, and publishes after the
commit: per reading an `entity_event` reading on `readings`, `readings:{id}`,
`sensors:{id}`, followed by the anomalies it raised. An unknown sensor_id is a 422 like
any other bad field (it is part of the body, not the URL), under the item's index in a
batch: `{"3": {"sensor_id": [...]}}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from server import codec
from server.bus import Bus
from server.errors import Conflict, NotFound, ValidationFailed
from server.services.paging import decode_cursor, decode_id_cursor, encode_cursor, not_ours
from server.storage import IntegrityError, Row, Storage
from server.storage import readings as queries

if TYPE_CHECKING:
    from server.auth import Principal

# Errors reported for one request; past this a bad batch is not worth describing further.
MAX_ERRORS = 50
MAX_BUCKETS = 10_000

# (sensor_id, timestamp, {metric: value}, iso(timestamp)): what api/readings.py parses a
# body into. The text is what the reading's event carries: formatting a datetime costs more
# than anything else per reading, and the body's own text is usually already that form.
Reading = tuple[int, datetime, dict[str, float], str]


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with Z and milliseconds, as every other timestamp (SPEC §4); a reading
    posted with microseconds is shown to the millisecond (stored as given).

    Written by orjson (~10x faster than isoformat: this runs per reading and per listed
    value), which gives microseconds or, when they are zero, no fraction."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    text = orjson.dumps(moment, option=orjson.OPT_UTC_Z).decode()
    if moment.microsecond == 0:
        return text[1:-2] + ".000Z"
    return text[1:-5] + "Z"


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


# What Bus.publish_many takes: (channels, frame type, body).
Event = tuple[tuple[str, ...], str, dict[str, Any]]


def anomaly_event(event_type: str, anomaly: dict[str, Any], **meta: Any) -> Event:
    """An anomaly's entity_event, for `anomalies` and its sensor's channel."""
    body = {
        "entity_type": "anomaly",
        "event_type": event_type,
        "entity_id": anomaly["id"],
        "data": anomaly,
        "metadata": {"action": event_type, **meta},
    }
    return ("anomalies", f"sensors:{anomaly['sensor_id']}"), "entity_event", body


def parse_time(value: Any) -> datetime:
    """ISO 8601 with an offset (or Z), or epoch seconds; ValueError says what is wrong."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("Not an ISO 8601 time or epoch seconds.") from None
        if moment.utcoffset() is None:
            raise ValueError("An ISO 8601 time needs an offset or Z.")
        return moment.astimezone(UTC)
    if type(value) in (int, float) and math.isfinite(value):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("Epoch seconds out of range.") from None
    raise ValueError("Not an ISO 8601 time or epoch seconds.")


def anomaly_object(row: Row) -> dict[str, Any]:
    resolved_at = row["resolved_at"]
    return {
        "id": row["id"],
        "sensor_id": row["sensor_id"],
        "metric": row["metric"],
        "value": row["value"],
        "min": row["min"],
        "max": row["max"],
        "timestamp": iso(row["ts"]),
        "resolved": row["resolved"],
        "resolved_at": None if resolved_at is None else codec.isotime(resolved_at),
        "created_at": codec.isotime(row["created_at"]),
    }


def _bound(threshold: Any, key: str) -> float | None:
    value = threshold.get(key) if type(threshold) is dict else None
    return value if type(value) in (int, float) else None


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


def _events(readings: list[Reading], raised: list[tuple[int, Row]]) -> Iterator[Event]:
    """Each reading's event (reading_event's shape, built inline: this runs per reading),
    then the anomalies it raised. A generator: Bus.publish_many takes each event as it
    comes, so a batch's event tuples do not all outlive their turn (objects that live
    through a request end up in the cyclic GC's oldest generation, which it walks whole).
    """
    pending = iter(raised)
    upcoming = next(pending, None)
    # A batch names a few sensors many times: their channel tuples are made once.
    channels: dict[int, tuple[str, ...]] = {}
    for index, (sensor_id, _, values, stamp) in enumerate(readings):
        names = channels.get(sensor_id)
        if names is None:
            names = channels[sensor_id] = (
                "readings",
                f"readings:{sensor_id}",
                f"sensors:{sensor_id}",
            )
        body = {
            "entity_type": "sensor",
            "event_type": "reading",
            "entity_id": sensor_id,
            "data": {"sensor_id": sensor_id, "timestamp": stamp, "values": values},
            "metadata": {"action": "reading"},
        }
        yield names, "entity_event", body
        while upcoming is not None and upcoming[0] == index:
            yield anomaly_event("anomaly_detected", anomaly_object(upcoming[1]))
            upcoming = next(pending, None)


# (index in the batch, sensor_id, metric, value, min, max, ts): a threshold breach found.
Anomaly = tuple[int, int, str, float, Any, Any, datetime]


def _check(
    readings: list[Reading], sensors: dict[int, Any], start: int
) -> tuple[list[Anomaly], dict[str, Any]]:
    """The threshold breaches (indexed from `start`) and the unknown sensors (keyed by the
    item's own index, as a 422 names them)."""
    found: list[Anomaly] = []
    unknown: dict[str, Any] = {}
    for index, (sensor_id, ts, values, _) in enumerate(readings):
        thresholds = sensors.get(sensor_id)
        if thresholds is None:
            if len(unknown) < MAX_ERRORS:
                unknown[str(index)] = {"sensor_id": [f"Unknown sensor {sensor_id}."]}
            continue
        if not thresholds:
            continue
        for metric, value in values.items():
            if metric in thresholds:
                low = _bound(thresholds[metric], "min")
                high = _bound(thresholds[metric], "max")
                if (low is not None and value < low) or (high is not None and value > high):
                    found.append((start + index, sensor_id, metric, value, low, high, ts))
    return found, unknown


class ReadingService:
    def __init__(self, storage: Storage, bus: Bus) -> None:
        self.storage = storage
        self.bus = bus
        self.anomalies = AnomalyService(storage, bus)

    async def ingest(self, readings: list[Reading], batch: bool) -> dict[str, Any]:
        """Store (readings and anomalies in one transaction), then publish. `batch`:
        errors are keyed by the item's index."""
        sensors = await queries.sensor_thresholds(self.storage, {r[0] for r in readings})
        found, unknown = _check(readings, sensors, 0)
        if unknown:
            raise ValidationFailed(details=unknown if batch else unknown["0"])
        await self._store(readings, found)
        return {"accepted": len(readings)}

    async def ingest_each(self, bodies: list[list[Reading]]) -> list[dict[str, Any] | None]:
        """Several independent bodies (MQTT messages arriving together) stored and
        published as one batch, as ingest() does one body. A body naming an unknown sensor
        is refused alone: its place in the answer holds its errors (as ingest's 422
        details), an accepted body's holds None."""
        ids = {r[0] for body in bodies for r in body}
        sensors = await queries.sensor_thresholds(self.storage, ids)
        readings: list[Reading] = []
        found: list[Anomaly] = []
        refused: list[dict[str, Any] | None] = []
        for body in bodies:
            raised, unknown = _check(body, sensors, len(readings))
            refused.append(unknown or None)
            if not unknown:
                readings.extend(body)
                found.extend(raised)
        if not readings:
            return refused
        try:
            await self._store(readings, found)
        except ValidationFailed:
            # A sensor deleted while the batch was stored: nothing was, so each body goes
            # again on its own and only those naming the deleted sensor are refused.
            if len(bodies) == 1:
                raise
            return [await self._ingest_alone(body) for body in bodies]
        return refused

    async def _ingest_alone(self, body: list[Reading]) -> dict[str, Any] | None:
        try:
            await self.ingest(body, True)
        except ValidationFailed as exc:
            return exc.details or {"_schema": [exc.message]}
        return None

    async def _store(self, readings: list[Reading], found: list[Anomaly]) -> None:
        try:
            stored = await queries.store_readings(
                self.storage, (r[:3] for r in readings), [a[1:] for a in found]
            )
        except IntegrityError:
            # A sensor deleted between the check and the insert: nothing was stored.
            raise ValidationFailed(
                details={"sensor_id": ["A sensor was deleted while its readings were stored."]}
            ) from None
        raised = list(zip((a[0] for a in found), stored, strict=True))
        await self._publish(readings, raised)

    async def _publish(self, readings: list[Reading], raised: list[tuple[int, Row]]) -> None:
        """Each reading, then the anomalies it raised; one publication each, one batch."""
        await self.bus.publish_many(_events(readings, raised))

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


class AnomalyService:
    def __init__(self, storage: Storage, bus: Bus) -> None:
        self.storage = storage
        self.bus = bus

    async def publish(self, event_type: str, anomaly: dict[str, Any], **meta: Any) -> None:
        await self.bus.publish(*anomaly_event(event_type, anomaly, **meta))

    async def list(self, args: dict[str, Any]) -> dict[str, Any]:
        """Newest first."""
        limit = args["limit"]
        rows = await queries.select_anomalies(
            self.storage,
            sensor_id=args.get("sensor_id"),
            resolved=args.get("resolved"),
            before=decode_id_cursor(args.get("cursor")),
            limit=limit + 1,
        )
        cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
        return {"items": [anomaly_object(r) for r in rows[:limit]], "next_cursor": cursor}

    async def resolve(self, anomaly_id: int, by: Principal) -> dict[str, Any]:
        """Mark resolved and publish `anomaly_resolved`; 404 unknown, 409 already resolved."""
        row, changed = await queries.resolve_anomaly(self.storage, anomaly_id, codec.utcnow())
        if row is None:
            raise NotFound(f"anomaly {anomaly_id} not found")
        if not changed:
            raise Conflict(f"anomaly {anomaly_id} is already resolved")
        anomaly = anomaly_object(row)
        await self.publish("anomaly_resolved", anomaly, user=by.sub)
        return anomaly
