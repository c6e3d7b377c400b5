"""Queries for stored notifications: SQL once with `?`, both dialects."""

from __future__ import annotations

from typing import Any

from server.storage import Row, Tx, select_newest


async def insert_notification(db: Tx, event: str, channel: str, payload: Any) -> Row:
    row = await db.fetchrow(
        "INSERT INTO notifications (event, channel, payload) VALUES (?, ?, ?) RETURNING *",
        event,
        channel,
        payload,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return row


async def select_notifications(
    db: Tx,
    *,
    channel: str | None,
    event: str | None,
    before: int | None,
    limit: int,
) -> list[Row]:
    """Newest first; who may see which row is the caller's business (the channel policy)."""
    filters = {"channel": channel, "event": event}
    return await select_newest(db, "notifications", filters, before, limit)


async def delete_beyond(db: Tx, keep: int) -> int:
    """Delete all but the newest `keep` notifications; returns how many went."""
    rows = await db.fetch(
        "DELETE FROM notifications WHERE id <="
        " (SELECT id FROM notifications ORDER BY id DESC LIMIT 1 OFFSET ?) RETURNING id",
        keep,
    )
    return len(rows)
