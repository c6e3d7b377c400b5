"""ReadingService on a migrated database (SQLite and PostgreSQL) with a real local bus:
bucket edges, keyset paging, latest, publication order, all-or-nothing; and the parsers."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from server.api.readings import parse_bucket, parse_readings
from server.bus import Bus, Publication
from server.bus.local import LocalBackend
from server.errors import ValidationFailed
from server.services.readings import ReadingService
from server.services.timestamps import iso, parse_time
from server.storage import Storage
from server.storage import readings as queries

# Fixtures: the storage tests' database over [sqlite, postgres].
from tests.storage.conftest import (  # noqa: F401
    backend,
    migrated,
    open_db,
    pg_server_url,
    storage,
)

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


class Service:
    def __init__(self, db: Storage) -> None:
        self.published: list[Publication] = []
        self.bus = Bus(LocalBackend(1000, 60))
        self.bus.on_publication.append(self._record)
        self.readings = ReadingService(db, self.bus)
        self.storage = db

    async def _record(self, batch: list[Publication]) -> None:
        self.published.extend(batch)

    async def sensor(self, thresholds: dict[str, Any] | None = None) -> int:
        sql = "INSERT INTO sensors (type, thresholds) VALUES (?, ?) RETURNING id"
        return int(await self.storage.fetchval(sql, "t", thresholds or {}))

    async def ingest(self, body: Any) -> dict[str, Any]:
        return await self.readings.ingest(*parse_readings(body, NOW))


@pytest.fixture
async def svc(migrated: Storage) -> AsyncIterator[Service]:  # noqa: F811
    service = Service(migrated)
    await service.bus.start()
    yield service
    await service.bus.stop()


async def aggregate(svc: Service, sid: int, bucket: int, **kw: Any) -> list[tuple[str, int]]:
    args = {"sensor_id": sid, "metric": "t", "bucket": bucket, **kw}
    return [(i["start"], i["count"]) for i in (await svc.readings.aggregate(args))["items"]]


async def test_buckets_floor_sub_second_edges_and_times_before_1970(svc: Service):
    sid = await svc.sensor()
    stamps = ["2024-05-01T12:00:59.999999Z", "2024-05-01T12:01:00Z", "1969-12-31T23:59:30Z"]
    await svc.ingest([{"sensor_id": sid, "timestamp": s, "t": 1} for s in stamps])

    assert await aggregate(svc, sid, 60) == [
        ("1969-12-31T23:59:00.000Z", 1),
        ("2024-05-01T12:00:00.000Z", 1),
        ("2024-05-01T12:01:00.000Z", 1),
    ]
    assert await aggregate(svc, sid, 86400, start=NOW) == [("2024-05-01T00:00:00.000Z", 2)]


async def test_aggregate_averages_a_linear_series(svc: Service):
    sid = await svc.sensor()
    await svc.ingest([{"sensor_id": sid, "timestamp": 1714564800 + i, "t": i} for i in range(3600)])

    items = (await svc.readings.aggregate({"sensor_id": sid, "metric": "t", "bucket": 600}))[
        "items"
    ]

    assert [(i["min"], i["max"], i["count"], i["avg"]) for i in items] == [
        (600 * k, 600 * k + 599, 600, 600 * k + 299.5) for k in range(6)
    ]


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_paging_keeps_duplicates_and_sensors_sharing_an_instant(svc: Service, limit: int):
    a, b = await svc.sensor(), await svc.sensor()
    await svc.ingest([{"sensor_id": s, "t": 1, "h": 2} for s in (b, a, b, a)])
    seen: list[tuple[int, str]] = []
    cursor = None
    while True:
        page = await svc.readings.query({"limit": limit, "cursor": cursor})
        seen += [(i["sensor_id"], i["metric"]) for i in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break

    # Same instant: by sensor, then reading by reading (the retried one too), then metric.
    assert seen == [(a, "h"), (a, "t"), (a, "h"), (a, "t"), (b, "h"), (b, "t"), (b, "h"), (b, "t")]


async def test_latest_takes_the_newest_per_metric_whatever_the_arrival_order(svc: Service):
    sid = await svc.sensor()
    await svc.ingest(
        [
            {"sensor_id": sid, "timestamp": "2024-05-01T12:00:05Z", "t": 5},
            {"sensor_id": sid, "timestamp": "2024-05-01T12:00:09Z", "t": 9, "h": 1},
            {"sensor_id": sid, "timestamp": "2024-05-01T12:00:07Z", "t": 7, "h": 2},
        ]
    )

    latest = await svc.readings.latest(sid)

    assert latest["values"] == {"t": 9.0, "h": 1.0}
    assert latest["timestamps"] == {
        "t": "2024-05-01T12:00:09.000Z",
        "h": "2024-05-01T12:00:09.000Z",
    }


async def test_each_reading_is_published_then_the_anomalies_it_raised(svc: Service):
    sid = await svc.sensor({"t": {"max": 10}, "h": {"min": 0}})

    await svc.ingest(
        [
            {"sensor_id": sid, "t": 11, "h": -1},
            {"sensor_id": sid, "t": 1},
            {"sensor_id": sid, "t": 12},
        ]
    )

    events = [(p.body["event_type"], p.body["data"]["values" if "values" in p.body["data"] else "metric"]) for p in svc.published]  # fmt: skip
    assert events == [
        ("reading", {"t": 11.0, "h": -1.0}),
        ("anomaly_detected", "t"),
        ("anomaly_detected", "h"),
        ("reading", {"t": 1.0}),
        ("reading", {"t": 12.0}),
        ("anomaly_detected", "t"),
    ]
    assert [p.channels for p in svc.published[:2]] == [
        ("readings", f"readings:{sid}", f"sensors:{sid}"),
        ("anomalies", f"sensors:{sid}"),
    ]


# With an anomaly the readings go in a transaction with it; without, in one copy_rows.
@pytest.mark.parametrize("thresholds", [{"t": {"max": 0}}, {}])
async def test_a_sensor_deleted_before_the_insert_stores_nothing(
    svc: Service, monkeypatch, thresholds
):
    sid = await svc.sensor(thresholds)
    ghost = sid + 1

    async def both_exist(db: Any, ids: Any) -> dict[int, dict[str, Any]]:
        return {sid: thresholds, ghost: {}}

    monkeypatch.setattr(queries, "sensor_thresholds", both_exist)

    with pytest.raises(ValidationFailed):
        await svc.ingest([{"sensor_id": sid, "t": 5}, {"sensor_id": ghost, "t": 5}])

    assert await svc.storage.fetch("SELECT * FROM readings") == []
    assert await svc.storage.fetch("SELECT * FROM anomalies") == []
    assert svc.published == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86400), ("90", 90), (15, 15)],
)
def test_bucket_durations(text, seconds):
    assert parse_bucket(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "1.5", "1w", "m", True, 2.0, None])
def test_bad_bucket_durations(text):
    with pytest.raises(ValueError, match="positive duration"):
        parse_bucket(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T14:00:00+02:00", NOW),
        ("2024-05-01T12:00:00Z", NOW),
        (1714564800, NOW),
        (1714564800.0, NOW),
    ],
)
def test_parse_time_gives_aware_utc(value, expected):
    parsed = parse_time(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("value", ["2024-05-01", "nope", float("nan"), float("inf"), 1e20, True])
def test_parse_time_refuses(value):
    with pytest.raises(ValueError, match=r"ISO 8601|out of range"):
        parse_time(value)


def test_iso_has_milliseconds_like_every_other_timestamp():
    assert iso(NOW) == "2024-05-01T12:00:00.000Z"
    assert iso(NOW.replace(microsecond=250_000)) == "2024-05-01T12:00:00.250Z"
    assert iso(NOW.replace(microsecond=1)) == "2024-05-01T12:00:00.000Z"
    assert iso(NOW.replace(microsecond=123_456)) == "2024-05-01T12:00:00.123Z"


def test_a_batch_with_many_bad_items_reports_at_most_fifty():
    with pytest.raises(ValidationFailed) as info:
        parse_readings([{"sensor_id": 1, "t": "x"}] * 200, NOW)

    assert list(info.value.details) == [str(i) for i in range(50)]


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-05-01T12:00:00.250Z",
        "2024-05-01T12:00:00.000Z",
        "2024-05-01T14:00:00.250+02:00",
        "2024-05-01T12:00:00.25Z",
        "2024-05-01T12:00:00.000001Z",
        "2024-05-01 12:00:00.250Z",
        "2024-05-01T12:00:00Z",
        1714564800.25,
        1714564800,
    ],
)
def test_the_event_text_of_a_timestamp_is_iso_of_it_whatever_its_form(stamp):
    (parsed,), _ = parse_readings([{"sensor_id": 1, "timestamp": stamp, "t": 1}], NOW)

    assert parsed[3] == iso(parse_time(stamp)) == iso(parsed[1])


def test_a_reading_without_timestamp_gets_the_request_time_as_text():
    (parsed,), _ = parse_readings({"sensor_id": 1, "t": 1}, NOW)

    assert parsed[1:] == (NOW, {"t": 1.0}, "2024-05-01T12:00:00.000Z")
