"""Seed 001 (WebSocket module replacing REST): its README's frames replayed on `GET /ws`
against a real server, asserting the fields its clients read (`response.payload`,
`event.payload.{type, data}`, `error.payload.{code, message, details}`)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import AUTH, SERVICES
from tests.conftest import WS, open_ws

# The README's own frames ("Protocolo de mensajes", "Solicitar datos").
GET_ALL_CONVERSATIONS = {
    "type": "request",
    "id": "msg-123456789",
    "resource": "conversations",
    "payload": {"action": "get_all", "user_id": "user123"},
}
CREATE_MESSAGE = {
    "type": "request",
    "id": "msg-2",
    "resource": "messages",
    "payload": {
        "action": "create",
        "message": {"conversation_id": "conv123", "content": "Hola mundo", "sender_id": "user789"},
    },
}


async def seed_ws(client: TestClient, sub: str = "user789", role: str = "user") -> WS:
    """A seed-001 socket: `?token=` (a Sensorcast JWT), greeted by two events."""
    tok = client.app[AUTH].mint(sub, role)
    ws = await open_ws(client, "/ws", handshake=False, params={"token": tok})
    hello = await ws.recv_type("event")
    assert hello["payload"]["type"] == "connection"
    assert hello["payload"]["data"]["user"]["id"] == sub
    joined = await ws.recv_type("event")
    assert joined["payload"]["type"] == "subscribed"
    return ws


async def request(
    ws: WS, resource: str, action: str, rid: Any = "r1", **args: Any
) -> dict[str, Any]:
    payload = {"action": action, **args}
    return await ws.request(
        {"type": "request", "id": rid, "resource": resource, "payload": payload}
    )


async def answer(ws: WS, frame: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Send; the reply with the frame's id (as the seed's client matches it), and the
    types of the events that came before it."""
    await ws.send(frame)
    before = []
    while True:
        got = await ws.recv()
        if got["type"] in ("response", "error") and got["id"] == frame["id"]:
            return got, before
        before.append(got["payload"]["type"])


async def next_event(ws: WS, kind: str) -> dict[str, Any]:
    """The next event of `kind` (others, such as user_joined, are what clients ignore)."""
    while True:
        event = await ws.recv_type("event")
        if event["payload"]["type"] == kind:
            return event


async def enter(ws: WS, conversation: str) -> None:
    """Read a conversation's messages: the socket is then in its room."""
    reply = await request(ws, "messages", "get_all", rid="enter", conversation_id=conversation)
    assert reply["type"] == "response", reply
    joined = await ws.recv_type("event")
    assert joined["payload"]["type"] == "subscribed"


async def test_conversations_get_all_answers_the_readme_response(client: TestClient):
    chat = client.app[SERVICES].chat
    await chat.broadcast("conv123", "hola")
    await chat.broadcast("conv456", "adios")
    ws = await seed_ws(client)

    reply = await ws.request(GET_ALL_CONVERSATIONS)

    assert reply["type"] == "response"
    assert reply["id"] == "msg-123456789"
    conversations = reply["payload"]["conversations"]
    assert [c["id"] for c in conversations] == ["conv123", "conv456"]
    assert all(c["title"] and c["created_at"] for c in conversations)


async def test_messages_create_is_stored_answered_and_pushed_as_new_message(client: TestClient):
    reader = await seed_ws(client, sub="ana")
    await enter(reader, "conv123")
    ws = await seed_ws(client)

    reply, before = await answer(ws, CREATE_MESSAGE)

    # Writing in a conversation joins its room first.
    assert before == ["subscribed"]
    assert reply["type"] == "response"
    assert reply["id"] == "msg-2"
    created = reply["payload"]["message"]
    assert created["conversation_id"] == "conv123"
    assert created["content"] == "Hola mundo"
    # The sender is who the token says, whatever `sender_id` claims.
    assert created["sender_id"] == "user789"
    assert isinstance(created["id"], int)
    assert created["timestamp"]
    event = await next_event(reader, "new_message")
    assert event["id"].startswith("evt-")
    assert event["payload"]["type"] == "new_message"
    assert event["payload"]["data"] == created
    history = await client.app[SERVICES].chat.history("conv123", 50, None)
    assert [m["content"] for m in history["items"]] == ["Hola mundo"]


async def test_the_writer_gets_its_own_message_as_an_event_too(client: TestClient):
    ws = await seed_ws(client)
    reply, _ = await answer(ws, CREATE_MESSAGE)
    first = await next_event(ws, "new_message")
    again, before = await answer(ws, {**CREATE_MESSAGE, "id": "msg-3"})
    second = await next_event(ws, "new_message")

    # Already in the room: no second join; each message comes back (acked first) as an event.
    assert before == []
    assert first["payload"]["data"] == reply["payload"]["message"]
    assert second["payload"]["data"] == again["payload"]["message"]


async def test_messages_from_native_chat_sockets_arrive_as_new_message(client: TestClient):
    ws = await seed_ws(client)
    await enter(ws, "conv123")
    native = await open_ws(client, "/ws/conv123?user_id=7&username=Ana")
    await native.send({"type": "message", "content": "desde la sala"})

    event = await next_event(ws, "new_message")

    data = event["payload"]["data"]
    assert event["payload"]["type"] == "new_message"
    assert (data["conversation_id"], data["content"], data["sender_id"]) == (
        "conv123",
        "desde la sala",
        "7",
    )


async def test_messages_get_all_is_the_history_newest_first(client: TestClient):
    chat = client.app[SERVICES].chat
    for text in ("uno", "dos"):
        await chat.broadcast("conv123", text)
    ws = await seed_ws(client)

    reply = await request(ws, "messages", "get_all", conversation_id="conv123")

    assert reply["id"] == "r1"
    assert [m["content"] for m in reply["payload"]["messages"]] == ["dos", "uno"]
    assert reply["payload"]["messages"][0]["conversation_id"] == "conv123"


async def test_native_operations_work_through_the_envelope(client: TestClient):
    ws = await seed_ws(client, sub="svc", role="service")
    created = await request(ws, "sensors", "create", type="temperature", name="t1")
    assert created["type"] == "response", created
    sensor_id = created["payload"]["id"]

    listed = await request(ws, "sensors", "get_all")
    got = await request(ws, "sensors", "get", id=sensor_id)

    assert [s["id"] for s in listed["payload"]["items"]] == [sensor_id]
    assert got["payload"]["name"] == "t1"


async def test_authorization_is_the_native_one(client: TestClient):
    ws = await seed_ws(client, role="user")
    reply = await request(ws, "sensors", "create", rid="w", type="temperature")
    assert reply["type"] == "error"
    assert reply["id"] == "w"
    assert reply["payload"]["code"] == "forbidden"


async def test_unknown_conversation_is_the_readme_not_found_error(client: TestClient):
    ws = await seed_ws(client)
    reply = await request(
        ws, "conversations", "get", rid="msg-123456789", conversation_id="conv999"
    )
    assert reply == {
        "type": "error",
        "id": "msg-123456789",
        "payload": {
            "code": "not_found",
            "message": "conversation not found",
            "details": {"conversation_id": "conv999"},
        },
        "timestamp": reply["timestamp"],
    }


async def test_bad_input_is_an_error_envelope_and_the_socket_stays(client: TestClient):
    ws = await seed_ws(client)
    unknown = await request(ws, "invoices", "get_all", rid="a")
    no_action = await ws.request({"type": "request", "id": "b", "resource": "conversations"})
    bad_payload = await ws.request(
        {"type": "request", "id": "c", "resource": "messages", "payload": "create"}
    )
    no_room = await request(ws, "messages", "create", rid="d", message={"content": "x"})
    empty = await request(ws, "messages", "create", rid="e", message={"conversation_id": "c1"})
    await ws.send("{not json")
    invalid = await ws.recv()

    for reply, id in ((unknown, "a"), (no_action, "b"), (bad_payload, "c"), (no_room, "d")):
        assert reply["type"] == "error", reply
        assert reply["id"] == id
        assert reply["payload"]["code"] == "bad_request"
        assert reply["payload"]["message"]
    assert "conversation_id" in no_room["payload"]["details"]
    assert (empty["type"], empty["id"]) == ("error", "e")
    assert "content" in empty["payload"]["details"]
    assert (invalid["type"], invalid["payload"]["code"]) == ("error", "invalid_json")
    ok = await ws.request(GET_ALL_CONVERSATIONS)
    assert ok["type"] == "response"


async def test_ping_is_answered_with_pong(client: TestClient):
    ws = await seed_ws(client)
    pong = await ws.request({"type": "ping", "id": 5})
    assert (pong["type"], pong["id"]) == ("pong", 5)


async def test_a_token_is_required(client: TestClient):
    ws = await open_ws(client, "/ws", handshake=False)
    code, _ = await ws.closed()
    assert code == 4001


async def test_native_sockets_cannot_send_the_adapter_frame(client: TestClient):
    ws = await open_ws(client, "/api/v1/ws")
    reply = await ws.request(
        {"type": "seed001_request", "id": 1, "resource": "conversations", "action": "list"}
    )
    assert (reply["type"], reply["code"]) == ("error", "unknown_type")


async def test_idle_socket_is_closed_and_an_active_one_is_not(make_client: Any):
    # 2 s idle, and the active socket speaks every ~50 ms until the idle one is closed: a
    # stall would have to last ~1.9 s to close the active one (the old 0.4 s / 0.15 s broke
    # on a 250 ms stall). The end is the idle socket's close, not a timer.
    client = await make_client({"compat": {"idle_timeout": 2.0}})
    idle = await seed_ws(client)
    active = await seed_ws(client, sub="ana")
    closed = asyncio.ensure_future(idle.closed(timeout=10))
    while not closed.done():
        assert (await active.request({"type": "ping"}))["type"] == "pong"
        await asyncio.wait([closed], timeout=0.05)

    code, reason = await closed

    assert (code, reason) == (4008, "idle timeout")
    pong = await active.request({"type": "ping"})
    assert pong["type"] == "pong"


async def test_conversations_get_answers_it_and_joins_its_room(client: TestClient):
    await client.app[SERVICES].chat.broadcast("conv123", "hola")
    ws = await seed_ws(client)

    reply = await request(ws, "conversations", "get", conversation_id="conv123")
    joined = await next_event(ws, "subscribed")

    assert reply["payload"]["conversation"]["id"] == "conv123"
    assert reply["payload"]["conversation"]["messages"] == 1
    assert joined["payload"]["data"]["channel"] == "chat:conv123"


async def test_users_me_is_the_token_user(client: TestClient):
    ws = await seed_ws(client, sub="ana")
    reply = await request(ws, "users", "me")
    assert reply["payload"]["user"]["id"] == "ana"


async def test_envelopes_on_the_native_endpoint_switch_that_socket_to_seed_001(
    client: TestClient,
):
    tok = client.app[AUTH].mint("user789", "user")
    native = await open_ws(client, "/api/v1/ws", params={"token": tok})
    other = await open_ws(client, "/api/v1/ws", params={"token": tok})

    reply, _ = await answer(native, GET_ALL_CONVERSATIONS)
    await other.send({"type": "ping", "id": 1})
    native_pong = await other.recv_type("pong")

    assert reply["type"] == "response"
    assert reply["id"] == "msg-123456789"
    assert reply["payload"] == {"conversations": []}
    assert native_pong["id"] == 1
    # From then on its errors are envelopes too.
    bad = await request(native, "nope", "get_all", rid="x")
    assert (bad["type"], bad["id"], bad["payload"]["code"]) == ("error", "x", "bad_request")
