"""Notifications from other services: routed to a channel, stored, then delivered."""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from server import codec
from server.bus import Bus
from server.channel_names import check_channel
from server.config import NotificationsConfig
from server.errors import BadRequest, ValidationFailed
from server.services.events import receipt
from server.services.paging import decode_id_cursor, encode_cursor
from server.storage import Row, Storage
from server.storage import notifications as queries

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# A history page reads at most this many batches of rows looking for ones the caller may
# see; past it the page ends early, with a cursor where the scan stopped.
MAX_SCANS = 8


def notification_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event": row["event"],
        "channel": row["channel"],
        "payload": row["payload"],
        "created_at": codec.isotime(row["created_at"]),
    }


def _scalar(value: Any) -> str | None:
    """A payload value usable in a channel name: a string or an integer, not a bool."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class NotificationService:
    def __init__(self, storage: Storage, bus: Bus, config: NotificationsConfig) -> None:
        self.storage = storage
        self.bus = bus
        self.config = config
        self.sent = 0

    def route(self, event: str, payload: dict[str, Any]) -> str:
        """The first rule whose event glob matches and whose payload keys are all present
        names the channel; none does -> default_channel."""
        for rule in self.config.routes:
            if not fnmatchcase(event, rule.event):
                continue
            keys = _PLACEHOLDER.findall(rule.channel)
            if rule.key:
                keys.append(rule.key)
            values = {key: _scalar(payload.get(key)) for key in keys}
            if any(v is None for v in values.values()):
                continue
            channel = rule.channel
            for key, value in values.items():
                channel = channel.replace("{" + key + "}", value or "")
            try:
                return check_channel(channel)
            except BadRequest as exc:
                raise ValidationFailed(
                    details={"payload": [f"routes {event!r} to a bad channel: {exc.message}"]}
                ) from None
        return self.config.default_channel

    async def notify(
        self, event: str, payload: dict[str, Any], channel: str | None = None
    ) -> dict[str, Any]:
        """Store, then publish `notification {id, event, payload}`; a user with no socket
        open finds it in the history later."""
        target = channel or self.route(event, payload)
        row = await queries.insert_notification(self.storage, event, target, payload)
        notification = notification_object(row)
        body = {"id": notification["id"], "event": event, "payload": payload}
        pub = await self.bus.publish([target], "notification", body)
        self.sent += 1
        return {**receipt(pub), "notification": notification}

    async def history(
        self, args: dict[str, Any], may_read: Callable[[str], bool]
    ) -> dict[str, Any]:
        """Newest first, only notifications of channels `may_read` allows (the channel
        policy's read check: another user's `user:{id}` is never shown)."""
        limit = args["limit"]
        before = decode_id_cursor(args.get("cursor"))
        batch = limit + 1
        items: list[dict[str, Any]] = []
        for _ in range(MAX_SCANS):
            rows = await queries.select_notifications(
                self.storage,
                channel=args.get("channel"),
                event=args.get("event"),
                before=before,
                limit=batch,
            )
            for row in rows:
                if not may_read(row["channel"]):
                    continue
                if len(items) == limit:
                    return {"items": items, "next_cursor": encode_cursor(items[-1]["id"])}
                items.append(notification_object(row))
            if len(rows) < batch:
                return {"items": items, "next_cursor": None}
            before = rows[-1]["id"]
        return {"items": items, "next_cursor": encode_cursor(before)}

    async def trim(self) -> int:
        """Keep the newest `history_size` stored notifications (0: all); returns how many
        were deleted."""
        if not self.config.history_size:
            return 0
        return await queries.delete_beyond(self.storage, self.config.history_size)
