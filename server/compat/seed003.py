"""Seed 003 (notifications service): `WS /ws/{client_id}?user_id&room` (with
`compat.ws_path: client_id`), its frame names, `POST /notify?token=`, `GET /stats` and
`GET /history`.

Its sockets join chat room `?room=` (default `general`) and the `general` channel, where
notifications for everyone go; a token's own `user:{sub}` too (a bare `?user_id=` only labels
the socket: it never grants that user's notifications).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDict

from server.api.middleware import json_errors, request_principal
from server.api.respond import json_response
from server.api.stats_view import caller_view, connected_at
from server.auth import Principal
from server.channel_names import parse_channel_list
from server.compat import Dialect
from server.keys import HUB, POLICY, SERVICES
from server.services.chat import check_room, last_room, room_channel, room_of
from server.ws.endpoint import Entry

DEFAULT_ROOM = "general"
EVERYONE = "general"
HISTORY_LIMIT = 100


class Seed003(Dialect):
    name = "seed003"

    def inbound(self, frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("type") == "chat_message":
            rest = {k: v for k, v in frame.items() if k not in ("type", "message")}
            return {**rest, "type": "message", "content": frame.get("message")}
        return frame

    def outbound(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        kind = frame.get("type")
        if kind == "connection":
            room = next(
                (r for ch in frame.get("subscriptions", ()) if (r := room_of(ch))), DEFAULT_ROOM
            )
            return {
                "type": "connection_established",
                "client_id": frame["client_id"],
                "user_id": frame["user"]["id"],
                "room": room,
                "message": f"Conectado a la sala {room}",
                "timestamp": frame["timestamp"],
            }
        if kind == "notification":
            return {**frame, "type": "system_notification"}
        if kind == "message" and isinstance(frame.get("data"), dict):
            data = frame["data"]
            return {
                **frame,
                "type": "chat_message",
                "client_id": data.get("client_id") or data.get("user_id"),
                "user_id": data.get("user_id"),
                "room": data.get("room"),
                "message": data.get("content"),
            }
        if kind in ("user_joined", "user_left") and isinstance(frame.get("data"), dict):
            data = frame["data"]
            room = room_of(frame.get("channel", "")) or ""
            verb = "se unió a" if kind == "user_joined" else "salió de"
            return {
                **frame,
                "client_id": data.get("user_id"),
                "user_id": data.get("user_id"),
                "room": room,
                "message": f"{data.get('username')} {verb} la sala {room}",
            }
        return frame


class Seed003Entry(Entry):
    dialect = Seed003()

    def client_id(self, request: web.Request, query: MultiDict[str]) -> str | None:
        return request.match_info["client_id"]

    def channels(
        self, request: web.Request, query: MultiDict[str], principal: Principal
    ) -> list[str]:
        room = room_channel(check_room(query.get("room") or DEFAULT_ROOM))
        channels = [room, EVERYONE]
        if not principal.anonymous:
            channels.append(f"user:{principal.sub}")
        extra = parse_channel_list(query.getall("channel", []))
        return [*channels, *(ch for ch in extra if ch not in channels)]


async def stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    view = caller_view(request)
    rooms: dict[str, int] = {}
    clients = []
    for conn in hub.clients.values():
        room = last_room(conn.subscriptions)
        if room is not None and not view.room(room):
            room = None
        if room is not None:
            rooms[room] = rooms.get(room, 0) + 1
        clients.append(
            {
                "client_id": view.client_id(conn),
                "user_id": view.member(conn),
                "room": room,
                "connected_at": connected_at(conn),
            }
        )
    return json_response(
        {
            "total_connections": len(hub.clients),
            "rooms": rooms,
            "clients": clients,
            "total_notifications_sent": request.app[SERVICES].notifications.sent,
        }
    )


async def history(request: web.Request) -> web.Response:
    """The last 100 notifications the caller may see, newest first, as seed 003 lists them."""
    principal = request_principal(request)
    policy = request.app[POLICY]
    page = await request.app[SERVICES].notifications.history(
        {"limit": HISTORY_LIMIT}, lambda channel: policy.can_read(principal, channel)
    )
    items = [
        {
            "type": "system_notification",
            "event": n["event"],
            "payload": n["payload"],
            "channel": n["channel"],
            "timestamp": n["created_at"],
        }
        for n in page["items"]
    ]
    return json_response({"history": items, "total": len(items)})


stats_view = json_errors(stats)
history_view = json_errors(history)
