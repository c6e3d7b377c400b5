"""Seed 003 (notifications service): its sockets, frames, curl notifications and REST
shapes, with its one switch (`compat.ws_path: client_id`) and its token as an API token."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import AUTH
from tests.conftest import WS, open_ws

SEED = {
    "compat": {"ws_path": "client_id"},
    "auth": {"api_tokens": [{"name": "microservices", "token": "dev", "role": "service"}]},
}


@pytest.fixture
async def client(make_client: Any) -> TestClient:
    return await make_client(SEED)


async def connect(client: TestClient, path: str) -> WS:
    """As the seed's client: connect and read `connection_established`; the native
    `subscribed` frames that follow are types it does not know (and skips)."""
    ws = await open_ws(client, path, handshake=False)
    hello = await ws.recv_type("connection_established")
    assert hello["client_id"] == path.split("/")[2].split("?")[0]
    for _ in range(2):  # its room and `general`
        await ws.recv_type("subscribed")
    return ws


async def notify(client: TestClient, body: dict[str, Any]) -> Any:
    return await client.post("/notify?token=dev", json=body)


async def test_basic_and_parametrized_connections(client: TestClient):
    ws = await open_ws(client, "/ws/client-123", handshake=False)
    hello = await ws.recv_type("connection_established")
    other = await open_ws(client, "/ws/client-456?user_id=456&room=tema_1", handshake=False)
    hello2 = await other.recv_type("connection_established")

    assert (hello["client_id"], hello["room"]) == ("client-123", "general")
    assert (hello2["client_id"], hello2["user_id"], hello2["room"]) == (
        "client-456",
        "456",
        "tema_1",
    )
    assert hello2["message"]


async def test_ping_chat_message_and_join_room(client: TestClient):
    a = await connect(client, "/ws/client-1?user_id=1")
    b = await connect(client, "/ws/client-2?user_id=2")
    joined = await a.recv_type("user_joined")
    assert joined["message"] == "2 se unió a la sala general"

    await a.send({"type": "ping"})
    assert (await a.recv_type("pong"))["type"] == "pong"
    await a.send({"type": "chat_message", "message": "Hola a todos!"})
    await a.recv_type("message_sent")
    for ws in (a, b):
        got = await ws.recv_type("chat_message")
        assert (got["client_id"], got["message"], got["room"]) == (
            "client-1",
            "Hola a todos!",
            "general",
        )

    await b.send({"type": "join_room", "room": "tema_1"})
    left = await a.recv_type("user_left")
    assert left["message"] == "2 salió de la sala general"


async def test_global_event_reaches_everyone_as_system_notification(client: TestClient):
    socks = [await connect(client, f"/ws/c{i}") for i in range(2)]
    await socks[0].recv_type("user_joined")
    body = {
        "event": "presentacion.creada",
        "payload": {"id": 123, "titulo": "Mi Presentación", "usuarioId": 456},
    }

    resp = await notify(client, body)

    assert resp.status == 200, await resp.text()
    for ws in socks:
        got = await ws.recv_type("system_notification")
        assert (got["event"], got["payload"]) == (body["event"], body["payload"])


async def test_curl_test_notification_goes_to_general(client: TestClient):
    ws = await connect(client, "/ws/test-client")

    resp = await notify(
        client, {"event": "test.notification", "payload": {"message": "Hola mundo"}}
    )

    assert resp.status == 200
    assert (await ws.recv_type("system_notification"))["payload"] == {"message": "Hola mundo"}


async def test_user_event_reaches_that_users_token_socket_not_a_user_id_label(
    client: TestClient,
):
    token = client.app[AUTH].mint("456", "user")
    owner = await open_ws(client, f"/ws/mine?token={token}", handshake=False)
    await owner.recv_type("connection_established")
    for _ in range(3):  # its room, general and user:456
        await owner.recv_type("subscribed")
    labelled = await connect(client, "/ws/spoof?user_id=456")
    # The label "456" is someone else than the token's user 456: its arrival is news.
    joined = await owner.recv_type("user_joined")

    resp = await notify(client, {"event": "user.456.nota", "payload": {"usuarioId": 456}})

    assert joined["user_id"] == "456"
    assert (await resp.json())["channel"] == "user:456"
    assert (await owner.recv_type("system_notification"))["event"] == "user.456.nota"
    await labelled.nothing()


async def test_tema_event_reaches_that_topics_room(client: TestClient):
    in_room = await connect(client, "/ws/a?room=tema_7")
    elsewhere = await connect(client, "/ws/b?room=tema_8")

    resp = await notify(client, {"event": "feedback.creado", "payload": {"temaId": 7}})

    assert (await resp.json())["channel"] == "chat:tema_7"
    assert (await in_room.recv_type("system_notification"))["event"] == "feedback.creado"
    await elsewhere.nothing()


async def test_notify_without_the_token_is_refused(client: TestClient):
    listener = await connect(client, "/ws/c1")
    resp = await client.post("/notify", json={"event": "x", "payload": {}})

    assert resp.status == 401
    assert await resp.json() == {
        "error": {
            "code": "unauthorized",
            "message": "this operation needs a token",
            "details": None,
            "request_id": resp.headers["X-Request-ID"],
        }
    }
    await listener.nothing()  # nothing was sent
    history = await (await client.get("/history?token=dev")).json()
    assert history["total"] == 0  # nor stored


async def test_stats_health_and_history_shapes(client: TestClient):
    await connect(client, "/ws/client-123?user_id=456")
    await connect(client, "/ws/client-9?room=tema_1")
    await notify(client, {"event": "presentacion.creada", "payload": {"id": 1}})

    stats = await (await client.get("/stats")).json()
    health = await (await client.get("/health")).json()
    history = await (await client.get("/history?token=dev")).json()

    assert stats["total_connections"] == 2
    assert stats["rooms"] == {"general": 1, "tema_1": 1}
    assert stats["total_notifications_sent"] == 1
    client_123 = next(c for c in stats["clients"] if c["client_id"] == "client-123")
    assert (client_123["user_id"], client_123["room"]) == ("456", "general")
    assert client_123["connected_at"].endswith("Z")
    assert (health["status"], health["service"], health["connections"]) == (
        "healthy",
        "sensorcast",
        2,
    )
    assert "timestamp" in health
    assert history["total"] == 1
    item = history["history"][0]
    assert (item["type"], item["event"], item["payload"]) == (
        "system_notification",
        "presentacion.creada",
        {"id": 1},
    )
    assert "timestamp" in item
