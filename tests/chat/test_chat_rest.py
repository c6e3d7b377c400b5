"""Chat history, rooms and broadcasts over REST and WS `request`, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

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


async def say(client: TestClient, room: str, *texts: str) -> list[int]:
    """Store messages through the service (no socket needed); returns their ids."""
    chat = client.app[SERVICES].chat
    ids = []
    for text in texts:
        message = await chat.store_message(room, "1", "Ana", text)
        ids.append(message["id"])
    return ids


async def test_history_is_newest_first_and_pages_back(client: TestClient):
    ids = await say(client, "lobby", *(f"m{i}" for i in range(5)))
    await say(client, "other", "elsewhere")

    first = await (await client.get("/api/v1/messages/lobby?limit=2")).json()
    second = await (
        await client.get(f"/api/v1/messages/lobby?limit=2&cursor={first['next_cursor']}")
    ).json()
    by_id = await (await client.get(f"/api/v1/messages/lobby?before={ids[1]}")).json()

    assert [m["content"] for m in first["items"]] == ["m4", "m3"]
    assert [m["content"] for m in second["items"]] == ["m2", "m1"]
    assert [m["content"] for m in by_id["items"]] == ["m0"]
    assert by_id["next_cursor"] is None
    item = first["items"][0]
    assert set(item) == {
        "id",
        "room",
        "user_id",
        "username",
        "content",
        "created_at",
        "anonymous",
    }
    assert (item["id"], item["room"], item["user_id"]) == (ids[4], "lobby", "1")


async def test_history_defaults_to_the_newest_50(client: TestClient):
    await say(client, "big", *(f"m{i}" for i in range(55)))

    page = await (await client.get("/api/v1/messages/big")).json()

    assert len(page["items"]) == 50
    assert page["items"][0]["content"] == "m54"
    assert page["next_cursor"] is not None


async def test_unused_room_has_empty_history_not_404(client: TestClient):
    resp = await client.get("/api/v1/messages/nobody-here")

    assert resp.status == 200
    assert await resp.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("before=-1", "before"),
        ("cursor=zz", "cursor"),
    ],
)
async def test_bad_history_queries_are_422(client: TestClient, query: str, field: str):
    error = await error_of(await client.get(f"/api/v1/messages/lobby?{query}"), 422, "bad_request")

    assert field in error["details"]


async def test_invalid_room_name_is_422(client: TestClient):
    error = await error_of(await client.get("/api/v1/messages/a%20b"), 422, "bad_request")

    assert "room" in error["details"]


@pytest.mark.parametrize(
    ("body", "content_type", "text"),
    [
        ("Test message from server", "application/json", "Test message from server"),
        ("plain words", "text/plain", "plain words"),
        ('"a JSON string"', "application/json", "a JSON string"),
        ('{"content": "an object"}', "application/json", "an object"),
    ],
)
async def test_broadcast_posts_a_server_message(
    client: TestClient, connect: Connect, token: Mint, body: str, content_type: str, text: str
):
    ws = await connect("/ws/robots", params={"client_id": "RobotA"})

    resp = await client.post(
        "/api/v1/broadcast/robots",
        data=body,
        headers={"Content-Type": content_type, **auth_header(token())},
    )

    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    frame = await ws.recv_type("message")
    assert frame["data"]["content"] == text
    assert frame["data"]["user_id"] == "server"
    assert (answer["channel"], answer["offset"]) == ("chat:robots", frame["offset"])
    assert answer["message"] == frame["data"]
    rows = await client.app[SERVICES].storage.fetch("SELECT room, content FROM messages")
    assert rows == [{"room": "robots", "content": text}]


async def test_broadcast_needs_a_writer_token(client: TestClient, token: Mint):
    anonymous = await client.post("/api/v1/broadcast/r", data="hi")
    as_user = await client.post(
        "/api/v1/broadcast/r", data="hi", headers=auth_header(token("user"))
    )

    await error_of(anonymous, 401, "unauthorized")
    await error_of(as_user, 403, "forbidden")
    assert await client.app[SERVICES].storage.fetch("SELECT * FROM messages") == []


@pytest.mark.parametrize("body", ["", "{}", '{"content": 5}', "[1, 2]", '{"content": "   "}'])
async def test_broadcast_without_text_is_422_and_stores_nothing(
    client: TestClient, token: Mint, body: str
):
    resp = await client.post("/api/v1/broadcast/r", data=body, headers=auth_header(token()))

    await error_of(resp, 422, "bad_request")
    assert await client.app[SERVICES].storage.fetch("SELECT * FROM messages") == []


async def test_rooms_list_has_rooms_with_history_or_members(client: TestClient, connect: Connect):
    await say(client, "archive", "old", "older")
    await connect("/ws/live", params={"user_id": "5"})

    body = await (await client.get("/api/v1/rooms")).json()

    assert [(r["room"], r["users"], r["connections"], r["messages"]) for r in body["items"]] == [
        ("archive", 0, 0, 2),
        ("live", 1, 1, 0),
    ]
    archive = body["items"][0]
    assert archive["channel"] == "chat:archive"
    assert archive["last_message_at"] >= archive["created_at"]
    assert body["next_cursor"] is None


async def test_ws_request_answers_like_rest(client: TestClient, connect: Connect, token: Mint):
    await say(client, "lobby", "a", "b")
    ws = await connect(params={"token": token()})

    rest = await (await client.get("/api/v1/messages/lobby?limit=1")).json()
    await ws.send(
        {
            "type": "request",
            "id": 3,
            "resource": "messages",
            "action": "list",
            "payload": {"room": "lobby", "limit": 1},
        }
    )
    over_ws = await ws.recv_type("response")
    await ws.send(
        {
            "type": "request",
            "id": 4,
            "resource": "rooms",
            "action": "broadcast",
            "payload": {"room": "lobby", "content": "from ws"},
        }
    )
    broadcast = await ws.recv_type("response")

    assert over_ws["data"] == rest
    assert broadcast["data"]["message"]["content"] == "from ws"
