"""The seed aliases in the route table (SPEC §10); each calls native operations/services."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from server.api.middleware import json_errors
from server.compat import seed000, seed002, seed003, seed004
from server.keys import CONFIG
from server.ws import endpoint


def seed_routes(app: web.Application, rest_view: Handler | None) -> list[web.AbstractRoute]:
    """Adds the seeds' REST aliases and WebSocket routes; returns the REST ones (for CORS).
    `rest_view` is the REST view of `POST /api/v1/notify` answering 200 (seed 003)."""
    router = app.router
    added = [
        router.add_get("/api/v1/status", json_errors(seed000.status)),
        router.add_get("/api/v1/ws/stats", json_errors(seed004.ws_stats)),
        router.add_get("/api/v1/ws/stats/{channel}", json_errors(seed004.ws_channel_stats)),
        router.add_get("/stats", seed003.stats_view),
        router.add_get("/history", seed003.history_view),
    ]
    if rest_view is not None:
        added.append(router.add_post("/notify", rest_view))
    ws_path = app[CONFIG].compat.ws_path
    if ws_path == "client_id":
        key, socket = "client_id", endpoint.route(seed003.Seed003Entry())
    elif ws_path == "seed002":
        key, socket = "room", endpoint.route(seed002.Seed002Entry())
    else:
        key, socket = "room", endpoint.route(seed002.ChatRoomEntry())
    stats = json_errors(seed002.ws_stats)

    async def ws_stats_or_socket(request: web.Request) -> web.StreamResponse:
        """/ws/stats: seed 002's stats over plain HTTP; an upgrade is a socket whose room
        (or client id) is `stats`, as on /ws/{x}."""
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await stats(request)
        request.match_info[key] = "stats"
        return await socket(request)

    # Before /ws/{x}, which would take the path otherwise.
    added.append(router.add_get("/ws/stats", ws_stats_or_socket))
    router.add_get(f"/ws/{{{key}}}", socket)
    return added
