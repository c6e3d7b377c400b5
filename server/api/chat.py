"""Chat over REST and WS `request`: rooms, who is in one, history, server broadcasts."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from server.api.operations import Ctx, operation
from server.api.stats_view import connected_at
from server.auth import WRITE_ROLES
from server.services.chat import history_page_before, room_channel, validate_room

MAX_ID = 2**63 - 1


def room_field() -> fields.String:
    return fields.String(
        required=True,
        validate=validate_room,
        metadata={"description": "room name; its channel is chat:{room}"},
    )


class RoomIn(Schema):
    room = room_field()


class HistoryQuery(RoomIn):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    before = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=MAX_ID),
        metadata={"description": "a message id: messages older than it"},
    )
    cursor = fields.String(load_default=None)


class BroadcastIn(RoomIn):
    # REST: the whole body (JSON object, JSON string, or any text that is not JSON);
    # WS `request`: `content` in the payload.
    body = fields.Raw(load_default=None, metadata={"description": "text, or {content}"})
    content = fields.String(load_default=None)

    @validates_schema
    def _has_text(self, data: dict[str, Any], **_: Any) -> None:
        if _text_of(data) is None:
            raise ValidationError(
                'send the message as text, a JSON string or {"content": text}', "content"
            )


def _text_of(data: dict[str, Any]) -> str | None:
    if isinstance(data.get("content"), str):
        return str(data["content"])
    body = data.get("body")
    if isinstance(body, dict):
        body = body.get("content", body.get("message"))
    return body if isinstance(body, str) else None


@operation("rooms", "list", "GET", "/api/v1/rooms")
async def list_rooms(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Rooms that have history or members now, with counts (those the caller may read)."""
    page = await ctx.services.chat.rooms()
    items = [r for r in page["items"] if ctx.policy.can_read(ctx.principal, r["channel"])]
    return {**page, "items": items}


@operation("rooms", "connections", "GET", "/api/v1/rooms/{room}/connections", schema=RoomIn)
async def room_connections(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Who is in a room: `items` one per socket; `users` one per user with their count."""
    room = args["room"]
    channel = room_channel(room)
    ctx.policy.check_read(ctx.principal, channel)
    members = await ctx.services.chat.members(room)
    sockets = sorted(ctx.hub.channels.get(channel, ()), key=lambda c: c.client_id)
    items = [
        {
            "client_id": c.client_id,
            "user_id": c.member_label,
            "username": c.member_name,
            "connected_at": connected_at(c),
        }
        for c in sockets
    ]
    return {
        # One page holds every socket of the room: presence is in memory, never paged.
        "items": items,
        "next_cursor": None,
        "room": room,
        "channel": channel,
        "users": [{**m.public(), "connections": m.sockets} for m in members],
        "count": len(members),
        "connections": sum(m.sockets for m in members),
        "clients": [{"client_id": c.client_id, "user_id": c.member_label} for c in sockets],
    }


@operation("messages", "list", "GET", "/api/v1/messages/{room}", schema=HistoryQuery)
async def list_messages(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """A room's history, newest first (50 by default); `before` or `cursor` pages back."""
    ctx.policy.check_read(ctx.principal, room_channel(args["room"]))
    return await ctx.services.chat.history(args["room"], args["limit"], history_page_before(args))


@operation(
    "rooms",
    "broadcast",
    "POST",
    "/api/v1/broadcast/{room}",
    schema=BroadcastIn,
    status=202,
    roles=WRITE_ROLES,
    body_key="body",
    text_body=True,
)
async def broadcast(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """A server message into a room (stored, then sent to its members)."""
    text = _text_of(args)
    assert text is not None  # the schema refused anything else
    return await ctx.services.chat.broadcast(args["room"], text)


OPERATIONS = (list_rooms, room_connections, list_messages, broadcast)
