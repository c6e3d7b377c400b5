"""Chat rooms over real sockets: messages and acks, presence with several tabs, typing,
join_room, and every bad chat frame answered with an error that leaves the socket usable."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import HUB, SERVICES
from server.storage import StorageUnavailable
from tests.conftest import WS, Connect, eventually, open_ws


async def join(connect: Connect, room: str, user: str, name: str, **query: str) -> WS:
    """A socket on /ws/{room}; reads connection + subscribed (the room is empty of history)."""
    params = {"user_id": user, "username": name, **query}
    return await connect(f"/ws/{room}", params=params)


async def messages_in_db(client: TestClient) -> list[tuple[str, str | None, str]]:
    rows = await client.app[SERVICES].storage.fetch("SELECT * FROM messages ORDER BY id")
    return [(r["room"], r["user_id"], r["content"]) for r in rows]


async def test_ws_room_path_joins_chat_room_and_says_so(client: TestClient):
    ws = await open_ws(client, "/ws/lobby?user_id=7&username=Ana", handshake=False)

    hello = await ws.recv_type("connection")
    connected = await ws.recv_type("connected")
    subscribed = await ws.recv_type("subscribed")

    assert hello["channel"] == "chat:lobby"
    assert hello["subscriptions"] == ["chat:lobby"]
    assert hello["user"] == {"id": "7", "name": "Ana", "role": "anonymous"}
    # Seed 002's greeting: the room and who is there, self included.
    assert connected["room_id"] == "lobby"
    assert connected["data"] == {"room_id": "lobby", "active_users": ["Ana"]}
    assert subscribed["channel"] == "chat:lobby"
    assert subscribed["presence"] == [{"user_id": "7", "username": "Ana"}]


async def test_message_is_acked_to_sender_then_broadcast_to_room(
    client: TestClient, connect: Connect
):
    ana = await join(connect, "lobby", "1", "Ana")
    bob = await join(connect, "lobby", "2", "Bob")
    assert (await ana.recv_type("user_joined"))["data"] == {"user_id": "2", "username": "Bob"}

    await ana.send({"type": "message", "id": "m1", "content": "hola"})

    ack = await ana.recv_type("message_sent")
    echo = await ana.recv_type("message")
    seen = await bob.recv_type("message")
    assert ack["id"] == "m1"
    assert ack["message_id"] == echo["data"]["id"]
    assert echo["data"] == seen["data"]
    data = seen["data"]
    assert {k: data[k] for k in ("room", "user_id", "username", "content")} == {
        "room": "lobby",
        "user_id": "1",
        "username": "Ana",
        "content": "hola",
    }
    assert seen["channel"] == "chat:lobby"
    assert isinstance(seen["offset"], int)
    assert data["created_at"].endswith("Z")
    # Stored under the anonymous identity, shown as its label.
    assert data["anonymous"] is True
    assert await messages_in_db(client) == [("lobby", "anonymous:1", "hola")]


async def test_three_clients_each_get_every_message_once_in_order(
    client: TestClient, connect: Connect
):
    socks = [await join(connect, "r3", str(i), f"u{i}") for i in range(3)]
    # Drain the user_joined frames the earlier members got.
    await socks[0].recv_type("user_joined")
    await socks[0].recv_type("user_joined")
    await socks[1].recv_type("user_joined")

    for i, ws in enumerate(socks):
        await ws.send({"type": "message", "content": f"from {i}"})
        await ws.recv_type("message_sent")
        for other in socks:
            got = await other.recv_type("message")
            assert got["data"]["content"] == f"from {i}"
    for ws in socks:
        await ws.nothing()


async def test_presence_counts_users_not_tabs(client: TestClient, connect: Connect):
    ana = await join(connect, "tabs", "1", "Ana")
    bob_tab1 = await join(connect, "tabs", "2", "Bob")
    await ana.recv_type("user_joined")
    bob_tab2 = await open_ws(client, "/ws/tabs?user_id=2&username=Bob", handshake=False)
    await bob_tab2.recv_type("connection")
    await bob_tab2.recv_type("connected")
    second = await bob_tab2.recv_type("subscribed")
    assert second["presence"] == [
        {"user_id": "1", "username": "Ana"},
        {"user_id": "2", "username": "Bob"},
    ]
    await ana.nothing()  # no second user_joined for a second tab

    resp = await client.get("/api/v1/rooms/tabs/connections")
    assert resp.status == 200
    body = await resp.json()
    assert sorted(c["user_id"] for c in body.pop("clients")) == ["1", "2", "2"]
    # The SPEC §5 list: one item per socket.
    items = body.pop("items")
    assert sorted((i["user_id"], i["username"]) for i in items) == [
        ("1", "Ana"),
        ("2", "Bob"),
        ("2", "Bob"),
    ]
    assert all(i["client_id"] and i["connected_at"].endswith("Z") for i in items)
    assert body.pop("next_cursor") is None
    assert body == {
        "room": "tabs",
        "channel": "chat:tabs",
        "users": [
            {"user_id": "1", "username": "Ana", "connections": 1},
            {"user_id": "2", "username": "Bob", "connections": 2},
        ],
        "count": 2,
        "connections": 3,
    }

    await bob_tab1.close()
    # The server has handled the close (and its presence leave) before the fence.
    await eventually(lambda: len(client.app[HUB].clients) == 2)
    await ana.nothing()  # Bob still has a tab open
    await bob_tab2.close()
    left = await ana.recv_type("user_left")
    assert left["data"] == {"user_id": "2", "username": "Bob"}
    assert "offset" not in left  # presence is not part of the recoverable stream


async def test_anonymous_sockets_without_user_id_are_members_by_client_id(
    client: TestClient, connect: Connect
):
    a = await connect("/ws/anon", params={"client_id": "RobotA"})
    b = await connect("/ws/anon", params={"client_id": "RobotB"})

    joined = await a.recv_type("user_joined")

    assert joined["data"] == {"user_id": "RobotB", "username": "RobotB"}
    await b.send({"type": "message", "content": "beep"})
    await b.recv_type("message_sent")
    assert (await a.recv_type("message"))["data"]["user_id"] == "RobotB"


async def test_typing_is_relayed_to_others_never_echoed(client: TestClient, connect: Connect):
    ana = await join(connect, "t", "1", "Ana")
    bob = await join(connect, "t", "2", "Bob")
    await ana.recv_type("user_joined")

    await ana.send({"type": "typing", "is_typing": True})
    got = await bob.recv_type("typing")
    await ana.send({"type": "typing", "is_typing": True})  # a renewal, not a change
    await ana.send({"type": "typing", "is_typing": False})
    stopped = await bob.recv_type("typing")

    assert got["data"] == {"user_id": "1", "username": "Ana", "is_typing": True}
    assert stopped["data"] == {"user_id": "1", "username": "Ana", "is_typing": False}
    await bob.nothing()
    await ana.nothing()


async def test_typing_expires_without_renewal(make_client: Any):
    client = await make_client({"chat": {"typing_timeout": 0.2}})
    ana = await open_ws(client, "/ws/t?user_id=1&username=Ana")
    bob = await open_ws(client, "/ws/t?user_id=2&username=Bob")
    await ana.recv_type("user_joined")

    await ana.send({"type": "typing", "is_typing": True})
    assert (await bob.recv_type("typing"))["data"]["is_typing"] is True

    expired = await bob.recv_type("typing")  # the default 5 s bound, not a tight 2 s
    assert expired["data"] == {"user_id": "1", "username": "Ana", "is_typing": False}
    await ana.nothing()


async def test_join_room_leaves_the_current_room(client: TestClient, connect: Connect):
    watcher = await join(connect, "a", "9", "Watcher")
    ws = await connect(params={"user_id": "1", "username": "Ana"})
    await ws.send({"type": "join_room", "id": 1, "room": "a"})
    sub_a = await ws.recv_type("subscribed")
    assert sub_a["id"] == 1
    assert sub_a["channel"] == "chat:a"
    await watcher.recv_type("user_joined")

    await ws.send({"type": "join_room", "id": 2, "room": "b"})

    left = await ws.recv_type("unsubscribed")
    joined = await ws.recv_type("subscribed")
    assert (left["id"], left["channel"]) == (2, "chat:a")
    assert (joined["id"], joined["channel"]) == (2, "chat:b")
    assert joined["presence"] == [{"user_id": "1", "username": "Ana"}]
    assert (await watcher.recv_type("user_left"))["data"]["user_id"] == "1"
    await ws.send({"type": "message", "content": "in b"})
    assert (await ws.recv_type("message_sent"))["data"]["room"] == "b"
    await watcher.nothing()


async def test_subscribe_to_chat_channel_joins_too(client: TestClient, connect: Connect):
    ws = await connect(params={"user_id": "1", "username": "Ana"})
    await ws.send({"type": "subscribe", "channel": "chat:sub"})
    assert (await ws.recv_type("subscribed"))["presence"] == [{"user_id": "1", "username": "Ana"}]

    await ws.send({"type": "message", "content": "hi", "channel": "chat:sub"})

    assert (await ws.recv_type("message_sent"))["data"]["room"] == "sub"
    assert (await ws.recv_type("message"))["data"]["content"] == "hi"


async def test_read_receipt_is_stored_and_sent_to_the_room(client: TestClient, connect: Connect):
    ana = await join(connect, "rr", "1", "Ana")
    bob = await join(connect, "rr", "2", "Bob")
    await ana.recv_type("user_joined")
    await ana.send({"type": "message", "content": "read me"})
    message_id = (await ana.recv_type("message_sent"))["message_id"]
    await ana.recv_type("message")
    await bob.recv_type("message")

    await bob.send({"type": "read", "channel": "chat:rr", "message_id": message_id})

    for ws in (ana, bob):
        receipt = await ws.recv_type("read_receipt")
        assert {k: receipt["data"][k] for k in ("room", "message_id", "user_id", "username")} == {
            "room": "rr",
            "message_id": message_id,
            "user_id": "2",
            "username": "Bob",
        }
    rows = await client.app[SERVICES].storage.fetch("SELECT * FROM read_receipts")
    assert [(r["room"], r["message_id"], r["user_id"]) for r in rows] == [
        ("rr", message_id, "anonymous:2")
    ]


async def test_history_on_join_comes_after_subscribed_oldest_first(
    client: TestClient, connect: Connect
):
    ana = await join(connect, "h", "1", "Ana")
    for text in ("one", "two", "three"):
        await ana.send({"type": "message", "content": text})
        await ana.recv_type("message_sent")
        await ana.recv_type("message")

    late = await open_ws(client, "/ws/h?user_id=2&username=Bob", handshake=False)
    await late.recv_type("connection")
    await late.recv_type("connected")
    await late.recv_type("subscribed")
    history = [await late.recv_type("message") for _ in range(3)]

    assert [m["data"]["content"] for m in history] == ["one", "two", "three"]
    assert all(m["history"] is True and "offset" not in m for m in history)
    await late.nothing()


async def test_history_on_join_is_limited_by_config(make_client: Any):
    client = await make_client({"chat": {"history_on_join": 2}})
    ana = await open_ws(client, "/ws/h?user_id=1")
    for text in ("one", "two", "three"):
        await ana.send({"type": "message", "content": text})
        await ana.recv_type("message_sent")
        await ana.recv_type("message")

    late = await open_ws(client, "/ws/h?user_id=2")

    history = [await late.recv_type("message") for _ in range(2)]
    assert [m["data"]["content"] for m in history] == ["two", "three"]
    await late.nothing()


async def test_duplicate_client_id_in_a_room_is_refused_by_default(
    client: TestClient, connect: Connect
):
    first = await connect("/ws/dup", params={"client_id": "RobotA"})
    second = await open_ws(client, "/ws/dup?client_id=RobotA", handshake=False)

    assert await second.closed() == (4009, "duplicate client_id")
    await first.send({"type": "ping", "id": 1})
    assert (await first.recv_type("pong"))["id"] == 1


async def test_duplicate_client_id_replace_policy_closes_the_old_socket(make_client: Any):
    client = await make_client({"ws": {"duplicate_client_id": "replace"}})
    first = await open_ws(client, "/ws/dup?client_id=RobotA")
    second = await open_ws(client, "/ws/dup?client_id=RobotA")

    assert (await first.closed())[0] == 4009
    await second.send({"type": "message", "content": "still here"})
    assert (await second.recv_type("message_sent"))["data"]["user_id"] == "RobotA"


async def test_invalid_room_in_path_closes_with_4400(client: TestClient):
    ws = await open_ws(client, "/ws/no%20spaces", handshake=False)

    code, reason = await ws.closed()
    assert code == 4400
    assert "room" in reason


async def test_bad_chat_frames_get_errors_and_store_nothing(make_client: Any):
    client = await make_client({"chat": {"max_message_length": 10}})
    ws = await open_ws(client, "/api/v1/ws?user_id=1")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"type": "message", "id": 1, "content": "not in a room"}, "bad_request", "room"),
        ({"type": "join_room", "id": 2, "room": "bad room"}, "bad_request", "room"),
    ]
    for frame, code, words in cases:
        await ws.send(frame)
        error = await ws.recv_type("error")
        assert (error["id"], error["code"]) == (frame["id"], code), error
        assert words in str(error), error

    await ws.send({"type": "join_room", "room": "ok"})
    await ws.recv_type("subscribed")
    cases = [
        ({"type": "message", "id": 3}, "bad_request", "content"),
        ({"type": "message", "id": 4, "content": "   "}, "bad_request", "content"),
        ({"type": "message", "id": 5, "content": "x" * 11}, "bad_request", "10 characters"),
        ({"type": "message", "id": 6, "content": 5}, "bad_request", "content"),
        (
            {"type": "message", "id": 7, "content": "hi", "channel": "general"},
            "bad_request",
            "chat",
        ),
        (
            {"type": "message", "id": 8, "content": "hi", "channel": "chat:other"},
            "forbidden",
            "join",
        ),
        ({"type": "typing", "id": 9, "is_typing": "yes"}, "bad_request", "is_typing"),
        ({"type": "read", "id": 10, "message_id": 999}, "not_found", "999"),
        ({"type": "read", "id": 11, "message_id": "1"}, "bad_request", "message_id"),
        ({"type": "join_room", "id": 12, "room": "ok"}, "conflict", "already"),
    ]
    for frame, code, words in cases:
        await ws.send(frame)
        error = await ws.recv_type("error")
        assert (error["id"], error["code"]) == (frame["id"], code), error
        assert words in str(error), error

    assert await client.app[SERVICES].storage.fetch("SELECT * FROM messages") == []
    await ws.send({"type": "message", "content": "fine"})
    assert (await ws.recv_type("message_sent"))["data"]["content"] == "fine"


async def test_read_of_a_message_from_another_room_is_not_found(
    client: TestClient, connect: Connect
):
    ana = await join(connect, "one", "1", "Ana")
    await ana.send({"type": "message", "content": "in one"})
    message_id = (await ana.recv_type("message_sent"))["message_id"]
    await ana.recv_type("message")
    bob = await join(connect, "two", "2", "Bob")

    await bob.send({"type": "read", "id": 1, "message_id": message_id})

    assert (await bob.recv_type("error"))["code"] == "not_found"
    assert await client.app[SERVICES].storage.fetch("SELECT * FROM read_receipts") == []


async def test_presence_already_counts_a_socket_when_it_reads_connection(
    client: TestClient, monkeypatch: Any
):
    # The history read is held until the socket's presence has been looked at over REST.
    looked = asyncio.Event()
    chat = client.app[SERVICES].chat
    read_history = chat.recent

    async def slow_history(room: str) -> list[dict[str, Any]]:
        await looked.wait()
        return await read_history(room)

    monkeypatch.setattr(chat, "recent", slow_history)
    ws = await open_ws(client, "/ws/early?user_id=1&username=Ana", handshake=False)
    await ws.recv_type("connection")
    await ws.recv_type("connected")

    resp = await client.get("/api/v1/rooms/early/connections")
    looked.set()

    assert (await resp.json())["users"] == [{"user_id": "1", "username": "Ana", "connections": 1}]
    assert (await ws.recv_type("subscribed"))["presence"] == [{"user_id": "1", "username": "Ana"}]


async def test_join_without_history_when_the_database_fails_then_chat_goes_on(
    client: TestClient, connect: Connect, monkeypatch: Any
):
    chat = client.app[SERVICES].chat

    async def broken(room: str) -> list[dict[str, Any]]:
        raise StorageUnavailable("disk on fire")

    monkeypatch.setattr(chat, "recent", broken)
    ws = await open_ws(client, "/ws/down?user_id=1", handshake=False)
    await ws.recv_type("connection")
    await ws.recv_type("connected")
    await ws.recv_type("subscribed")

    error = await ws.recv_type("error")
    assert error["message"] == "chat history is unavailable now"
    monkeypatch.undo()
    await ws.send({"type": "message", "content": "still works"})
    assert (await ws.recv_type("message_sent"))["data"]["content"] == "still works"
