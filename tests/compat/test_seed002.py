"""Seed 002 (chat, phase 2): its Python/JS client flows against Sensorcast, unchanged."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import WS, open_ws


async def connect(client: TestClient, room: str, user_id: str, username: str) -> WS:
    """As the seed's client: connect, then past `connected` (what it waits for) and the
    native `subscribed` (a type it does not know, and skips)."""
    ws = await open_ws(client, f"/ws/{room}?user_id={user_id}&username={username}", False)
    await ws.recv_type("connection")
    assert (await ws.recv_type("connected"))["data"]["room_id"] == room
    await ws.recv_type("subscribed")
    return ws


async def test_connected_lists_active_users(client: TestClient):
    await connect(client, "1", "1", "Alice")
    ws = await open_ws(client, "/ws/1?user_id=2&username=Bob", handshake=False)
    await ws.recv_type("connection")

    connected = await ws.recv_type("connected")

    assert connected["data"]["active_users"] == ["Alice", "Bob"]


async def test_message_flow_ack_then_room_broadcast(client: TestClient):
    juan = await connect(client, "1", "1", "Juan")
    ana = await connect(client, "1", "2", "Ana")
    joined = await juan.recv_type("user_joined")
    assert joined["data"]["username"] == "Ana"

    await juan.send({"type": "message", "content": "Hola mundo!"})

    sent = await juan.recv_type("message_sent")
    assert isinstance(sent["message_id"], int)
    assert sent["timestamp"].endswith("Z")
    for ws in (juan, ana):
        msg = await ws.recv_type("message")
        data = msg["data"]
        assert (data["id"], data["user_id"], data["username"], data["content"]) == (
            sent["message_id"],
            "1",
            "Juan",
            "Hola mundo!",
        )
        assert "created_at" in data


async def test_typing_reaches_others_only_and_user_left(client: TestClient):
    juan = await connect(client, "1", "1", "Juan")
    ana = await connect(client, "1", "2", "Ana")
    await juan.recv_type("user_joined")

    await ana.send({"type": "typing", "is_typing": True})
    typing = await juan.recv_type("typing")
    await ana.close()
    left = await juan.recv_type("user_left")

    assert typing["data"] == {"user_id": "2", "username": "Ana", "is_typing": True}
    assert left["data"] == {"user_id": "2", "username": "Ana"}


async def test_ping_pong_and_error_on_bad_json(client: TestClient):
    ws = await connect(client, "1", "1", "Juan")

    await ws.send({"type": "ping"})
    pong = await ws.recv_type("pong")
    await ws.send("{not json")
    error = await ws.recv_type("error")

    assert pong["type"] == "pong"
    assert error["code"] == "invalid_json"
    assert error["message"]


async def test_ws_stats_and_health(client: TestClient):
    await connect(client, "1", "1", "Alice")
    await connect(client, "1", "2", "Bob")
    await connect(client, "2", "3", "Carol")

    stats = await (await client.get("/ws/stats")).json()
    health = await client.get("/health")

    assert stats == {
        "total_connections": 3,
        "total_rooms": 2,
        "rooms": {"1": {"connections": 2, "users": 2}, "2": {"connections": 1, "users": 1}},
    }
    assert health.status == 200
    assert (await health.json())["status"] == "healthy"


async def test_a_room_named_stats_is_still_a_room(client: TestClient):
    ws = await connect(client, "stats", "1", "Alice")

    await ws.send({"type": "message", "content": "hi"})

    assert (await ws.recv_type("message_sent"))["data"]["room"] == "stats"
