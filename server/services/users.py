"""Users: add, list, remove, and the credential check behind login. Pure of HTTP.

Passwords are scrypt-hashed (server.auth.hash_password) in a worker thread: a hash costs
~50 ms of CPU, which must not stall every socket on the event loop.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from server import codec
from server.auth import hash_password, verify_password
from server.config import ROLES
from server.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from server.storage import IntegrityError, Row, Storage
from server.storage import users as queries

USERNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD_LENGTH = 8
# Longer passwords are refused before hashing: scrypt's cost grows with the input.
MAX_PASSWORD_LENGTH = 1024
BAD_CREDENTIALS = "invalid username or password"


def user_object(row: Row) -> dict[str, Any]:
    """A user as the CLI and the login answer show it: never the hash."""
    return {
        "id": row["id"],
        "username": row["username"],
        "role": row["role"],
        "created_at": codec.isotime(row["created_at"]),
    }


def check_new_user(username: str, password: str, role: str) -> None:
    details: dict[str, list[str]] = {}
    if not USERNAME_RE.fullmatch(username):
        details["username"] = ["1 to 64 characters of A-Z a-z 0-9 _ . @ -"]
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        details["password"] = [
            f"between {MIN_PASSWORD_LENGTH} and {MAX_PASSWORD_LENGTH} characters"
        ]
    if role not in ROLES:
        details["role"] = [f"one of {', '.join(ROLES)}"]
    if details:
        raise ValidationFailed(details=details)


class UsersService:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._dummy_hash: str | None = None

    async def add(self, username: str, password: str, role: str) -> dict[str, Any]:
        """Create a user; Conflict when the name is taken, ValidationFailed on bad input."""
        check_new_user(username, password, role)
        hashed = await asyncio.to_thread(hash_password, password)
        try:
            row = await queries.insert_user(self.storage, username, hashed, role, codec.utcnow())
        except IntegrityError:
            raise Conflict(f"user {username!r} already exists") from None
        return user_object(row)

    async def list_users(self) -> list[dict[str, Any]]:
        return [user_object(row) for row in await queries.select_users(self.storage)]

    async def get(self, username: str) -> dict[str, Any]:
        """A user by name; NotFound when there is none."""
        row = await queries.select_user_by_name(self.storage, username)
        if row is None:
            raise NotFound(f"user {username!r} not found")
        return user_object(row)

    async def remove(self, username: str) -> dict[str, Any]:
        """Delete a user and return it; NotFound when there is none. Tokens already issued
        to it stay valid until they expire (JWTs are not looked up)."""
        row = await queries.delete_user_by_name(self.storage, username)
        if row is None:
            raise NotFound(f"user {username!r} not found")
        return user_object(row)

    async def authenticate(self, username: str, password: str) -> dict[str, Any]:
        """The user these credentials name, or Unauthorized with one message for both a
        wrong name and a wrong password. An unknown name is checked against a dummy hash,
        so the answer takes as long either way and does not tell which names exist."""
        if len(password) > MAX_PASSWORD_LENGTH:
            raise Unauthorized(BAD_CREDENTIALS)
        row = await queries.select_user_by_name(self.storage, username)
        stored = row["password_hash"] if row is not None else await self._dummy()
        ok = await asyncio.to_thread(verify_password, password, stored)
        if row is None or not ok:
            raise Unauthorized(BAD_CREDENTIALS)
        return user_object(row)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, "not a password")
        return self._dummy_hash
