"""Seed 004 (IoT sensors): its sockets, frames and REST writes are native (writes without
a token need `auth.anonymous_writes`); its stats paths answer in its shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.api.respond import json_response
from server.channels import check_channel
from server.compat.views import connected_at
from server.hub import Hub
from server.keys import HUB


def _channel(hub: Hub, channel: str) -> dict[str, Any]:
    subs = hub.channels.get(channel, ())
    users = [{"user_id": c.principal.sub, "connected_at": connected_at(c)} for c in subs]
    return {"connections": len(subs), "users": users}


async def ws_stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    channels = {ch: _channel(hub, ch) for ch in sorted(hub.channels)}
    return json_response(
        {
            "total_channels": len(channels),
            "total_connections": len(hub.clients),
            "channels": channels,
        }
    )


async def ws_channel_stats(request: web.Request) -> web.Response:
    channel = check_channel(request.match_info["channel"])
    return json_response({"channel": channel, **_channel(request.app[HUB], channel)})
