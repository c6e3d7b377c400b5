"""SQLite backend: one aiosqlite connection shared by the whole process.

aiosqlite runs every call on one worker thread, but an await between two statements lets
another coroutine queue its own statement in between. A connection has a single
transaction, so that statement would land inside someone else's BEGIN...COMMIT (and be
rolled back with it). An asyncio.Lock therefore serialises access: a transaction holds it
from BEGIN to COMMIT/ROLLBACK, a lone statement holds it for that statement.

Values: SQLite has no timestamp, JSON or boolean type, so the SQLite migrations declare
such columns as TIMESTAMPTZ, JSON and BOOLEAN, and this module converts at its edge,
never in queries:
- in: every parameter is adapted here (a datetime becomes fixed-width ISO-8601 UTC text,
  `2024-05-01T12:00:00.000000Z`, so text order is time order and `ts >= ?` compares
  correctly; a dict/list becomes JSON text);
- out: the connection is opened with detect_types=PARSE_DECLTYPES and converters for
  those three declared types, so a selected column comes back as datetime/dict/bool.
  Only a column read straight from a table has a declared type: an expression such as
  `max(ts)` comes back as the stored text (see `parse_timestamp`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiosqlite

from server import codec
from server.storage import (
    IntegrityError,
    Row,
    StorageError,
    StorageUnavailable,
    Tx,
    check_aware,
    check_identifier,
)

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


def format_timestamp(moment: datetime) -> str:
    """Fixed-width UTC text, microseconds always present: text order is time order."""
    moment = check_aware(moment)
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str | bytes) -> datetime:
    """The aware UTC datetime of a stored timestamp (for expressions like max(ts))."""
    if isinstance(text, bytes):
        text = text.decode()
    moment = datetime.fromisoformat(text)
    # Rows written by hand (sqlite3 shell, CURRENT_TIMESTAMP) may lack the Z: they are UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_bool(raw: bytes) -> bool:
    return raw not in (b"0", b"0.0")


# sqlite3 keeps converters in one process-wide table: there is no per-connection one. The
# names are the declared types of our SQLite migrations, and only connections opened with
# detect_types (ours; nothing else in this process uses sqlite3) consult the table.
sqlite3.register_converter("TIMESTAMPTZ", parse_timestamp)
sqlite3.register_converter("JSON", codec.loads)
sqlite3.register_converter("BOOLEAN", _parse_bool)


def _adapt(value: Any) -> Any:
    # Per call rather than sqlite3.register_adapter: that table is process-wide too, and
    # its datetime entry is Python's own (deprecated) one.
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, dict | list):
        return codec.dumps(value).decode()
    return value


def _params(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple([_adapt(value) for value in args])


def _storage_error(exc: Exception) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(str(exc))
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
        return StorageUnavailable(str(exc))
    return StorageError(str(exc))


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


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


class _Queries:
    """Statements on the raw connection; the caller holds the lock."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> None:
        params = _params(args)
        try:
            await (await self._db.execute(sql, params)).close()
        except (sqlite3.Error, OverflowError) as exc:
            raise _storage_error(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # Materialised here so a generator is not consumed on the worker thread.
        batch = [_params(row) for row in rows]
        try:
            await (await self._db.executemany(sql, batch)).close()
        except (sqlite3.Error, OverflowError) as exc:
            raise _storage_error(exc) from exc

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        if not columns:
            raise StorageError("copy_rows needs at least one column")
        names = ", ".join(f'"{check_identifier(c)}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        sql = f'INSERT INTO "{check_identifier(table)}" ({names}) VALUES ({marks})'
        batch = [_params(row) for row in rows]
        try:
            await (await self._db.executemany(sql, batch)).close()
        except (sqlite3.Error, OverflowError) as exc:
            raise _storage_error(exc) from exc
        return len(batch)

    async def executescript(self, script: str) -> None:
        for statement in split_script(script):
            await self.execute(statement)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        params = _params(args)
        try:
            # Rows are dicts (row_factory); aiosqlite's annotation says sqlite3.Row.
            return cast(list[Row], list(await self._db.execute_fetchall(sql, params)))
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            # ValueError: a converter met text it cannot parse.
            raise _storage_error(exc) from exc

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        params = _params(args)
        try:
            async with self._db.execute(sql, params) as cursor:
                return cast(Row | None, await cursor.fetchone())
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise _storage_error(exc) from exc

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()), None)


class SQLiteTx(_Queries):
    """The handle a transaction yields; it refuses work once the transaction has ended
    or once one of its statements failed (as PostgreSQL does)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        super().__init__(db)
        self._open = True
        self.failed = False

    def _end(self) -> None:
        self._open = False

    @contextmanager
    def _using(self) -> Iterator[None]:
        if not self._open:
            raise StorageError("transaction already finished; open a new one")
        if self.failed:
            raise StorageError("transaction failed: a statement in it raised; end the block")
        try:
            yield
        except StorageError:
            self.failed = True
            raise

    async def execute(self, sql: str, *args: Any) -> None:
        with self._using():
            await super().execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._using():
            await super().executemany(sql, rows)

    async def executescript(self, script: str) -> None:
        with self._using():
            await super().executescript(script)

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        with self._using():
            return await super().copy_rows(table, columns, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with self._using():
            return await super().fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        with self._using():
            return await super().fetchrow(sql, *args)


class SQLiteStorage:
    dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.path = path
        self._db = db
        self._raw = _Queries(db)
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._closed = False

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        # Waiting for a lock our own task holds would hang forever: fail loudly instead.
        if self._holder is not None and self._holder is asyncio.current_task():
            raise StorageError(
                "storage used directly inside its own transaction: query through the "
                "Tx that transaction() yields (transactions do not nest)"
            )
        async with self._lock:
            if self._closed:
                raise StorageUnavailable("storage is closed")
            self._holder = asyncio.current_task()
            try:
                yield
            finally:
                self._holder = None

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
                raise StorageError("transaction rolled back: a statement in it failed")
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
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                # Reads the schema page, so a vanished or broken file shows, unlike SELECT 1.
                await self.fetchval("SELECT count(*) FROM sqlite_master")
        except TimeoutError as exc:
            raise StorageUnavailable(f"database did not answer within {PING_TIMEOUT}s") from exc
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise StorageUnavailable(str(exc)) from exc

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._db.close()


def _readonly_uri(path: str) -> str | None:
    file = Path(path)
    return file.absolute().as_uri() + "?mode=ro" if file.exists() else None


async def open_sqlite(path: str, *, readonly: bool = False) -> SQLiteStorage:
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
        db.row_factory = _dict_row  # type: ignore[assignment]
        for pragma in READONLY_PRAGMAS if readonly else PRAGMAS:
            await (await db.execute(pragma)).close()
    except sqlite3.Error as exc:
        await db.close()
        raise StorageUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
    storage = SQLiteStorage(db, path)
    if readonly:
        return storage
    mode = await storage.fetchval("PRAGMA journal_mode")
    if path != ":memory:" and mode != "wal":
        # Some network filesystems refuse WAL; it still works, with readers blocking writers.
        log.warning("SQLite database %s is in %s journal mode, not WAL", path, mode)
    return storage
