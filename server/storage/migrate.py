"""Schema migrations: numbered SQL files applied in order, recorded in schema_migrations.

`server/migrations/NNNN_name.sql` holds SQL both dialects accept; `NNNN_name.sqlite.sql` or
`NNNN_name.postgres.sql` replaces it for that dialect only. Each migration runs in its own
transaction together with its schema_migrations row, so a failure leaves the database as
it was before that file (PostgreSQL's DDL is transactional too).

Reading what is pending never writes: a database without schema_migrations has nothing
applied, so `migrate --dry-run` and a start with auto_migrate off change nothing.
Applying is safe with several processes at once (instances starting together on one
PostgreSQL): each migration's transaction first takes a lock, then checks again.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from server import codec
from server.storage import DIALECTS, Storage, StorageError, Tx

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "PendingMigrations",
    "applied_versions",
    "apply",
    "discover",
    "ensure_current",
    "pending",
]

# Package data (setup.cfg [options.package_data]): found the same way in a checkout, an
# editable install and a wheel.
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"

_FILE_RE = re.compile(
    r"^(?P<version>\d{4,})_(?P<name>[A-Za-z0-9_]+)(?:\.(?P<dialect>[a-z]+))?\.sql$"
)

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


# The few statements that differ per dialect.
_HAS_TABLE = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
    # Resolved through search_path, as the queries on it are.
    "postgres": "SELECT to_regclass(?) IS NOT NULL",
}
# SQLite's BEGIN IMMEDIATE already excludes other writers; PostgreSQL needs a lock that
# also covers CREATE TABLE (two concurrent ones collide) and is freed at COMMIT/ROLLBACK.
_MIGRATION_LOCK_KEY = 0x5343_4D47  # "SCMG"
_LOCK = {"sqlite": None, "postgres": "SELECT pg_advisory_xact_lock(?)"}


class MigrationError(StorageError):
    """A migration file is misnamed, or failed to apply (the database is unchanged)."""


class PendingMigrations(StorageError):
    """The schema is behind the code and auto_migrate is off."""

    def __init__(self, migrations: list[Migration]) -> None:
        self.migrations = migrations
        names = ", ".join(m.filename for m in migrations)
        super().__init__(
            f"database schema is not current: {len(migrations)} pending migration(s): "
            f"{names}; run `sensorcast migrate` or set database.auto_migrate to true"
        )


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name


def discover(directory: Path, dialect: str) -> list[Migration]:
    """The migrations for `dialect` in `directory`, oldest first.

    Every version must resolve for every dialect (a plain file, or an override for each),
    so a file written for one dialect only fails here on a developer's SQLite instead of
    on production PostgreSQL.
    """
    if dialect not in DIALECTS:
        raise MigrationError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    # version -> {dialect or "": path}
    files: dict[int, dict[str, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None or (match["dialect"] and match["dialect"] not in DIALECTS):
            raise MigrationError(
                f"{path.name}: a migration is named NNNN_name.sql or NNNN_name.<dialect>.sql "
                f"with dialect in {DIALECTS}"
            )
        version, name = int(match["version"]), match["name"]
        if names.setdefault(version, name) != name:
            raise MigrationError(
                f"migration {version:04d} has two names: {names[version]!r} and {name!r}"
            )
        files.setdefault(version, {})[match["dialect"] or ""] = path
    migrations = []
    for version in sorted(files):
        variants = files[version]
        missing = [d for d in DIALECTS if d not in variants and "" not in variants]
        if missing:
            raise MigrationError(
                f"migration {version:04d}_{names[version]} has no plain .sql file and no "
                f"file for {', '.join(missing)}"
            )
        path = variants.get(dialect) or variants[""]
        migrations.append(Migration(version, names[version], path))
    return migrations


async def applied_versions(storage: Storage) -> set[int]:
    """Versions recorded in schema_migrations; none when the table does not exist yet."""
    if not await storage.fetchval(_HAS_TABLE[storage.dialect], "schema_migrations"):
        return set()
    rows = await storage.fetch("SELECT version FROM schema_migrations")
    return {row["version"] for row in rows}


async def pending(storage: Storage, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations in `directory` not yet recorded in the database, oldest first.

    Read-only: creates nothing, not even schema_migrations.
    """
    available = await asyncio.to_thread(discover, directory, storage.dialect)
    done = await applied_versions(storage)
    return [m for m in available if m.version not in done]


async def apply(storage: Storage, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every pending migration in order; return those applied (none when current)."""
    todo = await pending(storage, directory)
    if not todo:
        return []
    async with storage.transaction() as tx:
        await _lock(tx, storage.dialect)
        await tx.execute(CREATE_TABLE)
    applied = []
    for migration in todo:
        sql = await asyncio.to_thread(migration.path.read_text, encoding="utf-8")
        try:
            async with storage.transaction() as tx:
                await _lock(tx, storage.dialect)
                if await _apply_one(tx, migration, sql):
                    applied.append(migration)
        except StorageError as exc:
            raise MigrationError(f"migration {migration.filename} failed: {exc}") from exc
    return applied


async def _lock(tx: Tx, dialect: str) -> None:
    statement = _LOCK[dialect]
    if statement is not None:
        await tx.execute(statement, _MIGRATION_LOCK_KEY)


async def _apply_one(tx: Tx, migration: Migration, sql: str) -> bool:
    # Checked again inside the transaction: another process (the CLI's `migrate` next to a
    # running server) may have applied it since pending() looked.
    if await tx.fetchval("SELECT 1 FROM schema_migrations WHERE version = ?", migration.version):
        return False
    await tx.executescript(sql)
    await tx.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        migration.version,
        migration.name,
        codec.isotime(),
    )
    return True


async def ensure_current(
    storage: Storage, directory: Path = MIGRATIONS_DIR, auto_migrate: bool = True
) -> list[Migration]:
    """At startup: apply pending migrations, or, with auto_migrate off, refuse to start.

    Then the storage expects the newest version (Storage.schema_version): its ping, the
    health check, fails while the database is behind it (dropped and recreated empty)."""
    if auto_migrate:
        applied = await apply(storage, directory)
    else:
        applied = []
        missing = await pending(storage, directory)
        if missing:
            raise PendingMigrations(missing)
    available = await asyncio.to_thread(discover, directory, storage.dialect)
    storage.schema_version = max((m.version for m in available), default=None)
    return applied
