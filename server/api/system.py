"""Service endpoints: info, health, stats, server-side publishing."""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate

from server import __version__, codec
from server.api.operations import Ctx, operation
from server.api.respond import json_response
from server.api.stats_view import StatsView
from server.auth import WRITE_ROLES
from server.channel_names import validate_channel
from server.errors import Unauthorized
from server.keys import ASYNCAPI, CONFIG, HUB, METRICS, MQTT, SERVICES
from server.services.chat import room_of
from server.storage import StorageError


class ChannelIn(Schema):
    channel = fields.String(required=True, validate=validate_channel)


class EventIn(ChannelIn):
    event = fields.Dict(
        required=True,
        # An empty body would publish `{}`: nothing a subscriber could act on.
        validate=validate.Length(min=1, error="the event must be a non-empty JSON object"),
        metadata={"description": "the event object"},
    )


LEVELS = ("info", "warning", "error")


class TestEventIn(Schema):
    channel = fields.String(load_default="general", validate=validate_channel)
    message = fields.String(load_default="test event", validate=validate.Length(max=10_000))
    level = fields.String(
        load_default="info", validate=validate.OneOf(["info", "warning", "error"])
    )


def _view(ctx: Ctx) -> StatsView:
    return StatsView(ctx.principal, ctx.policy)


def _channel_stats(ctx: Ctx, view: StatsView, channel: str) -> dict[str, Any]:
    subs = ctx.hub.subscribers(channel)
    return {"channel": channel, "subscribers": len(subs), "users": view.users(subs)}


@operation("stats", "get", "GET", "/api/v1/stats")
async def get_stats(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Connections, channels with subscribers and users, message counters (only the
    channels the caller may read)."""
    hub = ctx.hub
    s = hub.stats
    view = _view(ctx)
    presence = await hub.bus.presence_channels()
    return {
        "instance": hub.bus.instance,
        "connections": len(hub.clients),
        # Of those, Server-Sent Events streams (GET /api/v1/sse).
        "sse_streams": hub.transports["sse"],
        "connections_total": s.connections_total,
        "channels": {
            ch: _channel_stats(ctx, view, ch)
            for ch in sorted(hub.channel_names())
            if view.channel(ch)
        },
        "messages_in": s.messages_in,
        "messages_out": s.messages_out,
        "publications": s.publications,
        "dropped_slow_consumers": s.dropped_slow_consumers,
        "closed_by_policy": s.closed_by_policy,
        "rooms": {
            room: {"users": len(members), "connections": sum(m.sockets for m in members)}
            for channel, members in sorted(presence.items())
            if (room := room_of(channel)) is not None and view.channel(channel)
        },
        "chat_messages": ctx.services.chat.messages_stored,
        "notifications_sent": ctx.services.notifications.sent,
        "uptime": round(time.monotonic() - ctx.hub.started_at, 3),
        **{name: report() for name, report in ctx.services.reporters.items()},
    }


@operation("stats", "channel", "GET", "/api/v1/stats/channels/{channel}", schema=ChannelIn)
async def get_channel_stats(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Subscribers, users and position of one channel (one the caller may read)."""
    channel = args["channel"]
    ctx.policy.check_read(ctx.principal, channel)
    position = await ctx.hub.bus.position(channel)
    stats = _channel_stats(ctx, _view(ctx), channel)
    return {**stats, "offset": position.offset, "epoch": position.epoch}


@operation(
    "events",
    "create",
    "POST",
    "/api/v1/events/{channel}",
    schema=EventIn,
    status=202,
    roles=WRITE_ROLES,
    body_key="event",
)
async def publish_event(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Publish any event into a channel (a publication frame type keeps its type)."""
    return await ctx.services.events.publish([args["channel"]], args["event"])


@operation(
    "events",
    "test",
    "POST",
    "/api/v1/ws/test-event",
    schema=TestEventIn,
    status=202,
    roles=WRITE_ROLES,
    query_args=True,
)
async def test_event(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Publish a system_event with the given message (default channel `general`)."""
    return await ctx.services.events.system_event(args["channel"], args["message"], args["level"])


OPERATIONS = (get_stats, get_channel_stats, publish_event, test_event)


async def info(request: web.Request) -> web.Response:
    return json_response(
        {
            "name": "sensorcast",
            "version": __version__,
            "uptime": round(time.monotonic() - request.app[HUB].started_at, 3),
        }
    )


async def health(request: web.Request) -> web.Response:
    """healthy/degraded with a check per dependency; 503 when the database cannot answer."""
    checks: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        await request.app[SERVICES].storage.ping()
        checks["database"] = {
            "status": "ok",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    except StorageError as exc:
        checks["database"] = {"status": "down", "error": str(exc)}
    checks["bus"] = request.app[HUB].bus.backend.health()
    if request.app[CONFIG].bus.backend == "redis":
        # SPEC §7 names the Redis check; the instance still serves its own sockets.
        checks["redis"] = {"status": checks["bus"]["status"]}
    if (bridge := request.app.get(MQTT)) is not None:
        mqtt = bridge.describe()
        checks["mqtt"] = {
            "status": "ok" if mqtt["state"] == "connected" else "down",
            "broker": mqtt["broker"],
            **({"error": mqtt["last_error"]} if mqtt["last_error"] else {}),
        }
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "healthy" if healthy else "degraded",
        # Seed 003's clients read `service` and `timestamp` too.
        "service": "sensorcast",
        "timestamp": codec.isotime(),
        "checks": checks,
        "connections": len(request.app[HUB].clients),
        "uptime": round(time.monotonic() - request.app[HUB].started_at, 3),
    }
    return json_response(body, status=200 if checks["database"]["status"] == "ok" else 503)


# Prometheus' text exposition format, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; with metrics.token set, only for `Authorization: Bearer <token>`."""
    token = request.app[CONFIG].metrics.token
    if token:
        given = request.headers.get("Authorization", "").partition(" ")
        if given[0].lower() != "bearer" or not hmac.compare_digest(
            given[2].strip().encode(), token.encode()
        ):
            raise Unauthorized("GET /metrics needs Authorization: Bearer <metrics.token>")
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


STATIC = Path(__file__).resolve().parents[1] / "static"
REDOC = STATIC / "vendor" / "redoc" / "redoc.standalone.js"


async def docs(request: web.Request) -> web.FileResponse:
    """The OpenAPI document as a readable page (Redoc, served from here)."""
    return web.FileResponse(STATIC / "docs.html", headers={"Content-Type": "text/html"})


async def docs_script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(REDOC, headers={"Content-Type": "text/javascript"})


async def asyncapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[ASYNCAPI], content_type="application/json")
