"""Statements on one pooled PostgreSQL connection: alone, or inside a transaction (PostgresTx).

SQL arrives with `?` placeholders and is rewritten to asyncpg's `$n` once per statement
text (placeholders.py). asyncpg then prepares each distinct text once per connection and
keeps it in its statement cache. TIMESTAMPTZ comes back as aware UTC datetimes (asyncpg's
own codec).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from server.storage import Row, TransactionGuard, check_aware, check_identifier, copy_columns
from server.storage.placeholders import to_dollar
from server.storage.postgres_errors import DRIVER_ERRORS, storage_error

__all__ = ["PostgresQueries", "PostgresTx"]


def _checked(args: Sequence[Any]) -> Sequence[Any]:
    # asyncpg would read a naive datetime as the *client's* local time; refuse it as the
    # SQLite backend does. Runs per row of a copy: the common aware case costs one test.
    for value in args:
        if isinstance(value, datetime) and value.tzinfo is not UTC:
            check_aware(value)
    return args


class PostgresQueries:
    """Statements on one connection, errors mapped."""

    def __init__(self, conn: asyncpg.Connection, schema_known: bool = False) -> None:
        self._conn = conn
        # The migrations ran (Storage.schema_version is set): see storage_error.
        self._schema_known = schema_known

    async def execute(self, sql: str, *args: Any) -> None:
        try:
            await self._conn.execute(to_dollar(sql), *_checked(args))
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [_checked(row) for row in rows]
        try:
            # asyncpg pipelines the batch and runs it in one transaction.
            await self._conn.executemany(to_dollar(sql), batch)
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc

    async def executescript(self, script: str) -> None:
        try:
            # Without arguments asyncpg uses the simple protocol: several statements in one.
            await self._conn.execute(script)
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        names = copy_columns(columns)
        records = [_checked(row) for row in rows]
        if not records:
            return 0
        try:
            status = await self._conn.copy_records_to_table(
                check_identifier(table), records=records, columns=names
            )
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc
        # The command tag: "COPY 10000".
        return int(status.rpartition(" ")[2])

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            records = await self._conn.fetch(to_dollar(sql), *_checked(args))
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc
        return [dict(record) for record in records]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            record = await self._conn.fetchrow(to_dollar(sql), *_checked(args))
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc
        return None if record is None else dict(record)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._conn.fetchval(to_dollar(sql), *_checked(args))
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, self._conn, self._schema_known) from exc


class PostgresTx(TransactionGuard, PostgresQueries):
    """The handle a transaction yields: one pooled connection inside BEGIN...COMMIT.

    Refuses work once the block has ended or a statement failed (TransactionGuard). A lock
    lets several tasks share the handle (asyncio.gather over tx calls) as they can on
    SQLite, one statement at a time.
    """

    def __init__(self, conn: asyncpg.Connection, schema_known: bool = False) -> None:
        PostgresQueries.__init__(self, conn, schema_known)
        TransactionGuard.__init__(self)
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def _using(self) -> AsyncIterator[None]:
        with self._guarded():
            async with self._lock:
                yield

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._using():
            await super().execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._using():
            await super().executemany(sql, rows)

    async def executescript(self, script: str) -> None:
        async with self._using():
            await super().executescript(script)

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        async with self._using():
            return await super().copy_rows(table, columns, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._using():
            return await super().fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._using():
            return await super().fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._using():
            return await super().fetchval(sql, *args)
