"""Seed 004 (IoT sensors): its sockets, curl bodies and stats paths, with its one switch
(`auth.anonymous_writes: true`, as its clients post without a token)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import AUTH
from tests.conftest import open_ws

SEED = {"auth": {"anonymous_writes": True}}


@pytest.fixture
async def client(make_client: Any) -> TestClient:
    return await make_client(SEED)


async def test_connection_frame_names_the_channel(client: TestClient):
    ws = await open_ws(client, "/api/v1/ws?channel=sensors&user_id=optional", handshake=False)

    hello = await ws.recv_type("connection")

    assert (hello["status"], hello["channel"]) == ("connected", "sensors")


async def test_curl_sensor_create_emits_the_documented_entity_event(client: TestClient):
    ws = await open_ws(client, "/api/v1/ws?channel=sensors")

    resp = await client.post(
        "/api/v1/sensors",
        headers={"Content-Type": "application/json"},
        data='{"tipo": "temperatura", "modelo": "DHT22"}',
    )

    assert resp.status == 201, await resp.text()
    event = await ws.recv_type("entity_event")
    assert (event["entity_type"], event["event_type"]) == ("sensor", "created")
    assert event["entity_id"] == (await resp.json())["id"]
    data = event["data"]
    assert (data["id"], data["tipo"], data["modelo"]) == (
        event["entity_id"],
        "temperatura",
        "DHT22",
    )
    assert "created_at" in data
    assert event["timestamp"].endswith("Z")
    assert "action" in event["metadata"]


async def test_curl_reading_create_reaches_the_readings_channel(client: TestClient):
    sensor = await (await client.post("/api/v1/sensors", json={"tipo": "temperatura"})).json()
    ws = await open_ws(client, "/api/v1/ws?channel=readings")

    resp = await client.post(
        "/api/v1/readings",
        json={
            "sensor_id": sensor["id"],
            "temperatura": 23.5,
            "humedad": 65.2,
            "timestamp": "2025-07-20T10:30:00Z",
        },
    )

    assert resp.status == 201, await resp.text()
    event = await ws.recv_type("entity_event")
    assert event["data"]["values"] == {"temperatura": 23.5, "humedad": 65.2}
    assert event["data"]["timestamp"].startswith("2025-07-20T10:30:00")


async def test_test_event_is_a_system_event(client: TestClient):
    ws = await open_ws(client, "/api/v1/ws?channel=general")

    resp = await client.post("/api/v1/ws/test-event?channel=general&message=Prueba")

    assert resp.status == 202
    event = await ws.recv_type("system_event")
    assert (event["level"], event["message"]) == ("info", "Prueba")
    assert isinstance(event["data"], dict)


async def test_secure_endpoint_needs_the_token(client: TestClient):
    token = client.app[AUTH].mint("user1", "user")
    ok = await open_ws(client, f"/api/v1/ws/secure?channel=general&token={token}", False)
    refused = await open_ws(client, "/api/v1/ws/secure?channel=general", handshake=False)

    assert (await ok.recv_type("connection"))["channel"] == "general"
    assert (await refused.closed())[0] == 4001


async def test_ws_stats_and_channel_stats(client: TestClient):
    await open_ws(client, "/api/v1/ws?channel=general&user_id=user1")
    await open_ws(client, "/api/v1/ws?channel=general")
    await open_ws(client, "/api/v1/ws?channel=sensors&user_id=user2")

    stats = await (await client.get("/api/v1/ws/stats")).json()
    sensors = await (await client.get("/api/v1/ws/stats/sensors")).json()
    bad = await client.get("/api/v1/ws/stats/Not%20A%20Channel")

    assert stats["total_channels"] == 2
    assert stats["total_connections"] == 3
    general = stats["channels"]["general"]
    assert general["connections"] == 2
    assert sorted(u["user_id"] for u in general["users"]) == ["anonymous", "user1"]
    assert all(u["connected_at"].endswith("Z") for u in general["users"])
    assert sensors["channel"] == "sensors"
    assert sensors["connections"] == 1
    assert sensors["users"][0]["user_id"] == "user2"
    assert bad.status == 400
