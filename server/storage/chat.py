"""Queries for chat rooms, messages and read receipts: SQL once with `?`, both dialects.

A room row is made with its first message, so a room with history is a row; rooms that only
have members live in the hub's presence, not here.
"""

from __future__ import annotations

from datetime import datetime

from server.storage import Row, Tx, select_newest


async def insert_message(
    db: Tx, room: str, user_id: str | None, username: str | None, content: str
) -> Row:
    """Store one message (creating its room on first use); returns the stored row."""
    await db.execute("INSERT INTO rooms (name) VALUES (?) ON CONFLICT (name) DO NOTHING", room)
    row = await db.fetchrow(
        "INSERT INTO messages (room, user_id, username, content) VALUES (?, ?, ?, ?) RETURNING *",
        room,
        user_id,
        username,
        content,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return row


async def select_messages(db: Tx, room: str, before: int | None, limit: int) -> list[Row]:
    """A room's messages newest first; `before` is the id the previous page ended on."""
    return await select_newest(db, "messages", {"room": room}, before, limit)


async def select_message(db: Tx, message_id: int) -> Row | None:
    return await db.fetchrow("SELECT * FROM messages WHERE id = ?", message_id)


async def upsert_receipt(
    db: Tx, room: str, message_id: int, user_id: str, read_at: datetime
) -> Row:
    """Record that `user_id` read `message_id`; reading it again moves read_at."""
    row = await db.fetchrow(
        "INSERT INTO read_receipts (room, message_id, user_id, read_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (message_id, user_id) DO UPDATE SET read_at = excluded.read_at"
        " RETURNING *",
        room,
        message_id,
        user_id,
        read_at,
    )
    assert row is not None
    return row


async def select_receipts(db: Tx, message_id: int) -> list[Row]:
    return await db.fetch(
        "SELECT * FROM read_receipts WHERE message_id = ? ORDER BY read_at, user_id", message_id
    )


async def select_rooms(db: Tx) -> list[Row]:
    """Every room with history: its message count and last message time, by name."""
    # The last message's time is read from its row, not as MAX(): an aggregate loses the
    # column's declared type, which is how SQLite knows to return a datetime.
    return await db.fetch(
        "SELECT r.name, r.created_at, COALESCE(s.messages, 0) AS messages,"
        " m.created_at AS last_message_at"
        " FROM rooms r"
        " LEFT JOIN (SELECT room, COUNT(*) AS messages, MAX(id) AS last_id"
        "  FROM messages GROUP BY room) s ON s.room = r.name"
        " LEFT JOIN messages m ON m.id = s.last_id"
        " ORDER BY r.name"
    )
