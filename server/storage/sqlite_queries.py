"""Statements on the one aiosqlite connection: alone, or inside a transaction (SQLiteTx).

The caller (SQLiteStorage) holds the connection's lock around every call here. sqlite3's
exceptions are mapped to StorageError, StorageUnavailable or IntegrityError.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, cast

import aiosqlite

from server.storage import (
    IntegrityError,
    Row,
    StorageError,
    StorageUnavailable,
    TransactionGuard,
    check_identifier,
    copy_columns,
)
from server.storage.sqlite_values import sql_params, sql_rows

__all__ = ["SQLiteQueries", "SQLiteTx", "split_script"]

# Primary result codes that mean "the database cannot answer", not "your SQL is wrong".
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_READONLY,
    }
)


def _storage_error(exc: Exception) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(str(exc))
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
        return StorageUnavailable(str(exc))
    return StorageError(str(exc))


def split_script(script: str) -> list[str]:
    """Split SQL text into statements, cutting only where SQLite itself sees an end.

    sqlite3.complete_statement knows about string literals, comments and trigger bodies,
    so a `;` inside any of them does not cut. executescript() is no option: it COMMITs the
    open transaction first, which would break a migration's all-or-nothing.
    """
    statements: list[str] = []
    start = 0
    pos = script.find(";")
    while pos != -1:
        candidate = script[start : pos + 1]
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            start = pos + 1
        pos = script.find(";", pos + 1)
    # A last statement may lack its `;`. Kept as is: comments alone run as a no-op, and
    # an unfinished statement fails with SQLite's own "incomplete input".
    tail = script[start:].strip()
    if tail:
        statements.append(tail)
    return statements


class SQLiteQueries:
    """Statements on the raw connection; the caller holds the lock."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> None:
        params = sql_params(args)
        try:
            await (await self._db.execute(sql, params)).close()
        except (sqlite3.Error, OverflowError) as exc:
            raise _storage_error(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # Materialised here so a generator is not consumed on the worker thread.
        batch = sql_rows(rows)
        try:
            await (await self._db.executemany(sql, batch)).close()
        except (sqlite3.Error, OverflowError) as exc:
            raise _storage_error(exc) from exc

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        names = ", ".join(f'"{c}"' for c in copy_columns(columns))
        marks = ", ".join("?" * len(columns))
        sql = f'INSERT INTO "{check_identifier(table)}" ({names}) VALUES ({marks})'
        batch = sql_rows(rows)
        try:
            await (await self._db.executemany(sql, batch)).close()
        except (sqlite3.Error, OverflowError) as exc:
            raise _storage_error(exc) from exc
        return len(batch)

    async def executescript(self, script: str) -> None:
        for statement in split_script(script):
            await self.execute(statement)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        params = sql_params(args)
        try:
            # Rows are dicts (row_factory); aiosqlite's annotation says sqlite3.Row.
            return cast(list[Row], list(await self._db.execute_fetchall(sql, params)))
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            # ValueError: a converter met text it cannot parse.
            raise _storage_error(exc) from exc

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        params = sql_params(args)
        try:
            async with self._db.execute(sql, params) as cursor:
                return cast(Row | None, await cursor.fetchone())
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise _storage_error(exc) from exc

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()), None)


class SQLiteTx(TransactionGuard, SQLiteQueries):
    """The handle a transaction yields; it refuses work once the transaction has ended
    or once one of its statements failed, as PostgreSQL does (TransactionGuard)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        SQLiteQueries.__init__(self, db)
        TransactionGuard.__init__(self)

    async def execute(self, sql: str, *args: Any) -> None:
        with self._guarded():
            await super().execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._guarded():
            await super().executemany(sql, rows)

    async def executescript(self, script: str) -> None:
        with self._guarded():
            await super().executescript(script)

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        with self._guarded():
            return await super().copy_rows(table, columns, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with self._guarded():
            return await super().fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        with self._guarded():
            return await super().fetchrow(sql, *args)
