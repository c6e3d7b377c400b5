"""Queries for stored notifications: SQL once with `?`, both dialects."""

from __future__ import annotations

from typing import Any

from server.storage import Row, Tx


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
    private_of: str | None,
    all_private: bool,
    before: int | None,
    limit: int,
) -> list[Row]:
    """Newest first. Private `user:` rows are left out unless `all_private`, except those
    of `private_of` (the caller's own)."""
    where: list[str] = []
    args: list[Any] = []
    if channel is not None:
        where.append("channel = ?")
        args.append(channel)
    if event is not None:
        where.append("event = ?")
        args.append(event)
    if not all_private:
        where.append("(channel NOT LIKE 'user:%' OR channel = ?)")
        args.append(f"user:{private_of}" if private_of is not None else "")
    if before is not None:
        where.append("id < ?")
        args.append(before)
    sql = "SELECT * FROM notifications"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return await db.fetch(sql + " ORDER BY id DESC LIMIT ?", *args, limit)


async def delete_beyond(db: Tx, keep: int) -> int:
    """Delete all but the newest `keep` notifications; returns how many went."""
    rows = await db.fetch(
        "DELETE FROM notifications WHERE id <="
        " (SELECT id FROM notifications ORDER BY id DESC LIMIT 1 OFFSET ?) RETURNING id",
        keep,
    )
    return len(rows)
