"""Storage interface shared by every backend, and `open_storage(url)`.

SQL is written once with `?` placeholders; a backend whose driver wants another style
(asyncpg's `$n`) rewrites it. Rows are plain dicts so services can hand them to the codec
as they are. Backend modules are imported lazily: a SQLite deployment never imports
asyncpg, and a backend module may import this one without a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

__all__ = [
    "DIALECTS",
    "IntegrityError",
    "Row",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "Tx",
    "open_storage",
]

Row = dict[str, Any]
DIALECTS = ("sqlite", "postgres")


class StorageError(Exception):
    """A database failure; the driver's exception is kept as __cause__."""


class StorageUnavailable(StorageError):
    """The database cannot answer now (closed, locked past the timeout, I/O error)."""


class IntegrityError(StorageError):
    """A constraint refused the change (unique, foreign key, not null, check).

    Its own class so services can turn a duplicate into `Conflict` on every backend.
    """


class Tx(Protocol):
    """Queries that run inside one transaction (or, on Storage itself, each on its own)."""

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


class Storage(Tx, Protocol):
    """A process-wide database handle.

    Its own execute/fetch* run each statement in autocommit; executemany and executescript
    run in one transaction. For several statements that must land together use
    `async with storage.transaction() as tx:` and query through `tx`: it commits when the
    block ends and rolls back when it raises.
    """

    dialect: str

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    async def ping(self) -> None:
        """Raise StorageUnavailable when the database cannot answer (health check)."""
        ...

    async def close(self) -> None: ...


async def open_storage(
    url: str, *, base_dir: Path, pool_min: int = 1, pool_max: int = 10
) -> Storage:
    """Open the database named by `database.url`.

    `sqlite:///var/x.db` is relative to base_dir (the directory holding config.yaml),
    `sqlite:////srv/x.db` is absolute, `sqlite:///:memory:` is a private in-memory
    database. pool_min/pool_max size the PostgreSQL pool; SQLite uses one connection.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres") and sep:
        raise StorageError("PostgreSQL support arrives with the storage issue")
    if scheme != "sqlite" or not sep:
        raise StorageError(
            f"database.url {url!r}: unsupported scheme, expected sqlite:///path or postgresql://"
        )
    from server.storage.sqlite import open_sqlite

    return await open_sqlite(sqlite_path(url, base_dir))


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
