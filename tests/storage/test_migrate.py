"""Migrations on both backends (the `storage` fixture is parametrized in conftest)."""

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.storage import IntegrityError, Storage
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
def mig_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    return directory


def write(directory: Path, files: dict[str, str]) -> None:
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")


TABLES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' "
    "AND name NOT LIKE 'sqlite_%' ORDER BY name",
    "postgres": "SELECT table_name AS name FROM information_schema.tables "
    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name",
}
COLUMNS_SQL = {
    "sqlite": "SELECT name FROM pragma_table_info(?) ORDER BY cid",
    "postgres": "SELECT column_name AS name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
}


async def tables(storage: Storage) -> list[str]:
    return [row["name"] for row in await storage.fetch(TABLES_SQL[storage.dialect])]


async def columns(storage: Storage, table: str) -> list[str]:
    return [row["name"] for row in await storage.fetch(COLUMNS_SQL[storage.dialect], table)]


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
        INSERT INTO locations (id, name) VALUES (1, 'lab; bench 2?');
    """,
}


async def test_fresh_apply_runs_files_in_order_and_records_them(storage, mig_dir):
    write(mig_dir, TWO)
    (mig_dir / "README.md").write_text("not a migration")

    applied = await apply(storage, mig_dir)

    assert [(m.version, m.name) for m in applied] == [(1, "locations"), (2, "sensors")]
    assert await recorded(storage) == [(1, "locations"), (2, "sensors")]
    assert await tables(storage) == ["locations", "schema_migrations", "sensors"]
    assert await storage.fetchval("SELECT name FROM locations") == "lab; bench 2?"
    stamps = await storage.fetch("SELECT applied_at FROM schema_migrations")
    for row in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["applied_at"])


async def test_reapply_applies_nothing(storage, mig_dir):
    write(mig_dir, TWO)
    await apply(storage, mig_dir)

    assert await apply(storage, mig_dir) == []
    assert await recorded(storage) == [(1, "locations"), (2, "sensors")]


async def test_dialect_override_replaces_plain_file_and_the_other_is_ignored(storage, mig_dir):
    write(
        mig_dir,
        {
            "0001_readings.sql": "CREATE TABLE readings (plain_col INTEGER);",
            "0001_readings.sqlite.sql": "CREATE TABLE readings (sqlite_col INTEGER);",
            "0001_readings.postgres.sql": "CREATE TABLE readings (pg_col BIGSERIAL) USING heap;",
        },
    )

    applied = await apply(storage, mig_dir)

    own = mig_dir / f"0001_readings.{storage.dialect}.sql"
    assert applied == [Migration(1, "readings", own)]
    expected = {"sqlite": ["sqlite_col"], "postgres": ["pg_col"]}[storage.dialect]
    assert await columns(storage, "readings") == expected
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
                CREATE INDEX half_done_id ON half_done (id);
                INSERT INTO locations (id, name) VALUES (5, 'partial');
                INSERT INTO no_such_table VALUES (1);
            """,
        },
    )

    with pytest.raises(MigrationError) as caught:
        await apply(storage, mig_dir)

    reason = {
        "sqlite": "no such table: no_such_table",
        "postgres": 'relation "no_such_table" does not exist',
    }[storage.dialect]
    assert str(caught.value) == f"migration 0002_broken.sql failed: {reason}"
    assert await recorded(storage) == [(1, "locations")]
    assert await tables(storage) == ["locations", "schema_migrations"]
    assert await storage.fetchval("SELECT count(*) FROM locations") == 0
    assert [m.filename for m in await pending(storage, mig_dir)] == ["0002_broken.sql"]


async def test_pending_lists_exactly_the_unapplied(storage, mig_dir):
    write(mig_dir, {"0001_locations.sql": TWO["0001_locations.sql"]})
    await apply(storage, mig_dir)
    write(
        mig_dir,
        {"0002_sensors.sql": TWO["0002_sensors.sql"], "0003_rooms.sql": "CREATE TABLE r (x INT);"},
    )

    assert await pending(storage, mig_dir) == [
        Migration(2, "sensors", mig_dir / "0002_sensors.sql"),
        Migration(3, "rooms", mig_dir / "0003_rooms.sql"),
    ]


async def test_pending_on_a_fresh_database_creates_nothing(storage, mig_dir):
    write(mig_dir, TWO)

    assert [m.version for m in await pending(storage, mig_dir)] == [1, 2]
    assert [m.version for m in await pending(storage)] == [
        m.version for m in discover(MIGRATIONS_DIR, storage.dialect)
    ]
    assert await tables(storage) == []


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
    assert await tables(storage) == []


async def test_ensure_current_applies_when_auto_migrate_and_then_passes(storage, mig_dir):
    write(mig_dir, TWO)

    applied = await ensure_current(storage, mig_dir, auto_migrate=True)

    assert [m.version for m in applied] == [1, 2]
    assert await ensure_current(storage, mig_dir, auto_migrate=False) == []


async def test_statement_bodies_with_inner_semicolons_apply(storage, mig_dir):
    write(
        mig_dir,
        {
            "0001_audit.sql": "CREATE TABLE t (x TEXT); CREATE TABLE audit (x TEXT);",
            "0002_trigger.sqlite.sql": """
                CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN
                    INSERT INTO audit (x) VALUES (new.x || ';');
                END;
                INSERT INTO t (x) VALUES ('one')
            """,
            "0002_trigger.postgres.sql": """
                CREATE FUNCTION t_audit() RETURNS trigger LANGUAGE plpgsql AS $body$
                BEGIN
                    INSERT INTO audit (x) VALUES (new.x || ';');
                    RETURN new;
                END;
                $body$;
                CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION t_audit();
                INSERT INTO t (x) VALUES ('one')
            """,
        },
    )

    await apply(storage, mig_dir)

    assert await storage.fetch("SELECT x FROM audit") == [{"x": "one;"}]


async def test_concurrent_appliers_apply_each_migration_once(open_db, mig_dir):
    # Two instances starting together on one database.
    write(mig_dir, TWO)
    first, second = await open_db(), await open_db()

    results = await asyncio.gather(apply(first, mig_dir), apply(second, mig_dir))

    assert sorted(m.version for done in results for m in done) == [1, 2]
    assert await recorded(first) == [(1, "locations"), (2, "sensors")]


# -- the repository's migrations ----------------------------------------------------------------

SCHEMA = {
    "locations": [
        "id",
        "name",
        "description",
        "latitude",
        "longitude",
        "metadata",
        "created_at",
        "updated_at",
    ],
    "sensors": [
        "id",
        "name",
        "type",
        "model",
        "unit",
        "location_id",
        "thresholds",
        "metadata",
        "created_at",
        "updated_at",
        "device",
    ],
    "readings": ["sensor_id", "ts", "metrics"],
    "anomalies": [
        "id",
        "sensor_id",
        "metric",
        "value",
        "min",
        "max",
        "ts",
        "resolved",
        "resolved_at",
        "created_at",
    ],
    "predictions": [
        "id",
        "sensor_id",
        "metric",
        "horizon",
        "method",
        "points",
        "params",
        "created_at",
    ],
    "rooms": ["name", "created_at"],
    "messages": ["id", "room", "user_id", "username", "content", "created_at"],
    "read_receipts": ["room", "message_id", "user_id", "read_at"],
    "notifications": ["id", "event", "channel", "payload", "created_at"],
    "users": ["id", "username", "password_hash", "role", "created_at"],
    "latest_values": ["sensor_id", "metric", "ts", "value"],
    "schema_migrations": ["version", "name", "applied_at"],
}
# The readings row key: a column on PostgreSQL, the hidden rowid on SQLite (migration 0006).
EXTRA_COLUMNS = {("postgres", "readings"): ["id"]}


async def test_repository_migrations_apply_cleanly_and_once(storage):
    assert (MIGRATIONS_DIR / "README.md").is_file()

    first = await apply(storage)

    assert first
    assert await recorded(storage) == [(m.version, m.name) for m in first]
    assert await apply(storage) == []


async def test_repository_migrations_create_every_table_with_its_columns(migrated):
    assert sorted(await tables(migrated)) == sorted(SCHEMA)
    for table, expected in SCHEMA.items():
        extra = EXTRA_COLUMNS.get((migrated.dialect, table), [])
        assert await columns(migrated, table) == expected + extra, table


async def test_every_table_takes_and_returns_a_row(migrated):
    db = migrated
    now = datetime.now(UTC)
    location = await db.fetchval(
        "INSERT INTO locations (name, description, latitude, longitude, metadata) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        "lab",
        "bench 2",
        52.5,
        13.4,
        {"floor": 2},
    )
    sensor = await db.fetchval(
        "INSERT INTO sensors (name, type, model, unit, location_id, thresholds, metadata) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        None,
        "climate",
        "DHT22",
        "C",
        location,
        {"temperature": {"min": -10, "max": 40.5}},
        {},
    )
    assert await db.copy_rows(
        "readings",
        ["sensor_id", "ts", "metrics"],
        [(sensor, now, {"temperature": 21.5, "humidity": 40.0})],
    )
    anomaly = await db.fetchval(
        "INSERT INTO anomalies (sensor_id, metric, value, min, max, ts) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        sensor,
        "temperature",
        41.0,
        -10.0,
        40.5,
        now,
    )
    await db.execute(
        "INSERT INTO predictions (sensor_id, metric, horizon, method, points, params) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        sensor,
        "temperature",
        2,
        "holt",
        [{"timestamp": "2024-01-01T00:00:00Z", "value": 1.0}],
        {"alpha": 0.5},
    )
    await db.execute("INSERT INTO rooms (name) VALUES (?)", "lobby")
    message = await db.fetchval(
        "INSERT INTO messages (room, user_id, username, content) VALUES (?, ?, ?, ?) RETURNING id",
        "lobby",
        "u1",
        "Ann",
        "hi?",
    )
    await db.execute(
        "INSERT INTO read_receipts (room, message_id, user_id) VALUES (?, ?, ?)",
        "lobby",
        message,
        "u2",
    )
    await db.execute(
        "INSERT INTO notifications (event, channel, payload) VALUES (?, ?, ?)",
        "user.created",
        "general",
        {"user_id": 7},
    )
    await db.execute(
        "INSERT INTO users (username, password_hash, role) VALUES (?, ?, ?)",
        "ann",
        "scrypt$...",
        "admin",
    )

    loc = await db.fetchrow("SELECT * FROM locations WHERE id = ?", location)
    assert loc["metadata"] == {"floor": 2}
    assert loc["latitude"] == 52.5
    assert loc["created_at"].tzinfo is not None
    assert abs((loc["created_at"] - now).total_seconds()) < 60
    assert loc["updated_at"] == loc["created_at"]
    row = await db.fetchrow("SELECT * FROM sensors WHERE id = ?", sensor)
    assert row["thresholds"] == {"temperature": {"min": -10, "max": 40.5}}
    assert row["metadata"] == {}
    assert row["name"] is None
    readings = await db.fetch(
        "SELECT metric, value, ts FROM reading_values WHERE sensor_id = ? AND ts <= ?"
        " ORDER BY metric",
        sensor,
        now,
    )
    assert readings == [
        {"metric": "humidity", "value": 40.0, "ts": now},
        {"metric": "temperature", "value": 21.5, "ts": now},
    ]
    row = await db.fetchrow("SELECT resolved, resolved_at, ts FROM anomalies WHERE id = ?", anomaly)
    assert row == {"resolved": False, "resolved_at": None, "ts": now}
    row = await db.fetchrow("SELECT points, params, horizon FROM predictions")
    assert row["points"][0]["value"] == 1.0
    assert row["params"] == {"alpha": 0.5}
    assert (await db.fetchrow("SELECT content, room FROM messages")) == {
        "content": "hi?",
        "room": "lobby",
    }
    assert (await db.fetchrow("SELECT read_at FROM read_receipts"))["read_at"] <= datetime.now(UTC)
    assert (await db.fetchrow("SELECT payload FROM notifications"))["payload"] == {"user_id": 7}
    assert (await db.fetchrow("SELECT role FROM users"))["role"] == "admin"
    assert (await db.fetchrow("SELECT created_at FROM rooms"))["created_at"].tzinfo is not None


async def test_schema_constraints_cascade_and_refuse(migrated):
    db = migrated
    location = await db.fetchval("INSERT INTO locations (name) VALUES ('x') RETURNING id")
    sensor = await db.fetchval(
        "INSERT INTO sensors (type, location_id) VALUES ('t', ?) RETURNING id", location
    )
    await db.copy_rows(
        "readings", ["sensor_id", "ts", "metrics"], [(sensor, datetime.now(UTC), {"t": 1.0})]
    )
    await db.execute(
        "INSERT INTO users (username, password_hash, role) VALUES ('ann', 'h', 'user')"
    )

    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"):
        await db.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('ann', 'h', 'user')"
        )
    with pytest.raises(IntegrityError, match=r"(?i)check"):
        await db.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('bob', 'h', 'root')"
        )
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        await db.execute("INSERT INTO messages (room, content) VALUES ('nowhere', 'x')")
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        # PostgreSQL checks this per statement (a trigger), SQLite per row (a foreign key).
        await db.copy_rows(
            "readings",
            ["sensor_id", "ts", "metrics"],
            [(sensor + 1, datetime.now(UTC), {"t": 2.0})],
        )

    await db.execute("DELETE FROM locations WHERE id = ?", location)
    assert await db.fetchval("SELECT location_id FROM sensors WHERE id = ?", sensor) is None
    await db.execute("DELETE FROM sensors WHERE id = ?", sensor)
    assert await db.fetchval("SELECT count(*) FROM readings") == 0


async def test_ids_are_not_reused_after_deleting_the_newest(migrated):
    first = await migrated.fetchval("INSERT INTO rooms (name) VALUES ('r') RETURNING name")
    one = await migrated.fetchval(
        "INSERT INTO messages (room, content) VALUES (?, 'a') RETURNING id", first
    )
    await migrated.execute("DELETE FROM messages WHERE id = ?", one)

    two = await migrated.fetchval(
        "INSERT INTO messages (room, content) VALUES (?, 'b') RETURNING id", first
    )

    assert two > one


INDEXES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    "postgres": "SELECT indexname AS name FROM pg_indexes WHERE schemaname = current_schema() "
    "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
}
INDEXES = {
    "sensors_location",
    "readings_sensor_ts",
    "readings_ts",
    "anomalies_sensor_resolved",
    "anomalies_sensor_id",
    "predictions_sensor",
    "messages_room_id",
    "read_receipts_room_user",
    "notifications_created",
    "notifications_channel_id",
}


async def test_repository_migrations_create_the_same_indexes_on_both(migrated):
    names = {row["name"] for row in await migrated.fetch(INDEXES_SQL[migrated.dialect])}

    assert names == INDEXES


async def test_readings_of_a_sensor_being_deleted_wait_for_it_then_are_refused(migrated):
    # PostgreSQL: the statement trigger locks the sensor FOR KEY SHARE as a foreign key
    # would, so it waits for the deleting transaction. SQLite: one writer at a time.
    sid = await migrated.fetchval("INSERT INTO sensors (type) VALUES ('t') RETURNING id")
    deleted, release = asyncio.Event(), asyncio.Event()

    async def delete() -> None:
        async with migrated.transaction() as tx:
            await tx.execute("DELETE FROM sensors WHERE id = ?", sid)
            deleted.set()
            await release.wait()

    deleting = asyncio.create_task(delete())
    await deleted.wait()
    row = (sid, datetime.now(UTC), {"t": 1.0})
    insert = asyncio.create_task(
        migrated.copy_rows("readings", ["sensor_id", "ts", "metrics"], [row])
    )
    await asyncio.sleep(0.2)
    assert not insert.done()

    release.set()
    await deleting
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        await insert
    assert await migrated.fetchval("SELECT count(*) FROM readings") == 0


def test_an_installed_package_carries_its_migrations(tmp_path: Path):
    """What a wheel or a non-editable install holds (setuptools' build_py: the packages
    with their package data), imported from elsewhere, finds every migration."""
    repo = Path(__file__).resolve().parents[2]
    lib = tmp_path / "lib"
    build = [sys.executable, "-c", "from setuptools import setup; setup()", "-q"]
    subprocess.run(
        [*build, "build_py", "--build-lib", str(lib)], cwd=repo, check=True, capture_output=True
    )
    probe = (
        "from server.storage.migrate import MIGRATIONS_DIR, discover; print(MIGRATIONS_DIR);"
        "print([m.filename for m in discover(MIGRATIONS_DIR, 'postgres')])"
    )
    env = {**os.environ, "PYTHONPATH": str(lib)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()

    assert out[0] == str(lib / "server" / "migrations")
    assert out[1] == str([m.filename for m in discover(MIGRATIONS_DIR, "postgres")])
    assert (lib / "server" / "migrations" / "README.md").is_file()
