"""Readings over REST and WebSocket `request`, on SQLite and PostgreSQL, and their live events.

`config` is overridden here (test_anomalies.py imports it) so the shared `client`,
`connect` and `token` fixtures serve an app on this test's own database (`open_db`,
parametrized by `backend`: the storage tests' SQLite file or PostgreSQL schema). Sensors
are inserted straight through the storage API.
"""

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.config import Config
from server.keys import SERVICES
from tests.api.test_system import Mint, error_of
from tests.conftest import Connect, auth_header, make_config

# Fixtures: every test here runs on SQLite and on PostgreSQL (skipped loudly when down).
from tests.storage.conftest import Opener, backend, open_db, pg_server_url  # noqa: F401


@pytest.fixture(autouse=True)
def config(open_db: Opener, tmp_path: Path) -> Config:  # noqa: F811
    return make_config(tmp_path, {"database": {"url": open_db.url}})


async def add_sensor(client: TestClient, thresholds: dict[str, Any] | None = None) -> int:
    storage = client.app[SERVICES].storage
    # Owned by "tester", the `token` fixture's default sub: its device tokens may post here.
    sql = "INSERT INTO sensors (type, thresholds, device) VALUES (?, ?, ?) RETURNING id"
    return int(await storage.fetchval(sql, "temperature", thresholds or {}, "tester"))


async def stored(client: TestClient) -> list[tuple[int, str, str, float]]:
    rows = await client.app[SERVICES].storage.fetch("SELECT * FROM reading_values")
    return sorted((r["sensor_id"], r["ts"].isoformat(), r["metric"], r["value"]) for r in rows)


async def post(client: TestClient, body: Any, tok: str | None) -> Any:
    headers = auth_header(tok) if tok else {}
    return await client.post("/api/v1/readings", json=body, headers=headers)


async def ws_call(ws: Any, resource: str, action: str, payload: Any) -> dict[str, Any]:
    """A `request` frame; returns the reply (`response` or `error`) with id 7."""
    reply = await ws.request(
        {"type": "request", "id": 7, "resource": resource, "action": action, "payload": payload}
    )
    assert reply["id"] == 7
    return reply


T0 = "2024-05-01T12:00:00+00:00"


async def test_single_reading_is_201_accepted_and_one_value_per_metric(client, token: Mint):
    sid = await add_sensor(client)
    body = {"sensor_id": sid, "timestamp": T0, "values": {"temp": 23.5, "hum": 65}}

    resp = await post(client, body, token("device"))

    assert resp.status == 201
    assert await resp.json() == {"accepted": 1}
    assert await stored(client) == [(sid, T0, "hum", 65.0), (sid, T0, "temp", 23.5)]


async def test_flat_metrics_are_stored_like_values(client, token: Mint):
    sid = await add_sensor(client)

    resp = await post(
        client, {"sensor_id": sid, "timestamp": T0, "temperatura": 23.5, "humedad": 65.2}, token()
    )

    assert (resp.status, await resp.json()) == (201, {"accepted": 1})
    assert await stored(client) == [(sid, T0, "humedad", 65.2), (sid, T0, "temperatura", 23.5)]


async def test_batch_counts_readings_and_stores_one_row_per_reading(client, token: Mint):
    a, b = await add_sensor(client), await add_sensor(client)
    batch = [
        {"sensor_id": a, "timestamp": T0, "values": {"t": 1, "h": 2}},
        {"sensor_id": b, "timestamp": "2024-05-01T12:00:01Z", "t": 3.25},
        {"sensor_id": a, "timestamp": 1714564802, "values": {"t": -4}},
    ]

    resp = await post(client, batch, token())

    assert (resp.status, await resp.json()) == (201, {"accepted": 3})
    assert await stored(client) == [
        (a, T0, "h", 2.0),
        (a, T0, "t", 1.0),
        (a, "2024-05-01T12:00:02+00:00", "t", -4.0),
        (b, "2024-05-01T12:00:01+00:00", "t", 3.25),
    ]
    assert await client.app[SERVICES].storage.fetchval("SELECT count(*) FROM readings") == 3


async def test_batch_with_a_bad_item_at_index_3_is_422_naming_it_and_stores_nothing(
    client, token: Mint
):
    sid = await add_sensor(client)
    batch = [{"sensor_id": sid, "values": {"t": i}} for i in range(6)]
    batch[3] = {"sensor_id": sid, "values": {"t": "hot"}}

    error = await error_of(await post(client, batch, token()), 422, "bad_request")

    assert error["details"] == {"3": {"values": {"t": ["Not a finite number."]}}}
    assert await stored(client) == []


async def test_batch_naming_an_unknown_sensor_is_422_at_its_index(client, token: Mint):
    sid = await add_sensor(client)
    batch = [{"sensor_id": sid, "t": 1}, {"sensor_id": sid + 100, "t": 2}]

    error = await error_of(await post(client, batch, token()), 422, "bad_request")

    assert error["details"] == {"1": {"sensor_id": [f"Unknown sensor {sid + 100}."]}}
    assert await stored(client) == []


async def test_single_reading_of_an_unknown_sensor_is_422_on_sensor_id(client, token: Mint):
    error = await error_of(
        await post(client, {"sensor_id": 999, "t": 1}, token()), 422, "bad_request"
    )

    assert error["details"] == {"sensor_id": ["Unknown sensor 999."]}


async def test_more_than_10000_readings_is_413_and_stores_nothing(client, token: Mint):
    sid = await add_sensor(client)
    batch = [{"sensor_id": sid, "t": 1}] * 10_001

    error = await error_of(await post(client, batch, token()), 413, "too_large")

    assert error["details"] == {"max_items": 10_000, "items": 10_001}
    assert await stored(client) == []


@pytest.mark.parametrize(
    ("reading", "details"),
    [
        ({"values": {"t": "NaN"}}, {"values": {"t": ["Not a finite number."]}}),
        ({"values": {"t": "Infinity"}}, {"values": {"t": ["Not a finite number."]}}),
        ({"values": {"t": True}}, {"values": {"t": ["Not a finite number."]}}),
        ({"values": {"t": None}}, {"values": {"t": ["Not a finite number."]}}),
        ({"t": "23.5"}, {"t": ["Not a finite number."]}),
        ({}, {"values": ["At least one metric is required."]}),
        ({"values": {}}, {"values": ["At least one metric is required."]}),
        ({"values": [1]}, {"values": ["Not an object of metric: number."]}),
        ({"values": {"t": 1}, "h": 2}, {"h": ["Unknown field: metrics go in `values`."]}),
        ({"t": 1, "timestamp": "2024-05-01T12:00:00"}, {"timestamp": ["An ISO 8601 time needs an offset or Z."]}),
        ({"t": 1, "timestamp": "yesterday"}, {"timestamp": ["Not an ISO 8601 time or epoch seconds."]}),
        ({"t": 1, "timestamp": True}, {"timestamp": ["Not an ISO 8601 time or epoch seconds."]}),
    ],
)  # fmt: skip
async def test_bad_readings_are_422_naming_the_field(client, token: Mint, reading, details):
    sid = await add_sensor(client)

    error = await error_of(
        await post(client, {"sensor_id": sid, **reading}, token()), 422, "bad_request"
    )

    assert error["details"] == details
    assert await stored(client) == []


@pytest.mark.parametrize("sensor_id", [None, "1", True, 0, 1.5])
async def test_a_bad_sensor_id_is_422(client, token: Mint, sensor_id):
    await add_sensor(client)
    body = {"t": 1} if sensor_id is None else {"sensor_id": sensor_id, "t": 1}

    error = await error_of(await post(client, [body], token()), 422, "bad_request")

    assert set(error["details"]) == {"0"}
    assert set(error["details"]["0"]) == {"sensor_id"}


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00+00:00"),
        ("2024-05-01T07:30:00.250-04:30", "2024-05-01T12:00:00.250000+00:00"),
        (1714564800, "2024-05-01T12:00:00+00:00"),
        (1714564800.5, "2024-05-01T12:00:00.500000+00:00"),
    ],
)
async def test_timestamps_with_offset_or_epoch_seconds_are_stored_utc(
    client, token: Mint, timestamp, expected
):
    sid = await add_sensor(client)

    resp = await post(client, {"sensor_id": sid, "timestamp": timestamp, "t": 1}, token())

    assert resp.status == 201
    assert await stored(client) == [(sid, expected, "t", 1.0)]


async def test_a_reading_without_timestamp_is_stamped_now(client, token: Mint):
    sid = await add_sensor(client)
    before = datetime.now(UTC)

    await post(client, {"sensor_id": sid, "t": 1}, token())

    [(_, ts, _, _)] = await stored(client)
    assert before <= datetime.fromisoformat(ts) <= datetime.now(UTC)


async def test_ingest_needs_a_token_with_a_writing_role(client, token: Mint):
    sid = await add_sensor(client)
    body = {"sensor_id": sid, "t": 1}

    await error_of(await post(client, body, None), 401, "unauthorized")
    await error_of(await post(client, body, token("user")), 403, "forbidden")
    assert (await post(client, body, token("device"))).status == 201
    assert (await post(client, body, token("admin"))).status == 201


async def test_subscribers_get_one_entity_event_per_reading(client, connect: Connect, token: Mint):
    sid = await add_sensor(client)
    per_sensor = await connect(f"/api/v1/ws?channel=readings:{sid}")
    on_sensor = await connect(f"/api/v1/ws?channel=sensors:{sid}")
    everything = await connect("/api/v1/ws?channel=readings")
    other = await connect(f"/api/v1/ws?channel=readings:{sid + 1}")
    batch = [
        {"sensor_id": sid, "timestamp": T0, "values": {"t": 1.5, "h": 2}},
        {"sensor_id": sid, "timestamp": "2024-05-01T12:00:00.123456Z", "t": 3},
    ]

    assert (await post(client, batch, token())).status == 201

    expected = [
        {"sensor_id": sid, "timestamp": "2024-05-01T12:00:00.000Z", "values": {"t": 1.5, "h": 2.0}},
        # Milliseconds, as every other timestamp.
        {"sensor_id": sid, "timestamp": "2024-05-01T12:00:00.123Z", "values": {"t": 3.0}},
    ]  # fmt: skip
    for ws, channel in ((per_sensor, f"readings:{sid}"), (on_sensor, f"sensors:{sid}"),
                        (everything, "readings")):  # fmt: skip
        for data in expected:
            frame = await ws.recv_type("entity_event")
            assert frame["channel"] == channel
            assert frame["offsets"].keys() == {"readings", f"readings:{sid}", f"sensors:{sid}"}
            assert {k: frame[k] for k in ("entity_type", "event_type", "entity_id", "data",
                                          "metadata")} == {
                "entity_type": "sensor", "event_type": "reading", "entity_id": sid,
                "data": data, "metadata": {"action": "reading"},
            }  # fmt: skip
        await ws.nothing()
    await other.nothing()


async def test_ingest_over_ws_request_answers_like_rest(client, connect: Connect, token: Mint):
    sid = await add_sensor(client)
    ws = await connect(params={"token": token("device")})

    single = await ws_call(ws, "readings", "create", {"sensor_id": sid, "timestamp": T0, "t": 1})
    batch = await ws_call(ws, "readings", "create", {"body": [{"sensor_id": sid, "h": 2}] * 2})
    bad = await ws_call(ws, "readings", "create", {"body": [{"sensor_id": sid, "h": "x"}]})

    assert (single["type"], single["data"]) == ("response", {"accepted": 1})
    assert (batch["type"], batch["data"]) == ("response", {"accepted": 2})
    assert (bad["type"], bad["code"]) == ("error", "bad_request")
    assert bad["details"] == {"0": {"h": ["Not a finite number."]}}
    assert len(await stored(client)) == 3
    anonymous = await connect()
    denied = await ws_call(anonymous, "readings", "create", {"sensor_id": sid, "t": 1})
    assert (denied["type"], denied["code"]) == ("error", "unauthorized")


async def seed_series(client: TestClient, token: Mint) -> int:
    """Sensor with t = 0..5 every 20 s from T0 and h = 100 at T0; returns its id."""
    sid = await add_sensor(client)
    batch = [{"sensor_id": sid, "timestamp": 1714564800 + 20 * i, "t": i} for i in range(6)]
    batch.append({"sensor_id": sid, "timestamp": T0, "h": 100})
    assert (await post(client, batch, token())).status == 201
    return sid


async def test_query_pages_oldest_first_and_ws_list_answers_the_same(
    client, connect: Connect, token: Mint
):
    sid = await seed_series(client, token)
    seen: list[tuple[str, str, float]] = []
    cursor = None
    while True:
        params = {"sensor_id": sid, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/readings", params=params)).json()
        seen += [(i["timestamp"], i["metric"], i["value"]) for i in page["items"]]
        assert {i["sensor_id"] for i in page["items"]} == {sid}
        if (cursor := page["next_cursor"]) is None:
            break

    # Two readings at one instant: in the order they were stored (keyset, no sort).
    assert seen[:3] == [
        ("2024-05-01T12:00:00.000Z", "t", 0.0),
        ("2024-05-01T12:00:00.000Z", "h", 100.0),
        ("2024-05-01T12:00:20.000Z", "t", 1.0),
    ]
    assert [v for _, m, v in seen if m == "t"] == [0, 1, 2, 3, 4, 5]
    assert len(seen) == 7
    query = {"sensor_id": sid, "metric": "t", "from": "2024-05-01T12:00:20Z", "to": 1714564860}
    rest = await (await client.get("/api/v1/readings", params=query)).json()
    assert [i["value"] for i in rest["items"]] == [1.0, 2.0]
    reply = await ws_call(await connect(), "readings", "list", query)
    assert reply["data"] == rest


@pytest.mark.parametrize(
    "params",
    [{"limit": "abc"}, {"limit": 0}, {"limit": 1001}, {"cursor": "nope"}, {"from": "today"}],
)
async def test_bad_query_parameters_are_422(client, params):
    await error_of(await client.get("/api/v1/readings", params=params), 422, "bad_request")


def forged(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "key",
    [
        # The old form: a key and a count of rows to skip, which became an OFFSET.
        ["2024-05-01T12:00:00.000000+00:00", 1, "t", 10**15],
        ["2024-05-01T12:00:00.000000+00:00", 1, 10**30, "t"],
        ["2024-05-01T12:00:00.000000+00:00", 0, 1, "t"],
        ["2024-05-01T12:00:00.000000+00:00", 1, 1, "m" * 201],
        ["yesterday", 1, 1, "t"],
        {"offset": 10**15},
    ],
)
async def test_a_forged_cursor_is_422_in_the_error_shape(client, key):
    resp = await client.get("/api/v1/readings", params={"cursor": forged(key)})

    error = await error_of(resp, 422, "bad_request")
    assert error["details"] == {"cursor": ["Not a cursor this server returned."]}


async def test_a_well_formed_cursor_only_positions_the_page(client, token: Mint):
    sid = await seed_series(client, token)
    cursor = forged(["2024-05-01T12:00:30.000000+00:00", sid, 2**62, "t"])

    page = await (await client.get("/api/v1/readings", params={"cursor": cursor})).json()

    assert [i["timestamp"] for i in page["items"]][:1] == ["2024-05-01T12:00:40.000Z"]


async def test_latest_is_the_newest_value_per_metric(client, connect: Connect, token: Mint):
    sid = await seed_series(client, token)

    resp = await client.get(f"/api/v1/sensors/{sid}/readings/latest")

    latest = await resp.json()
    assert latest == {
        "sensor_id": sid,
        "values": {"h": 100.0, "t": 5.0},
        "timestamps": {"h": "2024-05-01T12:00:00.000Z", "t": "2024-05-01T12:01:40.000Z"},
    }
    assert (await ws_call(await connect(), "readings", "latest", {"sensor_id": sid}))[
        "data"
    ] == latest
    await error_of(await client.get("/api/v1/sensors/999/readings/latest"), 404, "not_found")
    empty = await add_sensor(client)
    got = await (await client.get(f"/api/v1/sensors/{empty}/readings/latest")).json()
    assert got == {"sensor_id": empty, "values": {}, "timestamps": {}}


async def test_aggregate_buckets_a_known_series(client, connect: Connect, token: Mint):
    sid = await seed_series(client, token)
    path = f"/api/v1/sensors/{sid}/readings/aggregate"

    resp = await client.get(path, params={"metric": "t", "bucket": "1m"})

    body = await resp.json()
    assert body == {
        "sensor_id": sid,
        "metric": "t",
        "bucket": 60,
        "items": [
            {"start": "2024-05-01T12:00:00.000Z", "avg": 1.0, "min": 0.0, "max": 2.0, "count": 3},
            {"start": "2024-05-01T12:01:00.000Z", "avg": 4.0, "min": 3.0, "max": 5.0, "count": 3},
        ],
        "next_cursor": None,
    }  # fmt: skip
    ws = await connect()
    reply = await ws_call(
        ws, "readings", "aggregate", {"sensor_id": sid, "metric": "t", "bucket": "1m"}
    )
    assert reply["data"] == body
    windowed = {"metric": "t", "bucket": 40, "from": "2024-05-01T12:00:20Z", "to": 1714564880}
    items = (await (await client.get(path, params=windowed)).json())["items"]
    assert [(i["start"][11:19], i["count"], i["avg"]) for i in items] == [
        ("12:00:00", 1, 1.0),
        ("12:00:40", 2, 2.5),
    ]


@pytest.mark.parametrize(
    "params", [{"metric": "t", "bucket": "5x"}, {"metric": "t", "bucket": "0"}, {"bucket": "1m"}]
)
async def test_aggregate_with_a_bad_bucket_or_no_metric_is_422(client, token: Mint, params):
    sid = await add_sensor(client)
    resp = await client.get(f"/api/v1/sensors/{sid}/readings/aggregate", params=params)

    await error_of(resp, 422, "bad_request")


async def test_a_device_posts_only_for_its_own_sensors(client, token: Mint):
    own = await add_sensor(client)
    storage = client.app[SERVICES].storage
    sql = "INSERT INTO sensors (type, device) VALUES (?, ?) RETURNING id"
    foreign = int(await storage.fetchval(sql, "t", "other-device"))
    unowned = int(await storage.fetchval("INSERT INTO sensors (type) VALUES (?) RETURNING id", "t"))
    batch = [
        {"sensor_id": own, "timestamp": T0, "values": {"t": 1.0}},
        {"sensor_id": foreign, "timestamp": T0, "values": {"t": 2.0}},
        {"sensor_id": unowned, "timestamp": T0, "values": {"t": 3.0}},
    ]

    refused = await post(client, batch, token("device"))
    accepted = await post(client, batch[:1], token("device"))
    as_service = await post(client, batch[1:], token("service"))

    error = await error_of(refused, 403, "forbidden")
    assert error["details"] == {"sensor_ids": sorted([foreign, unowned])}
    assert accepted.status == 201
    assert as_service.status == 201
    assert [r[0] for r in await stored(client)] == sorted([own, foreign, unowned])


async def test_sensor_device_is_set_and_shown_over_rest(client, token: Mint):
    headers = auth_header(token("admin"))
    body = {"type": "temperature", "device": "gateway-7"}
    created = await (await client.post("/api/v1/sensors", json=body, headers=headers)).json()
    device_token = token("device", "gateway-7")

    resp = await post(client, {"sensor_id": created["id"], "values": {"t": 1}}, device_token)

    assert created["device"] == "gateway-7"
    assert resp.status == 201
