"""Seed 004 (IoT sensors): its sockets, frames and REST writes are native (writes without
a token need `auth.anonymous_writes`); its stats paths answer in its shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.api.respond import json_response
from server.api.stats_view import StatsView, caller_view, connected_at
from server.channel_names import check_channel
from server.hub import Hub
from server.keys import HUB


def _channel(hub: Hub, view: StatsView, channel: str) -> dict[str, Any]:
    subs = hub.channels.get(channel, ())
    users = [{"user_id": view.user_id(c), "connected_at": connected_at(c)} for c in subs]
    return {"connections": len(subs), "users": users}


async def ws_stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    view = caller_view(request)
    channels = {ch: _channel(hub, view, ch) for ch in sorted(hub.channels) if view.channel(ch)}
    return json_response(
        {
            "total_channels": len(channels),
            "total_connections": len(hub.clients),
            "channels": channels,
        }
    )


async def ws_channel_stats(request: web.Request) -> web.Response:
    view = caller_view(request)
    channel = check_channel(request.match_info["channel"])
    view.policy.check_read(view.principal, channel)
    return json_response({"channel": channel, **_channel(request.app[HUB], view, channel)})
