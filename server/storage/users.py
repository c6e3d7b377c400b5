"""Queries for users (accounts for login and `sensorcast user`): SQL once with `?`."""

from __future__ import annotations

from datetime import datetime

from server.storage import Row, Tx


async def insert_user(db: Tx, username: str, password_hash: str, role: str, now: datetime) -> Row:
    """Store one user; IntegrityError when the username is taken."""
    row = await db.fetchrow(
        "INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)"
        " RETURNING *",
        username,
        password_hash,
        role,
        now,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return row


async def select_user_by_name(db: Tx, username: str) -> Row | None:
    return await db.fetchrow("SELECT * FROM users WHERE username = ?", username)


async def select_users(db: Tx) -> list[Row]:
    """Every user, oldest first (an operator's list: a handful, not a page)."""
    return await db.fetch("SELECT * FROM users ORDER BY id")


async def delete_user_by_name(db: Tx, username: str) -> Row | None:
    """Delete and return the user; None when there was none."""
    return await db.fetchrow("DELETE FROM users WHERE username = ? RETURNING *", username)
