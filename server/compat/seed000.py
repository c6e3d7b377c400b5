"""Seed 000 (modular rooms server): `WS /ws/{room}?client_id&token` is the native room route
and its REST paths are native too, except `GET /api/v1/status`."""

from __future__ import annotations

import time

from aiohttp import web

from server.api.respond import json_response
from server.api.stats_view import caller_view
from server.compat.views import rooms
from server.keys import HUB


async def status(request: web.Request) -> web.Response:
    """Every room with its connections and users, and the totals."""
    hub = request.app[HUB]
    # Members as the room's presence shows them, of the rooms the caller may read.
    by_room = rooms(hub, caller_view(request))
    return json_response(
        {
            "status": "running",
            "total_connections": len(hub.clients),
            "total_rooms": len(by_room),
            "rooms": {
                room: {**counts, "members": [m.public() for m in hub.members(f"chat:{room}")]}
                for room, counts in by_room.items()
            },
            "uptime": round(time.monotonic() - hub.started_at, 3),
        }
    )
