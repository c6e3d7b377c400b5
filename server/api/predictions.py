"""Predictions: forecast a sensor's metric (REST and WS `request` "predictions"/"predict"),
and list stored forecasts newest first."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from server.api.operations import Ctx, operation
from server.api.readings import SensorIn, id_field

PREDICT_ROLES = ("service",)  # and admin, who always may
MAX_HORIZON = 1000


class PredictionIn(SensorIn):
    metric = fields.String(required=True, validate=validate.Length(min=1, max=100))
    horizon = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_HORIZON),
        metadata={"description": "future steps at the series' typical interval"},
    )


class PredictionQuery(Schema):
    sensor_id = id_field(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None)


@operation(
    "predictions",
    "predict",
    "POST",
    "/api/v1/sensors/{sensor_id}/predictions",
    schema=PredictionIn,
    status=201,
    roles=PREDICT_ROLES,
)
async def create_prediction(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Forecast `horizon` steps of a metric with Holt's linear smoothing; stored and published."""
    service = ctx.services.predictions
    return await service.predict(args["sensor_id"], args["metric"], args["horizon"])


@operation("predictions", "list", "GET", "/api/v1/predictions", schema=PredictionQuery)
async def list_predictions(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Stored predictions newest first."""
    return await ctx.services.predictions.list(args)


OPERATIONS = (create_prediction, list_predictions)
