"""End to end: a dashboard on `sensors:{id}` sees the sensor's whole life, in order."""

from tests.api.test_readings import config  # noqa: F401
from tests.conftest import auth_header

# Every test here runs on SQLite and on PostgreSQL (skipped loudly when down).
from tests.storage.conftest import backend, open_db, pg_server_url  # noqa: F401


async def test_creation_readings_anomaly_and_prediction_arrive_in_order(client, connect, token):
    ws = await connect("/api/v1/ws?channel=sensors:1")
    headers = auth_header(token())
    sensor = {"tipo": "temperatura", "unit": "C", "thresholds": {"t": {"max": 30}}}
    resp = await client.post("/api/v1/sensors", json=sensor, headers=headers)
    assert resp.status == 201
    assert (await resp.json())["id"] == 1
    readings = [
        {"sensor_id": 1, "timestamp": f"2026-11-26T12:0{i}:00Z", "values": {"t": value}}
        for i, value in enumerate([20.0, 25.0, 31.0, 26.0])
    ]
    assert (await client.post("/api/v1/readings", json=readings, headers=headers)).status == 201
    body = {"metric": "t", "horizon": 2}
    resp = await client.post("/api/v1/sensors/1/predictions", json=body, headers=headers)
    assert resp.status == 201

    frames = [await ws.recv_type("entity_event") for _ in range(7)]
    assert [(f["entity_type"], f["event_type"]) for f in frames] == [
        ("sensor", "created"),
        ("sensor", "reading"),
        ("sensor", "reading"),
        ("sensor", "reading"),
        ("anomaly", "anomaly_detected"),
        ("sensor", "reading"),
        ("prediction", "prediction_completed"),
    ]
    assert [f["offset"] for f in frames] == list(range(1, 8))
    assert {f["channel"] for f in frames} == {"sensors:1"}
    assert frames[0]["data"]["tipo"] == "temperatura"
    assert [f["data"]["values"]["t"] for f in frames if f["event_type"] == "reading"] == [
        20.0,
        25.0,
        31.0,
        26.0,
    ]
    anomaly = frames[4]["data"]
    assert (anomaly["metric"], anomaly["value"], anomaly["max"]) == ("t", 31.0, 30.0)
    assert len(frames[6]["data"]["points"]) == 2
    await ws.nothing()
