"""Notifications over REST and WS `request`: post one (routed by config), read history."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from server.api.operations import Ctx, operation
from server.auth import WRITE_ROLES
from server.channel_names import validate_channel


class NotifyIn(Schema):
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    payload = fields.Dict(load_default=dict)
    channel = fields.String(
        load_default=None,
        validate=validate_channel,
        metadata={"description": "skip routing and deliver here"},
    )


class NotificationQuery(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None)
    channel = fields.String(load_default=None, validate=validate_channel)
    event = fields.String(load_default=None, validate=validate.Length(min=1, max=200))


@operation(
    "notifications",
    "create",
    "POST",
    "/api/v1/notify",
    schema=NotifyIn,
    status=202,
    roles=WRITE_ROLES,
)
async def notify(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Route a notification by `notifications.routes`, store it and deliver it."""
    service = ctx.services.notifications
    return await service.notify(args["event"], args["payload"], args["channel"])


@operation("notifications", "list", "GET", "/api/v1/notifications", schema=NotificationQuery)
async def list_notifications(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Stored notifications newest first, of the channels the caller may read."""
    principal, policy = ctx.principal, ctx.policy
    if args["channel"] is not None:
        policy.check_read(principal, args["channel"])
    return await ctx.services.notifications.history(
        args, lambda channel: policy.can_read(principal, channel)
    )


OPERATIONS = (notify, list_notifications)
