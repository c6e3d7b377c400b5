"""Seed 002 (chat, phase 2): `WS /ws/{room_id}?user_id&username` is the native room route;
its clients also read `connected {data:{room_id, active_users:[usernames]}}` first (sent right after
`connection`, before `subscribed`), and `GET /ws/stats`.

With `compat.ws_path: seed002` the room route speaks seed 002 exactly: `connected` is the
first frame and only the frame types its README documents reach the socket, so a client
that reads one frame per step (its Python example) reads what it expects.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.api.respond import json_response
from server.api.stats_view import caller_view
from server.compat import Dialect
from server.compat.views import rooms
from server.hub import Hub
from server.hub.connection import Connection
from server.keys import HUB
from server.ws import frames
from server.ws.endpoint import RoomEntry


class ChatRoomEntry(RoomEntry):
    """/ws/{room}: the native room route, plus seed 002's `connected` frame once joined."""

    def greet(self, conn: Connection, hub: Hub, channels: list[str]) -> None:
        channel = channels[0]  # the room's: RoomEntry puts it first
        room = channel.partition(":")[2]
        users = [m.username for m in hub.members(channel)]
        data = {"room_id": room, "active_users": users}
        conn.send(frames.encode("connected", room_id=room, data=data))


class Seed002Dialect(Dialect):
    """Only seed 002's frame types go out; `connection` and `subscribed` (native
    bookkeeping its clients do not know) and every other type are left out."""

    name = "seed002"
    # Its README's server -> client table.
    TYPES = frozenset(
        {
            "connected",
            "message",
            "message_sent",
            "user_joined",
            "user_left",
            "typing",
            "pong",
            "error",
        }
    )

    def outbound(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        return frame if frame.get("type") in self.TYPES else None


class Seed002Entry(ChatRoomEntry):
    """/ws/{room} under `compat.ws_path: seed002`."""

    dialect = Seed002Dialect()


async def ws_stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    by_room = rooms(hub, caller_view(request))
    return json_response(
        {"total_connections": len(hub.clients), "total_rooms": len(by_room), "rooms": by_room}
    )
