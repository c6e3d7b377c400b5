"""asyncpg's exceptions -> StorageError, StorageUnavailable or IntegrityError.

The split that matters is "cannot answer now" (503, retry on a fresh connection) versus
"your SQL or data is wrong": a connection the server dropped shows up in several guises,
from a Postgres error class to a bare OSError or a driver state error.
"""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pgerr

from server.storage import IntegrityError, StorageError, StorageUnavailable

__all__ = ["DRIVER_ERRORS", "is_closed", "storage_error"]

# Everything the driver or the socket under it may raise.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    pgerr.InternalClientError,
    OSError,
    EOFError,
    TimeoutError,
)
# Server-side conditions that mean "cannot answer now", not "your SQL is wrong": lost or
# refused connection (class 08), shutdown/termination/cancel (57), out of resources (53),
# the database dropped under a running server (3D000, on reconnecting).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    pgerr.PostgresConnectionError,
    pgerr.OperatorInterventionError,
    pgerr.InsufficientResourcesError,
    pgerr.InvalidCatalogNameError,
    OSError,
    EOFError,
    TimeoutError,
)


# A table or schema the migrations made is missing: once they ran (schema_known), that is
# a database recreated empty under a running server, not a typo: 503 until migrated.
_SCHEMA_GONE = (pgerr.UndefinedTableError, pgerr.InvalidSchemaNameError)


def storage_error(
    exc: BaseException, conn: asyncpg.Connection | None = None, schema_known: bool = False
) -> StorageError:
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        return IntegrityError(str(exc))
    if schema_known and isinstance(exc, _SCHEMA_GONE):
        return StorageUnavailable(f"database schema missing: {exc}; run `sensorcast migrate`")
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable(str(exc) or type(exc).__name__)
    if isinstance(exc, pgerr.InternalClientError):
        # "cannot switch to state ...": the server's goodbye (pg_terminate_backend) reached
        # an idle connection just before our statement did.
        return StorageUnavailable(f"connection lost: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and conn is not None and is_closed(conn):
        # "connection is closed": the server went away between two statements.
        return StorageUnavailable(str(exc))
    return StorageError(str(exc))


def is_closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        # The pool already took back the proxy of a connection that died.
        return True
