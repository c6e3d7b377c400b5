"""Locations and sensors: CRUD operations (REST + WebSocket `request`) and their schemas.

Actions per resource: list, get, create, update (PATCH), replace (PUT), delete. Over the
socket `update` is the partial change (payload `{id, ...fields}`); `replace` is PUT's
whole-object replacement, reachable over the socket too because every operation is.
Reads are open to whoever may connect; writes need admin or service.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from server.api.operations import Ctx, operation
from server.auth import WRITE_ROLES

# Ids are BIGINT on PostgreSQL: a larger one must be a 422, not a driver error.
MAX_ID = 2**63 - 1
_INTEGER_TEXT = re.compile(r"[+-]?\d{1,20}")


class WholeNumber(fields.Integer):
    """An integer, or its decimal digits as text (path and query values arrive as text).

    Never a bool, a float or other text: `"abc"`, `1.5` and `true` are all invalid.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
            value = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def Id(**kwargs: Any) -> WholeNumber:
    return WholeNumber(validate=validate.Range(min=1, max=MAX_ID), **kwargs)


class Number(fields.Float):
    """A finite JSON number: not text, not a bool; NaN and ±Infinity are refused (Float's
    allow_nan is off)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


# -- arguments of reads -------------------------------------------------------------------


class IdIn(Schema):
    id = Id(required=True)


class ListQuery(Schema):
    limit = WholeNumber(load_default=50, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))


class SensorListQuery(ListQuery):
    location_id = Id(load_default=None)
    type = fields.String(load_default=None, validate=validate.Length(min=1, max=100))


# -- locations ----------------------------------------------------------------------------


class LocationIn(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(allow_none=True, validate=validate.Length(max=5000))
    latitude = Number(allow_none=True, validate=validate.Range(min=-90, max=90))
    longitude = Number(allow_none=True, validate=validate.Range(min=-180, max=180))
    metadata = fields.Dict(keys=fields.String())


class LocationPut(LocationIn):
    id = Id(required=True)


class LocationPatch(LocationPut):
    """PUT's fields, each optional but id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=tuple(LocationIn._declared_fields), **kwargs)


# -- sensors ------------------------------------------------------------------------------


class ThresholdIn(Schema):
    min = Number(allow_none=True)
    max = Number(allow_none=True)

    @validates_schema
    def _bounds(self, data: dict[str, Any], **kwargs: Any) -> None:
        low, high = data.get("min"), data.get("max")
        if low is None and high is None:
            raise ValidationError("give min, max or both")
        if low is not None and high is not None and low > high:
            raise ValidationError("min must not exceed max", "min")

    @post_load
    def _both_keys(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # Stored with both keys, so readers (anomaly checks) need not guess.
        return {"min": data.get("min"), "max": data.get("max")}


_TEXT = validate.Length(min=1, max=100)
# Seed 004's names: accepted on input as aliases, mirrored on output by the service.
_ALIASES = (("tipo", "type"), ("modelo", "model"))


class SensorIn(Schema):
    name = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))
    type = fields.String(validate=_TEXT)
    tipo = fields.String(validate=_TEXT)
    model = fields.String(allow_none=True, validate=_TEXT)
    modelo = fields.String(allow_none=True, validate=_TEXT)
    unit = fields.String(allow_none=True, validate=validate.Length(min=1, max=32))
    location_id = Id(allow_none=True)
    thresholds = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.Nested(ThresholdIn),
    )
    metadata = fields.Dict(keys=fields.String())
    device = fields.String(
        allow_none=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "the `sub` of the device token that posts its readings"},
    )

    @validates_schema
    def _aliases(self, data: dict[str, Any], partial: Any = None, **kwargs: Any) -> None:
        for alias, name in _ALIASES:
            if alias in data and name in data and data[alias] != data[name]:
                raise ValidationError(f"{alias} is an alias of {name}: give one value", alias)
        if not partial and "type" not in data and "tipo" not in data:
            raise ValidationError("Missing data for required field.", "type")

    @post_load
    def _merge_aliases(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        for alias, name in _ALIASES:
            if alias in data:
                data[name] = data.pop(alias)
        return data


class SensorPut(SensorIn):
    id = Id(required=True)


class SensorPatch(SensorPut):
    """PUT's fields, each optional but id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=tuple(SensorIn._declared_fields), **kwargs)


def _split_id(args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    values = dict(args)
    return values.pop("id"), values


# -- location operations ------------------------------------------------------------------


@operation("locations", "list", "GET", "/api/v1/locations", schema=ListQuery)
async def list_locations(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Locations, oldest id first, with a cursor to the next page."""
    return await ctx.services.sensors.list_locations(args["limit"], args["cursor"])


@operation("locations", "get", "GET", "/api/v1/locations/{id}", schema=IdIn)
async def get_location(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """One location."""
    return await ctx.services.sensors.get_location(args["id"])


@operation(
    "locations",
    "create",
    "POST",
    "/api/v1/locations",
    schema=LocationIn,
    status=201,
    roles=WRITE_ROLES,
)
async def create_location(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Create a location."""
    return await ctx.services.sensors.create_location(args, by=ctx.principal)


@operation(
    "locations",
    "replace",
    "PUT",
    "/api/v1/locations/{id}",
    schema=LocationPut,
    roles=WRITE_ROLES,
)
async def replace_location(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Replace a location whole: omitted optional fields go back to their defaults."""
    location_id, values = _split_id(args)
    return await ctx.services.sensors.replace_location(location_id, values, by=ctx.principal)


@operation(
    "locations",
    "update",
    "PATCH",
    "/api/v1/locations/{id}",
    schema=LocationPatch,
    roles=WRITE_ROLES,
)
async def update_location(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Change the given fields of a location."""
    location_id, values = _split_id(args)
    return await ctx.services.sensors.update_location(location_id, values, by=ctx.principal)


@operation(
    "locations",
    "delete",
    "DELETE",
    "/api/v1/locations/{id}",
    schema=IdIn,
    status=204,
    roles=WRITE_ROLES,
)
async def delete_location(ctx: Ctx, args: dict[str, Any]) -> None:
    """Delete a location; its sensors stay, with location_id null."""
    await ctx.services.sensors.delete_location(args["id"], by=ctx.principal)


# -- sensor operations --------------------------------------------------------------------


@operation("sensors", "list", "GET", "/api/v1/sensors", schema=SensorListQuery)
async def list_sensors(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Sensors, oldest id first, optionally of one location or type."""
    return await ctx.services.sensors.list_sensors(**args)


@operation("sensors", "get", "GET", "/api/v1/sensors/{id}", schema=IdIn)
async def get_sensor(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """One sensor."""
    return await ctx.services.sensors.get_sensor(args["id"])


@operation(
    "sensors",
    "create",
    "POST",
    "/api/v1/sensors",
    schema=SensorIn,
    status=201,
    roles=WRITE_ROLES,
)
async def create_sensor(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Create a sensor (seed 004's `tipo`/`modelo` accepted for type/model)."""
    return await ctx.services.sensors.create_sensor(args, by=ctx.principal)


@operation("sensors", "replace", "PUT", "/api/v1/sensors/{id}", schema=SensorPut, roles=WRITE_ROLES)
async def replace_sensor(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Replace a sensor whole: omitted optional fields go back to their defaults."""
    sensor_id, values = _split_id(args)
    return await ctx.services.sensors.replace_sensor(sensor_id, values, by=ctx.principal)


@operation(
    "sensors", "update", "PATCH", "/api/v1/sensors/{id}", schema=SensorPatch, roles=WRITE_ROLES
)
async def update_sensor(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Change the given fields of a sensor."""
    sensor_id, values = _split_id(args)
    return await ctx.services.sensors.update_sensor(sensor_id, values, by=ctx.principal)


@operation(
    "sensors",
    "delete",
    "DELETE",
    "/api/v1/sensors/{id}",
    schema=IdIn,
    status=204,
    roles=WRITE_ROLES,
)
async def delete_sensor(ctx: Ctx, args: dict[str, Any]) -> None:
    """Delete a sensor with its readings, anomalies and predictions."""
    await ctx.services.sensors.delete_sensor(args["id"], by=ctx.principal)


OPERATIONS = (
    list_locations,
    get_location,
    create_location,
    replace_location,
    update_location,
    delete_location,
    list_sensors,
    get_sensor,
    create_sensor,
    replace_sensor,
    update_sensor,
    delete_sensor,
)
