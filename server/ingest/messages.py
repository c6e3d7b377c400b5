"""One MQTT message -> the readings of a REST body, or why it is refused.

The payload is any body `POST /api/v1/readings` takes (one reading, flat metrics, a batch
array), parsed by the same parser. A topic pattern's `{sensor_id}` level fills in a
reading's missing `sensor_id`; a reading naming another sensor than its topic is refused,
so a device that may publish only on its own topic cannot write to another sensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from server.api.readings import MAX_BATCH, parse_readings
from server.api.sensors import MAX_ID
from server.errors import ApiError
from server.mqtt_topics import Pattern
from server.services.readings import Reading

# Why a message is refused: the label of its count and of its once-a-minute log line.
CAUSES = ("bad_topic", "not_json", "bad_shape", "too_large", "unknown_sensor")


@dataclass(frozen=True, slots=True)
class Refusal:
    cause: str
    details: Any


def _topic_sensor(topic: str, patterns: tuple[Pattern, ...]) -> int | Refusal | None:
    """The sensor id the topic names (None: the payload must name it)."""
    for pattern in patterns:
        matched, level = pattern.match(topic)
        if not matched:
            continue
        if level is None:
            return None
        if level.isdigit() and level.isascii() and 0 < int(level) <= MAX_ID:
            return int(level)
        return Refusal("bad_topic", {"topic": [f"{level!r} is not a sensor id."]})
    return Refusal("bad_topic", {"topic": ["Matches no configured topic pattern."]})


def _with_sensor(body: Any, sensor_id: int) -> Any | Refusal:
    items = body if type(body) is list else [body]
    for index, item in enumerate(items):
        if type(item) is not dict:
            continue  # the parser names it
        given = item.setdefault("sensor_id", sensor_id)
        if given != sensor_id:
            where = str(index) if type(body) is list else "sensor_id"
            return Refusal(
                "bad_shape", {where: [f"Names sensor {given!r}, but the topic names {sensor_id}."]}
            )
    return body


def parse_message(
    topic: str, payload: bytes, patterns: tuple[Pattern, ...], now: datetime
) -> list[Reading] | Refusal:
    sensor = _topic_sensor(topic, patterns)
    if isinstance(sensor, Refusal):
        return sensor
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Refusal("not_json", {"payload": [f"Not valid JSON: {exc.msg}."]})
    if type(body) is list and len(body) > MAX_BATCH:
        return Refusal("too_large", {"payload": [f"At most {MAX_BATCH} readings a message."]})
    if sensor is not None:
        body = _with_sensor(body, sensor)
        if isinstance(body, Refusal):
            return body
    try:
        readings, _ = parse_readings(body, now)
    except ApiError as exc:
        return Refusal("bad_shape", exc.details or {"_schema": [exc.message]})
    return readings
