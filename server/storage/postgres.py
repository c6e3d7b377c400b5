"""PostgreSQL backend: an asyncpg pool behind the same Storage/Tx interface as SQLite.

This module holds the pool's lifecycle: acquire/release, transactions, ping, close and
open_postgres. Statements live in postgres_queries.py, connection setup (codecs, session
settings) in postgres_session.py, the driver's exceptions in postgres_errors.py.

A connection the server dropped (restart, pg_terminate_backend) is noticed by the pool
and replaced on the next acquire; a statement caught on it raises StorageUnavailable, so
the request gets 503 and the next one runs on a fresh connection. Nothing restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

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
    redact_url,
)
from server.storage.postgres_errors import DRIVER_ERRORS, is_closed, storage_error
from server.storage.postgres_log import POOL_LOGGER, OutageLog
from server.storage.postgres_queries import PostgresQueries, PostgresTx
from server.storage.postgres_session import (
    DEFAULT_SETTINGS,
    NoResetConnection,
    init_connection,
    session_settings,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "PostgresStorage",
    "PostgresTx",
    "open_postgres",
    "session_settings",
]

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


class PostgresStorage:
    dialect = "postgres"

    def __init__(
        self, pool: asyncpg.Pool, url: str, acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT
    ) -> None:
        self.url = redact_url(url)
        self.acquire_timeout = acquire_timeout
        self.schema_version: int | None = None
        self._pool = pool
        self._outage = OutageLog(log, self.url)
        logging.getLogger(POOL_LOGGER).addFilter(self._outage)
        self._closed = False
        # Tasks inside transaction(): using the storage itself there would take a second
        # connection, and with the pool exhausted wait forever; SQLite refuses it too.
        self._in_transaction: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise StorageUnavailable("storage is closed")
        if asyncio.current_task() in self._in_transaction:
            raise StorageError(NESTED_USE)
        try:
            conn = await self._pool.acquire(timeout=self.acquire_timeout)
        except TimeoutError:
            if self._closed:
                raise StorageUnavailable("storage is closed") from None
            # Every connection is busy (or connecting to a server that does not answer).
            raise acquire_timed_out(
                self.acquire_timeout, f"pool of {self._pool.get_max_size()} in use"
            ) from None
        except DRIVER_ERRORS as exc:
            if self._closed:
                raise StorageUnavailable("storage is closed") from exc
            raise storage_error(exc) from exc
        if self._outage.active:
            self._outage.recovered()
        return conn

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
            except DRIVER_ERRORS as exc:
                raise storage_error(exc, conn) from exc
            pg_tx = started
            tx = PostgresTx(conn, self.schema_version is not None)
            if task is not None:
                self._in_transaction.add(task)
            try:
                yield tx
            finally:
                tx._end()
                self._in_transaction.discard(task)
            if tx.failed:
                # The caller caught a statement's error and carried on.
                raise StorageError(TX_FAILED)
            try:
                await pg_tx.commit()
            except DRIVER_ERRORS as exc:
                raise storage_error(exc, conn) from exc
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
        if is_closed(conn):
            return
        try:
            await pg_tx.rollback()
        except DRIVER_ERRORS as exc:
            # The caller's exception is the one to see; the pool resets or drops the
            # connection on release. (After a failed COMMIT there is nothing to undo.)
            log.debug("rollback after failure: %s", exc)

    def _queries(self, conn: asyncpg.Connection) -> PostgresQueries:
        return PostgresQueries(conn, self.schema_version is not None)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._connection() as conn:
            await self._queries(conn).execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._connection() as conn:
            await self._queries(conn).executemany(sql, rows)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as tx:
            await tx.executescript(script)

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        # One COPY is atomic by itself: no transaction needed around it.
        async with self._connection() as conn:
            return await self._queries(conn).copy_rows(table, columns, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            return await self._queries(conn).fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._connection() as conn:
            return await self._queries(conn).fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._connection() as conn:
            return await self._queries(conn).fetchval(sql, *args)

    async def ping(self) -> None:
        """SELECT 1 within PING_TIMEOUT. A pooled connection the server dropped a moment
        ago can fail it while the database is fine: the next attempts take other (or new)
        connections, so the health check reports the database, not one stale socket."""
        async with answering_within(PING_TIMEOUT):
            for attempt in range(PING_ATTEMPTS):
                try:
                    await self.fetchval("SELECT 1")
                    await check_schema(self, self.schema_version)
                    return
                except StorageUnavailable:
                    if self._closed or attempt == PING_ATTEMPTS - 1:
                        raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        logging.getLogger(POOL_LOGGER).removeFilter(self._outage)
        try:
            if self._background:
                await asyncio.wait(self._background, timeout=RELEASE_TIMEOUT)
            # Waits for connections in use to come back; past the timeout, cut them.
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except DRIVER_ERRORS as exc:
            log.warning("PostgreSQL pool did not close cleanly (%s); terminating it", exc)
            self._pool.terminate()


async def open_postgres(
    url: str,
    *,
    pool_min: int = 1,
    pool_max: int = 10,
    readonly: bool = False,
    acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
) -> PostgresStorage:
    """Open the pool (pool_min connections at once); fail with one line when unreachable."""
    where = redact_url(url)
    try:
        pool = asyncpg.create_pool(
            url,
            min_size=pool_min,
            max_size=pool_max,
            init=init_connection,
            statement_cache_size=STATEMENT_CACHE_SIZE,
            server_settings=session_settings(url, readonly),
            timeout=CONNECT_TIMEOUT,
            connection_class=NoResetConnection,
        )
        await pool
    except ValueError as exc:
        # A malformed URL (asyncpg's ClientConfigurationError is a ValueError too).
        raise StorageError(f"database.url {where!r}: {exc}") from exc
    except DRIVER_ERRORS as exc:
        error = storage_error(exc)
        raise type(error)(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
    return PostgresStorage(pool, url, acquire_timeout)
