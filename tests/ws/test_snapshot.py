"""subscribe with snapshot: the latest reading per metric first, then live, no gap, no dup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.keys import SERVICES
from server.services.readings import Reading
from server.services.timestamps import iso
from tests.conftest import auth_header

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def reading(sensor_id: int, ts: datetime, t: float) -> Reading:
    return (sensor_id, ts, {"t": t}, iso(ts))


async def _sensor_with_readings(client, token) -> int:
    headers = auth_header(token())
    resp = await client.post(
        "/api/v1/sensors", json={"type": "climate", "unit": "C"}, headers=headers
    )
    sensor_id = (await resp.json())["id"]
    body = [
        {
            "sensor_id": sensor_id,
            "timestamp": "2026-11-26T12:00:00Z",
            "values": {"t": 20.0, "h": 50.0},
        },
        {"sensor_id": sensor_id, "timestamp": "2026-11-26T12:01:00Z", "values": {"t": 21.5}},
    ]
    assert (await client.post("/api/v1/readings", json=body, headers=headers)).status == 201
    return sensor_id


def _snapshot_values(frames):
    return {
        metric: (f["data"]["timestamp"], value)
        for f in frames
        for metric, value in f["data"]["values"].items()
    }


async def test_snapshot_sends_latest_per_metric_then_live(client, connect, token):
    sensor_id = await _sensor_with_readings(client, token)
    ws = await connect()
    channel = f"readings:{sensor_id}"
    sub = await ws.request({"type": "subscribe", "id": 1, "channel": channel, "snapshot": True})
    assert (sub["type"], sub["channel"], sub["offset"]) == ("subscribed", channel, 2)
    assert "recovered" not in sub
    state = [await ws.recv_type("entity_event") for _ in range(2)]
    for frame in state:
        assert frame["channel"] == channel
        assert (frame["entity_type"], frame["event_type"]) == ("sensor", "reading")
        assert frame["entity_id"] == sensor_id
        assert frame["metadata"] == {"action": "reading", "snapshot": True}
        assert "offset" not in frame
    assert _snapshot_values(state) == {
        "t": ("2026-11-26T12:01:00.000Z", 21.5),
        "h": ("2026-11-26T12:00:00.000Z", 50.0),
    }
    await ws.nothing()
    body = {"sensor_id": sensor_id, "timestamp": "2026-11-26T12:02:00Z", "values": {"t": 22.0}}
    await client.post("/api/v1/readings", json=body, headers=auth_header(token()))
    live = await ws.recv_type("entity_event")
    assert (live["offset"], live["data"]["values"]) == (3, {"t": 22.0})
    assert live["metadata"] == {"action": "reading"}


async def test_snapshot_on_sensor_channel_of_unknown_sensor_sends_nothing(connect):
    ws = await connect()
    sub = await ws.request({"type": "subscribe", "channel": "sensors:999", "snapshot": True})
    assert sub["type"] == "subscribed"
    await ws.nothing()


async def test_snapshot_is_refused_on_channels_without_state(connect):
    ws = await connect()
    err = await ws.request({"type": "subscribe", "id": 4, "channel": "anomalies", "snapshot": True})
    assert (err["type"], err["code"], err["id"]) == ("error", "bad_request", 4)
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_live_readings_during_the_snapshot_query_are_neither_lost_nor_repeated(
    client, connect, token
):
    sensor_id = await _sensor_with_readings(client, token)
    readings = client.app[SERVICES].readings
    original = readings.snapshot

    async def snapshot_while_ingesting(sid):
        # One reading lands before the state is read (so the state has it: must not repeat),
        # one after (the state lacks it: must follow the snapshot).
        await readings.ingest([reading(sid, T0 + timedelta(minutes=5), 30.0)], batch=False)
        result = await original(sid)
        await readings.ingest([reading(sid, T0 + timedelta(minutes=6), 31.0)], batch=False)
        return result

    readings.snapshot = snapshot_while_ingesting
    ws = await connect()
    channel = f"readings:{sensor_id}"
    sub = await ws.request({"type": "subscribe", "channel": channel, "snapshot": True})
    assert sub["offset"] == 2
    state = [await ws.recv_type("entity_event") for _ in range(2)]
    assert _snapshot_values(state)["t"] == ("2026-11-26T12:05:00.000Z", 30.0)
    live = await ws.recv_type("entity_event")
    assert (live["offset"], live["data"]["values"]) == (4, {"t": 31.0})
    await ws.nothing()
