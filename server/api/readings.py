"""Readings and anomalies: operations, their schemas, and the readings body parser.

A readings body is one reading `{sensor_id, timestamp?, values: {metric: number}}`, flat
metrics `{sensor_id, timestamp?, temperatura: 23.5}` (every other key is a metric), or a
JSON array of either (up to MAX_BATCH, all or nothing). It is parsed by one hand-written
loop, not a marshmallow schema per item: that costs more than storing the batch. Errors
name the field, and in a batch sit under the item's 0-based index:
`{"3": {"sensor_id": ["..."]}}`, `{"0": {"values": {"temp": ["Not a finite number."]}}}`,
`{"2": {"temp": [...]}}` (flat). More than MAX_BATCH items: 413 too_large.
Over WebSocket the `payload` is the reading, or `{"body": [...]}` for a batch.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, cast

from marshmallow import Schema, ValidationError, fields, pre_load, validate

from server import codec
from server.api.operations import Ctx, operation
from server.api.sensors import MAX_ID
from server.auth import WRITE_ROLES
from server.errors import TooLarge, ValidationFailed
from server.services.readings import MAX_ERRORS, Reading
from server.services.timestamps import iso, parse_time

MAX_BATCH = 10_000
MAX_METRIC_LENGTH = 100
RESERVED = frozenset({"sensor_id", "timestamp", "values"})
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INGEST_ROLES = ("service", "device")


def parse_bucket(value: Any) -> int:
    """`30s`, `1m`, `5m`, `1h`, `1d` (any count of s/m/h/d) or whole seconds, as seconds."""
    text = str(value).strip() if type(value) in (str, int) else ""
    unit = UNITS.get(text[-1:], 0)
    digits = text[:-1] if unit else text
    if not digits.isdigit() or len(digits) > 9 or int(digits) == 0:
        raise ValueError("Expected a positive duration: 30s, 1m, 5m, 1h, 1d or seconds.")
    return int(digits) * (unit or 1)


def _metric_errors(values: dict[str, Any], out: dict[str, float]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for metric, value in values.items():
        kind = type(value)  # exact types: a bool is not a number here, nor is "NaN"
        if kind is float and math.isfinite(value):
            out[metric] = value
        elif kind is int and abs(value) < 2**63:
            out[metric] = float(value)
        else:
            errors[metric] = ["Not a finite number."]
        if not 0 < len(metric) <= MAX_METRIC_LENGTH:
            errors[metric] = [f"A metric name has 1 to {MAX_METRIC_LENGTH} characters."]
    return errors


def _is_iso(text: str) -> bool:
    """Whether a time that parsed is already in iso()'s form, 2024-05-01T12:00:00.000Z
    (JavaScript's toISOString), so it can be the event's text as it is."""
    return (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == text[7] == "-"
        and text[13] == text[16] == ":"
        and text[11:13] != "24"
    )


def _parse_one(item: Any, now: datetime, now_text: str) -> Reading | dict[str, Any]:
    """The reading, or its errors {field: [messages]}."""
    if type(item) is not dict:
        return {"_schema": ["A reading is a JSON object."]}
    errors: dict[str, Any] = {}
    sensor_id = item.get("sensor_id")
    if type(sensor_id) is not int or not 0 < sensor_id <= MAX_ID:
        errors["sensor_id"] = ["Missing." if sensor_id is None else "Not a sensor id."]
    stamp = item.get("timestamp")
    ts, text = now, now_text
    if stamp is not None:
        try:
            ts = parse_time(stamp)
        except ValueError as exc:
            errors["timestamp"] = [str(exc)]
        else:
            text = stamp if type(stamp) is str and _is_iso(stamp) else iso(ts)
    values: dict[str, float] = {}
    raw = item.get("values")
    bad: Any
    if raw is None:
        bad = _metric_errors({k: v for k, v in item.items() if k not in RESERVED}, values)
        errors.update(bad)
    elif type(raw) is not dict:
        bad = errors["values"] = ["Not an object of metric: number."]
    else:
        bad = _metric_errors(raw, values)
        if bad:
            errors["values"] = bad
        # Only sensor_id, timestamp and values may sit beside values: count before listing.
        if len(item) > 1 + ("sensor_id" in item) + ("timestamp" in item):
            for key in item.keys() - RESERVED:
                errors[key] = ["Unknown field: metrics go in `values`."]
    if not values and not bad:
        errors["values"] = ["At least one metric is required."]
    return errors if errors else (cast(int, sensor_id), ts, values, text)


def parse_readings(body: Any, now: datetime) -> tuple[list[Reading], bool]:
    """(readings, is_batch); ValidationFailed naming every bad item (up to MAX_ERRORS)."""
    batch = type(body) is list
    items = body if batch else [body]
    if batch and not items:
        raise ValidationFailed(details={"_schema": ["The batch is empty."]})
    if len(items) > MAX_BATCH:
        raise TooLarge(
            f"at most {MAX_BATCH} readings per request",
            {"max_items": MAX_BATCH, "items": len(items)},
        )
    readings: list[Reading] = []
    errors: dict[str, Any] = {}
    now_text = iso(now)
    for index, item in enumerate(items):
        parsed = _parse_one(item, now, now_text)
        if type(parsed) is tuple:
            readings.append(parsed)
        else:
            errors[str(index)] = parsed
            if len(errors) >= MAX_ERRORS:
                break
    if errors:
        raise ValidationFailed(details=errors if batch else errors["0"])
    return readings, batch


class Moment(fields.Field):
    """A time in a query: ISO 8601 with an offset or Z, or epoch seconds."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value.replace(".", "", 1).lstrip("-").isdigit():
            value = float(value)
        try:
            return parse_time(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class Bucket(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            return parse_bucket(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def id_field(**kw: Any) -> fields.Integer:
    return fields.Integer(validate=validate.Range(min=1, max=MAX_ID), **kw)


class ReadingsIn(Schema):
    body = fields.Raw(required=True, metadata={"description": "a reading or an array"})

    @pre_load
    def whole_payload(self, data: Any, **kwargs: Any) -> Any:
        # REST puts the body under `body`; a WS payload is the reading itself.
        return data if isinstance(data, dict) and "body" in data else {"body": data}


class Page(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None)


class ReadingQuery(Page):
    sensor_id = id_field(load_default=None)
    metric = fields.String(load_default=None)
    start = Moment(data_key="from", load_default=None)
    end = Moment(data_key="to", load_default=None)


class SensorIn(Schema):
    sensor_id = id_field(required=True)

    @pre_load
    def id_alias(self, data: Any, **kwargs: Any) -> Any:
        # A WS payload may name the sensor `id`, as get/update/delete do.
        if isinstance(data, dict) and "id" in data and "sensor_id" not in data:
            data = {**data, "sensor_id": data["id"]}
            del data["id"]
        return data


class AggregateIn(SensorIn):
    metric = fields.String(required=True, validate=validate.Length(min=1))
    bucket = Bucket(load_default=3600, metadata={"description": "30s, 1m, 5m, 1h, 1d or seconds"})
    start = Moment(data_key="from", load_default=None)
    end = Moment(data_key="to", load_default=None)


class AnomalyQuery(Page):
    sensor_id = id_field(load_default=None)
    resolved = fields.Boolean(load_default=None)


class AnomalyIn(Schema):
    id = id_field(required=True)


@operation(
    "readings",
    "create",
    "POST",
    "/api/v1/readings",
    schema=ReadingsIn,
    status=201,
    roles=INGEST_ROLES,
    body_key="body",
)
async def create_readings(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Store one reading, flat metrics or a batch; anomalies are stored before the 201."""
    readings, batch = parse_readings(args["body"], codec.utcnow())
    if ctx.principal.role == "device":
        await ctx.services.sensors.check_device((r[0] for r in readings), ctx.principal.sub)
    return await ctx.services.readings.ingest(readings, batch)


@operation("readings", "list", "GET", "/api/v1/readings", schema=ReadingQuery)
async def list_readings(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Readings oldest first, one item per metric value; `from` inclusive, `to` exclusive."""
    return await ctx.services.readings.query(args)


@operation(
    "readings", "latest", "GET", "/api/v1/sensors/{sensor_id}/readings/latest", schema=SensorIn
)
async def latest_readings(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """The newest value per metric of one sensor."""
    return await ctx.services.readings.latest(args["sensor_id"])


@operation(
    "readings",
    "aggregate",
    "GET",
    "/api/v1/sensors/{sensor_id}/readings/aggregate",
    schema=AggregateIn,
)
async def aggregate_readings(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """avg/min/max/count of one metric per time bucket (default 1h)."""
    return await ctx.services.readings.aggregate(args)


@operation("anomalies", "list", "GET", "/api/v1/anomalies", schema=AnomalyQuery)
async def list_anomalies(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Anomalies newest first."""
    return await ctx.services.readings.anomalies.list(args)


@operation(
    "anomalies",
    "resolve",
    "POST",
    "/api/v1/anomalies/{id}/resolve",
    schema=AnomalyIn,
    roles=WRITE_ROLES,
)
async def resolve_anomaly(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Mark an anomaly resolved (409 when it already is)."""
    return await ctx.services.readings.anomalies.resolve(args["id"], ctx.principal)


OPERATIONS = (
    create_readings,
    list_readings,
    latest_readings,
    aggregate_readings,
    list_anomalies,
    resolve_anomaly,
)
