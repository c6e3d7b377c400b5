"""Anomalies: raised from thresholds on ingest, listed, resolved; REST, WS `request`, events.

Runs on SQLite and PostgreSQL through the fixtures of test_readings.py.
"""

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import SERVICES
from tests.api.test_readings import (  # noqa: F401 (backend, config, open_db, pg_server_url: fixtures)
    T0,
    add_sensor,
    backend,
    config,
    open_db,
    pg_server_url,
    post,
    ws_call,
)
from tests.api.test_system import ISO_UTC, Mint, error_of
from tests.conftest import Connect, auth_header

ANOMALY_KEYS = {
    "id", "sensor_id", "metric", "value", "min", "max", "timestamp", "resolved", "resolved_at",
    "created_at",
}  # fmt: skip
THRESHOLDS = {"t": {"min": 0, "max": 30}, "h": {"max": 80}, "p": {"min": 900, "max": None}}


async def anomaly_rows(client: TestClient) -> list[tuple[str, float]]:
    rows = await client.app[SERVICES].storage.fetch("SELECT * FROM anomalies ORDER BY id")
    return [(r["metric"], r["value"]) for r in rows]


async def resolve(client: TestClient, anomaly_id: int, tok: str | None) -> Any:
    headers = auth_header(tok) if tok else {}
    return await client.post(f"/api/v1/anomalies/{anomaly_id}/resolve", headers=headers)


async def test_anomalies_are_raised_exactly_outside_thresholds_before_the_201(client, token: Mint):
    sid = await add_sensor(client, THRESHOLDS)
    batch = [
        {"sensor_id": sid, "timestamp": T0, "values": {"t": 0, "h": 80, "p": 900, "x": 1e9}},
        {"sensor_id": sid, "timestamp": T0, "values": {"t": 30.5, "h": 80.01}},
        {"sensor_id": sid, "timestamp": T0, "values": {"t": -0.1, "p": 899.9}},
        {"sensor_id": sid, "timestamp": T0, "values": {"t": 30, "p": 1e6}},
    ]

    resp = await post(client, batch, token("device"))

    assert resp.status == 201
    # Read straight after the 201: they were stored with the readings.
    assert await anomaly_rows(client) == [("t", 30.5), ("h", 80.01), ("t", -0.1), ("p", 899.9)]


async def test_list_is_newest_first_with_paging_and_filters(client, connect: Connect, token: Mint):
    sid = await add_sensor(client, THRESHOLDS)
    other = await add_sensor(client, THRESHOLDS)
    batch = [{"sensor_id": sid, "timestamp": T0, "t": 100 + i} for i in range(5)]
    await post(client, [*batch, {"sensor_id": other, "t": -5}], token())

    values: list[float] = []
    cursor = None
    while True:
        params = {"sensor_id": sid, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/anomalies", params=params)).json()
        values += [a["value"] for a in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break

    assert values == [104, 103, 102, 101, 100]
    everything = await (await client.get("/api/v1/anomalies")).json()
    assert [a["value"] for a in everything["items"]] == [-5, 104, 103, 102, 101, 100]
    first = everything["items"][0]
    assert set(first) == ANOMALY_KEYS
    assert (first["sensor_id"], first["metric"], first["min"], first["max"]) == (other, "t", 0, 30)
    assert (first["resolved"], first["resolved_at"]) == (False, None)
    assert ISO_UTC.match(first["created_at"])
    ws = await connect()
    assert (await ws_call(ws, "anomalies", "list", {}))["data"] == everything


async def test_resolve_is_200_with_the_object_then_409_and_filters_by_resolved(
    client, connect: Connect, token: Mint
):
    sid = await add_sensor(client, THRESHOLDS)
    await post(client, [{"sensor_id": sid, "timestamp": T0, "t": 99}] * 2, token())
    listed = (await (await client.get("/api/v1/anomalies")).json())["items"]

    resp = await resolve(client, listed[0]["id"], token())

    assert resp.status == 200
    resolved = await resp.json()
    assert {**resolved, "resolved": False, "resolved_at": None} == listed[0]
    assert resolved["resolved"] is True
    assert ISO_UTC.match(resolved["resolved_at"])
    again = await error_of(await resolve(client, listed[0]["id"], token()), 409, "conflict")
    assert str(listed[0]["id"]) in again["message"]
    only = await (await client.get("/api/v1/anomalies", params={"resolved": "true"})).json()
    assert only["items"] == [resolved]
    open_ = await (await client.get("/api/v1/anomalies", params={"resolved": "false"})).json()
    assert [a["id"] for a in open_["items"]] == [listed[1]["id"]]
    ws = await connect(params={"token": token()})
    reply = await ws_call(ws, "anomalies", "resolve", {"id": listed[1]["id"]})
    assert reply["data"]["resolved"] is True
    conflict = await ws_call(ws, "anomalies", "resolve", {"id": listed[1]["id"]})
    assert (conflict["type"], conflict["code"]) == ("error", "conflict")


async def test_resolve_unknown_is_404_and_needs_a_writing_role(client, token: Mint):
    sid = await add_sensor(client, THRESHOLDS)
    await post(client, {"sensor_id": sid, "t": 99}, token())
    [anomaly] = (await (await client.get("/api/v1/anomalies")).json())["items"]

    await error_of(await resolve(client, 12345, token()), 404, "not_found")
    await error_of(await resolve(client, anomaly["id"], None), 401, "unauthorized")
    await error_of(await resolve(client, anomaly["id"], token("device")), 403, "forbidden")
    await error_of(await resolve(client, 0, token()), 422, "bad_request")


@pytest.mark.parametrize("params", [{"cursor": "x"}, {"resolved": "maybe"}, {"limit": -1}])
async def test_bad_list_parameters_are_422(client, params):
    await error_of(await client.get("/api/v1/anomalies", params=params), 422, "bad_request")


async def test_anomaly_events_reach_anomalies_and_the_sensor_after_its_reading(
    client, connect: Connect, token: Mint
):
    sid = await add_sensor(client, THRESHOLDS)
    feed = await connect("/api/v1/ws?channel=anomalies")
    sensor = await connect(f"/api/v1/ws?channel=sensors:{sid}")

    await post(client, {"sensor_id": sid, "timestamp": T0, "values": {"t": 31, "h": 1}}, token())

    [anomaly] = (await (await client.get("/api/v1/anomalies")).json())["items"]
    detected = {
        "entity_type": "anomaly", "event_type": "anomaly_detected", "entity_id": anomaly["id"],
        "data": anomaly, "metadata": {"action": "anomaly_detected"},
    }  # fmt: skip
    frame = await feed.recv_type("entity_event")
    assert frame["channel"] == "anomalies"
    assert {k: frame[k] for k in detected} == detected
    reading = await sensor.recv_type("entity_event")
    assert (reading["event_type"], reading["data"]["values"]) == ("reading", {"t": 31.0, "h": 1.0})
    frame = await sensor.recv_type("entity_event")
    assert (frame["channel"], set(frame["offsets"])) == (
        f"sensors:{sid}",
        {"anomalies", f"sensors:{sid}"},
    )
    assert {k: frame[k] for k in detected} == detected

    resolved = await (await resolve(client, anomaly["id"], token("admin"))).json()

    for ws in (feed, sensor):
        frame = await ws.recv_type("entity_event")
        assert (frame["event_type"], frame["entity_id"], frame["data"]) == (
            "anomaly_resolved",
            anomaly["id"],
            resolved,
        )
        assert frame["metadata"] == {"action": "anomaly_resolved", "user": "tester"}
        await ws.nothing()
