"""Seed 001 (the WebSocket module that replaced a REST API) on `GET /ws`.

Its clients wrap everything in envelopes: `request {id, resource, payload:{action, ...}}`
is answered by `response {id, payload}` or `error {id, payload:{code, message, details}}`,
and pushes are `event {id, payload:{type, data}}`. Its conversations are chat rooms and its
messages chat messages; any native operation works through the envelope too. Reading or
writing a conversation's messages joins that room (the native join, same policy check), so
its new messages then arrive as `new_message` events. A socket that sends nothing for
`compat.idle_timeout` seconds is closed, as the seed did after 5 minutes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from marshmallow import ValidationError, fields

from server.compat import Dialect
from server.config import CompatConfig
from server.errors import BadRequest, Forbidden, NotFound, UnknownType, ValidationFailed
from server.hub import Hub
from server.hub.connection import Connection
from server.services.chat import check_room, room_channel
from server.ws import chat, frames
from server.ws.commands import Frame, Session, command
from server.ws.commands import request as native_request
from server.ws.endpoint import Entry, route

# The native frame type a seed `request` becomes: only a seed-001 socket may send it.
REQUEST_TYPE = "seed001_request"
# The seed's verbs that have a native name.
ACTIONS = {"get_all": "list"}
# Native frame fields that are envelope, not event data.
_ENVELOPE = frozenset({"type", "id", "timestamp", "offset", "epoch"})


def seed_message(message: dict[str, Any]) -> dict[str, Any]:
    """A native chat message as the seed's clients read it."""
    return {
        "id": message["id"],
        "conversation_id": message["room"],
        "content": message["content"],
        "sender_id": message["user_id"],
        "sender_name": message["username"],
        "timestamp": message["created_at"],
    }


def seed_conversation(room: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": room["room"],
        "title": room["room"],
        "created_at": room["created_at"],
        "last_message_at": room["last_message_at"],
        "messages": room["messages"],
        "users": room["users"],
    }


class Seed001Dialect(Dialect):
    """One per socket (it remembers when the client last spoke, for the idle close); all
    translate alike, so they compare equal and the hub still translates a publication once
    for all seed-001 sockets."""

    name = "seed001"

    def __init__(self) -> None:
        self.last_frame = time.monotonic()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Seed001Dialect)

    def __hash__(self) -> int:
        return hash(Seed001Dialect)

    def inbound(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.last_frame = time.monotonic()
        if frame.get("type") != "request" or "action" in frame:
            # Native frames (ping, subscribe, a native request) work as they are.
            return frame
        payload = frame.get("payload")
        args = dict(payload) if isinstance(payload, dict) else {}
        action = args.pop("action", None)
        out = {"type": REQUEST_TYPE, "resource": frame.get("resource"), "action": action}
        if "id" in frame:
            out["id"] = frame["id"]
        if payload is not None and not isinstance(payload, dict):
            out["args"] = payload  # refused by the schema, under `args`
        else:
            out["args"] = args
        return out

    def outbound(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        kind = frame.get("type")
        if kind == "pong":
            return frame
        if kind == "response":
            return _reply("response", frame, frame.get("data"))
        if kind == "message_sent":
            return _reply("response", frame, {"message": seed_message(frame["data"])})
        if kind == "error":
            error = {k: frame.get(k) for k in ("code", "message", "details")}
            return _reply("error", frame, error)
        if kind == "event" and _notify_event(frame.get("data")):
            # The seed backend's notify_event(X, data), posted as {"type": X, "data": data}
            # to /api/v1/events/{channel}: its clients listen for X itself (SPEC §10).
            event = frame["data"]
            return _event(frame, event["type"], event["data"])
        if kind == "message":
            if frame.get("history"):
                # Replayed on join; the seed's clients read history with `messages get_all`.
                return None
            return _event(frame, "new_message", seed_message(frame["data"]))
        return _event(frame, str(kind), {k: v for k, v in frame.items() if k not in _ENVELOPE})


def _notify_event(data: Any) -> bool:
    """Whether an `event`'s data is a seed notify_event: exactly {type: str, data}."""
    return (
        isinstance(data, dict) and data.keys() == {"type", "data"} and isinstance(data["type"], str)
    )


def _reply(kind: str, frame: dict[str, Any], payload: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "id": frame.get("id"), "payload": payload}
    if "timestamp" in frame:
        out["timestamp"] = frame["timestamp"]
    return out


def _event(frame: dict[str, Any], kind: str, data: Any) -> dict[str, Any]:
    channel, offset = frame.get("channel"), frame.get("offset")
    # Derived from the publication, so every socket sees the same event id.
    published = offset is not None and kind != "subscribed"
    ident = f"evt-{channel}-{offset}" if published else f"evt-{secrets.token_hex(8)}"
    return {
        "type": "event",
        "id": ident,
        "payload": {"type": kind, "data": data},
        "timestamp": frame.get("timestamp"),
    }


class SeedRequestFrame(Frame):
    resource = fields.String(required=True)
    action = fields.String(required=True)
    args = fields.Dict(load_default=dict)


def _conversation_id(args: dict[str, Any]) -> str:
    """The conversation a messages call names: `conversation_id`, or inside `message`."""
    message = args.get("message")
    source = message if isinstance(message, dict) else args
    value = source.get("conversation_id")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValidationFailed(details={"conversation_id": ["Missing data for required field."]})
    try:
        return check_room(str(value))
    except BadRequest as exc:
        raise ValidationFailed(details={"conversation_id": [exc.message]}) from None


async def _enter(session: Session, room: str) -> None:
    """Join a conversation's room (if not in it yet): its new messages then reach this
    socket. The native subscribe's policy check; the join's `subscribed` is an event."""
    conn, dispatcher = session.conn, session.dispatcher
    channel = room_channel(room)
    if channel in conn.subscriptions:
        return
    if not dispatcher.policy.can_read(conn.principal, channel):
        raise Forbidden(f"not allowed to join {channel}")
    await dispatcher.join(conn, channel)


async def _run(session: Session, frame_id: Any, resource: str, action: str, args: Any) -> None:
    """A native operation through the native `request` command (same checks, same reply)."""
    native = {"id": frame_id, "resource": resource, "action": action, "payload": args}
    await native_request.fn(session, native)


@command(REQUEST_TYPE, SeedRequestFrame, internal=True)
async def seed_request(session: Session, frame: dict[str, Any]) -> None:
    conn = session.conn
    if not isinstance(conn.dialect, Seed001Dialect):
        # Not a frame type of the native protocol.
        raise UnknownType(f"unknown frame type {REQUEST_TYPE!r}")
    resource, args, frame_id = frame["resource"], frame["args"], frame["id"]
    action = ACTIONS.get(frame["action"], frame["action"])
    ctx = session.ctx()
    operations = session.dispatcher.operations
    if resource == "conversations" and action == "list":
        rooms = await operations[("rooms", "list")].run(ctx, {})
        conversations = [seed_conversation(r) for r in rooms["items"]]
        session.reply("response", frame_id, data={"conversations": conversations})
    elif resource == "conversations" and action == "get":
        room = _conversation_id({"conversation_id": args.get("conversation_id", args.get("id"))})
        # The one read check before anything of the room is told.
        session.dispatcher.policy.check_read(conn.principal, room_channel(room))
        rooms = await operations[("rooms", "list")].run(ctx, {})
        found = [r for r in rooms["items"] if r["room"] == room]
        if not found:
            raise NotFound("conversation not found", {"conversation_id": room})
        session.reply("response", frame_id, data={"conversation": seed_conversation(found[0])})
        await _enter(session, room)
    elif resource == "messages" and action == "list":
        room = _conversation_id(args)
        query = {k: v for k, v in args.items() if k in ("limit", "before", "cursor")}
        page = await operations[("messages", "list")].run(ctx, {**query, "room": room})
        messages = [seed_message(m) for m in page["items"]]
        data = {"messages": messages, "next_cursor": page["next_cursor"]}
        session.reply("response", frame_id, data=data)
        await _enter(session, room)
    elif resource == "messages" and action == "create":
        room = _conversation_id(args)
        message = args.get("message")
        content = (message if isinstance(message, dict) else args).get("content")
        # The native `message` frame: stored as this socket's user, acked, announced.
        native = {"type": "message", "id": frame_id, "channel": room_channel(room)}
        try:
            loaded = chat.message.schema.load({**native, "content": content})
        except ValidationError as exc:
            raise ValidationFailed("invalid message", exc.messages) from None
        await _enter(session, room)
        await chat.message.fn(session, loaded)
    elif resource == "users" and action in ("me", "get_current"):
        session.reply("response", frame_id, data={"user": conn.user})
    else:
        await _run(session, frame_id, resource, action, args)


COMMANDS = (seed_request,)


class Seed001Entry(Entry):
    """`GET /ws?token=`: the seed authenticated every socket with a JWT."""

    token_required = True
    # For the entry's sockets; `greet` gives each one a dialect of its own.
    dialect = Seed001Dialect()

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout

    def greet(self, conn: Connection, hub: Hub, channels: list[str]) -> None:
        dialect = conn.dialect = Seed001Dialect()
        if self.idle_timeout:
            _watch_idle(conn, dialect, self.idle_timeout)


def adopt(frame: dict[str, Any]) -> Dialect | None:
    """A native socket (`/api/v1/ws`) that sends a seed-001 envelope — a `request` whose
    `payload` holds the `action` — speaks seed 001 from then on (SPEC §10)."""
    payload = frame.get("payload")
    if (
        frame.get("type") == "request"
        and "action" not in frame
        and isinstance(payload, dict)
        and "action" in payload
    ):
        return Seed001Dialect()
    return None


def _watch_idle(conn: Connection, dialect: Seed001Dialect, timeout: float) -> None:
    """Close the socket `timeout` s after its last client frame. One timer per socket,
    re-armed for the remaining time rather than on every frame."""
    loop = asyncio.get_running_loop()

    def check() -> None:
        if conn.closing:
            return
        left = dialect.last_frame + timeout - time.monotonic()
        if left <= 0:
            conn.close_soon(frames.CLOSE_POLICY, "idle timeout")
        else:
            loop.call_later(left, check)

    loop.call_later(timeout, check)


def websocket(config: CompatConfig) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The `GET /ws` handler (its idle timeout from `compat.idle_timeout`)."""
    return route(Seed001Entry(config.idle_timeout))
