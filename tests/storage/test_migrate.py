import re
from pathlib import Path

import pytest

from server.storage import Storage, open_storage
from server.storage.migrate import (
    MIGRATIONS_DIR,
    Migration,
    MigrationError,
    PendingMigrations,
    apply,
    discover,
    ensure_current,
    pending,
)


@pytest.fixture
async def storage(tmp_path: Path):
    db = await open_storage("sqlite:///app.db", base_dir=tmp_path)
    yield db
    await db.close()


@pytest.fixture
def mig_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    return directory


def write(directory: Path, files: dict[str, str]) -> None:
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")


async def tables(storage: Storage) -> list[str]:
    rows = await storage.fetch(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [row["name"] for row in rows]


async def recorded(storage: Storage) -> list[tuple[int, str]]:
    rows = await storage.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(row["version"], row["name"]) for row in rows]


TWO = {
    "0001_locations.sql": "CREATE TABLE locations (id INTEGER PRIMARY KEY, name TEXT);",
    "0002_sensors.sql": """
        CREATE TABLE sensors (
            id INTEGER PRIMARY KEY,
            location_id INTEGER REFERENCES locations(id)
        );
        CREATE INDEX sensors_location ON sensors (location_id);
        INSERT INTO locations (id, name) VALUES (1, 'lab; bench 2');
    """,
}


async def test_fresh_apply_runs_files_in_order_and_records_them(storage, mig_dir):
    write(mig_dir, TWO)
    (mig_dir / "README.md").write_text("not a migration")

    applied = await apply(storage, mig_dir)

    assert [(m.version, m.name) for m in applied] == [(1, "locations"), (2, "sensors")]
    assert await recorded(storage) == [(1, "locations"), (2, "sensors")]
    assert await tables(storage) == ["locations", "schema_migrations", "sensors"]
    assert await storage.fetchval("SELECT name FROM locations") == "lab; bench 2"
    stamps = await storage.fetch("SELECT applied_at FROM schema_migrations")
    for row in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["applied_at"])


async def test_reapply_applies_nothing(storage, mig_dir):
    write(mig_dir, TWO)
    await apply(storage, mig_dir)

    assert await apply(storage, mig_dir) == []
    assert await recorded(storage) == [(1, "locations"), (2, "sensors")]


async def test_sqlite_override_replaces_plain_file_and_postgres_one_is_ignored(storage, mig_dir):
    write(
        mig_dir,
        {
            "0001_readings.sql": "CREATE TABLE readings (plain_col INTEGER);",
            "0001_readings.sqlite.sql": "CREATE TABLE readings (sqlite_col INTEGER);",
            "0001_readings.postgres.sql": "CREATE TABLE readings (pg BIGSERIAL) USING heap;",
        },
    )

    applied = await apply(storage, mig_dir)

    assert applied == [Migration(1, "readings", mig_dir / "0001_readings.sqlite.sql")]
    columns = await storage.fetch("PRAGMA table_info(readings)")
    assert [c["name"] for c in columns] == ["sqlite_col"]
    assert await recorded(storage) == [(1, "readings")]


def test_discover_picks_override_per_dialect_and_plain_otherwise(mig_dir):
    write(
        mig_dir,
        {
            "0001_a.sql": "",
            "0001_a.postgres.sql": "",
            "0002_b.sql": "",
            "0010_c.sqlite.sql": "",
            "0010_c.postgres.sql": "",
        },
    )

    assert [m.filename for m in discover(mig_dir, "sqlite")] == [
        "0001_a.sql",
        "0002_b.sql",
        "0010_c.sqlite.sql",
    ]
    assert [m.filename for m in discover(mig_dir, "postgres")] == [
        "0001_a.postgres.sql",
        "0002_b.sql",
        "0010_c.postgres.sql",
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": "", "0001_b.sql": ""}, "migration 0001 has two names: 'a' and 'b'"),
        ({"0001_a.sql": "", "0001_b.sqlite.sql": ""}, "migration 0001 has two names"),
        ({"1_init.sql": ""}, "1_init.sql: a migration is named NNNN_name.sql"),
        ({"0001_a.mysql.sql": ""}, "0001_a.mysql.sql: a migration is named"),
        ({"0001_a.sqlite.sql": ""}, "0001_a has no plain .sql file and no file for postgres"),
    ],
)
def test_discover_rejects_ambiguous_or_misnamed_files(mig_dir, files, message):
    write(mig_dir, files)

    with pytest.raises(MigrationError, match=re.escape(message)):
        discover(mig_dir, "sqlite")


def test_discover_rejects_missing_directory(tmp_path):
    with pytest.raises(MigrationError, match="does not exist"):
        discover(tmp_path / "nowhere", "sqlite")


async def test_broken_migration_rolls_back_whole(storage, mig_dir):
    write(
        mig_dir,
        {
            "0001_locations.sql": TWO["0001_locations.sql"],
            "0002_broken.sql": """
                CREATE TABLE half_done (id INTEGER PRIMARY KEY);
                INSERT INTO locations (id, name) VALUES (5, 'partial');
                INSERT INTO no_such_table VALUES (1);
            """,
        },
    )

    with pytest.raises(MigrationError) as caught:
        await apply(storage, mig_dir)

    assert str(caught.value) == ("migration 0002_broken.sql failed: no such table: no_such_table")
    assert await recorded(storage) == [(1, "locations")]
    assert await tables(storage) == ["locations", "schema_migrations"]
    assert await storage.fetchval("SELECT count(*) FROM locations") == 0
    assert [m.filename for m in await pending(storage, mig_dir)] == ["0002_broken.sql"]


async def test_pending_lists_exactly_the_unapplied(storage, mig_dir):
    write(mig_dir, {"0001_locations.sql": TWO["0001_locations.sql"]})
    await apply(storage, mig_dir)
    write(
        mig_dir,
        {"0002_sensors.sql": TWO["0002_sensors.sql"], "0003_rooms.sql": "CREATE TABLE r (x);"},
    )

    assert await pending(storage, mig_dir) == [
        Migration(2, "sensors", mig_dir / "0002_sensors.sql"),
        Migration(3, "rooms", mig_dir / "0003_rooms.sql"),
    ]


async def test_ensure_current_without_auto_migrate_names_pending_and_changes_nothing(
    storage, mig_dir
):
    write(mig_dir, TWO)

    with pytest.raises(PendingMigrations) as caught:
        await ensure_current(storage, mig_dir, auto_migrate=False)

    assert [m.filename for m in caught.value.migrations] == [
        "0001_locations.sql",
        "0002_sensors.sql",
    ]
    assert str(caught.value) == (
        "database schema is not current: 2 pending migration(s): "
        "0001_locations.sql, 0002_sensors.sql; "
        "run `sensorcast migrate` or set database.auto_migrate to true"
    )
    assert await tables(storage) == ["schema_migrations"]


async def test_ensure_current_applies_when_auto_migrate_and_then_passes(storage, mig_dir):
    write(mig_dir, TWO)

    applied = await ensure_current(storage, mig_dir, auto_migrate=True)

    assert [m.version for m in applied] == [1, 2]
    assert await ensure_current(storage, mig_dir, auto_migrate=False) == []


async def test_trigger_with_inner_semicolons_applies(storage, mig_dir):
    write(
        mig_dir,
        {
            "0001_audit.sql": """
                CREATE TABLE t (x TEXT);
                CREATE TABLE audit (x TEXT);
                CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN
                    INSERT INTO audit (x) VALUES (new.x || ';');
                END;
                INSERT INTO t (x) VALUES ('one')
            """
        },
    )

    await apply(storage, mig_dir)

    assert await storage.fetch("SELECT x FROM audit") == [{"x": "one;"}]


async def test_repository_migrations_apply_cleanly_and_once(storage):
    assert (MIGRATIONS_DIR / "README.md").is_file()

    first = await apply(storage)

    assert await recorded(storage) == [(m.version, m.name) for m in first]
    assert await apply(storage) == []
