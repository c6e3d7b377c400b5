"""Seed 002 exactly (`compat.ws_path: seed002`): its Python example reads one frame after
connecting and one after sending, so `connected` must come first and `message_sent` right
after a message; only the frame types its README documents reach the socket."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import AUTH
from tests.conftest import WS, auth_header, open_ws

SEED_TYPES = {"connected", "message", "message_sent", "user_joined", "user_left", "typing"}
SEED_TYPES |= {"pong", "error"}


@pytest.fixture
async def client(make_client: Any) -> TestClient:
    return await make_client({"compat": {"ws_path": "seed002"}})


async def seed_socket(client: TestClient, user_id: str, username: str) -> WS:
    return await open_ws(client, f"/ws/1?user_id={user_id}&username={username}", False)


async def test_the_python_example_reads_connected_then_message_sent(client: TestClient):
    ws = await seed_socket(client, "1", "Juan")

    # Recibir confirmación de conexión
    connected = await ws.recv()
    await ws.send({"type": "message", "content": "Hola mundo!"})
    # Recibir respuesta
    response = await ws.recv()
    broadcast = await ws.recv()

    assert connected["type"] == "connected"
    assert connected["data"] == {"room_id": "1", "active_users": ["Juan"]}
    assert response["type"] == "message_sent"
    assert isinstance(response["message_id"], int)
    assert broadcast["type"] == "message"
    assert broadcast["data"]["content"] == "Hola mundo!"
    assert broadcast["data"]["user_id"] == "1"


async def test_only_documented_frame_types_reach_the_socket(client: TestClient):
    ws = await seed_socket(client, "1", "Ana")
    assert (await ws.recv())["type"] == "connected"
    # Frames are read once the socket has joined: the pong says it is in the room.
    assert (await ws.request({"type": "ping"}))["type"] == "pong"
    other = await seed_socket(client, "2", "Bob")
    assert (await other.recv())["type"] == "connected"
    service = auth_header(client.app[AUTH].mint("svc", "service"))

    # A system event and a custom event into the room: types seed 002 does not know.
    for body in ({"type": "system_event", "message": "x"}, {"anything": 1}):
        resp = await client.post("/api/v1/events/chat:1", json=body, headers=service)
        assert resp.status == 202
    await other.send({"type": "typing", "is_typing": True})
    # Bob's own fence first: once he has his pong, his typing was handled and is queued for
    # Ana ahead of her fence below (else the server may read Ana's ping before it).
    await other.send({"type": "ping"})
    while (await other.recv())["type"] != "pong":
        pass
    await ws.send({"type": "subscribe", "channel": "general"})  # answered natively: dropped
    await ws.send({"type": "nope"})
    await ws.send({"type": "ping"})

    seen = []
    while True:  # the ping's pong is the fence: everything sent before it has arrived
        frame = await ws.recv()
        seen.append(frame["type"])
        if frame["type"] == "pong":
            break
    assert seen == ["user_joined", "typing", "error", "pong"]
    assert set(seen) <= SEED_TYPES
