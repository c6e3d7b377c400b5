"""Chat: rooms, messages, history, read receipts and typing (pure of HTTP).

A room `r` is the channel `chat:r`. Who is in a room is the bus's presence on that channel
(every instance's);
what was said is in storage. WebSocket frames and REST views both come here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

from server import codec
from server.auth import identity_label
from server.bus import Bus
from server.bus.presence import Member
from server.channel_names import as_validator
from server.config import ChatConfig
from server.errors import BadRequest, NotFound, ValidationFailed
from server.services.events import receipt
from server.services.paging import decode_id_cursor, encode_cursor
from server.storage import Row, Storage
from server.storage import chat as queries

CHAT_NAMESPACE = "chat"
# The id part of a channel name, short enough that `chat:` + room fits in 128 characters.
ROOM_RE = re.compile(r"[A-Za-z0-9_.@-]{1,123}")
# Who a server-side broadcast is from.
SERVER_USER = "server"


def room_channel(room: str) -> str:
    return f"{CHAT_NAMESPACE}:{room}"


def room_of(channel: str) -> str | None:
    """The room a `chat:{room}` channel names; None for any other channel."""
    ns, sep, room = channel.partition(":")
    return room if ns == CHAT_NAMESPACE and sep else None


def check_room(room: str) -> str:
    if not ROOM_RE.fullmatch(room):
        raise BadRequest(f"invalid room name {room!r}: 1-123 characters of [A-Za-z0-9_.@-]")
    return room


validate_room = as_validator(check_room)


def last_room(channels: Iterable[str]) -> str | None:
    """The room of the last chat channel among a socket's (ordered) subscriptions: the room
    it joined last."""
    for channel in reversed(list(channels)):
        if (room := room_of(channel)) is not None:
            return room
    return None


def message_object(row: Row) -> dict[str, Any]:
    # Stored under the author's identity key; shown as its label, flagged when anonymous.
    user_id, anonymous = identity_label(row["user_id"])
    return {
        "id": row["id"],
        "room": row["room"],
        "user_id": user_id,
        "username": row["username"],
        "content": row["content"],
        "created_at": codec.isotime(row["created_at"]),
        "anonymous": anonymous,
    }


def receipt_object(row: Row, username: str | None) -> dict[str, Any]:
    user_id, anonymous = identity_label(row["user_id"])
    return {
        "room": row["room"],
        "message_id": row["message_id"],
        "user_id": user_id,
        "username": username or user_id,
        "read_at": codec.isotime(row["read_at"]),
        "anonymous": anonymous,
    }


class ChatService:
    def __init__(
        self,
        storage: Storage,
        bus: Bus,
        config: ChatConfig,
    ) -> None:
        self.storage = storage
        self.bus = bus
        self.config = config
        self.messages_stored = 0
        # (room, member id) -> the timer that ends that member's typing.
        self._typing: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- messages ----------------------------------------------------------------------

    def check_content(self, content: str) -> None:
        if not content.strip():
            raise ValidationFailed(details={"content": ["A message needs some content."]})
        limit = self.config.max_message_length
        if len(content) > limit:
            raise ValidationFailed(
                details={"content": [f"Longer than {limit} characters ({len(content)})."]}
            )

    async def store_message(
        self, room: str, user_id: str | None, username: str | None, content: str
    ) -> dict[str, Any]:
        """Validate and store; the caller acknowledges, then `announce`s it. `user_id` is
        the author's identity key (Connection.member_id)."""
        check_room(room)
        self.check_content(content)
        row = await queries.insert_message(self.storage, room, user_id, username, content)
        self.messages_stored += 1
        return message_object(row)

    async def announce(self, message: dict[str, Any]) -> dict[str, Any]:
        pub = await self.bus.publish([room_channel(message["room"])], "message", {"data": message})
        return receipt(pub)

    async def broadcast(self, room: str, content: str) -> dict[str, Any]:
        """A server message into a room: stored, then published like any other."""
        message = await self.store_message(room, SERVER_USER, SERVER_USER, content)
        return {**await self.announce(message), "message": message}

    async def history(self, room: str, limit: int, before: int | None) -> dict[str, Any]:
        """Newest first; `next_cursor` pages to older messages."""
        check_room(room)
        rows = await queries.select_messages(self.storage, room, before, limit + 1)
        cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
        return {"items": [message_object(r) for r in rows[:limit]], "next_cursor": cursor}

    async def recent(self, room: str) -> list[dict[str, Any]]:
        """The last `history_on_join` messages, oldest first: what a joining socket gets."""
        n = self.config.history_on_join
        if not n:
            return []
        rows = await queries.select_messages(self.storage, room, None, n)
        return [message_object(r) for r in reversed(rows)]

    # -- receipts and typing -------------------------------------------------------------

    async def mark_read(
        self, room: str, message_id: int, user_id: str, username: str
    ) -> dict[str, Any]:
        """Store that the user read a message of this room and tell the room."""
        message = await queries.select_message(self.storage, message_id)
        if message is None or message["room"] != room:
            raise NotFound(f"no message {message_id} in room {room}")
        row = await queries.upsert_receipt(self.storage, room, message_id, user_id, codec.utcnow())
        data = receipt_object(row, username)
        await self.bus.publish([room_channel(room)], "read_receipt", {"data": data})
        return data

    async def receipts(self, message_id: int) -> list[dict[str, Any]]:
        rows = await queries.select_receipts(self.storage, message_id)
        return [receipt_object(r, None) for r in rows]

    async def typing(
        self, room: str, member: str, user_id: str, username: str, is_typing: bool
    ) -> None:
        """Relay a change of typing state to the room's others; a `true` nobody renews
        within typing_timeout ends by itself. `member` is the identity key, `user_id` the
        label shown."""
        key = (room, member)
        timer = self._typing.pop(key, None)
        if timer is not None:
            timer.cancel()
        if is_typing:
            loop = asyncio.get_running_loop()
            self._typing[key] = loop.call_later(
                self.config.typing_timeout, self._expire, room, member, user_id, username
            )
        if is_typing != (timer is not None):
            await self._relay_typing(room, member, user_id, username, is_typing)

    def _expire(self, room: str, member: str, user_id: str, username: str) -> None:
        del self._typing[(room, member)]
        task = asyncio.get_running_loop().create_task(
            self._relay_typing(room, member, user_id, username, False)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay_typing(
        self, room: str, member: str, user_id: str, username: str, on: bool
    ) -> None:
        body = {"data": {"user_id": user_id, "username": username, "is_typing": on}}
        await self.bus.publish_ephemeral(room_channel(room), "typing", body, exclude=member)

    def close(self) -> None:
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()

    # -- rooms -----------------------------------------------------------------------------

    async def members(self, room: str) -> list[Member]:
        return await self.bus.members(room_channel(check_room(room)))

    async def rooms(self) -> dict[str, Any]:
        """Rooms with history or members now, by name."""
        stored = {r["name"]: r for r in await queries.select_rooms(self.storage)}
        presence = await self.bus.presence_channels()
        names = set(stored)
        names.update(room for ch in presence if (room := room_of(ch)) is not None)
        items = []
        for name in sorted(names):
            row = stored.get(name)
            members = presence.get(room_channel(name), [])
            items.append(
                {
                    "room": name,
                    "channel": room_channel(name),
                    "users": len(members),
                    "connections": sum(m.sockets for m in members),
                    "messages": row["messages"] if row else 0,
                    "last_message_at": codec.isotime(row["last_message_at"])
                    if row and row["last_message_at"]
                    else None,
                    "created_at": codec.isotime(row["created_at"]) if row else None,
                }
            )
        return {"items": items, "next_cursor": None}


def history_page_before(args: dict[str, Any]) -> int | None:
    """Where a history page starts: `before` (a message id) or a `cursor` we returned."""
    before: int | None = args.get("before")
    return before if before is not None else decode_id_cursor(args.get("cursor"))
