"""SQLite backend: one aiosqlite connection shared by the whole process.

aiosqlite runs every call on one worker thread, but an await between two statements lets
another coroutine queue its own statement in between. A connection has a single
transaction, so that statement would land inside someone else's BEGIN...COMMIT (and be
rolled back with it). An asyncio.Lock therefore serialises access: a transaction holds it
from BEGIN to COMMIT/ROLLBACK, a lone statement holds it for that statement.

This module holds the connection's lifecycle: the lock, transactions, ping, close and
open_sqlite. Statements live in sqlite_queries.py; value conversion (timestamps, JSON,
booleans) in sqlite_values.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from server.storage import (
    DEFAULT_ACQUIRE_TIMEOUT,
    NESTED_USE,
    TX_FAILED,
    Row,
    StorageError,
    StorageUnavailable,
    Tx,
    acquire_timed_out,
    answering_within,
    check_schema,
)
from server.storage.sqlite_queries import SQLiteQueries, SQLiteTx, split_script
from server.storage.sqlite_values import dict_row, format_timestamp, parse_timestamp

__all__ = [
    "SQLiteStorage",
    "SQLiteTx",
    "format_timestamp",
    "open_sqlite",
    "parse_timestamp",
    "split_script",
]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# INSERT ... RETURNING (3.35) is used by every store that creates rows.
MIN_SQLITE = (3, 35, 0)
PING_TIMEOUT = 5.0
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA foreign_keys = ON",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    # With WAL, NORMAL only risks the last commits on power loss, never corruption.
    "PRAGMA synchronous = NORMAL",
)
READONLY_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA query_only = ON",
)


class SQLiteStorage:
    dialect = "sqlite"

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: str,
        acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
    ) -> None:
        self.path = path
        self.acquire_timeout = acquire_timeout
        self.schema_version: int | None = None
        self._db = db
        self._raw = SQLiteQueries(db)
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._closed = False

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        # Waiting for a lock our own task holds would hang forever: fail loudly instead.
        if self._holder is not None and self._holder is asyncio.current_task():
            raise StorageError(NESTED_USE)
        # Bounded: behind a long statement, a caller gets 503 rather than waiting forever.
        try:
            async with asyncio.timeout(self.acquire_timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise acquire_timed_out(self.acquire_timeout, "the SQLite connection is busy") from None
        try:
            if self._closed:
                raise StorageUnavailable("storage is closed")
            self._holder = asyncio.current_task()
            try:
                yield
            finally:
                self._holder = None
        finally:
            self._lock.release()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._hold():
            # IMMEDIATE takes the write lock now (waiting up to busy_timeout for another
            # process); a deferred BEGIN that later writes can fail at once with BUSY.
            try:
                await self._raw.execute("BEGIN IMMEDIATE")
            except BaseException:
                # Cancelled while BEGIN was queued: it still runs, so end it before the
                # lock goes to someone whose statements would land inside it.
                await self._rollback()
                raise
            tx = SQLiteTx(self._db)
            try:
                yield tx
            except BaseException:
                tx._end()
                await self._rollback()
                raise
            tx._end()
            if tx.failed:
                # The caller caught a statement's error and carried on: what ran before it
                # must not be committed without what failed.
                await self._rollback()
                raise StorageError(TX_FAILED)
            try:
                await self._raw.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (BUSY, deferred constraint) leaves the transaction open.
                await self._rollback()
                raise

    async def _rollback(self) -> None:
        try:
            await self._raw.execute("ROLLBACK")
        except StorageError as exc:
            # Some errors already rolled back; the caller's exception is the one to see.
            log.debug("rollback after failure: %s", exc)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._hold():
            await self._raw.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as tx:
            await tx.executescript(script)

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        async with self.transaction() as tx:
            return await tx.copy_rows(table, columns, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._hold():
            return await self._raw.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._hold():
            return await self._raw.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._hold():
            return await self._raw.fetchval(sql, *args)

    async def ping(self) -> None:
        async with answering_within(PING_TIMEOUT):
            # Reads the schema page, so a vanished or broken file shows, unlike SELECT 1.
            await self.fetchval("SELECT count(*) FROM sqlite_master")
            await check_schema(self, self.schema_version)

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._db.close()


def _readonly_uri(path: str) -> str | None:
    file = Path(path)
    return file.absolute().as_uri() + "?mode=ro" if file.exists() else None


async def open_sqlite(
    path: str, *, readonly: bool = False, acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT
) -> SQLiteStorage:
    """Connect, creating the file and its directory when missing, and set the pragmas.

    readonly: open the file read-only, and when it does not exist create nothing: an
    empty in-memory database stands in for it (it has no tables, like the missing file).
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StorageError(
            f"SQLite {sqlite3.sqlite_version} is too old: Sensorcast needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer (INSERT ... RETURNING)"
        )
    target, uri = path, False
    if readonly and path != ":memory:":
        existing = await asyncio.to_thread(_readonly_uri, path)
        target, uri = (existing, True) if existing else (":memory:", False)
    elif path != ":memory:":
        try:
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create directory for {path}: {exc}") from exc
    db = aiosqlite.connect(
        target, isolation_level=None, detect_types=sqlite3.PARSE_DECLTYPES, uri=uri
    )
    try:
        await db
        # aiosqlite annotates row_factory as a class; sqlite3 takes any callable.
        db.row_factory = dict_row  # type: ignore[assignment]
        for pragma in READONLY_PRAGMAS if readonly else PRAGMAS:
            await (await db.execute(pragma)).close()
    except sqlite3.Error as exc:
        await db.close()
        raise StorageUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
    storage = SQLiteStorage(db, path, acquire_timeout)
    if readonly:
        return storage
    mode = await storage.fetchval("PRAGMA journal_mode")
    if path != ":memory:" and mode != "wal":
        # Some network filesystems refuse WAL; it still works, with readers blocking writers.
        log.warning("SQLite database %s is in %s journal mode, not WAL", path, mode)
    return storage
