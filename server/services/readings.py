"""Readings: ingest (with anomaly detection), query, latest per metric, time-bucket aggregates;
anomalies: list and resolve. Pure of HTTP.

Ingest takes readings api/readings.py has already parsed (shape, numbers, timestamps),
checks the sensors and their thresholds, stores the readings (a row each, metrics as JSON)
in one copy_rows and the anomalies in the same transaction, and publishes after the
commit: per reading an `entity_event` reading on `readings`, `readings:{id}`,
`sensors:{id}`, followed by the anomalies it raised. An unknown sensor_id is a 422 like
any other bad field (it is part of the body, not the URL), under the item's index in a
batch: `{"3": {"sensor_id": [...]}}`.

Queries (values, latest, snapshot, aggregates) are services/reading_queries.py; anomalies'
shapes, list and resolve services/anomalies.py; timestamps services/timestamps.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from server.bus import Bus
from server.errors import TooLarge, ValidationFailed
from server.services.anomalies import AnomalyService, Event, anomaly_event, anomaly_object
from server.services.reading_queries import ReadingQueries
from server.storage import IntegrityError, Row, Storage
from server.storage import readings as queries

# Errors reported for one request; past this a bad batch is not worth describing further.
MAX_ERRORS = 50

# (sensor_id, timestamp, {metric: value}, iso(timestamp)): what api/readings.py parses a
# body into. The text is what the reading's event carries: formatting a datetime costs more
# than anything else per reading, and the body's own text is usually already that form.
Reading = tuple[int, datetime, dict[str, float], str]


# A reading's event beyond its metrics (envelope, channels, ids, timestamp), and the most
# one metric adds: a name of at most 100 characters (6 bytes each when JSON-escaped) and a
# number. Readings with few enough metrics cannot exceed the outbound budget.
READING_EVENT_BYTES = 1024
METRIC_BYTES = 640


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


def _bound(threshold: Any, key: str) -> float | None:
    value = threshold.get(key) if type(threshold) is dict else None
    return value if type(value) in (int, float) else None


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


class ReadingService(ReadingQueries):
    def __init__(self, storage: Storage, bus: Bus) -> None:
        super().__init__(storage)
        self.bus = bus
        self.anomalies = AnomalyService(storage, bus)

    async def ingest(self, readings: list[Reading], batch: bool) -> dict[str, Any]:
        """Store (readings and anomalies in one transaction), then publish. `batch`:
        errors are keyed by the item's index."""
        sensors = await queries.sensor_thresholds(self.storage, {r[0] for r in readings})
        found, unknown = _check(readings, sensors, 0)
        if unknown:
            raise ValidationFailed(details=unknown if batch else unknown["0"])
        self._check_sizes(readings)
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
            if not unknown:
                try:
                    self._check_sizes(body)
                except TooLarge as exc:
                    unknown = {"_schema": [exc.message]}
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
        except (ValidationFailed, TooLarge) as exc:
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

    def _check_sizes(self, readings: list[Reading]) -> None:
        """TooLarge (413) before anything is stored for a reading whose event would not fit
        a subscriber's budget. Only readings with enough metrics to possibly not fit are
        encoded to find out: encoding every reading of a batch twice costs too much."""
        limit = self.bus.max_payload_bytes
        if not limit:
            return
        many = max(0, limit - READING_EVENT_BYTES) // METRIC_BYTES
        for sensor_id, _, values, stamp in readings:
            if len(values) > many:
                channels = ("readings", f"readings:{sensor_id}", f"sensors:{sensor_id}")
                data = {"sensor_id": sensor_id, "timestamp": stamp, "values": values}
                self.bus.check_size(channels, {"entity_type": "sensor", "data": data})

    async def _publish(self, readings: list[Reading], raised: list[tuple[int, Row]]) -> None:
        """Each reading, then the anomalies it raised; one publication each, one batch.
        Readings were sized by _check_sizes; anomalies are small."""
        await self.bus.publish_many(_events(readings, raised), sized=True)
