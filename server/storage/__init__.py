"""Storage interface shared by every backend, and `open_storage(url)`.

SQL is written once with `?` placeholders; a backend whose driver wants another style
(asyncpg's `$n`) rewrites it. Rows are plain dicts so services can hand them to the codec
as they are. Backend modules are imported lazily: a SQLite deployment never imports
asyncpg, and a backend module may import this one without a cycle.

Values are the same Python types on every backend:
- timestamps (TIMESTAMPTZ columns) are timezone-aware `datetime`s, in and out, UTC on the
  way out; a naive datetime is refused (StorageError) rather than guessed at;
- JSON columns take and return dicts/lists (a `str` is not JSON-encoded on SQLite, so pass
  the object, not its text);
- BOOLEAN columns return bool.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from server.errors import Unavailable

__all__ = [
    "DIALECTS",
    "IntegrityError",
    "Row",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "Tx",
    "open_storage",
    "redact_url",
]

Row = dict[str, Any]
DIALECTS = ("sqlite", "postgres")
DEFAULT_ACQUIRE_TIMEOUT = 10.0


class StorageError(Exception):
    """A database failure; the driver's exception is kept as __cause__."""


class StorageUnavailable(StorageError, Unavailable):
    """The database cannot answer now (closed, locked past the timeout, I/O error, lost
    connection).

    Also an `errors.Unavailable`, so a request that meets it is answered 503 `unavailable`
    in the one error shape by the same code that shapes every ApiError, with no service
    having to translate it. Clients see a fixed message; str() keeps the driver's words
    for logs and the health check.
    """

    def __init__(self, detail: str) -> None:
        super().__init__("database unavailable")
        self.args = (detail,)


class IntegrityError(StorageError):
    """A constraint refused the change (unique, foreign key, not null, check).

    Its own class so services can turn a duplicate into `Conflict` on every backend.
    """


class Tx(Protocol):
    """Queries that run inside one transaction (or, on Storage itself, each on its own).

    A statement that fails inside a transaction ends it: PostgreSQL refuses anything but a
    rollback after an error, so every backend refuses further statements on that Tx and
    the block rolls back even if the error was caught inside it.
    """

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def executescript(self, script: str) -> None:
        """Run several `;`-separated statements without parameters (migrations)."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """First column of the first row, None when there is no row."""
        ...

    async def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        """Insert many rows in one round trip (PostgreSQL COPY); return how many.

        All or nothing. `table` and `columns` are plain identifiers, never user input.
        """
        ...


class Storage(Tx, Protocol):
    """A process-wide database handle.

    Its own execute/fetch* run each statement in autocommit; executemany, executescript
    and copy_rows each run in one transaction. For several statements that must land together use
    `async with storage.transaction() as tx:` and query through `tx`: it commits when the
    block ends and rolls back when it raises.
    """

    dialect: str
    # The newest migration the code needs (set by migrate.ensure_current); when set,
    # ping() also checks the database has it, so a database recreated empty is not
    # reported healthy.
    schema_version: int | None

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    async def ping(self) -> None:
        """Raise StorageUnavailable when the database cannot answer, or (schema_version
        set) its schema is behind the code (health check)."""
        ...

    async def close(self) -> None: ...


async def open_storage(
    url: str,
    *,
    base_dir: Path,
    pool_min: int = 1,
    pool_max: int = 10,
    readonly: bool = False,
    acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
) -> Storage:
    """Open the database named by `database.url`.

    `sqlite:///var/x.db` is relative to base_dir (the directory holding config.yaml),
    `sqlite:////srv/x.db` is absolute, `sqlite:///:memory:` is a private in-memory
    database. `postgresql://user:pass@host:port/db` (or `postgres://`) opens an asyncpg
    pool of pool_min..pool_max connections; query parameters other than libpq's own
    (`?search_path=app&application_name=x`) become session settings.

    readonly (`migrate --dry-run`): nothing is created or written. A SQLite file that does
    not exist yet is not created: an empty database stands in for it.

    acquire_timeout: seconds a call waits for a pooled connection (SQLite: for the one
    connection's lock) before StorageUnavailable (503).
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres") and sep:
        from server.storage.postgres import open_postgres

        return await open_postgres(
            url,
            pool_min=pool_min,
            pool_max=pool_max,
            readonly=readonly,
            acquire_timeout=acquire_timeout,
        )
    if scheme != "sqlite" or not sep:
        raise StorageError(
            f"database.url {redact_url(url)!r}: unsupported scheme, "
            "expected sqlite:///path or postgresql://"
        )
    from server.storage.sqlite import open_sqlite

    return await open_sqlite(
        sqlite_path(url, base_dir), readonly=readonly, acquire_timeout=acquire_timeout
    )


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_identifier(name: str) -> str:
    """`name` when it is a plain SQL identifier (table, column); StorageError otherwise.

    For the few places that put a name into SQL text (copy_rows), so a name can never
    carry SQL with it.
    """
    if not _IDENTIFIER.fullmatch(name):
        raise StorageError(f"{name!r} is not a plain SQL identifier")
    return name


def check_aware(moment: datetime) -> datetime:
    """`moment` if it is timezone-aware; a naive datetime is a bug (whose local time?)."""
    if moment.utcoffset() is None:
        raise StorageError(
            f"naive datetime {moment.isoformat()} passed to storage: "
            "use a timezone-aware one, e.g. datetime.now(UTC)"
        )
    return moment


def copy_columns(columns: Sequence[str]) -> list[str]:
    """copy_rows' column names, each checked by check_identifier; at least one."""
    if not columns:
        raise StorageError("copy_rows needs at least one column")
    return [check_identifier(c) for c in columns]


# Both backends would deadlock (SQLite: its own lock; PostgreSQL: a second connection from
# an exhausted pool), so both refuse with the same words.
NESTED_USE = (
    "storage used directly inside its own transaction: query through the "
    "Tx that transaction() yields (transactions do not nest)"
)
TX_FAILED = "transaction rolled back: a statement in it failed"


class TransactionGuard:
    """What every backend's Tx handle refuses: work after its block ended, and work after
    one of its statements failed (PostgreSQL answers "current transaction is aborted"
    anyway; SQLite is made to match). The backend's transaction() reads `failed` to roll
    back instead of committing when the caller caught the error and carried on.
    """

    def __init__(self) -> None:
        self._open = True
        self.failed = False

    def _end(self) -> None:
        self._open = False

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        if not self._open:
            raise StorageError("transaction already finished; open a new one")
        if self.failed:
            raise StorageError("transaction failed: a statement in it raised; end the block")
        try:
            yield
        except StorageError:
            self.failed = True
            raise


@asynccontextmanager
async def answering_within(seconds: float) -> AsyncIterator[None]:
    """For ping(): any failure of the block, or no answer within `seconds`, is
    StorageUnavailable, so the health check reports the database as down."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise StorageUnavailable(f"database did not answer within {seconds}s") from exc
    except StorageUnavailable:
        raise
    except StorageError as exc:
        raise StorageUnavailable(str(exc)) from exc


def acquire_timed_out(seconds: float, what: str) -> StorageUnavailable:
    return StorageUnavailable(f"no free database connection within {seconds:g}s ({what})")


async def check_schema(db: Tx, expected: int | None) -> None:
    """For ping(): StorageUnavailable when the schema is missing or behind `expected`."""
    if expected is None:
        return
    try:
        version = await db.fetchval("SELECT max(version) FROM schema_migrations")
    except StorageError as exc:
        raise StorageUnavailable(
            f"database schema missing ({exc}): run `sensorcast migrate`"
        ) from exc
    if version is None or version < expected:
        raise StorageUnavailable(
            f"database schema at version {version or 0}, this server needs {expected}: "
            "run `sensorcast migrate`"
        )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def sqlite_path(url: str, base_dir: Path) -> str:
    """The file a `sqlite://` URL names (or ":memory:"), relative paths under base_dir."""
    rest = url.partition("://")[2]
    # "sqlite://" + "/" + path: the third slash ends the (always empty) host part.
    if not rest.startswith("/"):
        raise StorageError(
            f"database.url {url!r}: use three slashes for a relative path "
            "(sqlite:///var/x.db) or four for an absolute one (sqlite:////srv/x.db)"
        )
    if "?" in rest:
        raise StorageError(f"database.url {url!r}: query parameters are not supported")
    raw = unquote(rest[1:])
    if not raw:
        raise StorageError(f"database.url {url!r}: no database file given")
    if raw == ":memory:":
        return raw
    path = Path(raw).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


async def select_newest(
    db: Tx,
    table: str,
    filters: dict[str, Any],
    before: int | None,
    limit: int,
    conditions: Sequence[tuple[str, Any]] = (),
) -> list[Row]:
    """A page of `table` newest first (highest id): rows matching every non-None filter
    and every (SQL with one `?`, value) condition, with ids below `before` (the id the
    previous page ended on)."""
    where = [(f"{check_identifier(column)} = ?", value) for column, value in filters.items()]
    where = [(clause, value) for clause, value in where if value is not None]
    where.extend(conditions)
    if before is not None:
        where.append(("id < ?", before))
    sql = f"SELECT * FROM {check_identifier(table)}"
    if where:
        sql += " WHERE " + " AND ".join(clause for clause, _ in where)
    args = [value for _, value in where]
    return await db.fetch(sql + " ORDER BY id DESC LIMIT ?", *args, limit)
