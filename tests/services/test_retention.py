"""Readings retention on SQLite and PostgreSQL: the delete query, the job's pass, and the
`retention.readings_days` setting."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.codec import utcnow
from server.config import ConfigError, load_config
from server.jobs import expire_readings
from server.keys import JOBS
from server.storage import Storage
from server.storage.readings import delete_readings_before

# Fixtures: the storage tests' database over [sqlite, postgres].
from tests.storage.conftest import (  # noqa: F401
    backend,
    migrated,
    open_db,
    pg_server_url,
    storage,
)

CUTOFF = datetime(2024, 5, 1, 12, tzinfo=UTC)


async def seed(db: Storage, stamps: list[datetime]) -> int:
    sid = int(await db.fetchval("INSERT INTO sensors (type) VALUES (?) RETURNING id", "t"))
    await db.copy_rows(
        "readings",
        ("sensor_id", "ts", "metrics"),
        [(sid, ts, {"t": float(i)}) for i, ts in enumerate(stamps)],
    )
    return sid


async def left(db: Storage) -> list[tuple[datetime, float]]:
    rows = await db.fetch("SELECT ts, value FROM reading_values ORDER BY ts")
    return [(r["ts"], r["value"]) for r in rows]


async def test_delete_before_removes_only_older_readings(migrated: Storage):  # noqa: F811
    stamps = [
        CUTOFF - timedelta(days=3),
        CUTOFF - timedelta(microseconds=1),
        CUTOFF,
        CUTOFF + timedelta(hours=1),
    ]
    await seed(migrated, stamps)

    assert await delete_readings_before(migrated, CUTOFF) == 2

    assert await left(migrated) == [(CUTOFF, 2.0), (CUTOFF + timedelta(hours=1), 3.0)]
    assert await delete_readings_before(migrated, CUTOFF) == 0


async def test_job_pass_keeps_the_last_readings_days(migrated: Storage):  # noqa: F811
    now = utcnow()
    await seed(migrated, [now - timedelta(days=40), now - timedelta(days=29), now])

    assert await expire_readings(migrated, 30) == 1

    assert [v for _, v in await left(migrated)] == [1.0, 2.0]


async def test_zero_days_keeps_everything(migrated: Storage):  # noqa: F811
    now = utcnow()
    await seed(migrated, [now - timedelta(days=3650), now])

    assert await expire_readings(migrated, 0) == 0

    assert len(await left(migrated)) == 2


def test_readings_days_defaults_to_30_and_0_is_allowed(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.yaml").write_text("retention: {readings_days: 0}\n")

    assert load_config(tmp_path / "a.yaml", environ={}).retention.readings_days == 30
    assert load_config(tmp_path / "b.yaml", environ={}).retention.readings_days == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("retention: {readings_days: -1}\n", "Must be greater than or equal to 0."),
        ("retention: {readings_days: 1.5}\n", "Not a valid integer."),
        ("retention: {keep: 3}\n", "names no setting"),
    ],
)
def test_bad_retention_setting_is_one_line_naming_the_key(tmp_path: Path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("retention.")
    assert message.endswith(expected)


@pytest.mark.parametrize("days", [30, 0])
async def test_app_runs_the_retention_job(make_client, days):
    """Also with readings_days 0: it trims notifications past history_size too."""
    client = await make_client({"retention": {"readings_days": days}})

    assert {"bus-upkeep", "retention"} <= {job.get_name() for job in client.app[JOBS]}
