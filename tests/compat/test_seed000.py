"""Seed 000 (modular rooms server): its README's URLs, token and curl bodies, unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import SERVICES
from tests.conftest import open_ws

# The seed's static token, configured as an API token (its documented switch).
SEED = {"auth": {"api_tokens": [{"name": "robots", "token": "abc123", "role": "service"}]}}


@pytest.fixture
async def client(make_client: Any) -> TestClient:
    return await make_client(SEED)


async def test_robot_connects_to_its_room_with_client_id_and_token(client: TestClient):
    ws = await open_ws(client, "/ws/robots?client_id=RobotA&token=abc123", handshake=False)

    hello = await ws.recv_type("connection")

    assert (hello["client_id"], hello["channel"]) == ("RobotA", "chat:robots")
    assert hello["user"]["role"] == "service"


async def test_curl_broadcast_with_plain_text_reaches_the_room_and_its_history(
    client: TestClient,
):
    robot = await open_ws(client, "/ws/robots?client_id=RobotA&token=abc123")

    resp = await client.post(
        "/api/v1/broadcast/robots?token=abc123",
        headers={"Content-Type": "application/json"},
        data="Test message from server",
    )

    assert resp.status == 202, await resp.text()
    frame = await robot.recv_type("message")
    assert frame["data"]["content"] == "Test message from server"
    history = await (await client.get("/api/v1/messages/robots")).json()
    assert [m["content"] for m in history["items"]] == ["Test message from server"]


async def test_broadcast_with_a_wrong_token_is_refused(client: TestClient):
    resp = await client.post("/api/v1/broadcast/robots?token=nope", data="x")

    assert resp.status == 401
    assert await client.app[SERVICES].storage.fetch("SELECT * FROM messages") == []


async def test_info_status_rooms_and_connections(client: TestClient):
    await open_ws(client, "/ws/robots?client_id=RobotA&token=abc123")
    await open_ws(client, "/ws/robots?client_id=RobotB")

    info = await (await client.get("/api/v1/")).json()
    status = await (await client.get("/api/v1/status")).json()
    rooms = await (await client.get("/api/v1/rooms")).json()
    conns = await (await client.get("/api/v1/rooms/robots/connections")).json()

    assert info["name"] == "sensorcast"
    assert status["total_connections"] == 2
    assert status["total_rooms"] == 1
    assert status["rooms"]["robots"]["connections"] == 2
    # A socket with an API token is that token's name in chat; its client_id is listed too.
    assert {m["user_id"] for m in status["rooms"]["robots"]["members"]} == {"RobotB", "robots"}
    assert [r["room"] for r in rooms["items"]] == ["robots"]
    assert conns["connections"] == 2
    assert conns["clients"] == [
        {"client_id": "RobotA", "user_id": "robots"},
        {"client_id": "RobotB", "user_id": "RobotB"},
    ]


async def test_client_id_format_and_duplicates_are_refused(client: TestClient):
    bad = await open_ws(client, "/ws/robots?client_id=Robot%20A", handshake=False)
    await open_ws(client, "/ws/robots?client_id=RobotA")
    dup = await open_ws(client, "/ws/robots?client_id=RobotA", handshake=False)

    assert (await bad.closed())[0] == 4400
    assert await dup.closed() == (4009, "duplicate client_id")


async def test_history_keeps_the_last_50_per_room(client: TestClient):
    chat = client.app[SERVICES].chat
    for i in range(55):
        await chat.store_message("robots", "RobotA", "RobotA", f"m{i}")

    page = await (await client.get("/api/v1/messages/robots")).json()
    late = await open_ws(client, "/ws/robots?client_id=Late")
    on_join = [await late.recv_type("message") for _ in range(50)]

    assert len(page["items"]) == 50
    assert page["items"][0]["content"] == "m54"
    assert [m["data"]["content"] for m in on_join] == [f"m{i}" for i in range(5, 55)]
