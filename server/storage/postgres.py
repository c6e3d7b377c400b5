"""PostgreSQL backend: an asyncpg pool behind the same Storage/Tx interface as SQLite.

SQL arrives with `?` placeholders and is rewritten to asyncpg's `$n` once per statement
text (placeholders.py). asyncpg then prepares each distinct text once per connection and
keeps it in its statement cache.

Values: TIMESTAMPTZ comes back as aware UTC datetimes (asyncpg's own codec); json/jsonb get
an orjson codec on every connection the pool opens (`init`), so JSON columns take and
return dicts/lists; sessions run with timezone UTC so date_trunc() and friends bucket in
UTC as on SQLite.

A connection the server dropped (restart, pg_terminate_backend) is noticed by the pool
and replaced on the next acquire; a statement caught on it raises StorageUnavailable, so
the request gets 503 and the next one runs on a fresh connection. Nothing restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import asyncpg.exceptions as pgerr

from server import codec
from server.storage import (
    IntegrityError,
    Row,
    StorageError,
    StorageUnavailable,
    Tx,
    check_aware,
    check_identifier,
    redact_url,
)
from server.storage.placeholders import to_dollar

log = logging.getLogger(__name__)

PING_TIMEOUT = 5.0
PING_ATTEMPTS = 3
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0
# Returning a connection waits for a cancelled query to end and resets the session; past
# this the connection is dropped instead.
RELEASE_TIMEOUT = 5.0
# Prepared statements kept per connection (asyncpg's LRU), keyed by the rewritten text.
STATEMENT_CACHE_SIZE = 256
# Session settings unless the URL's query string sets them.
DEFAULT_SETTINGS = {"application_name": "sensorcast", "timezone": "UTC"}

# Everything the driver or the socket under it may raise.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    pgerr.InternalClientError,
    OSError,
    EOFError,
    TimeoutError,
)
# Server-side conditions that mean "cannot answer now", not "your SQL is wrong": lost or
# refused connection (class 08), shutdown/termination/cancel (57), out of resources (53).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    pgerr.PostgresConnectionError,
    pgerr.OperatorInterventionError,
    pgerr.InsufficientResourcesError,
    OSError,
    EOFError,
    TimeoutError,
)


def _storage_error(exc: BaseException, conn: asyncpg.Connection | None = None) -> StorageError:
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        return IntegrityError(str(exc))
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable(str(exc) or type(exc).__name__)
    if isinstance(exc, pgerr.InternalClientError):
        # "cannot switch to state ...": the server's goodbye (pg_terminate_backend) reached
        # an idle connection just before our statement did.
        return StorageUnavailable(f"connection lost: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and conn is not None and _is_closed(conn):
        # "connection is closed": the server went away between two statements.
        return StorageUnavailable(str(exc))
    return StorageError(str(exc))


def _is_closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        # The pool already took back the proxy of a connection that died.
        return True


def _checked(args: Sequence[Any]) -> Sequence[Any]:
    # asyncpg would read a naive datetime as the *client's* local time; refuse it as the
    # SQLite backend does.
    for value in args:
        if isinstance(value, datetime):
            check_aware(value)
    return args


def _jsonb_encode(value: Any) -> bytes:
    # jsonb's binary format: a version byte, then the JSON text.
    return b"\x01" + codec.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return codec.loads(memoryview(data)[1:])


class _Connection(asyncpg.Connection):
    """No session reset when a connection goes back to the pool.

    asyncpg's default sends RESET ALL, CLOSE ALL, UNLISTEN * and pg_advisory_unlock_all()
    on every release: one more round trip per storage call (about 1.7x the calls per
    second without it). Nothing here changes session state (no SET, LISTEN or
    session-level advisory lock; the migration lock is transaction-scoped), and an open
    transaction is still rolled back on release, so keep it that way.
    """

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Run by the pool on each new connection, including those replacing dropped ones."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        format="binary",
    )
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=codec.dumps, decoder=codec.loads, format="binary"
    )


class _Queries:
    """Statements on one connection, errors mapped."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        try:
            await self._conn.execute(to_dollar(sql), *_checked(args))
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [_checked(row) for row in rows]
        try:
            # asyncpg pipelines the batch and runs it in one transaction.
            await self._conn.executemany(to_dollar(sql), batch)
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc

    async def executescript(self, script: str) -> None:
        try:
            # Without arguments asyncpg uses the simple protocol: several statements in one.
            await self._conn.execute(script)
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        if not columns:
            raise StorageError("copy_rows needs at least one column")
        names = [check_identifier(c) for c in columns]
        records = [_checked(row) for row in rows]
        if not records:
            return 0
        try:
            status = await self._conn.copy_records_to_table(
                check_identifier(table), records=records, columns=names
            )
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc
        # The command tag: "COPY 10000".
        return int(status.rpartition(" ")[2])

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            records = await self._conn.fetch(to_dollar(sql), *_checked(args))
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc
        return [dict(record) for record in records]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            record = await self._conn.fetchrow(to_dollar(sql), *_checked(args))
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc
        return None if record is None else dict(record)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._conn.fetchval(to_dollar(sql), *_checked(args))
        except _DRIVER_ERRORS as exc:
            raise _storage_error(exc, self._conn) from exc


class PostgresTx(_Queries):
    """The handle a transaction yields: one pooled connection inside BEGIN...COMMIT.

    Refuses work once the block has ended or a statement failed (PostgreSQL would answer
    "current transaction is aborted" anyway). A lock lets several tasks share the handle
    (asyncio.gather over tx calls) as they can on SQLite, one statement at a time.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__(conn)
        self._open = True
        self.failed = False
        self._lock = asyncio.Lock()

    def _end(self) -> None:
        self._open = False

    @asynccontextmanager
    async def _using(self) -> AsyncIterator[None]:
        if not self._open:
            raise StorageError("transaction already finished; open a new one")
        if self.failed:
            raise StorageError("transaction failed: a statement in it raised; end the block")
        async with self._lock:
            try:
                yield
            except StorageError:
                self.failed = True
                raise

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


class PostgresStorage:
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.url = redact_url(url)
        self._pool = pool
        self._closed = False
        # Tasks inside transaction(): using the storage itself there would take a second
        # connection, and with the pool exhausted wait forever; SQLite refuses it too.
        self._in_transaction: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise StorageUnavailable("storage is closed")
        if asyncio.current_task() in self._in_transaction:
            raise StorageError(
                "storage used directly inside its own transaction: query through the "
                "Tx that transaction() yields (transactions do not nest)"
            )
        try:
            return await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            if self._closed:
                raise StorageUnavailable("storage is closed") from exc
            raise _storage_error(exc) from exc

    async def _release(self, conn: asyncpg.Connection) -> None:
        # A connection the server dropped is discarded here, not reused.
        await self._pool.release(conn, timeout=RELEASE_TIMEOUT)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Finish with a connection without holding up a task that is being cancelled.

        Cancelled mid-statement (a timeout, a client gone), asyncpg first cancels the query
        on the server, and a server that stopped answering would hold the cancelled task
        until that gives up; the task moves on, the connection comes back (or is dropped)
        later. close() waits for these.
        """
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("releasing a connection failed: %s", task.exception())

    async def _abandon(self, conn: asyncpg.Connection, pg_tx: Any) -> None:
        if pg_tx is not None:
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    await self._rollback(pg_tx, conn)
            except TimeoutError:
                pass
        await self._release(conn)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self._acquire()
        try:
            yield conn
        except asyncio.CancelledError:
            self._in_background(self._release(conn))
            raise
        except BaseException:
            await self._release(conn)
            raise
        await self._release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        conn = await self._acquire()
        task = asyncio.current_task()
        pg_tx = None
        try:
            started = conn.transaction()
            try:
                await started.start()
            except _DRIVER_ERRORS as exc:
                raise _storage_error(exc, conn) from exc
            pg_tx = started
            tx = PostgresTx(conn)
            if task is not None:
                self._in_transaction.add(task)
            try:
                yield tx
            finally:
                tx._end()
                self._in_transaction.discard(task)
            if tx.failed:
                # The caller caught a statement's error and carried on.
                raise StorageError("transaction rolled back: a statement in it failed")
            try:
                await pg_tx.commit()
            except _DRIVER_ERRORS as exc:
                raise _storage_error(exc, conn) from exc
            pg_tx = None
        except asyncio.CancelledError:
            self._in_background(self._abandon(conn, pg_tx))
            raise
        except BaseException:
            if pg_tx is not None:
                await self._rollback(pg_tx, conn)
            await self._release(conn)
            raise
        await self._release(conn)

    async def _rollback(self, pg_tx: Any, conn: asyncpg.Connection) -> None:
        if _is_closed(conn):
            return
        try:
            await pg_tx.rollback()
        except _DRIVER_ERRORS as exc:
            # The caller's exception is the one to see; the pool resets or drops the
            # connection on release. (After a failed COMMIT there is nothing to undo.)
            log.debug("rollback after failure: %s", exc)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._connection() as conn:
            await _Queries(conn).execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._connection() as conn:
            await _Queries(conn).executemany(sql, rows)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as tx:
            await tx.executescript(script)

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        # One COPY is atomic by itself: no transaction needed around it.
        async with self._connection() as conn:
            return await _Queries(conn).copy_rows(table, columns, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            return await _Queries(conn).fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._connection() as conn:
            return await _Queries(conn).fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._connection() as conn:
            return await _Queries(conn).fetchval(sql, *args)

    async def ping(self) -> None:
        """SELECT 1 within PING_TIMEOUT. A pooled connection the server dropped a moment
        ago can fail it while the database is fine: the next attempts take other (or new)
        connections, so the health check reports the database, not one stale socket."""
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                for attempt in range(PING_ATTEMPTS):
                    try:
                        await self.fetchval("SELECT 1")
                        return
                    except StorageUnavailable:
                        if self._closed or attempt == PING_ATTEMPTS - 1:
                            raise
        except TimeoutError as exc:
            raise StorageUnavailable(f"database did not answer within {PING_TIMEOUT}s") from exc
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise StorageUnavailable(str(exc)) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._background:
                await asyncio.wait(self._background, timeout=RELEASE_TIMEOUT)
            # Waits for connections in use to come back; past the timeout, cut them.
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except _DRIVER_ERRORS as exc:
            log.warning("PostgreSQL pool did not close cleanly (%s); terminating it", exc)
            self._pool.terminate()


def session_settings(url: str, readonly: bool) -> dict[str, str]:
    """Our session defaults, minus what the URL's query string sets itself.

    asyncpg turns unknown query parameters into session settings but lets an explicit
    server_settings argument win, so only keys the URL leaves out are passed.
    """
    try:
        given = parse_qs(urlsplit(url).query)
    except ValueError:
        given = {}
    settings = {k: v for k, v in DEFAULT_SETTINGS.items() if k not in given}
    if readonly:
        # migrate --dry-run: the server itself refuses any write.
        settings["default_transaction_read_only"] = "on"
    return settings


async def open_postgres(
    url: str, *, pool_min: int = 1, pool_max: int = 10, readonly: bool = False
) -> PostgresStorage:
    """Open the pool (pool_min connections at once); fail with one line when unreachable."""
    where = redact_url(url)
    try:
        pool = asyncpg.create_pool(
            url,
            min_size=pool_min,
            max_size=pool_max,
            init=_init_connection,
            statement_cache_size=STATEMENT_CACHE_SIZE,
            server_settings=session_settings(url, readonly),
            timeout=CONNECT_TIMEOUT,
            connection_class=_Connection,
        )
        await pool
    except ValueError as exc:
        # A malformed URL (asyncpg's ClientConfigurationError is a ValueError too).
        raise StorageError(f"database.url {where!r}: {exc}") from exc
    except _DRIVER_ERRORS as exc:
        error = _storage_error(exc)
        raise type(error)(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
    return PostgresStorage(pool, url)
