"""Seed 002 (chat, phase 2): `WS /ws/{room_id}?user_id&username` is the native room route;
its clients also read `connected {data:{room_id, active_users:[usernames]}}` first (sent right after
`connection`, before `subscribed`), and `GET /ws/stats`."""

from __future__ import annotations

from aiohttp import web

from server.api.respond import json_response
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


async def ws_stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    by_room = rooms(hub)
    return json_response(
        {"total_connections": len(hub.clients), "total_rooms": len(by_room), "rooms": by_room}
    )
