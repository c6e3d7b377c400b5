"""Chat frames: `message`, `typing`, `read` and `join_room`.

A socket speaks in a room it is in (subscribed to `chat:{room}`): the frame's `channel`, or
else the room it joined last.
"""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

from server.channel_names import validate_channel
from server.errors import BadRequest, Conflict, Forbidden
from server.hub.connection import Connection
from server.services.chat import last_room, room_channel, room_of, validate_room
from server.ws.commands import Frame, Session, command


class RoomFrame(Frame):
    channel = fields.String(load_default=None, validate=validate_channel)


class MessageFrame(RoomFrame):
    content = fields.String(required=True)


class TypingFrame(RoomFrame):
    is_typing = fields.Boolean(required=True, truthy={True}, falsy={False})


class ReadFrame(RoomFrame):
    message_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class JoinRoomFrame(Frame):
    room = fields.String(required=True, validate=validate_room)


def current_room(conn: Connection, channel: str | None) -> str:
    """The room a chat frame is for; BadRequest/Forbidden when the socket is in none."""
    if channel is not None:
        room = room_of(channel)
        if room is None:
            raise BadRequest(f"{channel} is not a chat room; chat channels are chat:{{room}}")
        if channel not in conn.subscriptions:
            raise Forbidden(f"join {channel} first (join_room or subscribe)")
        return room
    room = last_room(conn.subscriptions)
    if room is not None:
        return room
    raise BadRequest("not in a chat room: send join_room {room} or subscribe chat:{room}")


@command("message", MessageFrame)
async def message(session: Session, frame: dict[str, Any]) -> None:
    conn = session.conn
    room = current_room(conn, frame["channel"])
    chat = session.dispatcher.services().chat
    stored = await chat.store_message(room, conn.member_id, conn.member_name, frame["content"])
    # Acknowledged once stored, before the room (the sender included) gets the message.
    session.reply("message_sent", frame["id"], message_id=stored["id"], data=stored)
    # The live frame also names the sending socket (seed 003's clients read client_id).
    await chat.announce({**stored, "client_id": conn.client_id})


@command("typing", TypingFrame)
async def typing(session: Session, frame: dict[str, Any]) -> None:
    conn = session.conn
    room = current_room(conn, frame["channel"])
    chat = session.dispatcher.services().chat
    await chat.typing(room, conn.member_id, conn.member_label, conn.member_name, frame["is_typing"])


@command("read", ReadFrame)
async def read(session: Session, frame: dict[str, Any]) -> None:
    conn = session.conn
    room = current_room(conn, frame["channel"])
    chat = session.dispatcher.services().chat
    await chat.mark_read(room, frame["message_id"], conn.member_id, conn.member_name)


@command("join_room", JoinRoomFrame)
async def join_room(session: Session, frame: dict[str, Any]) -> None:
    """Leave the chat room(s) this socket is in, then join another."""
    conn, dispatcher = session.conn, session.dispatcher
    channel = room_channel(frame["room"])
    if channel in conn.subscriptions:
        raise Conflict(f"already in {channel}")
    if not dispatcher.policy.can_read(conn.principal, channel):
        raise Forbidden(f"not allowed to join {channel}")
    for current in [ch for ch in conn.subscriptions if room_of(ch) is not None]:
        await dispatcher.hub.unsubscribe(conn, current)
        session.reply("unsubscribed", frame["id"], channel=current)
    reply = {"id": frame["id"]} if frame["id"] is not None else None
    await dispatcher.join(conn, channel, reply=reply)


COMMANDS = (message, typing, read, join_room)
